"""Start real servers as subprocesses for the tests.

``start(kind, ...)`` runs one server on a free loopback port, logs its output
to a file, waits until ``GET /realtime/health`` answers 200, and returns a
:class:`Server`. ``Server.stop()`` sends SIGTERM, waits, then SIGKILLs the
whole process group (gunicorn's workers included); ``Server.discard()``, for
fixtures' teardown, SIGKILLs it at once.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import typing as t
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Every server the library supports, as ``live_server`` kinds.
KINDS = ("geventwebsocket", "gevent", "cli", "flask-run")
#: The project's own gunicorn worker (``flask_realtime.gunicorn.Worker``).
#: Not in KINDS, which every parametrised test runs on: the protocol suites
#: (WebSocket, SSE, long-poll) and the hostile tests run on it.
REALTIME_WORKER = "realtime-worker"
#: The ``server`` params of the protocol suites' module servers.
PROTOCOL_KINDS = (*KINDS, REALTIME_WORKER)

DEFAULT_APP = "tests.apps.basic:app"
HEALTH_PATH = "/realtime/health"
WS_PATH = "/realtime/ws"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0

_GUNICORN_WORKERS = {
    "geventwebsocket": "geventwebsocket.gunicorn.workers.GeventWebSocketWorker",
    "gevent": "gevent",
    REALTIME_WORKER: "flask_realtime.gunicorn.Worker",
}
_ADDRESS_IN_USE = ("address already in use", "errno 98")


class ServerError(RuntimeError):
    """A server did not come up; the message ends with its log's tail."""


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def command(
    kind: str,
    app: str,
    port: int,
    workers: int = 1,
    gunicorn_options: t.Sequence[str] = (),
) -> list[str]:
    """The argv that serves ``app`` ("module:attr") with server ``kind``."""
    python = sys.executable
    if kind in _GUNICORN_WORKERS:
        return [
            python,
            "-m",
            "gunicorn",
            "-k",
            _GUNICORN_WORKERS[kind],
            "-w",
            str(workers),
            "--worker-connections",
            "20000",
            "--no-control-socket",
            "--graceful-timeout",
            "2",
            "-b",
            f"127.0.0.1:{port}",
            *gunicorn_options,
            app,
        ]
    if workers != 1:
        raise ValueError(f"server kind {kind!r} runs a single process")
    if kind == "cli":
        return [
            python,
            "-m",
            "flask",
            "--app",
            app,
            "realtime",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
    if kind == "flask-run":
        return [
            python,
            "-m",
            "flask",
            "--app",
            app,
            "run",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-reload",
            "--no-debugger",
        ]
    raise ValueError(f"unknown server kind {kind!r}; expected one of {PROTOCOL_KINDS}")


def child_environment(env: t.Mapping[str, str | None] | None = None) -> dict[str, str]:
    """``os.environ`` plus ``env`` (a None value removes a variable), with the
    repository root on ``PYTHONPATH`` and unbuffered output."""
    result = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = str(value)
    paths = [str(ROOT)]
    if result.get("PYTHONPATH"):
        paths.append(result["PYTHONPATH"])
    result["PYTHONPATH"] = os.pathsep.join(paths)
    result["PYTHONUNBUFFERED"] = "1"
    return result


class Server:
    """A server subprocess listening on ``127.0.0.1:port``."""

    def __init__(
        self,
        kind: str,
        port: int,
        process: subprocess.Popen[bytes],
        log_path: Path,
        argv: list[str],
    ) -> None:
        self.kind = kind
        self.port = port
        self.process = process
        self.log_path = log_path
        self.argv = argv
        #: Worker processes behind the port: each is a node of its own.
        self.workers = int(argv[argv.index("-w") + 1]) if "-w" in argv else 1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{WS_PATH}"

    def __repr__(self) -> str:
        return f"<Server {self.kind} pid={self.process.pid} {self.url}>"

    def log(self) -> str:
        """Everything the server has written to stdout and stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def is_running(self) -> bool:
        return self.process.poll() is None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the server's main process (gunicorn's arbiter)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def health(self, timeout: float = 2.0) -> int | None:
        """The health endpoint's status code, or None if nothing answered."""
        try:
            with urllib.request.urlopen(self.url + HEALTH_PATH, timeout=timeout) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except (OSError, ValueError):
            return None

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Poll the health endpoint until it answers 200 or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        status = None
        while True:
            if self.process.poll() is not None:
                raise ServerError(
                    f"{self.kind} server exited with code {self.process.returncode}"
                    f" before it was ready\n{self._describe()}"
                )
            status = self.health(timeout=1.0)
            if status == 200:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServerError(
                    f"{self.kind} server not ready after {timeout:g} s"
                    f" (last health status: {status})\n{self._describe()}"
                )
            # The poll interval doubles as the check for an early exit.
            try:
                self.process.wait(timeout=min(0.05, remaining))
            except subprocess.TimeoutExpired:
                pass

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL the process group.

        Returns the main process's exit code (negative for a signal)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        # Also reaps workers that outlived their arbiter.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return self.process.wait()

    def discard(self) -> int | None:
        """SIGKILL the whole process group and reap it: the end of a test.

        For fixtures' teardown, where nothing is asserted any more: a graceful
        stop costs over a second per gunicorn server (its worker looks for the
        stop once a second), hundreds of times a run. Tests that are about
        stopping call :meth:`stop` themselves. The kernel closes the sockets,
        so clients and brokers see the connections end at once.

        Returns the main process's exit code (negative for a signal)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return self.process.wait()

    def _describe(self) -> str:
        return (
            f"command: {' '.join(self.argv)}\n"
            f"log ({self.log_path}), last lines:\n{self.log_tail()}"
        )


def start(
    kind: str,
    log_dir: Path,
    app: str = DEFAULT_APP,
    env: t.Mapping[str, str | None] | None = None,
    workers: int = 1,
    gunicorn_options: t.Sequence[str] = (),
    timeout: float = START_TIMEOUT,
    name: str | None = None,
    port: int | None = None,
) -> Server:
    """Start a server of ``kind`` serving ``app`` and wait until it is healthy.

    The port is chosen just before the start; if another process grabs it in
    between, the start is retried on a new port. A given ``port`` (to restart
    a server where its clients look for it) is used as it is, once.
    """
    # As --graceful-timeout 2 does under gunicorn: a stopped server whose
    # clients no longer read waits 2 s for them, not 10 (the test apps that
    # read TESTAPP_* config; a test's own value wins).
    child_env = child_environment(
        {"TESTAPP_REALTIME_SHUTDOWN_TIMEOUT": "2", **(env or {})}
    )
    log_dir.mkdir(parents=True, exist_ok=True)
    name = name or kind
    tries = 1 if port is not None else 3
    for attempt in range(tries):
        if attempt or port is None:
            port = free_port()
        argv = command(kind, app, port, workers, gunicorn_options)
        log_path = log_dir / f"{name}-{port}.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=child_env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = Server(kind, port, process, log_path, argv)
        try:
            server.wait_ready(timeout)
        except ServerError:
            server.stop()
            text = server.log().lower()
            if attempt < tries - 1 and any(m in text for m in _ADDRESS_IN_USE):
                continue
            raise
        return server
    raise AssertionError("unreachable")
