"""A Python client's subscription that records what it receives, for tests."""

from __future__ import annotations

import threading
import time
import typing as t

from flask_realtime.client import RealtimeClient


class Recorder:
    """One channel's ``m`` events (offset, data) and ``subscribed`` payloads."""

    def __init__(self, client: RealtimeClient, channel: str) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[int, t.Any]] = []
        self.replies: list[t.Any] = []
        # The first reply through subscribe(wait=True): with wait=False from
        # this thread, the reader thread could take it before the handler
        # below is in place. The test publishes only once this returns.
        self.channel = client.subscribe(channel, timeout=10)
        self.channel.on("m", self._on_event, envelope=True)
        self.channel.on("subscribed", self._on_subscribed)
        self.replies.append(self.channel.subscribed_data)

    def _on_event(self, data: t.Any, message: dict[str, t.Any]) -> None:
        with self.lock:
            self.events.append((message["offset"], data))

    def _on_subscribed(self, data: t.Any) -> None:
        with self.lock:
            self.replies.append(data)

    def wait(self, check: t.Callable[[], bool], timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if check():
                    return
            assert time.monotonic() < deadline, (self.events, self.replies)
            time.sleep(0.02)

    def received(self, count: int) -> list[tuple[int, t.Any]]:
        self.wait(lambda: len(self.events) >= count)
        with self.lock:
            return list(self.events)
