#!/usr/bin/env bash
# The GPU checks in one go, on a machine with CUDA, torch, transformers, peft and accelerate
# (Ray is not needed). Extra wheels (pydantic, bitsandbytes, deepspeed) may be pre-downloaded
# into ./wheels: `pip download -d wheels pydantic pyyaml bitsandbytes`.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -d wheels ]; then pip install --quiet --no-index --find-links wheels pydantic pyyaml bitsandbytes || true; fi
nvidia-smi --query-gpu=name,memory.total --format=csv
python -m pytest -m gpu tests/gpu -q -p no:cacheprovider -o addopts="" "$@"
