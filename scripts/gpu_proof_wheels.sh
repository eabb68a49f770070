#!/usr/bin/env bash
# Fetch into .whl/ the wheels scripts/gpu_proof.sh installs on a machine that reaches no package index: the pipeline's
# pure-Python and compiled dependencies that a bare CUDA image with torch lacks, at the versions requirements.lock pins.
#
#   bash scripts/gpu_proof_wheels.sh [PYTHON_VERSION]     # the target machine's Python, default 3.12
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-3.12}
packages=(pydantic pydantic-core annotated-types typing-inspection typing-extensions jsonschema jsonschema-specifications
          referencing rpds-py attrs)
pins=()
for name in "${packages[@]}"; do
  pin=$(grep -iE "^${name//-/[-_]}==" requirements.lock || true)
  pins+=("${pin:-$name}")
done
python3 -m pip download --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${pins[@]}"
ls .whl
