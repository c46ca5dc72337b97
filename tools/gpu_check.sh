#!/usr/bin/env bash
# One prepared check for a lent GPU (the `device` tool): under 5 minutes, one line per figure.
#   bash tools/gpu_check.sh            run everything on CUDA (fails fast without one)
#   bash tools/gpu_check.sh --dry-run  print what it would run, run nothing (works on any machine)
# What it runs:
#   1. the `#| gpu` notebook cells (nbdev-test --flags gpu)
#   2. tools/gpu_sync_check.py: ActivationStats (activations + gradients + update ratios) on a small CNN under
#      torch.cuda.set_sync_debug_mode("error") (a GPU->host sync raises), and on a RetinaNet and a YOLO11n training
#      step, where the detectors' own losses sync: the count of syncs with weldiag recording must equal the count without
#   3. bench/activation_overhead.py on CUDA (torch's default device set to cuda): ratios against fastai's ActivationStats
#      and W&B watch in the same run, then the peak CUDA memory
#   4. weldiag demo --device cuda --fast
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0; [ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-/tmp/weldiag-gpu-check}; mkdir -p "$OUT"
export YOLO_OFFLINE=1 MPLBACKEND=Agg PYTHONWARNINGS=ignore
BENCH='import runpy, sys, torch; torch.set_default_device("cuda"); sys.argv = ["bench/activation_overhead.py", "--repeats", "2", "--skip-fastai", "--models", "cnn,retinanet"]; runpy.run_path("bench/activation_overhead.py", run_name="__main__"); print(f"figure: bench peak CUDA memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")'
CHECKS=(
  "nbdev-test --flags gpu --file-re '.*'"
  "python tools/gpu_sync_check.py"
  "python -c '$BENCH'"
  "weldiag demo --device cuda --fast --out $OUT/demo"
)
status=0
[ $DRY = 1 ] && sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
for c in "${CHECKS[@]}"; do
  if [ $DRY = 1 ]; then echo "would run: $c"; continue; fi
  echo "== $c"; t0=$(date +%s)
  if timeout 150 bash -c "$c" > "$OUT/log.txt" 2>&1; then r=ok; else r="FAILED (rc $?)"; status=1; fi
  grep -E '^figure:|ratio|x plain|peak|AP50|sync' "$OUT/log.txt" | tail -25
  echo "figure: ${c%% *} ... $r in $(( $(date +%s) - t0 )) s"; tail -3 "$OUT/log.txt" | sed 's/^/  | /'
done
[ $DRY = 0 ] && python -c "import torch; print('figure: device', torch.cuda.get_device_name(0))"
exit $status
