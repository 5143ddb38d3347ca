#!/usr/bin/env bash
# The one prepared GPU check, for a lent GPU machine (no package registry there), in one device call
# of about 8 minutes (measured: 552 s before the trims noted in BENCHMARKS.md). Here, first:
#   bash ../shared/gpu/make_payload.sh          # → .gpu-payload/ (Ray without its jar, + missing wheels)
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform any -d .gpu-payload/whl plotly narwhals   # report.html (10 MB)
#   (measured 2026-11-28: payload 53.1 MB + data/mnist 11.7 MB + tracked tree 1.1 MB = 62.9 MiB of
#   the call's 64 MiB: check with `du -cb .gpu-payload data/mnist` before the call)
#   python -m raydigits.data prepare            # → data/mnist
# then: device run  command "bash bench/gpu_check.sh"  carry [".gpu-payload", "data/mnist"]
# In order of importance, each step capped in time, logs under $OUT:
#   1. GPU tests: AMP bf16 (graphs) / fp16 with defaults, graphs vs eager, an OOM run, a gpu:auto search
#   2. trainer bench at 32, 64, 224 px (graphs vs eager vs bare loop) and 4 trainers sharing the GPU
#   3. the GPU headline search (search_spaces/gpu_headline.yaml): wall time and test accuracy;
#      3b. its best trial retrained by `launch.py reproduce` on the GPU (the tolerance, measured)
#   4. if time is left: ranking fidelity on full MNIST (bench/search_bench.py --part fidelity)
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
export PYTHONUNBUFFERED=1 RAYDIGITS_NO_PROGRESS=1 RAY_DEDUP_LOGS=0
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
P=.gpu-payload
if [ -d $P ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $P/whl/*.whl 2>&1 | tail -2
  tar xJf $P/ray.tar.xz -C /tmp/site || exit 1
  export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
else
  export PYTHONPATH=$PWD
fi
left() { echo $(( ${1} - ($(date +%s) - T0) )); }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/machine.txt"
python3 -c "import torch, ray; print('torch', torch.__version__, 'ray', ray.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/machine.txt"
echo "== 1. GPU tests ($(left 590)s left)"
timeout 140 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -25 | tee "$OUT/gpu_tests.txt"
echo "== 2. trainer bench ($(left 590)s left)"
timeout 100 python3 bench/gpu_bench.py --sizes 32,64,224 --rounds 2 --items 12288 --duration 8 --start-delay 30 2>&1 | grep -v Warning | tee "$OUT/gpu_bench.txt"
echo "== 3. GPU headline search ($(left 590)s left)"
H0=$(date +%s)
timeout 280 python3 launch.py --search-space gpu_headline --name gpu_headline --storage-path /tmp/ray_results \
  > "$OUT/headline.log" 2>&1
echo "wall $(( $(date +%s) - H0 )) s (launch.py start to final summary, Ray start included)" >> "$OUT/headline.log"
grep -E "wall |== raydigits|best trial|params:|trials:|gpu:|search finished" "$OUT/headline.log" | tee "$OUT/headline.txt"
cp /tmp/ray_results/gpu_headline/final/metrics.json "$OUT/headline_metrics.json" 2>/dev/null
cp /tmp/ray_results/gpu_headline/final/trials.csv "$OUT/headline_trials.csv" 2>/dev/null
echo "== 3b. reproduce the headline's best trial on the GPU ($(left 590)s left): its per-epoch val_acc"
echo "   against the recorded one (reproduce.py's GPU tolerance, 0.01, was never measured)"
timeout 90 python3 launch.py reproduce /tmp/ray_results/gpu_headline --out /tmp/gpu_repro 2>&1 | tail -22 \
  | tee "$OUT/reproduce.txt"
L=$(left 590)
echo "== 4. ranking fidelity, full MNIST (${L}s left)"
if [ "$L" -gt 60 ]; then
  timeout $((L - 10)) python3 bench/search_bench.py --part fidelity --gpu --storage /tmp/ray_fid 2>&1 | grep -v Warning | tail -20 | tee "$OUT/fidelity.txt"
fi
echo "== done in $(( $(date +%s) - T0 ))s"
