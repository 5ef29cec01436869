"""The reader thread: reads and dispatches, pings, notices a dead link.

One per connected client. Under gevent's monkey patching ``threading`` makes
it a greenlet, so the same code serves threads and greenlets.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import typing as t

from .. import protocol
from .errors import ConnectionClosed
from .events import Emitter, logger
from .websocket import CLOSE, TEXT, Link, LinkError, Opened, parse_close

if t.TYPE_CHECKING:
    from .channel import Channel
    from .messages import Pending

_PING = "hb-"  # the id prefix of the reader's own pings: no call waits for them
_LOCK_WAIT = 0.1  # seconds a ping waits for a send in flight


class Reader(Emitter):
    """The loop of :class:`RealtimeClient`'s reader thread."""

    # Set by RealtimeClient.__init__.
    reconnect: bool
    ping_interval: float | None
    heartbeat_timeout: float | None
    connection_id: str | None
    transport: str | None
    _channels: dict[str, Channel]
    _pending: dict[t.Any, Pending]
    _subscribe_ids: dict[int, str]
    _ids: itertools.count[int]
    _send_lock: threading.Lock
    _ws: Link | None
    _reader_ident: int | None
    _closing: bool

    # Provided by the other parts of RealtimeClient.
    _dispatch: t.Callable[[dict[str, t.Any]], None]
    _install: t.Callable[[Link, dict[str, t.Any]], None]
    _reconnect_loop: t.Callable[[int], Opened | None]
    _final: t.Callable[[int, str], None]
    _finish: t.Callable[[int, str], None]

    def _run(self, ws: Link, welcome: dict[str, t.Any]) -> None:
        self._reader_ident = threading.get_ident()
        self._emit("connected", welcome, buffer=False)  # connect() returned it
        while True:
            code, reason = self._read(ws, welcome)
            self._lost(ws, code, reason)
            if self._closing:
                self._final(protocol.CLOSE_NORMAL, "client disconnected")
                return
            again = self.reconnect and code not in protocol.CLOSE_NO_RECONNECT
            self._emit(
                "disconnected", {"code": code, "reason": reason, "reconnect": again}
            )
            if not again:
                self._finish(code, reason)
                return
            opened = self._reconnect_loop(code)
            if opened is None:
                return
            ws, welcome = opened
            self._install(ws, welcome)
            self._emit("connected", welcome)

    def _read(self, ws: Link, welcome: dict[str, t.Any]) -> tuple[int, str]:
        """Dispatch messages until the connection ends; its close code and reason.

        Pings every ``ping_interval``; when nothing at all arrives within
        ``heartbeat_timeout`` of a ping the link is dead (a frozen server or
        a cable pulled without a FIN) and the socket is dropped.
        """
        heartbeat = _positive(welcome.get("heartbeat"), 25.0)
        interval = self.ping_interval or heartbeat
        patience = self.heartbeat_timeout or heartbeat
        next_ping = time.monotonic() + interval
        answer_by: float | None = None
        while True:
            now = time.monotonic()
            if answer_by is not None and now >= answer_by:
                ws.hard_close()
                return (
                    protocol.CLOSE_ABNORMAL,
                    f"no answer to a ping within {patience:g} s",
                )
            # Over HTTP a send holds the lock for its round trip (a slow
            # handler's answer): the ping then waits for the next round, not
            # the reader for the send.
            if now >= next_ping and self._send_lock.acquire(timeout=_LOCK_WAIT):
                try:
                    ping = {"type": "ping", "id": _PING + str(next(self._ids))}
                    ws.send(json.dumps(ping))
                except LinkError as exc:
                    return protocol.CLOSE_ABNORMAL, f"ping failed: {exc}"
                finally:
                    self._send_lock.release()
                if answer_by is None:
                    answer_by = now + patience
            if now >= next_ping:
                next_ping = now + interval
            wake = next_ping if answer_by is None else min(next_ping, answer_by)
            try:
                frame = ws.receive(max(0.01, wake - now))
            except LinkError as exc:
                return protocol.CLOSE_ABNORMAL, f"connection lost: {exc}"
            if frame is None:
                continue
            answer_by = None  # any frame shows the link is alive
            kind, payload = frame
            if kind == CLOSE:
                return parse_close(payload)
            if kind == TEXT:
                try:
                    message = json.loads(payload)
                except ValueError:
                    logger.warning("%r: the server sent non-JSON %r", self, payload)
                    continue
                if isinstance(message, dict):
                    self._dispatch(message)

    def _lost(self, ws: Link, code: int, reason: str) -> None:
        """Forget the connection that ended: channels wait for a resubscribe,
        requests in flight fail."""
        closed = ConnectionClosed(code, reason)
        with self._send_lock:
            with self._cond:
                self._ws = None
                self.connection_id = None
                self.transport = None
                for channel in self._channels.values():
                    if channel.state == "subscribed":
                        channel.state = "pending"
                    channel._recovery.reset()
                for pending in self._pending.values():
                    pending.closed = closed
                self._pending.clear()
                self._subscribe_ids.clear()
                self._cond.notify_all()
        ws.shutdown()


def _positive(value: t.Any, default: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if number > 0 else default
