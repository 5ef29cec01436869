"""When a node runs: start in this process (again after a fork), the one
timer, SIGTERM chaining and shutdown."""

from __future__ import annotations

import logging
import os
import signal
import time
import typing as t
import weakref

from .. import protocol
from .._runtime import gevent_active, real_lock, sleep, spawn
from ..presence import REFRESH as PRESENCE_REFRESH

if t.TYPE_CHECKING:
    from ..config import Settings
    from . import Node

logger = logging.getLogger("flask_realtime")

# An SSE stream carries at least a comment this often (proxies close idle
# streams), and half the heartbeat when that is shorter.
KEEPALIVE = 10.0


def tick_interval(settings: Settings) -> float:
    """Heartbeats, SSE keepalives, long-poll expiry and presence refresh run
    from one timer; a quarter of the shortest period keeps each on time."""
    return (
        min(
            settings.heartbeat,
            settings.longpoll_expiry,
            KEEPALIVE * 2,
            PRESENCE_REFRESH * 4,
        )
        / 4
    )


def _tick_forever(node_ref: weakref.ref[Node], interval: float) -> None:
    """The node's one timer; it ends when the node is gone."""
    while True:
        sleep(interval)
        node = node_ref()
        if node is None:
            return
        try:
            node.tick(time.monotonic())
        except Exception:  # pragma: no cover - the timer must survive
            logger.exception("flask_realtime: periodic task failed")
        del node


class Lifecycle:
    """Starts a node's timer once per process and routes SIGTERM to it."""

    def __init__(self, node: Node) -> None:
        self._node_ref = weakref.ref(node)
        self.tick_interval = tick_interval(node.settings)
        self._lock = real_lock()
        self._started_pid: int | None = None
        self._node_pid = os.getpid()  # where the node got its id
        self.ticker: t.Any = None

    def ensure_started(self, *, handle_sigterm: bool = True) -> None:
        """Start the timer in this process (again after a fork: then the
        node first becomes a node of its own, see ``Node.forked``).

        ``handle_sigterm=False`` is for servers that route SIGTERM to
        ``shutdown`` themselves.
        """
        pid = os.getpid()
        if self._started_pid == pid:
            return
        with self._lock:
            if self._started_pid == pid:
                return
            forked = self._node_pid != pid
            self._started_pid = self._node_pid = pid
        node = self._node_ref()
        if node is None:
            return
        if forked:
            node.forked()
        self.ticker = spawn(_tick_forever, self._node_ref, self.tick_interval)
        if handle_sigterm:
            self.chain_sigterm()
        else:
            self.release_sigterm()

    def chain_sigterm(self) -> None:
        """Close every connection with 4200 when the server is told to stop.

        gunicorn's workers set their own SIGTERM handler; ours runs first and
        then hands over, so shutdown proceeds as the server intends. Where
        SIGTERM would simply kill the process (``flask run``), the close
        frames get a moment to leave before the default action. Tried when
        the app loads (gunicorn's workers have set their handlers by then) and
        again when the node starts; only the main thread may do it.
        """
        node_ref = self._node_ref
        try:
            previous = signal.getsignal(signal.SIGTERM)
            if getattr(previous, "_realtime_node", lambda: None)() is node_ref():
                return
            if previous is signal.SIG_IGN or previous is None:
                return

            def on_sigterm(signum: int, frame: t.Any) -> None:
                node = node_ref()
                had_connections = node is not None and len(node.hub) > 0
                if node is not None:
                    node.shutdown()
                    del node
                if callable(previous):
                    previous(signum, frame)
                elif not had_connections:
                    _exit_now(signum)
                elif gevent_active():
                    spawn(_exit_after_shutdown, signum)
                else:
                    # Writer threads send the close frames meanwhile.
                    _exit_after_shutdown(signum)

            on_sigterm._realtime_node = node_ref  # type: ignore[attr-defined]
            signal.signal(signal.SIGTERM, on_sigterm)
        except ValueError:
            pass  # not the main thread: signals are not ours to set here

    def release_sigterm(self) -> None:
        """Give SIGTERM back to a server that routes it to ``shutdown``."""
        try:
            handler = signal.getsignal(signal.SIGTERM)
            if getattr(handler, "_realtime_node", lambda: None)() is self._node_ref():
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
        except ValueError:
            pass


def shutdown(node: Node, code: int = protocol.CLOSE_SHUTDOWN) -> None:
    """Close all of the node's connections (4200: clients reconnect at once)."""
    node.shutting_down = True
    for conn in node.hub.all():
        try:
            conn.close(code, "server shutting down")
        except Exception:  # pragma: no cover - best effort while exiting
            logger.debug("close failed during shutdown", exc_info=True)


def tick(node: Node, now: float) -> None:
    """Heartbeats and expiry for every local connection; in a cluster,
    presence refresh and the expiry of silent nodes."""
    heartbeat = node.settings.heartbeat
    for conn in node.hub.all():
        conn.tick(now, heartbeat)
    if node.clustered:
        node.presence_sync.refresh(now)


def _exit_after_shutdown(signum: int) -> None:
    sleep(0.2)  # the close frames are queued; let the writers send them
    _exit_now(signum)


def _exit_now(signum: int) -> None:
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
