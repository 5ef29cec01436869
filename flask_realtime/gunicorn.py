"""gunicorn's worker class for flask_realtime: ``-k flask_realtime.gunicorn.Worker``.

gevent-websocket's worker serves with pywsgi as it is: no deadline for a
request head or body, heads of any size, HTTP/0.9 for a request line
without a version, and idle sockets held until the client leaves, so a
thousand idle sockets take every ``--worker-connections`` slot. This
worker is gunicorn's ``GeventPyWSGIWorker`` with the project's handler
(:class:`~flask_realtime.server.handler.RealtimeHandler`, gevent-websocket's
handler with timeouts and limits) through its ``wsgi_handler`` and
``server_class`` extension points. ``flask realtime serve`` uses the same
handler.

With metrics (``REALTIME_METRICS``) in several workers, serve with
``-c python:flask_realtime.gunicorn`` (or import :func:`on_starting` and
:func:`child_exit` into your own config file): the hooks keep
prometheus_client's multiprocess directory right (docs/metrics.md).

The limits (:mod:`flask_realtime.server.limits`) come from gunicorn's
``--keep-alive``, ``--limit-request-line``, ``--limit-request-fields`` and
``--limit-request-field-size``, and from the environment
(``REALTIME_HEAD_TIMEOUT``, ``REALTIME_BODY_TIMEOUT``, ...).
"""

from __future__ import annotations

import typing as t

from gunicorn.workers.ggevent import GeventPyWSGIWorker, PyWSGIServer

from . import metrics as _metrics
from .server import limits as server_limits
from .server.handler import RealtimeHandler


class Worker(GeventPyWSGIWorker):
    """gunicorn's gevent pywsgi worker, serving with :class:`RealtimeHandler`."""

    wsgi_handler = RealtimeHandler

    def init_process(self) -> None:
        # Read before the worker starts serving: a bad value stops it with
        # the variable's name (gunicorn logs it and the arbiter exits).
        self.limits = server_limits.from_gunicorn(self.cfg)
        super().init_process()

    def server_class(self, *args: t.Any, **kwargs: t.Any) -> PyWSGIServer:
        """gunicorn calls ``server_class(...)`` for each listener; the server
        carries the limits to its handlers."""
        server = PyWSGIServer(*args, **kwargs)
        server.limits = self.limits
        return server


# -- server hooks: ``gunicorn -c python:flask_realtime.gunicorn`` ----------------
# (or import them into your gunicorn.conf.py). gunicorn reads the hooks by
# these names from a config module; they run in the arbiter.


def on_starting(server: t.Any) -> None:
    """Clear ``PROMETHEUS_MULTIPROC_DIR`` of an earlier run's metrics."""
    _metrics.clear_directory()


def child_exit(server: t.Any, worker: t.Any) -> None:
    """A worker exited: drop its live gauges (connections, queues) from the
    metrics; its counters stay in the totals."""
    _metrics.process_dead(worker.pid)
