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

    def _drop_after_fork(self) -> None:
        raise NotImplementedError
