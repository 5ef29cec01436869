"""The gevent server behind ``flask realtime serve`` (patched before import).

It serves with :class:`~.handler.RealtimeHandler`, the same handler as
gunicorn's ``flask_realtime.gunicorn.Worker``, so both get the same
timeouts and limits (:mod:`.limits`).

SIGTERM or SIGINT stops it in order: the listening socket closes (new
connections are refused), every connection is closed with 4200 after what
is queued for it, and the process waits for those bytes to be written, for
up to ``REALTIME_SHUTDOWN_TIMEOUT`` seconds. A second signal exits at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import socket
import sys
import time

from .. import protocol
from ..config import TRANSPORTS, ConfigError
from ..node.lifecycle import exit_now
from . import limits as server_limits

BACKLOG = 2048


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, or a one-line error and exit status 1.

    ``TCP_NODELAY`` is set here and inherited by every accepted socket:
    without it a kept-alive connection's next response waits for the
    client's delayed ACK (about 40 ms) behind the previous one.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=BACKLOG)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        sys.exit(f"Error: cannot listen on {host}:{port}: {reason}")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="flask realtime serve")
    parser.add_argument("--app")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--transport")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    import gevent
    from flask.cli import NoAppException, ScriptInfo
    from gevent.pywsgi import WSGIServer

    from .handler import RealtimeHandler

    try:
        app = ScriptInfo(app_import_path=args.app).load_app()
        limits = server_limits.from_environment()
    except (NoAppException, ConfigError) as exc:
        sys.exit(f"Error: {exc}")
    realtime = app.extensions.get("realtime")
    if realtime is None:
        sys.exit("Error: the app does not use flask_realtime (call Realtime(app)).")
    node = realtime._nodes[app]
    settings = node.settings
    if args.transport:
        chosen = tuple(p.strip() for p in args.transport.split(",") if p.strip())
        unknown = [p for p in chosen if p not in TRANSPORTS]
        if unknown or not chosen:
            sys.exit(
                f"Error: --transport: unknown transport(s) {unknown};"
                f" choose from {TRANSPORTS}"
            )
        node.settings = settings = dataclasses.replace(settings, transports=chosen)
    host = args.host or settings.host
    port = settings.port if args.port is None else args.port

    server = WSGIServer(
        listen(host, port), app, handler_class=RealtimeHandler, **(settings.ssl or {})
    )
    server.limits = limits  # read by each RealtimeHandler
    scheme = "https" if settings.ssl else "http"

    stopping_until: list[float] = []

    def stop(signum: int) -> None:
        if stopping_until:
            exit_now(signum)  # a second signal: no more waiting
            return
        stopping_until.append(time.monotonic() + settings.shutdown_timeout)
        server.close()  # refuse new connections; serve_forever returns
        node.shutdown(protocol.CLOSE_SHUTDOWN)

    node.ensure_started(handle_sigterm=False)  # before gevent takes SIGTERM
    gevent.signal_handler(signal.SIGTERM, stop, signal.SIGTERM)
    gevent.signal_handler(signal.SIGINT, stop, signal.SIGINT)
    print(
        f" * flask_realtime serving {app.import_name!r} on {scheme}://{host}:{port}"
        f" (transports: {', '.join(settings.transports)}; broker: {settings.broker})",
        flush=True,
    )
    server.serve_forever(stop_timeout=2)  # (requests still running)
    if stopping_until:
        node.wait_written(stopping_until[0])
