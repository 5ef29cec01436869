"""``flask realtime``: commands for running and inspecting the realtime server."""

from __future__ import annotations

import os
import sys

import click
from flask.cli import AppGroup, ScriptInfo

realtime_cli = AppGroup("realtime", help="Realtime messaging commands.")

# Run in a fresh interpreter: gevent must patch the standard library before
# Flask, the app or any client library is imported, and by the time a Flask
# command runs the app usually is imported already.
_BOOT = (
    "from gevent import monkey; monkey.patch_all(); "
    "from flask_realtime.server.serve import main; main()"
)


@realtime_cli.command("serve", with_appcontext=False)
@click.option("--host", default=None, help="Interface (REALTIME_HOST, 0.0.0.0).")
@click.option("--port", type=int, default=None, help="Port (REALTIME_PORT, 6001).")
@click.option(
    "--transport",
    default=None,
    help="Transports to enable, comma-separated (REALTIME_TRANSPORTS).",
)
@click.pass_obj
def serve(
    info: ScriptInfo | None, host: str | None, port: int | None, transport: str | None
) -> None:
    """Serve the app and its realtime endpoints with gevent."""
    argv = [sys.executable, "-c", _BOOT]
    app_path = getattr(info, "app_import_path", None) or os.environ.get("FLASK_APP")
    if app_path:
        argv += ["--app", app_path]
    if host:
        argv += ["--host", host]
    if port is not None:
        argv += ["--port", str(port)]
    if transport:
        argv += ["--transport", transport]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)
