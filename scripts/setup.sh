#!/usr/bin/env bash
# Idempotent set-up: virtual environment, packages, and the default dataset.
# Quick when nothing changed (a stamp keyed to pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.kdflow-setup
want=$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "[setup] installing kdflow and its dependencies into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  echo "$want" > "$stamp"
fi

fmnist=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$fmnist" ] && [ ! -d data/raw/FashionMNIST ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing Debian's dataset-fashion-mnist"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "[setup] Fashion-MNIST not found: run 'sudo apt-get install dataset-fashion-mnist'," \
         "or put the IDX files in data/raw/FashionMNIST/raw, or set data.download: true" >&2
  fi
fi
