#!/usr/bin/env bash
# One NVIDIA GPU, torch + timm + torchvision installed, run from anywhere in the checkout:
#   bash benchmarks/gpu.sh                 # < 8 minutes; JSON lines per section, then the summary
#   bash benchmarks/gpu.sh --smoke --device cpu   # tiny CPU check of the same code paths
# Extra arguments go to python -m benchmarks.gpu (see --help). With $OUT set, the summary is also
# written to $OUT/gpu.json.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout --signal=INT 470 python -m benchmarks.gpu "$@"
