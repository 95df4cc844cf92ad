# Sourced by the scripts: create .venv with the pinned dependencies (once; later runs only check them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $($PYTHON --version) and the pinned dependencies (about a minute, once)" >&2
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip > .venv/install.log 2>&1
fi
# pip's own log goes to .venv/install.log and is shown only when the install fails.
if ! .venv/bin/python -m pip install -q --disable-pip-version-check \
    -r "${LEAF_REQUIREMENTS:-requirements.txt}" -e . > .venv/install.log 2>&1; then
  cat .venv/install.log >&2
  echo "installing the pinned dependencies failed (log above, also in .venv/install.log)" >&2
  exit 1
fi
.venv/bin/python -c "import leaf_engine" # fails loudly if the install did not work
