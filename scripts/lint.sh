#!/usr/bin/env bash
# The habits CI enforces, run before the tests by scripts/test.sh (any failure: non-zero exit):
#   ruff check, ruff format --check, mypy over toolkit/ plugins/ cli/, import-linter contracts.
# Configuration lives in pyproject.toml ([tool.ruff], [tool.mypy], [tool.importlinter]).
#
# rtk maps three folders onto one import name (toolkit/ -> rtk, plugins/ -> rtk.plugins,
# cli/ -> rtk.cli), which the editable install resolves with an import hook that neither mypy
# nor import-linter follow. So both read a tree of symlinks, build/lint/rtk, laid out as the
# installed package is; mypy's paths are mapped back to the source folders in its output.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV="${RTK_VENV:-.venv}"
BIN="$VENV/bin"

tree=build/lint/rtk
rm -rf build/lint
mkdir -p "$tree"
for entry in toolkit/*; do
  case "$(basename "$entry")" in __pycache__) continue ;; esac
  ln -s "../../../$entry" "$tree/$(basename "$entry")"
done
ln -s ../../../plugins "$tree/plugins"
ln -s ../../../cli "$tree/cli"

status=0
step() {
  local name="$1"
  shift
  echo "[lint] $name" >&2
  if ! "$@"; then
    echo "[lint] FAILED: $name" >&2
    status=1
  fi
}

mypy_mapped() {
  # mypy reports build/lint/rtk/... paths; print them as the source folders
  "$BIN/mypy" "$@" 2>&1 | sed -e 's#^build/lint/rtk/plugins/#plugins/#' -e 's#^build/lint/rtk/cli/#cli/#' \
    -e 's#^build/lint/rtk/#toolkit/#'
  return "${PIPESTATUS[0]}"
}

step "ruff check" "$BIN/ruff" check .
step "ruff format --check" "$BIN/ruff" format --check .
step "mypy (toolkit/, plugins/, cli/)" mypy_mapped
step "import contracts (lint-imports)" env PYTHONPATH="$PWD/build/lint" "$BIN/lint-imports"
exit "$status"
