#!/usr/bin/env bash
# The GPU proof (scripts/gpu_proof.py): preflight on the real GPU, the tiny profile twice and killed-and-resumed on
# cuda:0 compared byte for byte, the default profile's steps per second on the GPU and the CPU, the GPU preflight tests.
#
#   bash scripts/gpu_proof.sh [OUT_DIR]        # default: $OUT, else ./gpu-proof
#
# Needs torch (a CUDA build), numpy, safetensors, PyYAML, nvidia-ml-py and pytest. What else the pipeline imports
# (pydantic, jsonschema and their dependencies) is installed from wheels in .whl/ when that folder exists, with no
# index: on a machine that reaches none, fetch them first where pip works (bash scripts/gpu_proof_wheels.sh) and carry
# .whl/ along. On a machine without a usable CUDA device it says so and exits 2.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  site=$(mktemp -d)
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$python" scripts/gpu_proof.py "$@"
