#!/usr/bin/env bash
# The one prepared GPU check (< 8 minutes). On a lent GPU machine (no package registry there):
#   here, once:  bash bench/gpu_wheels.sh            # wheels the GPU image lacks → .whl/
#                python -m raydigits.data prepare    # data/mnist
#   device run:  command "bash bench/gpu_check.sh", carry [".whl", "data/mnist"]
# It installs, runs the GPU tests (AMP bf16 + fp16, a search on fractional GPUs) and prints throughput.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 RAYDIGITS_NO_PROGRESS=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, ray; print('torch', torch.__version__, 'ray', ray.__version__, 'cuda', torch.cuda.is_available())"
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
timeout 300 python3 -m pytest -q tests/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.txt"
for size in 32 224; do
  timeout 120 python3 bench/trainer_bench.py --device cuda --img-size $size --batch-size 256 --items 16384 --threads 8 \
    2>&1 | grep -v Warning | tee -a "$OUT/gpu_bench.txt"
done
