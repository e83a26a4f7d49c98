#!/usr/bin/env bash
# Install rtk and what it needs into ./.venv (idempotent). Used by scripts/quickstart.sh,
# scripts/test.sh and .ci/run.  Usage: scripts/setup.sh [EXTRAS]   e.g. scripts/setup.sh dev,zoo
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-}"
PY="${PYTHON:-python3}"
VENV="${RTK_VENV:-.venv}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV" >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
fi
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)

# torch + torchvision: the pair measured to work here (environment.md); a CPU-only
# machine runs the CUDA build fine. Skip if an importable torch is already present.
if ! "$VENV/bin/python" -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "[setup] installing torch 2.14.1 + torchvision 0.29.1 (about 1.5 minutes)" >&2
  "${PIP[@]}" "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v "^WARNING: Location" || true
fi

spec="."
[ -n "$EXTRAS" ] && spec=".[$EXTRAS]"
echo "[setup] installing rtk ($spec)" >&2
"${PIP[@]}" -e "$spec" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import rtk" || { echo "[setup] rtk failed to install" >&2; exit 1; }

# MLflow (for the mlflow logger and its tests) in a pip call of its own: torchattacks 3.5.1
# pins requests~=2.25.1 (it never imports requests) and every mlflow-skinny >= 2.16 needs
# databricks-sdk, which needs requests>=2.28.1, so one resolve is impossible (measured: pip's
# ResolutionImpossible after 1m48s). Alone, pip upgrades requests and warns about that pin.
if [[ ",$EXTRAS," == *",dev,"* ]]; then
  "${PIP[@]}" "mlflow-skinny>=2.16" 2>&1 | grep -v -e "^WARNING: Location" -e "torchattacks 3.5.1 requires requests" \
    -e "dependency resolver does not currently" || true
fi

# Real data that exists offline: Debian's Fashion-MNIST (needs root). Without it the
# quickstart still works on scikit-learn's digits.
FM=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$FM" ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing Debian's dataset-fashion-mnist" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
      || echo "[setup] could not install dataset-fashion-mnist; Fashion-MNIST tests will report it" >&2
  else
    echo "[setup] not root: Fashion-MNIST not installed (run 'apt-get install dataset-fashion-mnist' as root)" >&2
  fi
fi
