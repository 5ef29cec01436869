#!/usr/bin/env bash
# Run the test suite: ./scripts/test.sh [pytest args...]
#
# Creates .venv in the repository when it is missing (python3 -m venv), installs
# the package with its test extra, and runs pytest with the given arguments.
# The install is skipped when setup.cfg, pyproject.toml and the interpreter are
# unchanged since the last one (a stamp in .venv records their hash).
#
# Environment: PYTHON (interpreter for the venv, default python3),
# VENV (venv directory, default .venv in the repository).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

python="${PYTHON:-python3}"
venv="${VENV:-$root/.venv}"
stamp="$venv/.flask_realtime-test-stamp"

wanted_stamp() {
    {
        "$python" -c 'import sys; print(sys.version)'
        cat setup.cfg pyproject.toml 2>/dev/null
    } | sha256sum | cut -d' ' -f1
}

ensure_venv() {
    if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c '' 2>/dev/null; then
        echo "test.sh: creating $venv" >&2
        rm -rf "$venv"
        "$python" -m venv "$venv"
    fi
    local want
    want="$(wanted_stamp)"
    if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
        echo "test.sh: installing flask_realtime with its test extra into $venv" >&2
        rm -f "$stamp"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            -e '.[test]'
        if ! "$venv/bin/python" -c 'import pytest' 2>/dev/null; then
            echo "test.sh: pytest is missing after 'pip install -e .[test]':" \
                "does setup.cfg define the 'test' extra?" >&2
            exit 1
        fi
        echo "$want" >"$stamp"
    fi
}

ensure_venv
exec "$venv/bin/python" -m pytest "$@"
