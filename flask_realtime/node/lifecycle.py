"""When a node runs: start in this process (again after a fork), the one
timer, SIGTERM chaining and shutdown.

A shutdown closes every connection with 4200, and what is queued for each
goes out before its close frame; the process then waits for that (an
event, set by the transports as each connection's wire is done), bounded:
under gunicorn by ``--graceful-timeout`` less a second, elsewhere by
``REALTIME_SHUTDOWN_TIMEOUT``. A second SIGTERM during the wait exits at once.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import time
import typing as t
import weakref

from .. import metrics as _metrics
from .. import protocol
from .._runtime import event, gevent_active, real_lock, sleep, spawn
from ..presence import REFRESH as PRESENCE_REFRESH

if t.TYPE_CHECKING:
    from ..config import Settings
    from ..connection import Connection
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
        #: From shutdown on: connections whose last bytes are not yet written.
        self._unwritten: set[Connection] | None = None
        self._all_written: t.Any = None  # an event, set once none is left
        #: When the process stops waiting for them (time.monotonic()), once
        #: a signal started the shutdown.
        self.stopping_until: float | None = None

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
                if node is None:
                    if callable(previous):
                        previous(signum, frame)
                    else:
                        exit_now(signum)
                    return
                lifecycle = node.lifecycle
                if lifecycle.stopping_until is not None:
                    exit_now(signum)  # a second SIGTERM: no more waiting
                    return
                had_connections = len(node.hub) > 0
                bound = shutdown_bound(previous, node.settings)
                lifecycle.stopping_until = time.monotonic() + bound
                node.shutdown()
                del node
                if callable(previous):
                    # The server ends the process its own way (gunicorn's
                    # worker stops listening, then returns): wait at its exit.
                    atexit.register(lifecycle.wait_at_exit)
                    previous(signum, frame)
                elif not had_connections:
                    exit_now(signum)
                elif gevent_active():
                    spawn(lifecycle.exit_when_written, signum)
                else:
                    # Writer threads send the queues and close frames meanwhile.
                    lifecycle.exit_when_written(signum)

            on_sigterm._realtime_node = node_ref  # type: ignore[attr-defined]
            signal.signal(signal.SIGTERM, on_sigterm)
        except ValueError:
            pass  # not the main thread: signals are not ours to set here

    # -- waiting for the last bytes -------------------------------------------

    def expect_written(self, conns: t.Iterable[Connection]) -> None:
        """Wait for these (closing) connections in :meth:`wait_written`: those
        whose sink reports when its wire is done (``Sink.reports_written``)."""
        with self._lock:
            if self._unwritten is None:
                self._unwritten = set()
                self._all_written = event()
            # (Not one already forgotten: its sink may have reported before.)
            self._unwritten.update(
                c for c in conns if c.sink.reports_written and not c.closed
            )
            if self._unwritten:
                self._all_written.clear()
            else:
                self._all_written.set()

    def written(self, conn: Connection) -> None:
        """``conn``'s wire is done: its queue and close frame are written and
        its socket closed, or they never will be (the peer left)."""
        unwritten = self._unwritten
        if unwritten is None:
            return
        with self._lock:
            unwritten.discard(conn)
            if not unwritten:
                self._all_written.set()

    def wait_written(self, deadline: float) -> bool:
        """Until every connection closed by the shutdown is written, or until
        ``deadline`` (time.monotonic()); whether all were."""
        done = self._all_written
        if done is None:
            return True
        if done.wait(max(0.0, deadline - time.monotonic())):
            return True
        logger.warning(
            "flask_realtime: shutdown: %d connection(s) still had bytes to"
            " write when the shutdown timeout passed",
            len(self._unwritten or ()),
        )
        return False

    def wait_at_exit(self) -> None:
        """At the process's exit (gunicorn's worker returns from its loop)."""
        if self.stopping_until is not None and os.getpid() == self._started_pid:
            self.wait_written(self.stopping_until)

    def exit_when_written(self, signum: int) -> None:
        """Where the signal would simply kill the process (``flask run``)."""
        self.wait_written(self.stopping_until or time.monotonic())
        exit_now(signum)

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
    conns = node.hub.all()
    node.lifecycle.expect_written(conns)
    for conn in conns:
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
    _metrics.sample()
    if node.clustered:
        node.presence_sync.refresh(now)
        node.continuity.check_links()


def shutdown_bound(previous: t.Any, settings: Settings) -> float:
    """Seconds a shutdown waits for the last bytes to go out.

    Under gunicorn (``previous`` is its worker's handler) a second less than
    ``--graceful-timeout``, after which the arbiter kills the worker, or
    half of it when that is 2 seconds or less; elsewhere
    ``REALTIME_SHUTDOWN_TIMEOUT``.
    """
    cfg = getattr(getattr(previous, "__self__", None), "cfg", None)
    graceful = getattr(cfg, "graceful_timeout", None)
    if isinstance(graceful, (int, float)) and not isinstance(graceful, bool):
        return graceful - 1.0 if graceful > 2 else graceful / 2
    return float(settings.shutdown_timeout)


def exit_now(signum: int) -> None:
    """End the process as ``signum`` would have without a handler."""
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
