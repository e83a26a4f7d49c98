#!/usr/bin/env bash
# Install rtk with its test and zoo extras, check the habits (scripts/lint.sh: ruff, mypy,
# import contracts), then run the whole test suite. A lint failure stops here with a non-zero
# exit; pytest's exit code 5 (no tests collected) counts as a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev,zoo || exit 1
scripts/lint.sh || { echo "lint failed: fix the reports above (scripts/lint.sh) before the tests run" >&2; exit 1; }
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" = "5" ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
