#!/usr/bin/env bash
# Every GPU step in one script, for the lent GPU machine (PyTorch and Triton preinstalled, no registry):
# install the package, run the GPU tests, run the GPU benchmarks, and leave logs and JSON under $OUT.
# Optional wheels (e.g. spikingjelly, for side-by-side numbers) travel in .whl/ (see the device README).
set -uo pipefail
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
pip install -q -e . --no-deps --no-build-isolation 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv | tee "$OUT/device.txt"
python -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tee "$OUT/pytest_gpu.log"
python benchmarks/bench_lif.py --device cuda --out "$OUT/lif_cuda.json" 2>&1 | tee "$OUT/bench_lif.log"
python benchmarks/bench_ternary.py --device cuda --out "$OUT/ternary_cuda.json" 2>&1 | tee "$OUT/bench_ternary.log"
python benchmarks/bench_train_step.py --device cuda --out "$OUT/train_step_cuda.json" 2>&1 | tee "$OUT/bench_train_step.log"
