#!/usr/bin/env bash
# Installs crystalgan_jax into ./.venv and runs the main job: CrystalGAN in the paper's
# configuration on the embedded Pd-H / Ni-H data (outputs in runs/pdni).
# Extra arguments go to train.py, e.g. `bash run.sh --resume` or `bash run.sh --overwrite`.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e .
python experiments/train.py --flagfile=experiments/pdni.flags "$@"
