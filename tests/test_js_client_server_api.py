"""The JavaScript client and the server-side API, in Node against a scripted
fake WebSocket (``tests/node/server_api.test.mjs``): a ``subscribed``
without an ``id`` (``realtime.subscribe()``) makes a channel, an
``unsubscribed`` without one drops it, and ``socketIdHeaders()`` names the
connection for ``exclude=``. Against real servers, the same messages are
checked in tests/test_server_api.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "node" / "server_api.test.mjs"


def test_client_server_api_in_node() -> None:
    node = shutil.which("node")
    assert node, "node is needed for this test (.ci/run installs nodejs)"
    result = subprocess.run(
        [node, "--test", "--test-timeout=10000", str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# fail 0" in result.stdout and "# pass 3" in result.stdout
