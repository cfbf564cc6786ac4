#!/usr/bin/env bash
# One command on one NVIDIA GPU, run from anywhere in the checkout (< 9 minutes on one H100):
#   bash benchmarks/gpu.sh                        # the card, the GPU test suite, then the benchmark
#   bash benchmarks/gpu.sh --smoke --device cpu   # the benchmark's code paths, tiny, on the CPU (no suite)
# Extra arguments go to python -m benchmarks.gpu (see --help). With $OUT set, the suite's report goes
# to $OUT/gpu-tests.txt (and junit XML) and the benchmark's summary to $OUT/gpu.json.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi'
python -c 'import torch, timm; print("torch", torch.__version__, "| timm", timm.__version__, "| cuda", torch.version.cuda)'
suite=0
if [[ " $* " != *" --smoke "* ]]; then
  report="${OUT:+$OUT/gpu-tests.txt}"
  # The suite first (at most 130 s): a failure is reported, and the benchmark still runs.
  timeout --signal=INT 130 python -m pytest tests/gpu -m gpu -q -p no:randomly -p no:cacheprovider \
    ${OUT:+--junitxml="$OUT/gpu-tests.xml"} 2>&1 | tee ${report:-/dev/null}
  suite=${PIPESTATUS[0]}
  echo "GPU test suite exit status: $suite"
fi
# The benchmark keeps to --budget-s (360 s by default); the timeout is the backstop.
timeout --signal=INT 380 python -m benchmarks.gpu "$@"
bench=$?
echo "benchmark exit status: $bench"
exit $(( suite != 0 ? suite : bench ))
