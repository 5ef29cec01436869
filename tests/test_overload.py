"""Overload: a publisher faster than the worker, or than its clients, can take.

Both keep the property of DESIGN.md property 2: the publisher is slowed and
nobody who reads is dropped. (Its other side, that clients which stop reading
never slow anyone, is tests/hostile/test_slow_readers.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing as t

import pytest
import requests

from tests.conftest import LiveServerFactory
from tests.servers import ROOT, Server

CLIENTS = 500
SECONDS = float(os.environ.get("REALTIME_TEST_OVERLOAD_SECONDS", "60"))


def _overload(
    server: Server, clients: int, seconds: float, env: t.Mapping[str, str] = {}
) -> tuple[dict[str, t.Any], dict[str, t.Any]]:
    """Publish in a tight loop for ``seconds`` to ``clients`` load clients;
    the server's account and the clients'."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.loadclient", server.ws_url, str(clients), "load"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    try:
        assert process.stdout is not None and process.stdin is not None
        assert process.stdout.readline().strip() == "READY"
        response = requests.get(
            f"{server.url}/overload",
            params={"channel": "load", "seconds": seconds},
            timeout=seconds + 120,
        )
        account = response.json()
        print("overload: server", account)
        process.stdin.write(f"EXPECT {account['published']}\n")
        process.stdin.flush()
        result = json.loads(process.stdout.readline())
    finally:
        process.kill()
        process.wait()
    return account, result


@pytest.mark.slow
def test_overload_slows_the_publisher_and_drops_nobody(
    live_server: LiveServerFactory,
) -> None:
    server = live_server("geventwebsocket")
    account, result = _overload(server, CLIENTS, SECONDS)
    published = account["published"]
    assert published > 0
    assert result["closed"] == []
    assert result["errors"] == []
    # Every client that kept reading got every message, in order: the
    # publisher cannot have outrun delivery, so it was slowed down.
    assert result["received"] == [published] * CLIENTS
    # The server stayed responsive: each protocol ping got its pong.
    assert result["pongs"] == result["pings"]
