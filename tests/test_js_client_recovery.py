"""The JavaScript client's recovery bookkeeping, in Node against a scripted
fake WebSocket (``tests/node/client_recovery.test.mjs``): ``since`` on each
resubscribe, duplicates dropped by offset, events that precede the subscribe
reply held until it. The browser tests
(``tests/browser/test_client_recovery.py``) do the same against real servers.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "node" / "client_recovery.test.mjs"


def test_client_recovery_in_node() -> None:
    node = shutil.which("node")
    assert node, "node is needed for this test (.ci/run installs nodejs)"
    result = subprocess.run(
        [node, "--test", str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# fail 0" in result.stdout and "# pass 4" in result.stdout
