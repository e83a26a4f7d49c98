#!/usr/bin/env bash
# rtk's GPU check: one prepared script, under 8 minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh [--out results.json]    # on a CUDA machine
#   bash benchmarks/gpu_check.sh --dry-run --out x.json  # tiny sizes on the CPU (the test suite runs this)
#
# It installs what it needs when it is missing (rtk itself, editable, with its dependencies),
# then runs benchmarks/gpu_check.py: the device's measured matmul peak, rtk's similarity
# kernels in TFLOP/s against it (and the peers' GPU paths when installed), one AMP PGD-AT
# training epoch and one PGD-10 evaluation against a bare channels_last loop. Results: JSON.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
    if [[ -x "$root/.venv/bin/python" ]]; then py="$root/.venv/bin/python"; else py="$(command -v python3 || command -v python)"; fi
fi
dry=0
for a in "$@"; do [[ "$a" == "--dry-run" ]] && dry=1; done
if ! "$py" -c "import rtk.evaluation" >/dev/null 2>&1; then
    if [[ $dry -eq 1 ]]; then
        echo "gpu_check: rtk is not importable with $py (a dry run installs nothing)" >&2
        exit 2
    fi
    echo "gpu_check: installing rtk and its dependencies with $py -m pip" >&2
    "$py" -m pip install --quiet -e "$root"
fi
if [[ $dry -eq 0 ]]; then
    "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
        echo "gpu_check: torch sees no CUDA device; run with --dry-run to check the script on the CPU" >&2
        exit 3
    }
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || true
fi
exec timeout 480 "$py" "$here/gpu_check.py" "$@"
