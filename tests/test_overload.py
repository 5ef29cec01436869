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
SECONDS = float(os.environ.get("REALTIME_TEST_OVERLOAD_SECONDS", "30"))
SLOW_CLIENTS = 100
# Each slow client reads at most 1 KiB per round, a round every 10 ms or more:
# some 60 KB/s, a fraction of what one worker publishes to it.
SLOW_READER = {"LOADCLIENT_READ_SIZE": "1024", "LOADCLIENT_PAUSE": "0.01"}


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


@pytest.mark.slow
def test_clients_that_all_read_slowly_slow_the_publisher_and_none_is_dropped(
    live_server: LiveServerFactory,
) -> None:
    """Every client reads, slower than the worker publishes: a large share
    of all connections cannot keep up, so the publisher waits for them."""
    # The default bound (10,000 messages, 1 MiB). Most of what a slow reader
    # is behind sits in the kernel's send buffer (up to 4 MiB), which the
    # queue never shows: judged by its queue alone, the first reader whose
    # queue filled was closed before enough others counted as lagging (2 of
    # 4 runs on a quiet host). The kernel's figure counts them all at once.
    server = live_server("geventwebsocket")
    account, result = _overload(
        server, SLOW_CLIENTS, min(SECONDS, 20.0), env=SLOW_READER
    )
    published = account["published"]
    assert account["backpressure_waits"] > 0
    assert result["closed"] == []
    assert result["errors"] == []
    assert result["received"] == [published] * SLOW_CLIENTS
