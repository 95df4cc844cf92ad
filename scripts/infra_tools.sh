#!/usr/bin/env bash
# Create .venv-infra with requirements-infra.txt (checkov) when it is missing or out of date.
# Silent on success: scripts/test calls it before pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
stamp=.venv-infra/.requirements-infra.txt
if [ -x .venv-infra/bin/checkov ] && cmp -s requirements-infra.txt "$stamp"; then
  exit 0
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { [ -x .venv-infra/bin/python ] || "$PYTHON" -m venv .venv-infra; } >"$log" 2>&1 \
  || ! .venv-infra/bin/python -m pip install -q --disable-pip-version-check -r requirements-infra.txt >"$log" 2>&1; then
  cat "$log" >&2
  echo "infra_tools.sh: could not install requirements-infra.txt into .venv-infra (see above)" >&2
  exit 1
fi
cp requirements-infra.txt "$stamp"
