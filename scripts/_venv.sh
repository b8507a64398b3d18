# Sourced by the set-up scripts: a virtual environment in .venv with executioner installed.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
echo "installing executioner into .venv (log: .venv/pip.log)" >&2
if ! { .venv/bin/python -m pip install --disable-pip-version-check --upgrade pip &&
       .venv/bin/python -m pip install --disable-pip-version-check -e ".[test,report]"; } > .venv/pip.log 2>&1; then
  cat .venv/pip.log >&2
  echo "pip install failed" >&2
  exit 1
fi
export PATH="$root/.venv/bin:$PATH"
