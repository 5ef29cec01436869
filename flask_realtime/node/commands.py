"""Server-side control of connections anywhere: subscribe, unsubscribe, close.

``realtime.subscribe(channel, user_id=5)`` from a view, a task or a script
travels as the node's other addressed messages do: on the user's topic
(every node with a connection of that user has it subscribed) or on the
node topic of the connection's owner (``send(connection_id)``'s route). A
command is a plain message whose header is ``!`` and whose body is JSON,
``{"op": "subscribe" | "unsubscribe" | "disconnect", ...}``; the receiving
node runs it on its local connections as if each client had asked itself:
the client gets ``subscribed`` / ``unsubscribed`` without an ``id``, and
presence joins and leaves follow.

A process that serves no connection (a Celery worker) only publishes, like
any broadcast. With the null broker (one process) a command runs in the
call, done when it returns. Commands arriving on one node run one at a time, in the
order they came: a subscribe waits for the broker, and an unsubscribe
right after it must not overtake it.
"""

from __future__ import annotations

import json
import logging
import threading
import typing as t

from .. import channels as _channels
from .. import protocol
from .._runtime import spawn
from ..connection import Connection, user_key
from . import control, topics

if t.TYPE_CHECKING:
    from . import Node

logger = logging.getLogger("flask_realtime")

#: The header that marks a command on a user or node topic. Connection ids
#: (the header of a ``send``) never start with it.
HEADER = b"!"
#: ``realtime.disconnect()``'s close code unless told: 4000, do not reconnect.
CLOSE_DISCONNECTED = 4000
DISCONNECT_REASON = "disconnected by the server"


def check_close_code(code: t.Any) -> int:
    """A close code the app may send: 1000, or 3000-4999."""
    if isinstance(code, bool) or not isinstance(code, int):
        raise TypeError(f"code must be an int, got {code!r}")
    if code != 1000 and not 3000 <= code <= 4999:
        raise ValueError(f"code must be 1000 or between 3000 and 4999, got {code}")
    return code


class Commands:
    """Publishing commands, and running those that reach this node."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._lock: t.Any = None  # made at run time: gevent's, once patched
        self._lock_guard = threading.Lock()

    # -- sending ----------------------------------------------------------------

    def publish(
        self,
        op: str,
        *,
        connection_id: str | None,
        user_id: t.Any,
        channel: str | None = None,
        code: int | None = None,
    ) -> None:
        """Send ``op`` to one connection, or to every connection of a user."""
        if (connection_id is None) == (user_id is None):
            raise TypeError("give exactly one of connection_id and user_id")
        if channel is not None and (
            not isinstance(channel, str) or not _channels.is_valid_name(channel)
        ):
            raise ValueError(f"invalid channel name: {channel!r}")
        command: dict[str, t.Any] = {"op": op}
        if channel is not None:
            command["channel"] = channel
        if code is not None:
            command["code"] = check_close_code(code)
        if connection_id is not None:
            connection_id = str(connection_id)
            command["connection_id"] = connection_id
            topic = topics.node(connection_id.partition(".")[0])
        else:
            topic = topics.user(t.cast(str, user_key(user_id)))
        body = protocol.encode(command)
        if not self._node.clustered:
            # One process (the null broker): the connection is here or
            # nowhere, and it is done when the call returns.
            self._run(*topics.split(topic), body)
            return
        self._node.broker.publish(topic, control.message(HEADER, body))

    # -- receiving ----------------------------------------------------------------

    def received(self, kind: str, name: str, body: bytes) -> None:
        """A command from the broker's reader, where nothing may wait: run
        in a greenlet (or thread) of its own."""
        spawn(self._run, kind, name, body)

    def _run(self, kind: str, name: str, body: bytes) -> None:
        try:
            command = json.loads(body)
            op = command["op"]
        except (ValueError, KeyError, TypeError):
            logger.warning("flask_realtime: malformed command dropped")
            return
        hub = self._node.hub
        if kind == topics.USER:
            conns: t.Sequence[Connection] = hub.user_connections(name)
        else:
            conn = hub.connections.get(str(command.get("connection_id")))
            conns = () if conn is None else (conn,)
        if not conns:
            return
        with self._ordered():
            for conn in conns:
                try:
                    self._apply(op, conn, command)
                except Exception:
                    logger.exception("flask_realtime: command %r failed", op)

    def _apply(self, op: str, conn: Connection, command: dict[str, t.Any]) -> None:
        messages = self._node.messages
        if op == "subscribe":
            messages.server_subscribe(conn, command["channel"])
        elif op == "unsubscribe":
            messages.server_unsubscribe(conn, command["channel"])
        elif op == "disconnect":
            conn.close(int(command.get("code", CLOSE_DISCONNECTED)), DISCONNECT_REASON)
        else:
            logger.warning("flask_realtime: unknown command %r dropped", op)

    def _ordered(self) -> t.Any:
        """The lock that runs this node's commands one at a time."""
        if self._lock is None:
            with self._lock_guard:
                if self._lock is None:
                    # Reentrant: a hook a command runs (on_disconnect after
                    # a close) may give a command itself, run in the call.
                    self._lock = threading.RLock()
        return self._lock
