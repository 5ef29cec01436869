"""The package's import graph: the client stands alone, the public names resolve."""

from __future__ import annotations

import subprocess
import sys

import pytest

import flask_realtime


def _modules_loaded_by(statement: str) -> set[str]:
    # A fresh interpreter: this one has imported the whole server already.
    program = f"{statement}\nimport sys\nprint('\\n'.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", program],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return set(out.split())


def test_the_python_client_loads_neither_flask_nor_the_server():
    loaded = _modules_loaded_by("import flask_realtime.client")
    assert "flask" not in loaded
    assert "werkzeug" not in loaded
    server = {"flask_realtime.node", "flask_realtime.extension", "flask_realtime.hub"}
    assert not loaded & server


def test_every_public_name_resolves():
    for name in flask_realtime.__all__:
        assert getattr(flask_realtime, name) is not None, name
    assert set(flask_realtime.__all__) <= set(dir(flask_realtime))
    from flask_realtime.extension import Realtime

    assert flask_realtime.Realtime is Realtime


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="NoSuchThing"):
        flask_realtime.NoSuchThing  # noqa: B018
