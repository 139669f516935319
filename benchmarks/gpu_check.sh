#!/usr/bin/env bash
# Every GPU step in one script, for the lent GPU machine (PyTorch and Triton preinstalled, no registry):
# install the package, run the GPU tests, run every GPU benchmark (python -m benchmarks --device cuda),
# and copy the logs, JSON, tables and plots to $OUT.
# Optional wheels (the peers, for side-by-side numbers: spikingjelly, snntorch, norse, nir, nirtorch,
# loguru, h5py; `pip wheel --no-deps -w .whl ...` here) travel in .whl/, named in the device tool's carry.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
pip install -q -e . --no-deps --no-build-isolation 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv | tee "$OUT/device.txt"
python -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tee "$OUT/pytest_gpu.log"
python -m benchmarks --device cuda 2>&1 | tee "$OUT/benchmarks.log"
cp benchmarks/results/*_cuda-* "$OUT/" 2>/dev/null
cp README.md "$OUT/README.generated.md"
