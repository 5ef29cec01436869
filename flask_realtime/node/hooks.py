"""The application's lifecycle hooks: ``on_connect`` and ``on_disconnect``.

Every transport opens a connection through ``Node.open`` and forgets it
through ``Node.disconnect``, so the hooks run there, once per connection,
whatever carries it: ``on_connect`` once the connection is registered and
its ``connected`` message queued (so it may subscribe it, or refuse it),
``on_disconnect`` once it is out of the hub (its presence leaves sent), in
the app context both. A refused connection never connected, as far as the
app is concerned: no ``on_disconnect`` follows.
"""

from __future__ import annotations

import logging
import typing as t

from .. import protocol
from ..connection import Connection
from ..errors import ConnectionRefused
from .messages import Rejected

if t.TYPE_CHECKING:
    from . import Node

logger = logging.getLogger("flask_realtime")

#: The close code ``on_connect`` refuses with unless it names one.
CLOSE_REFUSED = 4003
#: The code a connection that went away without a close is reported with.
CLOSE_LOST = protocol.CLOSE_ABNORMAL
#: The code an ``on_connect`` that raised refuses with (RFC 6455's).
CLOSE_INTERNAL_ERROR = 1011


class DisconnectReason(t.NamedTuple):
    """Why a connection closed, as ``on_disconnect`` gets it.

    ``code`` is the close code: the server's (4200 at a shutdown, 4000 from
    ``realtime.disconnect()``, 4100 too slow, 4101 not polled or no
    heartbeat), the client's own (a WebSocket close frame, echoed; 1000 for
    ``POST /realtime/close``), 1001 when an SSE response ended, or 1006
    when the peer vanished without one. ``reason`` says it in words.
    """

    code: int
    reason: str


Hook = t.Callable[..., t.Any]


class Hooks:
    """What the node calls; the functions come from the extension."""

    def __init__(
        self,
        node: Node,
        on_connect: t.Callable[[], t.Sequence[Hook]],
        on_disconnect: t.Callable[[], t.Sequence[Hook]],
    ) -> None:
        self._node = node
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect

    def connected(self, conn: Connection) -> None:
        """Run ``on_connect``; on a refusal, forget ``conn`` and raise
        :class:`ConnectionRefused` for the transport to answer with."""
        funcs = self._on_connect()
        if not funcs:
            return
        refusal: ConnectionRefused | None = None
        try:
            with self._node.messages.app_context():
                for func in funcs:
                    if func(conn) is False:
                        raise ConnectionRefused("refused", CLOSE_REFUSED)
        except ConnectionRefused as exc:
            refusal = exc
        except Rejected as exc:
            refusal = ConnectionRefused(str(exc) or "refused", CLOSE_REFUSED)
        except Exception:
            logger.exception("flask_realtime: on_connect raised; connection refused")
            refusal = ConnectionRefused("internal error")
            refusal.code = CLOSE_INTERNAL_ERROR
        if refusal is None:
            return
        conn.refused = True
        conn.closing = True  # nothing more is queued for it
        conn.close_code = refusal.code
        conn.close_reason = refusal.reason
        self._node.disconnect(conn)
        raise refusal

    def disconnected(self, conn: Connection) -> None:
        """Run ``on_disconnect`` for a connection the node just forgot."""
        if conn.refused:
            return
        funcs = self._on_disconnect()
        if not funcs:
            return
        reason = reason_of(conn)
        try:
            with self._node.messages.app_context():
                for func in funcs:
                    func(conn, reason)
        except Exception:
            logger.exception("flask_realtime: on_disconnect raised for %s", conn.id)


def reason_of(conn: Connection) -> DisconnectReason:
    """Why ``conn`` closed, from what its close recorded."""
    code = conn.close_code
    if code is None:
        return DisconnectReason(CLOSE_LOST, "connection lost")
    return DisconnectReason(code, conn.close_reason or _DEFAULT_REASONS.get(code, ""))


_DEFAULT_REASONS = {1000: "normal closure", 1001: "going away"}
