"""Where a channel's stream stands, so that a reconnect misses nothing.

On a channel with history (``REALTIME_HISTORY``) every event carries an
``offset`` and the subscribe reply a ``position`` with the stream's
``epoch``. The client keeps the last of them per channel, resubscribes with
``since`` after a reconnect (the server replays what was missed, or answers
``recovered: false``), and drops an event whose offset it has delivered
already. PROTOCOL.md, "History and recovery".
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

    def since(self) -> dict[str, t.Any] | None:
        """The ``since`` of the next subscribe (None: nothing to recover)."""
        p = self.position
        self.recovering = p is not None and isinstance(p.epoch, str)
        return p.as_dict() if self.recovering else None

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
