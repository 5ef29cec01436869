"""What every broker offers the node, and what a backend fills in.

Topics are short strings (``c:<channel>``, ``u:<user>``, ``n:<node id>``, ...);
payloads are opaque bytes, delivered verbatim. The node calls a broker from
any greenlet (or thread, without gevent); the broker calls ``on_message``
from its own reader greenlet or thread, one message at a time, in the order
the broker delivers them.
"""

from __future__ import annotations

import typing as t

MessageCallback = t.Callable[[str, bytes], None]  # on_message(topic, data)


class Retention(t.NamedTuple):
    """How much of a topic's stream the broker keeps (``REALTIME_HISTORY``)."""

    size: int  # events
    ttl: float  # seconds


class Position(t.NamedTuple):
    """Where a topic's stream stands: its latest offset (0: no event yet) and
    its epoch, which changes whenever the stream's history may have been lost."""

    offset: int
    epoch: str


# retention(topic): how much of ``topic`` to keep; None: nothing (plain publish).
RetentionLookup = t.Callable[[str], "Retention | None"]


def no_retention(topic: str) -> Retention | None:
    return None


class Waitable(t.Protocol):
    def wait(self, timeout: float | None = None) -> bool: ...


class Broker(t.Protocol):
    kind: str  # "null" | "redis" | "rabbitmq" | "nats"
    url: str  # redacted (no password), for logs and errors

    def publish(self, topic: str, data: bytes) -> int | None:
        """Hand ``data`` to every node subscribed to ``topic``.

        Returns once the broker has accepted it, so that anything published
        after the return, from any process, reaches each subscriber after it;
        the number of receivers when the backend can tell (0: provably nobody
        subscribes), else None. During an outage the message is buffered
        (None) and sent on reconnect; :class:`BrokerUnavailable` once the
        buffer is full.
        """

    def subscribe(self, *topics: str) -> None:
        """Receive ``topics`` from now on; returns once the subscription is in
        place (or, while the broker is unreachable, once recorded: reconnecting
        restores every subscription)."""

    def unsubscribe(self, *topics: str) -> None:
        """Nothing of ``topics`` is delivered after this returns."""

    def close(self) -> None:
        """Disconnect and stop the reader; the broker is not used again."""

    @property
    def connected(self) -> bool:
        """The link is up and every subscription in place."""

    #: How many times the link came up: when it changes, messages published
    #: while it was down may not have been delivered (kept ones can be read
    #: back from the history).
    links: int

    # -- history (PROTOCOL.md, "History and recovery") ------------------------
    #
    # The node sets ``retention`` once, before the broker's first use. A
    # topic it keeps is published with ``publish`` as usual; ``data`` is then
    # ``<header>\n<JSON object>``, and the broker, in one atomic step, gives
    # the message the topic's next offset (contiguous: 1, 2, 3, ... across
    # every publisher of the cluster), stores the stamped object and delivers
    # ``<header>\n{"offset":N,<the object's members>}`` (``_history.stamp``)
    # to the topic's subscribers, every subscriber in offset order. Nothing
    # is delivered that was not stored: a subscriber that reads the history
    # after its ``subscribe`` returned misses nothing between the two.

    retention: RetentionLookup

    def history(
        self, topic: str, *, after: int | None = None, limit: int | None = None
    ) -> tuple[Position, list[bytes] | None]:
        """The stream's position and stored events (stamped JSON objects,
        oldest first).

        ``after=None``: the newest ``limit`` events still kept (all of them
        when ``limit`` is None; none, only the position, when it is 0).
        ``after=N``: every event after offset N, or None when one of them is
        no longer kept (trimmed, expired) or N is beyond the position; the
        caller compares epochs. The epoch returned is the one the next event
        will carry: a stream with no epoch yet gets one here. Raises
        :class:`BrokerUnavailable` while the broker is unreachable.
        """


class Backend:
    """The backend's part of a networked broker (called by the base, never by
    the node); ``BrokerBase`` in ``base.py`` does the rest.

    * ``_connect(topics)``: open the connection(s) and subscribe ``topics``;
      return once they are in place. Runs in the reader only.
    * ``_read()``: read until the connection fails (raise) or ``_tick()``
      says stop (return), calling ``_deliver(topic, data)`` per message and
      ``_tick()`` about once a second, busy or idle. Runs in the reader only.
    * ``_send_batch(messages)``: publish ``[(topic, data), ...]`` in order and
      return once the broker accepted all: a receiver count (or None, or an
      exception for a message the broker refused) per message, or None for
      all. Called by one publisher at a time, any greenlet, the reader
      included; opens a publishing connection itself when it needs one.
      Raise on failure (:class:`LinkLost` tells how many were accepted).
    * ``_subscribe(topics)`` / ``_unsubscribe(topics)``: ask for (or drop)
      ``topics`` on the live connection, under ``_sub_lock``. ``_subscribe``
      may return a :class:`Waitable` set once they are in place (the base
      waits outside the lock, never in the reader). Raise when the
      connection is broken: the reader restores everything on reconnect.
    * ``_disconnect()``: close every connection (any greenlet; a ``_read``
      or ``_send_batch`` in progress then fails); also releases waitables.
    * ``_read_history(topic, after, limit)``: ``Broker.history`` on the
      live link (any greenlet). A backend whose ``_send_batch`` meets a
      topic ``self.retention(topic)`` keeps stamps, stores and delivers it
      as ``Broker`` says, in order with the rest of the batch.
    * ``_drop_after_fork()``: in a forked child, forget the parent's
      connections without any I/O on them (close this process's copies).
    """

    def _connect(self, topics: list[str]) -> None:
        raise NotImplementedError

    def _read(self) -> None:
        raise NotImplementedError

    def _send_batch(
        self, messages: list[tuple[str, bytes]]
    ) -> t.Sequence[int | None | Exception] | None:
        raise NotImplementedError

    def _subscribe(self, topics: list[str]) -> Waitable | None:
        raise NotImplementedError

    def _unsubscribe(self, topics: list[str]) -> None:
        raise NotImplementedError

    def _disconnect(self) -> None:
        raise NotImplementedError

    def _read_history(
        self, topic: str, after: int | None, limit: int | None
    ) -> tuple[Position, list[bytes] | None]:
        raise NotImplementedError

    def _drop_after_fork(self) -> None:
        raise NotImplementedError
