"""Deployments that cannot work, found as early as they can be, said loudly.

Two mistakes make realtime half-work instead of fail:

* **Several workers on the ``null`` broker.** Each worker is its own world:
  a broadcast reaches only the clients of the worker that made it, and a
  long-poll client whose polls land on another worker reconnects forever.
* **A server that runs one request at a time** (gunicorn's default ``sync``
  worker, ``flask run --without-threads``): a WebSocket or SSE stream, or a
  waiting long poll, would hold the only worker until its timeout.

Both are known from the standard WSGI environ (PEP 3333):
``wsgi.multiprocess`` is true when other processes serve the same app (gunicorn
sets it from ``-w``), and ``wsgi.multithread`` is false when nothing else runs
while a request does; under gevent, greenlets serve the others. At start-up
the environment gunicorn reads (``WEB_CONCURRENCY``, ``GUNICORN_CMD_ARGS`` and
its command line, parsed by gunicorn's own parser) tells it earlier, when it
can. Each problem is logged once per process, at ERROR, and the realtime
endpoints and the health check answer 503 with the same message.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import typing as t

from ._runtime import gevent_active

if t.TYPE_CHECKING:
    from .config import Settings

logger = logging.getLogger("flask_realtime")

#: The command the README shows; every message about workers points to it.
WORKER_COMMAND = (
    "gunicorn -k flask_realtime.gunicorn.Worker --worker-connections 10000 app:app"
)

NULL_BROKER_WORKERS = (
    "several worker processes serve this app on the 'null' broker, which"
    " connects nothing: each worker is its own world, broadcasts reach only the"
    " clients of one worker, and long-poll clients reconnect forever. Set"
    " REALTIME_BROKER to 'redis', 'rabbitmq' or 'nats' (and REALTIME_BROKER_URL),"
    " or run one worker (gunicorn -w 1)."
)
ONE_REQUEST_AT_A_TIME = (
    "this server runs one request at a time (gunicorn's default 'sync' worker,"
    " or 'flask run --without-threads'): a WebSocket, SSE stream or long poll"
    " would hold it until its timeout. Run a gevent worker: " + WORKER_COMMAND
)

# What was logged in this process already (each problem once).
_logged: set[str] = set()


def _log_once(problem: str) -> None:
    if problem not in _logged:
        _logged.add(problem)
        logger.error("flask_realtime: %s", problem)


def request_problem(settings: Settings, environ: t.Mapping[str, t.Any]) -> str | None:
    """What makes realtime unable to work on the server of this request."""
    problem = None
    if settings.broker == "null" and environ.get("wsgi.multiprocess"):
        problem = NULL_BROKER_WORKERS
    elif (
        environ.get("wsgi.multithread") is False
        and ("gunicorn.socket" in environ or "werkzeug.socket" in environ)
        and not gevent_active()
    ):
        # Only a server's own environ (it hands the app its socket): the
        # test clients of Werkzeug and Flask say "not multithreaded" too.
        problem = ONE_REQUEST_AT_A_TIME
    if problem is not None:
        _log_once(problem)
    return problem


def _gunicorn_settings(environ: t.Mapping[str, str]) -> tuple[int, str] | None:
    """(workers, worker class) from gunicorn's command line and environment,
    when this process is a gunicorn worker; None when unknown.

    gunicorn sets ``SERVER_SOFTWARE`` in its environment; its ``Config``
    parser reads the same options gunicorn itself read. A configuration file
    is not read here: the first request tells (``wsgi.multiprocess``).
    """
    if not environ.get("SERVER_SOFTWARE", "").startswith("gunicorn/"):
        return None
    try:
        from gunicorn.config import Config

        config = Config()
        parser = config.parser()
        args = shlex.split(environ.get("GUNICORN_CMD_ARGS", "")) + sys.argv[1:]
        options, _ = parser.parse_known_args(args)
    except (SystemExit, Exception):  # not gunicorn's command line after all
        return None
    workers = options.workers
    if workers is None:  # gunicorn's own default
        try:
            workers = int(environ.get("WEB_CONCURRENCY", "1") or 1)
        except ValueError:
            workers = 1
    return int(workers), options.worker_class or "sync"


def startup_problem(
    settings: Settings, environ: t.Mapping[str, str] = os.environ
) -> str | None:
    """What is known wrong before any request, in a gunicorn worker: logged
    at once (ERROR). The endpoints refuse on the request's own evidence."""
    gunicorn = _gunicorn_settings(environ)
    if gunicorn is None:
        return None
    workers, worker_class = gunicorn
    problem = None
    if settings.broker == "null" and workers > 1:
        problem = NULL_BROKER_WORKERS
    elif worker_class in ("sync", "gunicorn.workers.sync.SyncWorker"):
        problem = ONE_REQUEST_AT_A_TIME
    if problem is not None:
        _log_once(problem)
    return problem
