#!/usr/bin/env bash
# Run the chat demo: ./scripts/demo.sh, then open http://127.0.0.1:6001/ in two
# browser windows (one of them private) and sign in with two names.
#
# Uses the same .venv as scripts/test.sh (created and installed when missing or
# when setup.cfg changed), then serves examples/chat/app.py with the library's
# own server, `flask realtime serve`, on the embedded defaults: one process, the
# null broker, no outside services. docs/chat-example.md describes the demo;
# the smaller clock example runs with
# `flask --app examples/clock/app.py realtime serve --port 6001`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

python="${PYTHON:-python3}"
venv="${VENV:-$root/.venv}"
stamp="$venv/.flask_realtime-test-stamp"
port=6001

wanted_stamp() {
    {
        "$python" -c 'import sys; print(sys.version)'
        cat setup.cfg pyproject.toml 2>/dev/null
    } | sha256sum | cut -d' ' -f1
}

if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c '' 2>/dev/null; then
    echo "demo.sh: creating $venv" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
fi
want="$(wanted_stamp)"
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    echo "demo.sh: installing flask_realtime into $venv" >&2
    rm -f "$stamp"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test]'
    echo "$want" >"$stamp"
fi

echo "open http://127.0.0.1:$port/ (two windows, two names)"
exec "$venv/bin/flask" --app examples/chat/app.py realtime serve --port "$port"
