"""What every broker offers the node, and what it promises.

Topics are short strings (``c:<channel>``, ``u:<user>``, ``n:<node id>``,
``p:<presence channel>``); payloads are opaque bytes. The node calls these
from any greenlet (or thread, without gevent); the broker calls ``on_message``
from its own reader greenlet or thread, one message at a time, in the order
the broker delivers them.
"""

from __future__ import annotations

import typing as t

# on_message(topic, data, reply_to): reply_to is set when the sender used
# request() and waits for an answer through reply().
MessageCallback = t.Callable[[str, bytes, str | None], None]


class BrokerUnavailable(RuntimeError):
    """The broker is unreachable and the outage buffer is full.

    Raised by ``publish`` (and so by ``broadcast``) instead of waiting or
    dropping messages silently; ``REALTIME_BROKER_BUFFER`` sets the buffer.
    """


class Broker(t.Protocol):
    kind: str

    def publish(self, topic: str, data: bytes) -> None:
        """Hand ``data`` to every node subscribed to ``topic``.

        Returns once the broker has the message, so that anything published
        after the return, from any process, reaches each subscriber after
        it. While the broker is unreachable the message is buffered (bounded)
        and sent on reconnect; :class:`BrokerUnavailable` once the buffer is full.
        """

    def request(self, topic: str, data: bytes, timeout: float) -> bytes | None:
        """Send ``data`` to the subscribers of ``topic`` and wait for one reply.

        Returns the first reply; ``None`` at once when no node subscribes to
        ``topic`` (the broker says so: nobody can answer); raises
        ``TimeoutError`` when nobody replied within ``timeout`` seconds, and
        :class:`BrokerUnavailable` while the broker is unreachable.
        """

    def reply(self, reply_to: str, data: bytes) -> None:
        """Answer a request received with ``reply_to`` (any greenlet, any time)."""

    def subscribe(self, *topics: str) -> None:
        """Receive ``topics`` from now on; returns once the broker has the
        subscription in place (or, while it is unreachable, once recorded:
        reconnecting restores every subscription)."""

    def unsubscribe(self, *topics: str) -> None: ...

    def close(self) -> None:
        """Disconnect and stop the reader; the broker is not used again."""
