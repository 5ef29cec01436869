"""Where a channel's stream stands, so that a reconnect misses nothing.

On a channel with history (``REALTIME_HISTORY``) every event carries an
``offset`` and the subscribe reply a ``position`` with the stream's
``epoch``. The client keeps the last of them per channel, resubscribes with
``since`` after a reconnect (the server replays what was missed, or answers
``recovered: false``), and drops an event whose offset it has delivered
already. PROTOCOL.md, "History and recovery".

Over SSE and long-poll the subscribe reply comes in the answer to the
``POST /send`` while the stream goes on, so events with offsets can arrive
before it: they are held until the reply says which position they follow
(a new epoch's offset 1 is no duplicate of the old epoch's).
"""

from __future__ import annotations

import typing as t


class StreamPosition:
    """One channel's ``{offset, epoch}``: what it has delivered so far."""

    __slots__ = ("offset", "epoch")

    def __init__(self, offset: int, epoch: str | None) -> None:
        self.offset = offset
        self.epoch = epoch

    def __repr__(self) -> str:
        return f"<StreamPosition {self.offset} {self.epoch!r}>"

    def as_dict(self) -> dict[str, t.Any]:
        return {"offset": self.offset, "epoch": self.epoch}


class Recovery:
    """The bookkeeping of one channel; the reader thread is its one user."""

    def __init__(self) -> None:
        self.position: StreamPosition | None = None
        #: Whether the subscribe in flight carried ``since``.
        self.recovering = False
        self.replies = 0
        #: Whether a subscribe is in flight: events with offsets wait.
        self.waiting = False
        self.held: list[dict[str, t.Any]] = []

    def since(self) -> dict[str, t.Any] | None:
        """The ``since`` of the next subscribe (None: nothing to recover);
        from now until its reply, events with offsets are held."""
        p = self.position
        self.recovering = p is not None and isinstance(p.epoch, str)
        self.waiting = True
        self.held = []
        return p.as_dict() if self.recovering else None

    def hold(self, message: dict[str, t.Any]) -> bool:
        """Keep ``message`` for after the reply, if one is awaited."""
        if self.waiting and _is_offset(message.get("offset")):
            self.held.append(message)
            return True
        return False

    def take_held(self) -> list[dict[str, t.Any]]:
        """The events held until the reply, to deliver (or drop) now."""
        held, self.held = self.held, []
        return held

    def reset(self) -> None:
        """The connection ended: no reply is coming, held events are void."""
        self.waiting = False
        self.held = []

    def on_reply(self, data: t.Any) -> bool:
        """Take a subscribe reply's position; whether it recovered."""
        reply = data if isinstance(data, dict) else {}
        recovered = self.recovering and reply.get("recovered") is True
        server = reply.get("position")
        if isinstance(server, dict) and _is_offset(server.get("offset")):
            mine = self.position
            # Recovered: the missed events follow, so keep our own offset
            # (the server's is the newest, past them).
            offset = mine.offset if recovered and mine else server["offset"]
            self.position = StreamPosition(offset, server.get("epoch"))
        elif self.recovering:
            self.position = None  # the channel keeps no history (any more)
        self.recovering = False
        self.waiting = False
        self.replies += 1
        return recovered

    def accept(self, message: t.Mapping[str, t.Any]) -> bool:
        """Whether to deliver ``message``: False for a duplicate by offset."""
        offset = message.get("offset")
        if not _is_offset(offset):
            return True
        p = self.position
        if p is not None and offset <= p.offset:
            return False
        self.position = StreamPosition(offset, p.epoch if p else None)
        return True


def _is_offset(value: t.Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
