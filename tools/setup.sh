#!/usr/bin/env bash
# Create .venv in the repository (if missing) and install weldiag with its dev, ultralytics, tensorboard and detr extras.
# torch/torchvision are pinned here (and only here and in .ci/run): these builds lie on the machine's disk.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
# torch in the same pip command as everything that depends on it (ultralytics, tensorboard), so pip never replaces it.
.venv/bin/pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1" -e ".[dev,ultralytics,tensorboard,detr]"
echo "weldiag installed in $(pwd)/.venv"
