#!/usr/bin/env bash
# Every GPU step in one script, for the lent GPU machine (PyTorch and Triton preinstalled, no registry):
# install the package, run the GPU tests, run the GPU benchmarks, and copy the logs, JSON, tables and
# plots to $OUT.
#
#   bash benchmarks/gpu_check.sh                      # everything: tests, then every benchmark
#   bash benchmarks/gpu_check.sh tests                # some steps: tests lif open_neuromorphic ternary train_step
#
# A lent machine stops a command after 10 minutes: there, run the steps in separate calls (tests; lif;
# the other benchmarks), each writing to its own $OUT. Optional wheels (the peers, for side-by-side
# numbers: spikingjelly, snntorch, norse, nir, nirtorch, loguru, h5py; `pip wheel --no-deps -w .whl ...`
# here) travel in .whl/, named in the device tool's carry.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
STEPS=${*:-tests lif open_neuromorphic ternary train_step}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
pip install -q -e . --no-deps --no-build-isolation 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv | tee "$OUT/device.txt"
status=0
for step in $STEPS; do
  if [ "$step" = tests ]; then
    python -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tee "$OUT/pytest_gpu.log" || status=1
  else
    python -m benchmarks --device cuda --only "$step" 2>&1 | tee "$OUT/bench_$step.log" || status=1
    cp benchmarks/results/"$step"_cuda-* "$OUT/" 2>/dev/null
  fi
done
cp README.md "$OUT/README.generated.md"
exit $status
