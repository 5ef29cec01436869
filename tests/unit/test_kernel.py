"""The kernel's figure for a socket: bytes its peer has not taken yet (Linux)."""

from __future__ import annotations

import socket
import time
import typing as t
from collections import deque

import pytest

from flask_realtime import _kernel
from flask_realtime.transports.progress import Progress


@pytest.fixture
def pair() -> t.Iterator[tuple[socket.socket, socket.socket]]:
    """A connected TCP pair on loopback: (server side, client side)."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    server.setblocking(False)
    yield server, client
    server.close()
    client.close()


def _fill(sock: socket.socket) -> int:
    """Send until the socket is full; the bytes the kernel took."""
    sent = 0
    try:
        while True:
            sent += sock.send(b"x" * 65536)
    except BlockingIOError:
        return sent


def _until(predicate: t.Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 5
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)  # polling the kernel's figure, with a deadline


def _settled(sock: socket.socket) -> None:
    """Until the peer's (possibly delayed, by up to 40 ms) acks of what is in
    flight are in: the same figure over more than 50 ms."""
    seen: list[int | None] = []

    def still() -> bool:
        seen.append(_kernel.unsent(sock.fileno()))
        return len(seen) > 5 and len(set(seen[-6:])) == 1

    _until(still, "a settled send queue")


class Conn:
    """The queue of a connection, as a session's :meth:`Progress.lag` sees it."""

    def __init__(self) -> None:
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.max_messages = 1000
        self.max_bytes = 1024 * 1024


class Session(Progress):
    def __init__(self, raw: socket.socket) -> None:
        self.raw = raw
        self.conn = Conn()  # type: ignore[assignment]
        self.head = b""
        self.last_progress = 0.0


def test_unsent_counts_what_the_peer_did_not_take(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    assert _kernel.AVAILABLE
    assert _kernel.unsent(server.fileno()) == 0
    sent = _fill(server)
    unsent = _kernel.unsent(server.fileno())
    assert unsent is not None and 0 < unsent <= sent
    client.settimeout(5)
    received = 0
    while received < sent:
        received += len(client.recv(1 << 20))
    _until(lambda: _kernel.unsent(server.fileno()) == 0, "the peer's ack")


def test_unsent_is_none_where_the_kernel_does_not_say(
    pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _ = pair
    monkeypatch.setattr(_kernel, "_OUTQ", None)
    assert _kernel.unsent(server.fileno()) is None
    closed = socket.socket()
    closed.close()
    monkeypatch.undo()
    assert _kernel.unsent(closed.fileno()) is None  # -1: no descriptor


def _full_session(server: socket.socket) -> Session:
    """A session over ``server`` whose socket is full of bytes it sent."""
    session = Session(server)
    session.sent = _fill(server)
    return session


def test_a_session_lags_by_what_the_kernel_holds_and_sees_its_reader(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    session = _full_session(server)
    _settled(server)
    # The queue is empty, yet the client is behind by the kernel's bytes.
    unsent = _kernel.unsent(server.fileno())
    assert unsent is not None
    assert session.lag(1.0) == pytest.approx(unsent / (1024 * 1024), rel=0.01)
    session.lag(2.0)
    assert session.last_progress == 1.0  # nothing taken since the first look
    client.settimeout(5)
    client.recv(1 << 20)
    client.recv(1 << 20)  # its window opens: the kernel sends, the peer acks

    def moved() -> bool:
        session.lag(3.0)
        return session.last_progress == 3.0

    _until(moved, "the reader's progress")


def test_without_the_kernel_a_session_lags_by_its_queue(
    pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _ = pair
    monkeypatch.setattr(_kernel, "_OUTQ", None)
    session = _full_session(server)
    session.conn.queue.extend([b"y" * 100] * 600)
    session.conn.queued_bytes = 60_000
    assert session.lag(1.0) == pytest.approx(0.6)  # 600 of 1000 messages
    assert session.last_progress == 0.0


def test_a_client_that_never_reads_shows_no_progress_once_full(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """What it acknowledged before its socket filled is not reading."""
    server, _ = pair
    session = _full_session(server)
    _settled(server)
    session.filled(1.0)
    assert session.last_progress == 0.0
    assert session.lag(2.0) > 0
    assert session.last_progress == 0.0


def test_without_the_kernel_the_fill_counts_as_progress(
    pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _ = pair
    monkeypatch.setattr(_kernel, "_OUTQ", None)
    session = _full_session(server)
    session.filled(1.0)
    assert session.last_progress == 1.0
