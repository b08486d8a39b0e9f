#!/usr/bin/env bash
# Installs crystalgan_jax into ./.venv with its screening extra and runs the main job, the
# discovery job on the embedded Pd-H / Ni-H data: crystalgan_plus as a population of
# seeds, pooled, screened with CHGNet; "Candidates for DFT" opens runs/pdni/report.md.
# Extra arguments go to train.py, e.g. `bash run.sh --resume` or `bash run.sh --overwrite`.
set -euo pipefail
cd "$(dirname "$0")"
tic=$(date +%s)
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# The screening extra brings PyTorch through chgnet: the CPU build first (<1 GB) so that
# pip does not pull the multi-GB CUDA build.
python -m pip install -q 'torch==2.13.0+cpu'
python -m pip install -q -e '.[screen]'
echo "install: $(( $(date +%s) - tic )) s" >&2
python experiments/train.py --flagfile=experiments/pdni.flags "$@"
