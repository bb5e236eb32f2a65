#!/usr/bin/env bash
# The GPU measurements in one run, for a machine with an NVIDIA GPU and a CUDA build of torch
# (with the project's test and bench extras installed): the whole test suite (its CUDA tests run
# there instead of being skipped), then the temperature fit at 50,000 x 1,000 and at a 128k
# vocabulary, the metrics and compare, all on the device. Each step's output is printed and kept
# in FOLDER/<step>.txt.
#
# Usage: bash benchmarks/gpu.sh [FOLDER]    (default: gpu-results)
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$(mkdir -p "${1:-gpu-results}" && cd "${1:-gpu-results}" && pwd)"
export PYTHONUNBUFFERED=1
status=0

step() {  # step NAME COMMAND...: run it in the checkout, print and keep its output
    local name="$1"
    shift
    echo "== $name: $*"
    (cd "$root" && "$@") 2>&1 | tee "$out/$name.txt" || status=1
}

step device python -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"
step tests python -m pytest -q -rs -p no:cacheprovider
step temperature python benchmarks/fit_temperature.py --device cuda \
    --sizes 50000x1000 4096x131072 --repeats 5 --markdown
step metrics python benchmarks/metrics.py --device cuda \
    --sizes 1000000x10 50000x1000 --repeats 9 --markdown
step compare python benchmarks/compare.py --device cuda --repeats 1 --markdown
exit "$status"
