"""A channel seen from the server (``realtime.channel(name)``): who is in
it, how many listen, and what it keeps."""

from __future__ import annotations

import typing as t

from . import channels as _channels
from .node import recovery

if t.TYPE_CHECKING:
    from .node import Node


class Channel:
    """A channel seen from the server: who is in it, how many listen."""

    def __init__(self, node: Node, name: str) -> None:
        if not _channels.is_valid_name(name):
            raise ValueError(f"invalid channel name: {name!r}")
        self._node = node
        self.name = name

    @property
    def kind(self) -> str:
        """``public``, ``private`` or ``presence``."""
        return self._node.rules.kind(self.name)

    def get_presence_data(self) -> list[dict[str, t.Any]]:
        """Presence members: ``user_id``, ``user_info``, ``connected_at`` each."""
        return self._node.presence_members(self.name)

    @property
    def subscriber_count(self) -> int:
        """Connections subscribed to the channel in this process.

        Each node counts its own: with several workers, ask each (or use the
        presence list, which is cluster-wide).
        """
        return self._node.subscriber_count(self.name)

    def broadcast(
        self, event: str, data: t.Any = None, *, exclude: str | None = None
    ) -> None:
        """Send ``event`` to the channel's subscribers on every node, but
        ``exclude`` (a connection id: the sender's), if given."""
        self._node.broadcast(self.name, event, data, exclude or None)

    def subscribe(
        self, *, connection_id: str | None = None, user_id: t.Any = None
    ) -> None:
        """``realtime.subscribe(self.name, ...)``: see :meth:`Realtime.subscribe`."""
        self._node.commands.publish(
            "subscribe", connection_id=connection_id, user_id=user_id, channel=self.name
        )

    def unsubscribe(
        self, *, connection_id: str | None = None, user_id: t.Any = None
    ) -> None:
        """``realtime.unsubscribe(self.name, ...)``: see
        :meth:`Realtime.unsubscribe`."""
        self._node.commands.publish(
            "unsubscribe",
            connection_id=connection_id,
            user_id=user_id,
            channel=self.name,
        )

    # -- history (REALTIME_HISTORY) ---------------------------------------------

    def _kept(self) -> None:
        if self._node.rules.retention(self.name) is None:
            raise ValueError(
                f"channel {self.name!r} keeps no history: no REALTIME_HISTORY"
                " pattern matches it"
            )

    def history(self, limit: int | None = None) -> list[dict[str, t.Any]]:
        """The events the channel still keeps, oldest first: ``offset``,
        ``event``, ``data`` each (and ``user_id`` for a relayed client
        event); the newest ``limit`` of them when given.

        For a page that renders the recent past before it subscribes: the
        offsets say where the live events take over. Raises ValueError on
        a channel without history (a pattern that does not match is a
        mistake better seen at once) and BrokerUnavailable while the
        broker is unreachable.
        """
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 0
        ):
            raise ValueError(f"limit must be None or an integer >= 0, got {limit!r}")
        self._kept()
        return recovery.history(self._node.broker, self.name, limit)

    @property
    def position(self) -> dict[str, t.Any]:
        """``{"offset": N, "epoch": E}``: the channel's latest offset (0 when
        nothing was published yet) and its stream's epoch; what a client
        passes as ``since``. ValueError on a channel without history."""
        self._kept()
        return recovery.position(self._node.broker, self.name)

    def __repr__(self) -> str:
        return f"<Channel {self.name!r} ({self.kind})>"
