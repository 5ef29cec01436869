"""Testing helpers: an in-process client, and the memory transport's recorder.

The recorder lives in :mod:`flask_realtime.recorder`; its names are exported
here too, where tests have always imported them from.
"""

from __future__ import annotations

import json
import typing as t

from .connection import Connection, Sink
from .recorder import ANY as ANY
from .recorder import Record as Record
from .recorder import Recorder as Recorder

if t.TYPE_CHECKING:
    from .node import Node


class _MemorySink(Sink):
    """Delivers into the test client's ``received`` list, at once."""

    def __init__(self, client: TestClient) -> None:
        self._client = client

    def write(self, nbytes: int) -> None:
        self._client.received.append(json.loads(self.conn.take()))

    def tick(self, now: float, heartbeat: float) -> None:
        """Nothing: an in-process client needs no heartbeat."""

    def close(self, code: int, reason: str = "") -> None:
        client = self._client
        if client.close_code is None:
            client.close_code = code
            client.node.disconnect(client.connection)


class TestClient:
    """A client in the test's own process, speaking protocol v1.

    Requests go through the node's real code paths (rate limit, parsing,
    authorizers, handlers, presence); replies are returned by the call that
    made the request, everything else collects in :attr:`received`.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self, node: Node, user_id: t.Any = None, user_info: t.Any = None
    ) -> None:
        self.node = node
        self.received: list[dict[str, t.Any]] = []
        self.close_code: int | None = None
        self._next_id = 0
        self.connection: Connection = node.open(
            "memory", _MemorySink(self), user_id, user_info
        )
        self.connected = self.received.pop(0)

    @property
    def connection_id(self) -> str:
        """The connection's id, as :meth:`Realtime.send` takes it."""
        return self.connection.id

    def __enter__(self) -> TestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    def request(self, message: dict[str, t.Any] | str) -> dict[str, t.Any] | None:
        """Send one raw client message; returns the reply envelope, if any."""
        if self.close_code is not None:
            raise RuntimeError(f"the connection was closed with {self.close_code}")
        raw = message if isinstance(message, str) else json.dumps(message)
        refusal = self.node.admit(self.connection, raw)
        reply = (
            refusal if refusal is not None else self.node.receive(self.connection, raw)
        )
        return None if reply is None else json.loads(reply)

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id

    def subscribe(
        self, channel: str, since: dict[str, t.Any] | None = None
    ) -> dict[str, t.Any]:
        """Subscribe; ``since``: ``{"offset", "epoch"}`` of the last event
        seen (a previous reply's ``data["position"]``), to recover what came
        after it: the reply says ``data["recovered"]``, the missed events
        arrive in :attr:`received` (a memory client gets its replies
        returned, like SSE and long-poll clients in the POST's answer)."""
        message: dict[str, t.Any] = {"type": "subscribe", "channel": channel}
        if since is not None:
            message["since"] = since
        message["id"] = self._id()
        reply = self.request(message)
        assert reply is not None
        return reply

    def unsubscribe(self, channel: str) -> dict[str, t.Any]:
        """Unsubscribe; returns the reply envelope."""
        reply = self.request(
            {"type": "unsubscribe", "channel": channel, "id": self._id()}
        )
        assert reply is not None
        return reply

    def emit(
        self, channel: str, event: str, data: t.Any = None
    ) -> dict[str, t.Any] | None:
        """A client event, with an ``id``; returns None when it was accepted
        with nothing to say (its ``ack`` has no ``data``: the handler returned
        None, or the event was relayed), else the reply: the ``ack`` whose
        ``data`` is the handler's value, or the ``error``."""
        reply = self.request(
            {
                "type": "event",
                "channel": channel,
                "event": event,
                "data": data,
                "id": self._id(),
            }
        )
        if reply is not None and reply.get("type") == "ack" and "data" not in reply:
            return None
        return reply

    def ping(self) -> dict[str, t.Any]:
        """Ping the node; returns the ``pong`` envelope."""
        reply = self.request({"type": "ping", "id": self._id()})
        assert reply is not None
        return reply

    def get_received(
        self, channel: str | None = None, event: str | None = None
    ) -> list[dict[str, t.Any]]:
        """Take the received messages (matching the filters) out of the buffer."""
        taken, kept = [], []
        for message in self.received:
            if channel in (None, message.get("channel")) and event in (
                None,
                message.get("event"),
            ):
                taken.append(message)
            else:
                kept.append(message)
        self.received[:] = kept
        return taken

    def events(self, channel: str | None = None) -> list[tuple[str, t.Any]]:
        """``(event, data)`` of received events, left in the buffer."""
        return [
            (m["event"], m.get("data"))
            for m in self.received
            if m.get("type") == "event" and channel in (None, m.get("channel"))
        ]

    def disconnect(self) -> None:
        """Close as a client would (1000): presence leaves follow."""
        if self.close_code is None:
            self.close_code = 1000
            # What on_disconnect reports: the client's own close.
            self.connection.close_code = 1000
            self.connection.close_reason = "closed by the client"
            self.node.disconnect(self.connection)
