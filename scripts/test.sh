#!/usr/bin/env bash
# Install rtk with its test and zoo extras, then run the whole test suite.
# pytest's exit code 5 (no tests collected) counts as a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev,zoo || exit 1
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" = "5" ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
