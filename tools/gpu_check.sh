#!/usr/bin/env bash
# One prepared check for a lent GPU (the `device` tool): under 5 minutes, one line per figure.
#   bash tools/gpu_check.sh            run everything on CUDA (fails fast without one)
#   bash tools/gpu_check.sh --dry-run  print what it would run, run nothing (works on any machine)
# What it runs:
#   1. the `#| gpu` notebook cells (nbdev-test --flags gpu)
#   2. tools/gpu_sync_check.py: ActivationStats (activations + gradients + update ratios) on a small CNN under
#      torch.cuda.set_sync_debug_mode("error") (a GPU->host sync raises), and on a RetinaNet and a YOLO11n training
#      step, where the detectors' own losses sync: the count of syncs with weldiag recording must equal the count without
#   3. bench/activation_overhead.py --device cuda: ratios against fastai's ActivationStats hooks and W&B watch in the
#      same run (side by side, small CNN and RetinaNet), then the peak CUDA memory
#   4. weldiag demo --device cuda --fast
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0; [ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-/tmp/weldiag-gpu-check}; mkdir -p "$OUT"
export YOLO_OFFLINE=1 MPLBACKEND=Agg PYTHONWARNINGS=ignore
# only the notebooks that have `#| gpu` cells (all notebooks would not fit in 5 minutes)
GPU_NBS=$(grep -l '"#| gpu' nbs/*.ipynb 2>/dev/null | xargs -r -n1 basename | sed 's/\.ipynb$//' | paste -sd'|')
if [ -n "$GPU_NBS" ]; then GPU_CELLS="nbdev-test --flags gpu --file-re '($GPU_NBS)'"
else GPU_CELLS="echo 'figure: gpu cells: none in nbs/ (no notebook has a #| gpu cell yet)'"; fi
CHECKS=(
  "$GPU_CELLS"
  "python tools/gpu_sync_check.py"
  "python bench/activation_overhead.py --device cuda --repeats 2 --skip-fastai --models cnn,retinanet"
  "weldiag demo --device cuda --fast --out $OUT/demo"
)
status=0
[ $DRY = 1 ] && sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
for c in "${CHECKS[@]}"; do
  if [ $DRY = 1 ]; then echo "would run: $c"; continue; fi
  echo "== $c"; t0=$(date +%s)
  if timeout 150 bash -c "$c" > "$OUT/log.txt" 2>&1; then r=ok; else r="FAILED (rc $?)"; status=1; fi
  grep -E '^figure:|repeat [0-9]|peak|AP50|sync|device' "$OUT/log.txt" | tail -25
  echo "figure: ${c%% *} ... $r in $(( $(date +%s) - t0 )) s"; tail -3 "$OUT/log.txt" | sed 's/^/  | /'
done
[ $DRY = 0 ] && python -c "import torch; print('figure: device', torch.cuda.get_device_name(0))"
exit $status
