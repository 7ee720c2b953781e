#!/usr/bin/env bash
# On a machine with one CUDA GPU and no internet. Before sending the repo there, copy the data:
#   mkdir -p data/raw/FashionMNIST/raw && cp /usr/share/datasets/fashion-mnist/*.gz data/raw/FashionMNIST/raw/
# Needs torch/torchvision there (or the .venv carried along); kdflow runs from src/.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
"$PY" bench/gpu.py "$@"
