"""Real broker servers for the tests: Redis, RabbitMQ and NATS on private ports.

Each runs from its Debian package in its own process group, with its data and
log under a directory of the test session, and is stopped (or killed, or
restarted on the same port) by the test that needs it. Under ``CI=true`` a
missing server binary is an error, never a skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import typing as t
from pathlib import Path

from tests.servers import free_port

KINDS = ("redis", "rabbitmq", "nats")
_BINARIES = {
    "redis": "redis-server",
    "rabbitmq": "rabbitmq-server",
    "nats": "nats-server",
}
# RabbitMQ boots an Erlang VM: about 5 to 11 s here, up to a minute on CI.
_START_TIMEOUT = {"redis": 15.0, "rabbitmq": 90.0, "nats": 15.0}


def available(kind: str) -> bool:
    return shutil.which(_BINARIES[kind]) is not None


class BrokerServer:
    """One broker server process; ``url`` is what ``REALTIME_BROKER_URL`` takes."""

    def __init__(
        self,
        kind: str,
        directory: Path,
        port: int | None = None,
        persistent: bool = False,
    ) -> None:
        self.kind = kind
        # Redis only: an append-only file synced at every write, so that even
        # a SIGKILL keeps everything (the default keeps nothing).
        self.persistent = persistent
        self.directory = directory
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._rabbitmq_base: Path | None = None
        self._nodename = f"flask-realtime-{self.port}@localhost"
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        scheme = {"redis": "redis", "rabbitmq": "amqp", "nats": "nats"}[self.kind]
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def app_env(self) -> dict[str, str]:
        """The environment that points the test apps at this broker."""
        return {
            "TESTAPP_REALTIME_BROKER": self.kind,
            "TESTAPP_REALTIME_BROKER_URL": self.url,
        }

    def _command(self) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ)
        if self.kind == "redis":
            return [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.persistent else "no",
                "--appendfsync",
                "always",
                "--dir",
                str(self.directory),
            ], env
        if self.kind == "nats":
            # JetStream for history; its data survives a restart (not a kill
            # of the directory).
            store = str(self.directory / "jetstream")
            command = ["nats-server", "-a", "127.0.0.1", "-p", str(self.port)]
            return [*command, "-js", "-sd", store], env
        # Run as root, the server drops to the rabbitmq user, which must own
        # its data and reach it: pytest's own temporary directories are
        # private to root, so the data lives in a directory of its own.
        if self._rabbitmq_base is None:
            self._rabbitmq_base = Path(tempfile.mkdtemp(prefix="flask-realtime-rmq-"))
            self._rabbitmq_base.chmod(0o755)
            if os.geteuid() == 0:
                shutil.chown(self._rabbitmq_base, "rabbitmq", "rabbitmq")
        base = self._rabbitmq_base
        env.update(
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_DIST_PORT=str(free_port()),
            RABBITMQ_NODENAME=self._nodename,
            RABBITMQ_MNESIA_BASE=str(base / "mnesia"),
            RABBITMQ_LOG_BASE=str(base / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(base / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(base / "rabbitmq"),
        )
        if os.geteuid() == 0:
            # Debian's wrapper drops to the rabbitmq user with su, whose
            # session gets 1,024 descriptors: streams keep files open (some
            # 2 each, and 2 more per reader), so 1,000 kept channels ran out
            # (emfile). The same drop, with the hard limit.
            start = (
                "ulimit -n $(ulimit -Hn); exec /usr/lib/rabbitmq/bin/rabbitmq-server"
            )
            return ["su", "rabbitmq", "-s", "/bin/sh", "-c", start], env
        return ["rabbitmq-server"], env

    def start(self) -> BrokerServer:
        command, env = self._command()
        log = open(self.directory / f"{self.kind}.log", "ab")
        try:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        finally:
            log.close()
        self.wait_ready(_START_TIMEOUT[self.kind])
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.kind} exited at start; see {self.log_tail()}"
                )
            if self._answers():
                return
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(
            f"{self.kind} did not start in {timeout} s: {self.log_tail()}"
        )

    def _answers(self) -> bool:
        """The protocol's own greeting, not just an open port."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                if self.kind == "redis":
                    sock.sendall(b"PING\r\n")
                    return sock.recv(16).startswith(b"+PONG")
                if self.kind == "nats":
                    return sock.recv(4).startswith(b"INFO")
                sock.sendall(b"AMQP\x00\x00\x09\x01")
                return len(sock.recv(8)) > 0
        except OSError:
            return False

    def log_tail(self, lines: int = 20) -> str:
        path = self.directory / f"{self.kind}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _signal_group(self, signum: int) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL the server and everything it started (RabbitMQ's VM too)."""
        self._signal_group(signal.SIGKILL)
        if self.kind == "rabbitmq":
            # The server re-executes itself as the rabbitmq user in a session
            # of its own: its Erlang VM is found by the node name in its
            # environment.
            for pid in _pids_with(b"RABBITMQ_NODENAME=" + self._nodename.encode()):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.process is not None:
            self.process.wait(timeout=10)
            self.process = None
        self._wait_port_free()

    def stop(self) -> None:
        if self.process is not None:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        if self._rabbitmq_base is not None:
            shutil.rmtree(self._rabbitmq_base, ignore_errors=True)
            self._rabbitmq_base = None

    def restart(self, graceful: bool = False) -> None:
        """Down and up again on the same port: killed (a crash), or stopped
        cleanly first (``graceful``: SIGTERM, as ``systemctl restart`` does)."""
        if graceful:
            self.terminate()
        self.kill()
        self.start()

    def terminate(self, timeout: float = 30.0) -> None:
        """SIGTERM the server (RabbitMQ's VM too) and wait until it exited:
        a clean stop that writes what the server keeps in memory."""
        self._signal_group(signal.SIGTERM)
        pids = []
        if self.kind == "rabbitmq":  # the VM is in a session of its own
            pids = _pids_with(b"RABBITMQ_NODENAME=" + self._nodename.encode())
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_running(pid) for pid in pids):
            time.sleep(0.05)
        if self.process is not None:
            try:
                self.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass  # kill() follows

    def _wait_port_free(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            except OSError:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.kind} still answers on {self.port} after a kill")


def _running(pid: int) -> bool:
    """Whether ``pid`` is alive (a zombie, exited but not reaped, is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _pids_with(variable: bytes) -> list[int]:
    """Processes whose environment holds ``variable`` (``NAME=value``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if variable in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def start(kind: str, directory: Path, port: int | None = None) -> BrokerServer:
    return BrokerServer(kind, directory, port).start()


def servers_required() -> bool:
    return os.environ.get("CI") == "true"


def require_program(program: str, package: str | None = None) -> None:
    """Fail (CI) or skip (a developer's machine) when ``program`` is missing.

    ``program`` is a name on the PATH or an absolute path; ``package`` names
    the Debian package that has it, for the message.
    """
    if shutil.which(program) is not None:
        return
    import pytest

    message = f"{program} is not installed"
    if package is not None:
        message += f" (Debian package {package})"
    if servers_required():
        pytest.fail(message + " (CI=true: .ci/run must install it)")
    pytest.skip(message)


def require(kind: str) -> None:
    """Fail (CI) or skip (a developer's machine) when the server is missing."""
    require_program(_BINARIES[kind])


__all__: t.Sequence[str] = (
    "BrokerServer",
    "KINDS",
    "available",
    "require",
    "require_program",
    "start",
)
