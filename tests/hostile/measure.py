"""What an attack costs: the server's memory and the delay it adds to others.

Every hostile test runs its attack against a live server and asserts, while
the attack is under way, that the server's resident memory grew by no more
than the attack's bound and that a broadcast to an unrelated, well-behaved
subscriber still arrives promptly.
"""

from __future__ import annotations

import time
import typing as t
import uuid
from pathlib import Path

import requests

from tests.servers import Server
from tests.wsclient import Client, connect


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found.extend(int(child) for child in task.read_text().split())
        except OSError:  # the task ended meanwhile
            continue
    return found


def _rss(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def server_rss(server: Server) -> int:
    """Resident bytes of the server process and every process under it
    (gunicorn's arbiter and its workers)."""
    pids, total = [server.process.pid], 0
    while pids:
        pid = pids.pop()
        total += _rss(pid)
        pids.extend(_children(pid))
    return total


class Bystander:
    """A well-behaved client on a channel of its own, and the broadcasts to it.

    ``delay()`` broadcasts through the app's ``/broadcast`` view and returns
    the seconds from the request to the event's arrival at this client.
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self.channel = f"bystander.{uuid.uuid4().hex[:8]}"
        self.client: Client = connect(server.ws_url)
        self.client.subscribe(self.channel)
        self.http = requests.Session()
        self._count = 0

    def delay(self, timeout: float = 30.0) -> float:
        self._count += 1
        marker = self._count
        started = time.monotonic()
        response = self.http.get(
            f"{self.server.url}/broadcast",
            params={"channel": self.channel, "event": "tick", "data": str(marker)},
            timeout=timeout,
        )
        response.raise_for_status()
        self.client.wait_for(
            lambda msg: (
                isinstance(msg, dict)
                and msg.get("event") == "tick"
                and msg.get("data") == marker
            ),
            timeout,
        )
        return time.monotonic() - started

    def worst_delay(self, count: int = 5) -> float:
        """The slowest of ``count`` broadcasts, one after another."""
        return max(self.delay() for _ in range(count))

    def close(self) -> None:
        self.client.close()
        self.http.close()

    def __enter__(self) -> Bystander:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def wait_until(
    predicate: t.Callable[[], bool], timeout: float, what: str, interval: float = 0.1
) -> None:
    """Poll ``predicate`` until it holds, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
