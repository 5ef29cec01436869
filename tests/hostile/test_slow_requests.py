"""Requests that never finish arriving, against the project's servers.

gunicorn's gevent-websocket worker (pywsgi) waits forever for a request
head, reads heads of any size, reads a chunked body for as long as it comes,
lets idle sockets take every ``--worker-connections`` slot, and serves a
request line without a version as HTTP/0.9. The project's worker
(``flask_realtime.gunicorn.Worker``) and ``flask realtime serve`` share one
handler with deadlines and limits: each attack here must have its sockets
closed within the timeout, cost the server a bounded amount of memory, and
leave a bystander's broadcasts prompt while it runs.
"""

from __future__ import annotations

import selectors
import socket
import time
import typing as t
from pathlib import Path

import pytest

from tests import servers
from tests.conftest import LiveServerFactory
from tests.hostile.measure import Bystander, server_rss
from tests.servers import Server

#: The head, body and keep-alive timeouts the servers here run with (s).
TIMEOUT = 2.0
#: Scheduling slack on a busy two-core machine, on top of a timeout.
GRACE = 3.0
#: A bystander's broadcast while an attack runs (s).
PROMPT = 0.5
#: What an attack may add to the server's resident memory.
MEMORY_BOUND = 40 * 1024 * 1024
#: gunicorn's ``--worker-connections`` for the project's worker here: its
#: default, which 1,000 idle sockets used to take whole.
WORKER_CONNECTIONS = 1000

KINDS = (servers.REALTIME_WORKER, "cli")
ENV = {
    "REALTIME_HEAD_TIMEOUT": str(TIMEOUT),
    "REALTIME_BODY_TIMEOUT": str(TIMEOUT),
    # Long, so that the bystander's kept-alive HTTP connection stays open:
    # the keep-alive test runs a server of its own.
    "REALTIME_KEEPALIVE_TIMEOUT": "60",
}


def _start(kind: str, log_dir: Path, env: t.Mapping[str, str] = ENV) -> Server:
    options = ["--worker-connections", str(WORKER_CONNECTIONS)]
    return servers.start(
        kind,
        log_dir,
        env=env,
        gunicorn_options=options if kind == servers.REALTIME_WORKER else (),
    )


@pytest.fixture(scope="module", params=KINDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> t.Iterator[Server]:
    started = _start(request.param, tmp_path_factory.mktemp(request.param))
    yield started
    started.discard()


class Attack:
    """Attack sockets, and what became of each: closed by the server or not.

    ``run(seconds, every, send)`` reads every socket until the server closes
    it, calling ``send(sock)`` on each open one every ``every`` seconds.
    """

    def __init__(self, server: Server, count: int) -> None:
        self.sockets = [
            socket.create_connection(("127.0.0.1", server.port), timeout=10)
            for _ in range(count)
        ]
        self.received: dict[socket.socket, bytes] = {s: b"" for s in self.sockets}
        self.closed_at: dict[socket.socket, float] = {}
        self.started = time.monotonic()
        for sock in self.sockets:
            sock.setblocking(False)

    def send_all(self, data: bytes) -> None:
        for sock in self.open():
            self._send(sock, data)

    def open(self) -> list[socket.socket]:
        return [s for s in self.sockets if s not in self.closed_at]

    def run(
        self,
        seconds: float,
        every: float = 0.25,
        send: t.Callable[[socket.socket], bytes | None] | None = None,
    ) -> None:
        """Until every socket is closed, or ``seconds`` have passed."""
        deadline = time.monotonic() + seconds
        with selectors.DefaultSelector() as selector:
            for sock in self.open():
                selector.register(sock, selectors.EVENT_READ)
            next_send = time.monotonic() + every
            while self.open() and time.monotonic() < deadline:
                for key, _ in selector.select(timeout=every / 2):
                    sock = t.cast(socket.socket, key.fileobj)
                    if self._read(sock):
                        selector.unregister(sock)
                if send is not None and time.monotonic() >= next_send:
                    next_send += every
                    for sock in self.open():
                        data = send(sock)
                        if data:
                            self._send(sock, data)
                            if sock in self.closed_at:
                                selector.unregister(sock)

    def seconds_to_close(self) -> float:
        """When the last socket was closed, from the attack's start."""
        assert not self.open(), (
            f"{len(self.open())} of {len(self.sockets)} attack sockets still"
            f" open after {time.monotonic() - self.started:.1f} s"
        )
        return max(self.closed_at.values()) - self.started

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()

    def _read(self, sock: socket.socket) -> bool:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if data:
            self.received[sock] += data
            return False
        self.closed_at[sock] = time.monotonic()
        return True

    def _send(self, sock: socket.socket, data: bytes) -> None:
        try:
            sock.send(data)
        except BlockingIOError:
            pass  # the server reads nothing more: that is its right
        except OSError:  # reset or broken pipe: the server closed it
            self.closed_at.setdefault(sock, time.monotonic())

    def __enter__(self) -> Attack:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _bystander_stays_prompt(server: Server, attack: Attack) -> None:
    with Bystander(server) as bystander:
        worst = bystander.worst_delay(3)
    assert worst < PROMPT, f"a broadcast took {worst:.3f} s during the attack"
    assert attack.open(), "the attack ended before the bystander was measured"


def test_slowloris_heads_are_closed_within_the_head_timeout(server: Server) -> None:
    before = server_rss(server)
    with Attack(server, 200) as attack:
        attack.send_all(b"GET /realtime/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-")
        _bystander_stays_prompt(server, attack)
        grown = server_rss(server) - before
        # One more byte of the same header every quarter second, never a line.
        attack.run(TIMEOUT + GRACE, send=lambda sock: b"a")
        assert attack.seconds_to_close() < TIMEOUT + GRACE
        assert not any(attack.received.values()), "a refused head got an answer"
    assert grown < MEMORY_BOUND, f"+{grown / 1e6:.1f} MB"


def test_idle_sockets_are_closed_and_never_lock_the_server_out(
    server: Server,
) -> None:
    # More than the worker's --worker-connections: without a head timeout
    # they hold every slot, and the request below never gets one.
    with Attack(server, WORKER_CONNECTIONS + 50) as attack:
        started = time.monotonic()
        status = server.health(timeout=TIMEOUT + GRACE)
        answered = time.monotonic() - started
        assert status == 200, f"health answered {status} after {answered:.1f} s"
        assert answered < TIMEOUT + GRACE
        attack.run(TIMEOUT + GRACE)
        assert attack.seconds_to_close() < TIMEOUT + GRACE


@pytest.mark.parametrize("kind", KINDS)
def test_an_idle_kept_alive_connection_is_closed(
    live_server: LiveServerFactory, kind: str
) -> None:
    env = {**ENV, "REALTIME_KEEPALIVE_TIMEOUT": str(TIMEOUT)}
    server = live_server(kind, env=env)
    with Attack(server, 20) as attack:
        attack.send_all(b"GET /realtime/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        attack.run(TIMEOUT + GRACE)
        assert attack.seconds_to_close() < TIMEOUT + GRACE
        for answer in attack.received.values():
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:100]


@pytest.mark.parametrize(
    "head",
    [
        # 200 small fields: past the 100 a head may have.
        b"".join(b"X-Field-%d: x\r\n" % n for n in range(200)),
        # One field of 100 KB, sent whole.
        b"Cookie: " + b"c" * 100_000 + b"\r\n",
        # 95 fields of 1 KB: each allowed, together past the head's 64 KiB.
        b"".join(b"X-Field-%d: %s\r\n" % (n, b"v" * 1000) for n in range(95)),
    ],
    ids=["many-fields", "huge-field", "huge-head"],
)
def test_oversized_heads_are_refused_with_431(server: Server, head: bytes) -> None:
    before = server_rss(server)
    with Attack(server, 60) as attack:
        # The head, but never the blank line that would end it.
        attack.send_all(b"GET /realtime/health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + head)
        attack.run(GRACE)
        grown = server_rss(server) - before
        assert attack.seconds_to_close() < GRACE
        for answer in attack.received.values():
            assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
            assert b'"status": 431' in answer
    assert grown < MEMORY_BOUND, f"+{grown / 1e6:.1f} MB"


def test_a_chunked_body_that_never_ends_is_cut_off(server: Server) -> None:
    before = server_rss(server)
    with Attack(server, 50) as attack:
        attack.send_all(
            b"POST /realtime/send?connection_id=x HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        # A one-byte chunk every quarter second, for ever.
        attack.run(0.5, send=lambda sock: b"1\r\n \r\n")
        _bystander_stays_prompt(server, attack)
        grown = server_rss(server) - before
        attack.run(TIMEOUT + GRACE, send=lambda sock: b"1\r\n \r\n")
        assert attack.seconds_to_close() < TIMEOUT + GRACE
    assert grown < MEMORY_BOUND, f"+{grown / 1e6:.1f} MB"


@pytest.mark.parametrize(
    "line",
    [
        b"GET /realtime/poll?transport=longpolling\r\n\r\n",
        b"GET /realtime/poll?transport=longpolling HTT\r\n\r\n",
        b"GET /realtime/poll?transport=longpolling HTTP/2.0\r\n\r\n",
    ],
    ids=["http-0.9", "cut-version", "unknown-version"],
)
def test_a_request_line_without_http_1_is_refused_with_400(
    server: Server, line: bytes
) -> None:
    with Attack(server, 5) as attack:
        attack.send_all(line)
        attack.run(GRACE)
        assert attack.seconds_to_close() < GRACE
        for answer in attack.received.values():
            # Never served as HTTP/0.9: a status line, and the JSON error.
            assert answer.startswith(b"HTTP/1.1 400 "), answer[:100]
            assert answer.endswith(b'"status": 400}'), answer


def test_a_request_line_past_its_limit_gets_414(server: Server) -> None:
    with Attack(server, 20) as attack:
        # Never ended: the server must not wait for the rest of it.
        attack.send_all(b"GET /realtime/health?q=" + b"q" * 20_000)
        attack.run(GRACE)
        assert attack.seconds_to_close() < GRACE
        for answer in attack.received.values():
            assert answer.startswith(b"HTTP/1.1 414 "), answer[:100]
