"""Overload: a publisher faster than the worker can deliver, for a minute."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import requests

from tests.conftest import LiveServerFactory
from tests.servers import ROOT

CLIENTS = 500
SECONDS = float(os.environ.get("REALTIME_TEST_OVERLOAD_SECONDS", "60"))


@pytest.mark.slow
def test_overload_slows_the_publisher_and_drops_nobody(
    live_server: LiveServerFactory,
) -> None:
    server = live_server("geventwebsocket")
    clients = subprocess.Popen(
        [sys.executable, "-m", "tests.loadclient", server.ws_url, str(CLIENTS), "load"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert clients.stdout is not None and clients.stdin is not None
        assert clients.stdout.readline().strip() == "READY"
        response = requests.get(
            f"{server.url}/overload",
            params={"channel": "load", "seconds": SECONDS},
            timeout=SECONDS + 120,
        )
        published = response.json()["published"]
        print("overload: server", response.json())
        clients.stdin.write(f"EXPECT {published}\n")
        clients.stdin.flush()
        result = json.loads(clients.stdout.readline())
    finally:
        clients.kill()
        clients.wait()

    assert published > 0
    assert result["closed"] == []
    assert result["errors"] == []
    # Every client that kept reading got every message, in order: the
    # publisher cannot have outrun delivery, so it was slowed down.
    assert result["received"] == [published] * CLIENTS
    # The server stayed responsive: each protocol ping got its pong.
    assert result["pongs"] == result["pings"]
