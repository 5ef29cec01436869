"""Benchmarks of the SSE and long-polling transports on one worker.

Each scenario gets a fresh ``gunicorn -w 1 -k GeventWebSocketWorker
--worker-connections 20000`` serving ``benchmarks/apps/realtime_app.py``,
pinned to core 0 (``run.Server``); this process pins itself to core 1 and is
the load generator: one epoll loop over raw non-blocking sockets that speaks
HTTP/1.1 itself. Every broadcast carries its publish time (``"t"``,
``time.time()`` in the server); latency is the kernel's receive timestamp
(``SO_TIMESTAMPNS``) of the segment that brought it minus that time.

Scenarios:

* ``sse-burst``  -- N SSE streams (``/realtime/sse?channels=bench``), one
  burst of C broadcasts (``/bench/publish?rate=0``): deliveries/s, latency.
* ``sse-steady`` -- the same streams, R broadcasts/s for D s: latency.
* ``longpoll``   -- M long-poll clients, each re-polling at once after every
  answer with its cursor, R broadcasts/s for D s: latency, deliveries/s.
  A client re-polls on the same HTTP connection, or on a new one when the
  answer said ``Connection: close`` (as a browser would).

Usage::

    /tmp/venv/bin/python benchmarks/http_transports.py [--only sse-burst,...]
        [--streams 2000] [--count 300] [--pollers 1000] [--rate 20]
        [--duration 10] [--quick] [--json FILE]

Long-polling side by side, several rates, before and after a change (each
cell the median of ``--repeat`` runs, each run on a fresh server)::

    /tmp/venv/bin/python benchmarks/http_transports.py --only longpoll \
        --rates 1,5,20 --repeat 3 [--baseline DIR] [--tree DIR] [--fresh]

``--baseline DIR`` and ``--tree DIR`` are directories holding a
``flask_realtime`` package ("before" and "after"; "after" is this checkout
by default); ``--fresh`` adds "after" with a new HTTP connection for every
poll, what closing the connection after each answer would cost.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import json
import os
import select
import socket
import statistics
import sys
import time
import typing as t
from array import array
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402  (benchmarks/ is not a package)
import run  # noqa: E402

APP = "realtime_app:app"
CHANNEL = "bench"
LOADGEN_CORE = 1
RECV_SIZE = 1 << 18
T_MARK = b'"t":'
CURSOR_MARK = b'"cursor":'
SUBSCRIBED_MARK = b'"type":"subscribed"'
EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLERRS = select.EPOLLERR | select.EPOLLHUP

# Connection states. RECONNECTING: a ready client whose server ended the HTTP
# connection with its last answer (``Connection: close``), opening a new one.
CONNECTING, OPENING, SUBSCRIBING, READY, DEAD, RECONNECTING = range(6)


class Conn:
    """One HTTP connection of the fleet (an SSE stream or a long-poller)."""

    __slots__ = (
        "sock",
        "fd",
        "state",
        "buf",
        "count",
        "connection_id",
        "token",
        "cursor",
        "poll_head",
        "pending",
    )

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.state = CONNECTING
        self.buf = b""
        self.count = 0
        self.connection_id = ""
        self.token = ""
        self.cursor = 0
        self.poll_head = b""
        self.pending = b""  # the request to send once a reconnection is made


class Fleet:
    """Many HTTP clients on one epoll loop; the transport fills ``on_data``."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self.ep = select.epoll()
        self.conns: dict[int, Conn] = {}
        self.pending = 0
        self.ready = 0
        self.failed = 0
        self.reasons: dict[str, int] = {}
        self.received = 0
        self.latencies = array("d")
        self.first_arrival = 0.0
        self.last_arrival = 0.0
        self.batch = 0.0
        self.responses = 0
        self.reconnects = 0
        self.min_t = float("inf")
        #: Publish times seen: one per broadcast that reached anyone.
        self.sent_times: set[float] = set()

    # -- connections -------------------------------------------------------

    def start_one(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, loadgen.SO_TIMESTAMPNS, 1)
        sock.connect_ex((self.host, self.port))
        conn = Conn(sock)
        self.conns[conn.fd] = conn
        self.ep.register(conn.fd, EPOLLOUT | EPOLLERRS)
        self.pending += 1

    def kill(self, conn: Conn, reason: str) -> None:
        if conn.state == DEAD:
            return
        if conn.state in (READY, RECONNECTING):
            self.ready -= 1
        else:
            self.pending -= 1
            self.failed += 1
        conn.state = DEAD
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        try:
            self.ep.unregister(conn.fd)
        except (OSError, ValueError):
            pass
        conn.sock.close()

    def set_ready(self, conn: Conn) -> None:
        conn.state = READY
        self.pending -= 1
        self.ready += 1

    def send(self, conn: Conn, data: bytes) -> None:
        # Requests are small; the socket buffer always has room for one.
        try:
            conn.sock.send(data)
        except OSError as exc:
            self.kill(conn, f"send:{type(exc).__name__}")

    def reconnect(self, conn: Conn, data: bytes) -> None:
        """Send ``data`` on a new HTTP connection: the server closed the old
        one after its answer, and a browser would open another."""
        self.reconnects += 1
        try:
            self.ep.unregister(conn.fd)
        except (OSError, ValueError):
            pass
        conn.sock.close()
        del self.conns[conn.fd]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, loadgen.SO_TIMESTAMPNS, 1)
        sock.connect_ex((self.host, self.port))
        conn.sock, conn.fd = sock, sock.fileno()
        conn.pending = data
        conn.state = RECONNECTING
        self.conns[conn.fd] = conn
        self.ep.register(conn.fd, EPOLLOUT | EPOLLERRS)

    def close_all(self) -> None:
        for conn in list(self.conns.values()):
            try:
                self.ep.unregister(conn.fd)
            except (OSError, ValueError):
                pass
            conn.sock.close()
        self.conns.clear()
        self.ep.close()

    def open(self, n: int, inflight: int = 200, timeout: float = 120.0) -> float:
        """Open ``n`` clients, ``inflight`` at a time; return the seconds taken."""
        started = 0
        t0 = time.time()
        deadline = t0 + timeout
        while self.ready + self.failed < n and time.time() < deadline:
            while started < n and self.pending < inflight:
                self.start_one()
                started += 1
            self.loop_once(0.05)
        return time.time() - t0

    # -- the loop ------------------------------------------------------------

    def loop_once(self, timeout: float) -> None:
        conns = self.conns
        for fd, events in self.ep.poll(timeout):
            conn = conns.get(fd)
            if conn is None or conn.state == DEAD:
                continue
            if conn.state == CONNECTING:
                if events & EPOLLERRS:
                    self.kill(conn, "connect")
                    continue
                self.ep.modify(fd, EPOLLIN | EPOLLERRS)
                conn.state = OPENING
                self.send(conn, self.first_request(conn))
                continue
            if conn.state == RECONNECTING:
                if events & EPOLLERRS:
                    self.kill(conn, "reconnect")
                    continue
                self.ep.modify(fd, EPOLLIN | EPOLLERRS)
                conn.state = READY
                data, conn.pending = conn.pending, b""
                self.send(conn, data)
                continue
            try:
                data, anc, _flags, _addr = conn.sock.recvmsg(
                    RECV_SIZE, loadgen.ANC_SIZE
                )
            except BlockingIOError:
                continue
            except OSError as exc:
                self.kill(conn, f"recv:{type(exc).__name__}")
                continue
            if not data:
                self.kill(conn, "eof")
                continue
            arrived = 0.0
            for _level, kind, cdata in anc:
                if kind == loadgen.SO_TIMESTAMPNS:
                    sec, nsec = loadgen.TIMESPEC.unpack_from(cdata)
                    arrived = sec + nsec * 1e-9
            if not arrived:
                arrived = time.time()
            self.on_data(conn, data, arrived)

    def run_until(self, done: t.Callable[[], bool], idle: float, limit: float) -> None:
        """Serve the sockets until ``done()``, or nothing arrives for ``idle``
        seconds after something did, or ``limit`` seconds pass."""
        start = time.time()
        while not done():
            now = time.time()
            if now - start > limit:
                break
            if self.last_arrival and now - self.last_arrival > idle:
                break
            if not self.last_arrival and now - start > idle * 2:
                break
            self.loop_once(0.05)
            if self.batch:
                time.sleep(self.batch)

    def reset(self) -> None:
        self.received = 0
        self.responses = 0
        self.latencies = array("d")
        self.first_arrival = self.last_arrival = 0.0
        self.min_t = float("inf")
        self.sent_times = set()

    # -- to fill in ------------------------------------------------------------

    def first_request(self, conn: Conn) -> bytes:
        raise NotImplementedError

    def on_data(self, conn: Conn, data: bytes, arrived: float) -> None:
        raise NotImplementedError

    # -- shared ------------------------------------------------------------

    def count_messages(self, text: bytes, arrived: float) -> int:
        """Record the latency of every message in ``text`` (whole lines only)."""
        lat = self.latencies
        found = 0
        pos = text.find(T_MARK)
        while pos >= 0:
            start = pos + 4
            end = text.find(b",", start)
            sent = float(text[start:end])
            if sent < self.min_t:
                self.min_t = sent
            self.sent_times.add(sent)
            lat.append(arrived - sent)
            found += 1
            pos = text.find(T_MARK, end)
        if found:
            self.received += found
            if not self.first_arrival:
                self.first_arrival = arrived
            if arrived > self.last_arrival:
                self.last_arrival = arrived
        return found


class SSEFleet(Fleet):
    """SSE streams subscribed to one channel through ``?channels=``."""

    def first_request(self, conn: Conn) -> bytes:
        return (
            f"GET /realtime/sse?channels={CHANNEL} HTTP/1.1\r\n"
            f"Host: {self.host}:{self.port}\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()

    def on_data(self, conn: Conn, data: bytes, arrived: float) -> None:
        if conn.state == READY:
            # Whole lines only: a message's data line is never split here.
            cut = data.rfind(b"\n")
            if cut < 0:
                conn.buf += data
                return
            text = conn.buf + data[: cut + 1] if conn.buf else data[: cut + 1]
            conn.buf = data[cut + 1 :]
            conn.count += self.count_messages(text, arrived)
            return
        conn.buf += data
        if not conn.buf.startswith(b"HTTP/1.1 200"):
            if len(conn.buf) >= 12:
                self.kill(conn, "status:" + conn.buf[:12].decode("latin-1"))
            return
        at = conn.buf.find(SUBSCRIBED_MARK)
        if at >= 0:
            cut = conn.buf.find(b"\n", at)
            conn.buf = conn.buf[cut + 1 :] if cut >= 0 else b""
            self.set_ready(conn)


def _parse_response(buf: bytes) -> tuple[int, bytes, bool, bytes] | None:
    """(status, body, closes, rest) of the first whole HTTP response in
    ``buf``; ``closes``: the server ends the connection after it."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = buf[:head_end]
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at < 0:
        raise ValueError(f"response without Content-Length: {head[:200]!r}")
    end = lower.find(b"\r\n", at + 2)
    length = int(head[at + 17 : end if end >= 0 else None])
    body_start = head_end + 4
    if len(buf) < body_start + length:
        return None
    status = int(head[9:12])
    closes = b"\r\nconnection: close" in lower
    body = buf[body_start : body_start + length]
    return status, body, closes, buf[body_start + length :]


class PollFleet(Fleet):
    """Long-poll clients: open, subscribe by POST, then poll without pause.

    Each re-polls on the same HTTP connection unless the server said
    ``Connection: close``; with ``fresh`` every poll takes a new connection
    (what a server that closes after every answer would cost).
    """

    def __init__(self, port: int, fresh: bool = False) -> None:
        super().__init__(port)
        self.fresh = fresh

    def first_request(self, conn: Conn) -> bytes:
        return f"GET /realtime/poll HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode()

    def poll_request(self, conn: Conn) -> bytes:
        return conn.poll_head + b"%d HTTP/1.1\r\nHost: h\r\n\r\n" % conn.cursor

    def on_data(self, conn: Conn, data: bytes, arrived: float) -> None:
        conn.buf += data
        try:
            parsed = _parse_response(conn.buf)
        except ValueError as exc:
            self.kill(conn, str(exc)[:40])
            return
        if parsed is None:
            return
        status, body, closes, conn.buf = parsed
        if status != 200:
            self.kill(conn, f"http:{status}:{conn.state}")
            return
        if closes and conn.state != READY:
            # Opening and subscribing are ordinary Flask answers, kept alive.
            self.kill(conn, f"closed:{conn.state}")
            return
        if conn.state == READY:
            self.responses += 1
            at = body.rfind(CURSOR_MARK)
            end = body.find(b",", at)
            if end < 0:
                end = body.find(b"}", at)
            conn.cursor = int(body[at + 9 : end])
            conn.count += self.count_messages(body, arrived)
            if closes or self.fresh:
                self.reconnect(conn, self.poll_request(conn))
            else:
                self.send(conn, self.poll_request(conn))
        elif conn.state == OPENING:
            opened = json.loads(body)
            info = opened["messages"][0]["data"]
            conn.connection_id = info["connection_id"]
            conn.token = info["token"]
            conn.cursor = opened["cursor"]
            conn.poll_head = (
                f"GET /realtime/poll?connection_id={conn.connection_id}"
                f"&token={conn.token}&cursor="
            ).encode()
            message = json.dumps(
                {
                    "connection_id": conn.connection_id,
                    "token": conn.token,
                    "message": {"type": "subscribe", "channel": CHANNEL},
                }
            ).encode()
            conn.state = SUBSCRIBING
            self.send(
                conn,
                b"POST /realtime/send HTTP/1.1\r\nHost: h\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(message), message),
            )
        elif conn.state == SUBSCRIBING:
            if SUBSCRIBED_MARK not in body:
                self.kill(conn, "subscribe refused")
                return
            self.set_ready(conn)
            self.send(conn, self.poll_request(conn))


# -- running -------------------------------------------------------------------


def http_get(port: int, path: str) -> dict[str, t.Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {response.status} {body[:200]!r}")
        return json.loads(body)
    finally:
        conn.close()


def publish(port: int, count: int, rate: float, size: int) -> None:
    http_get(
        port, f"/bench/publish?count={count}&rate={rate}&size={size}&channel={CHANNEL}"
    )


def latency_summary(fleet: Fleet, expected: int) -> dict[str, t.Any]:
    lat = sorted(fleet.latencies)
    ms = [v * 1000 for v in lat]
    published = len(fleet.sent_times)
    res: dict[str, t.Any] = {
        "received": fleet.received,
        "expected": expected,
        "published_seen": published,
        # Deliveries missing of the broadcasts someone got (publisher lag
        # is not loss: see published_seen).
        "lost": fleet.ready * published - fleet.received,
        "not_received": expected - fleet.received,
    }
    if published > 1:
        times = sorted(fleet.sent_times)
        res["publish_rate"] = round((published - 1) / (times[-1] - times[0]), 2)
    if ms:
        res.update(
            p50_ms=round(loadgen.percentile(ms, 50), 2),
            p90_ms=round(loadgen.percentile(ms, 90), 2),
            p99_ms=round(loadgen.percentile(ms, 99), 2),
            max_ms=round(ms[-1], 2),
        )
    return res


def open_fleet(fleet: Fleet, n: int, pid: int, inflight: int) -> dict[str, t.Any]:
    rss_before = loadgen.read_rss_kb(pid)
    took = fleet.open(n, inflight=inflight)
    # Let the last handshakes settle before measuring memory.
    end = time.time() + 0.5
    while time.time() < end:
        fleet.loop_once(0.05)
    rss_after = loadgen.read_rss_kb(pid)
    return {
        "opened": fleet.ready,
        "failed": fleet.failed,
        "open_s": round(took, 2),
        "opens_per_s": round(fleet.ready / took, 1) if took else 0.0,
        "rss_before_kb": rss_before,
        "rss_after_kb": rss_after,
        "kb_per_conn": round((rss_after - rss_before) / max(1, fleet.ready), 1),
    }


def scenario_sse_burst(port: int, pid: int, args: argparse.Namespace) -> dict:
    fleet = SSEFleet(port)
    try:
        res = open_fleet(fleet, args.streams, pid, args.inflight)
        fleet.reset()
        fleet.batch = 0.01  # let each recv carry many events, as loadgen.py does
        n = fleet.ready
        expected = n * args.count
        meter = loadgen.Meter(pid)
        publish(port, args.count, 0, args.size)
        fleet.run_until(lambda: fleet.received >= expected, idle=5, limit=120)
        res.update(meter.stop(fleet.last_arrival or None))
        res.update(latency_summary(fleet, expected))
        span = fleet.last_arrival - fleet.min_t if fleet.received else 0.0
        res["span_s"] = round(span, 3)
        res["deliveries_per_s"] = round(fleet.received / span) if span > 0 else 0
        res["streams"] = n
        res["broadcasts"] = args.count
        res["reasons"] = fleet.reasons
        return res
    finally:
        fleet.close_all()


def scenario_sse_steady(port: int, pid: int, args: argparse.Namespace) -> dict:
    fleet = SSEFleet(port)
    try:
        res = open_fleet(fleet, args.streams, pid, args.inflight)
        fleet.reset()
        n = fleet.ready
        count = int(args.sse_rate * args.duration)
        expected = n * count
        meter = loadgen.Meter(pid)
        started = time.time()
        publish(port, count, args.sse_rate, args.size)
        fleet.run_until(
            lambda: fleet.received >= expected, idle=3, limit=args.duration + 30
        )
        res.update(meter.stop())
        res.update(latency_summary(fleet, expected))
        # Over the real span: a publisher that falls behind takes longer.
        took = max(fleet.last_arrival - started, args.duration)
        res["streams"] = n
        res["rate"] = args.sse_rate
        res["duration_s"] = args.duration
        res["span_s"] = round(took, 2)
        res["deliveries_per_s"] = round(fleet.received / took)
        res["reasons"] = fleet.reasons
        return res
    finally:
        fleet.close_all()


def scenario_longpoll(port: int, pid: int, args: argparse.Namespace) -> dict:
    fleet = PollFleet(port, fresh=args.fresh)
    try:
        res = open_fleet(fleet, args.pollers, pid, args.inflight)
        fleet.reset()
        n = fleet.ready
        count = int(args.rate * args.duration)
        expected = n * count
        meter = loadgen.Meter(pid)
        started = time.time()
        publish(port, count, args.rate, args.size)
        fleet.run_until(
            lambda: fleet.received >= expected, idle=3, limit=args.duration + 30
        )
        res.update(meter.stop())
        res.update(latency_summary(fleet, expected))
        took = max(fleet.last_arrival - started, args.duration)
        res["span_s"] = round(took, 2)
        res["pollers"] = n
        res["rate"] = args.rate
        res["duration_s"] = args.duration
        res["deliveries_per_s"] = round(fleet.received / took)
        res["poll_answers"] = fleet.responses
        res["poll_answers_per_s"] = round(fleet.responses / took)
        res["messages_per_answer"] = round(fleet.received / max(1, fleet.responses), 2)
        res["reconnects_per_s"] = round(fleet.reconnects / took)
        # The worker's CPU for one poll cycle: its answer, and the request
        # that follows it (with the new TCP connection, if it took one).
        cpu_s = res["server_cpu"] * res["wall_s"]
        res["cpu_us_per_answer"] = round(cpu_s / max(1, fleet.responses) * 1e6)
        res["reasons"] = fleet.reasons
        return res
    finally:
        fleet.close_all()


SCENARIOS: dict[str, t.Callable[[int, int, argparse.Namespace], dict]] = {
    "sse-burst": scenario_sse_burst,
    "sse-steady": scenario_sse_steady,
    "longpoll": scenario_longpoll,
}

ROWS: dict[str, list[tuple[str, str, str]]] = {
    "sse-burst": [
        ("streams", "SSE streams open", "{:,}"),
        ("failed", "failed opens", "{:,}"),
        ("opens_per_s", "opens/s (stream + subscribed)", "{:,.0f}"),
        ("kb_per_conn", "server RSS per stream (KB)", "{:.1f}"),
        ("broadcasts", "broadcasts in the burst", "{:,}"),
        ("received", "deliveries received", "{:,}"),
        ("published_seen", "broadcasts that reached a client", "{:,}"),
        ("publish_rate", "achieved publish rate (/s)", "{:,.1f}"),
        ("lost", "lost deliveries (of those broadcasts)", "{:,}"),
        ("not_received", "planned deliveries not received", "{:,}"),
        ("span_s", "first publish -> last receipt (s)", "{:.2f}"),
        ("deliveries_per_s", "deliveries/s", "{:,.0f}"),
        ("p50_ms", "latency p50 (ms)", "{:.1f}"),
        ("p99_ms", "latency p99 (ms)", "{:.1f}"),
        ("max_ms", "latency max (ms)", "{:.1f}"),
        ("server_cpu", "server CPU (cores)", "{:.2f}"),
        ("loadgen_cpu", "load generator CPU (cores)", "{:.2f}"),
        ("core0_other", "other load on server core", "{:.2f}"),
        ("host_busy_before", "host load before the run (cores)", "{:.2f}"),
    ],
    "sse-steady": [
        ("streams", "SSE streams open", "{:,}"),
        ("rate", "broadcasts/s", "{:g}"),
        ("duration_s", "seconds planned", "{:g}"),
        ("span_s", "publish start -> last receipt (s)", "{:.2f}"),
        ("received", "deliveries received", "{:,}"),
        ("published_seen", "broadcasts that reached a client", "{:,}"),
        ("publish_rate", "achieved publish rate (/s)", "{:,.1f}"),
        ("lost", "lost deliveries (of those broadcasts)", "{:,}"),
        ("not_received", "planned deliveries not received", "{:,}"),
        ("deliveries_per_s", "deliveries/s", "{:,.0f}"),
        ("p50_ms", "latency p50 (ms)", "{:.2f}"),
        ("p90_ms", "latency p90 (ms)", "{:.2f}"),
        ("p99_ms", "latency p99 (ms)", "{:.2f}"),
        ("max_ms", "latency max (ms)", "{:.2f}"),
        ("server_cpu", "server CPU (cores)", "{:.2f}"),
        ("loadgen_cpu", "load generator CPU (cores)", "{:.2f}"),
        ("core0_other", "other load on server core", "{:.2f}"),
        ("host_busy_before", "host load before the run (cores)", "{:.2f}"),
    ],
    "longpoll": [
        ("pollers", "long-poll clients", "{:,}"),
        ("failed", "failed opens", "{:,}"),
        ("kb_per_conn", "server RSS per poller (KB)", "{:.1f}"),
        ("rate", "broadcasts/s", "{:g}"),
        ("duration_s", "seconds planned", "{:g}"),
        ("span_s", "publish start -> last receipt (s)", "{:.2f}"),
        ("received", "deliveries received", "{:,}"),
        ("published_seen", "broadcasts that reached a client", "{:,}"),
        ("publish_rate", "achieved publish rate (/s)", "{:,.1f}"),
        ("lost", "lost deliveries (of those broadcasts)", "{:,}"),
        ("not_received", "planned deliveries not received", "{:,}"),
        ("deliveries_per_s", "deliveries/s", "{:,.0f}"),
        ("poll_answers_per_s", "poll answers/s", "{:,.0f}"),
        ("messages_per_answer", "messages per answer", "{:.2f}"),
        ("reconnects_per_s", "new HTTP connections/s (re-polls)", "{:,.0f}"),
        ("cpu_us_per_answer", "server CPU per poll cycle (µs)", "{:,.0f}"),
        ("p50_ms", "latency p50 (ms)", "{:.2f}"),
        ("p90_ms", "latency p90 (ms)", "{:.2f}"),
        ("p99_ms", "latency p99 (ms)", "{:.2f}"),
        ("max_ms", "latency max (ms)", "{:.2f}"),
        ("server_cpu", "server CPU (cores)", "{:.2f}"),
        ("loadgen_cpu", "load generator CPU (cores)", "{:.2f}"),
        ("core0_other", "other load on server core", "{:.2f}"),
        ("host_busy_before", "host load before the run (cores)", "{:.2f}"),
    ],
}

TITLES = {
    "sse-burst": "SSE fan-out burst",
    "sse-steady": "SSE steady rate",
    "longpoll": "long-polling steady rate",
}


def table(name: str, res: dict[str, t.Any]) -> str:
    lines = [f"### {TITLES[name]}", "", "| metric | flask_realtime |", "|---|---:|"]
    for key, label, spec in ROWS[name]:
        value = res.get(key)
        cell = "-" if value is None else spec.format(value)
        lines.append(f"| {label} | {cell} |")
    if res.get("loadgen_cpu", 0) >= run.SATURATED:
        lines.append("")
        lines.append("- the load generator was saturated: the figures measure it")
    if res.get("reasons"):
        lines.append(f"- connection failures: {res['reasons']}")
    lines.append("")
    return "\n".join(lines)


@contextlib.contextmanager
def source_tree(path: Path | None) -> t.Iterator[None]:
    """Serve the ``flask_realtime`` package found in ``path`` instead of this
    checkout's (``run.Server`` puts ``run.REPO`` first on ``PYTHONPATH``)."""
    if path is None:
        yield
        return
    saved = run.REPO
    run.REPO = path
    try:
        yield
    finally:
        run.REPO = saved


def run_one(
    name: str, args: argparse.Namespace, tree: Path | None = None
) -> dict[str, t.Any]:
    # Other tenants of the host would be measured too: wait for a quiet spell.
    busy = run.wait_for_quiet(args.quiet_below, args.quiet_wait)
    with source_tree(tree):
        server = run.Server(APP)
    try:
        pid = int(server.wait_ready()["pid"])
        res = SCENARIOS[name](server.port, pid, args)
        res["host_busy_before"] = round(busy, 2)
        return res
    finally:
        server.stop()


# What the side-by-side long-poll table shows: (key, label, format, how
# repeats combine). Medians, except for the noise and loss gauges, which
# show the worst run.
median = statistics.median
COMPARE_ROWS: list[tuple[str, str, str, t.Callable[[list[float]], float]]] = [
    ("p50_ms", "latency p50 (ms)", "{:.1f}", median),
    ("p90_ms", "latency p90 (ms)", "{:.1f}", median),
    ("p99_ms", "latency p99 (ms)", "{:.1f}", median),
    ("max_ms", "latency max (ms)", "{:.1f}", median),
    ("deliveries_per_s", "deliveries/s", "{:,.0f}", median),
    ("publish_rate", "achieved publish rate (/s)", "{:.1f}", median),
    ("poll_answers_per_s", "poll answers/s", "{:,.0f}", median),
    ("messages_per_answer", "messages per answer", "{:.2f}", median),
    ("reconnects_per_s", "new HTTP connections/s", "{:,.0f}", median),
    ("cpu_us_per_answer", "server CPU per poll cycle (µs)", "{:,.0f}", median),
    ("server_cpu", "server CPU (cores)", "{:.2f}", median),
    ("kb_per_conn", "server RSS per poller (KB)", "{:.1f}", median),
    ("lost", "lost deliveries (worst run)", "{:,.0f}", max),
    ("core0_other", "other load on server core (worst run)", "{:.2f}", max),
]


class Variant(t.NamedTuple):
    label: str
    tree: Path | None  # None: this checkout
    fresh: bool  # a new HTTP connection for every poll


def compare_longpoll(
    args: argparse.Namespace, rates: list[float], variants: list[Variant]
) -> dict[str, list[dict[str, t.Any]]]:
    """Every (rate, variant) ``args.repeat`` times, each on a fresh server.

    The variants alternate their order from one repeat to the next, so that
    a noisy spell on the shared host does not always land on the same one.
    """
    runs: dict[str, list[dict[str, t.Any]]] = {}
    for rep in range(args.repeat):
        order = variants if rep % 2 == 0 else variants[::-1]
        for rate in rates:
            for label, tree, fresh in order:
                key = f"{label} {rate:g}/s"
                one = argparse.Namespace(**{**vars(args), "rate": rate, "fresh": fresh})
                print(f"running longpoll {key} (run {rep + 1}) ...", file=sys.stderr)
                try:
                    res = run_one("longpoll", one, tree)
                except Exception as exc:  # the others still run
                    res = {"error": f"{type(exc).__name__}: {exc}"}
                runs.setdefault(key, []).append(res)
                shown = collections.defaultdict(lambda: "-", res)
                print(
                    "  p50 {p50_ms} ms, p99 {p99_ms} ms, {deliveries_per_s}"
                    " deliveries/s, other load {core0_other}".format_map(shown)
                    if "error" not in res
                    else f"  failed: {res['error']}",
                    file=sys.stderr,
                    flush=True,
                )
    return runs


def compare_table(
    runs: dict[str, list[dict[str, t.Any]]], pollers: int, duration: float
) -> str:
    columns = list(runs)
    lines = [
        f"### long-polling: {pollers:,} pollers, {duration:g} s per run,"
        f" median of {max(len(v) for v in runs.values())}",
        "",
        "| metric | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for key, label, spec, combine in COMPARE_ROWS:
        cells = []
        for column in columns:
            values = [r[key] for r in runs[column] if r.get(key) is not None]
            cells.append(spec.format(combine(values)) if values else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    # Every run's p99, to show the spread behind the median.
    cells = [
        " / ".join(f"{r['p99_ms']:.0f}" if "p99_ms" in r else "x" for r in runs[column])
        for column in columns
    ]
    lines.append("| p99 of each run (ms) | " + " | ".join(cells) + " |")
    failures = {
        column: [r.get("error") or r.get("reasons") for r in rs]
        for column, rs in runs.items()
        if any(r.get("error") or r.get("reasons") for r in rs)
    }
    if failures:
        lines.append("")
        lines.append(f"- failures: {failures}")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=",".join(SCENARIOS))
    p.add_argument("--streams", type=int, default=2000)
    p.add_argument("--count", type=int, default=300, help="broadcasts in the burst")
    p.add_argument("--sse-rate", type=float, default=20.0)
    p.add_argument("--pollers", type=int, default=1000)
    p.add_argument("--rate", type=float, default=20.0, help="long-poll broadcasts/s")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--size", type=int, default=100, help="wire bytes per message")
    p.add_argument("--inflight", type=int, default=200, help="concurrent opens")
    p.add_argument("--quick", action="store_true", help="small smoke run")
    p.add_argument("--quiet-below", type=float, default=0.3, help="cores busy")
    p.add_argument("--quiet-wait", type=float, default=60.0, help="max wait (s)")
    p.add_argument("--json", help="write the raw results here")
    p.add_argument(
        "--rates",
        help="long-poll broadcast rates to run one after another, e.g. 1,5,20;"
        " prints them side by side",
    )
    p.add_argument(
        "--baseline",
        type=Path,
        help="a directory holding another flask_realtime package: long-poll runs"
        " on it too, side by side with this checkout ('before' / 'after')",
    )
    p.add_argument(
        "--tree",
        type=Path,
        help="long-poll: measure the flask_realtime package in this directory"
        " ('after') instead of this checkout's (a snapshot holds still while"
        " others edit the checkout)",
    )
    p.add_argument("--repeat", type=int, default=1, help="runs per long-poll cell")
    p.add_argument(
        "--fresh",
        action="store_true",
        help="long-poll: also run this checkout with a new HTTP connection for"
        " every poll (what closing the connection after each answer costs)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.streams, args.count, args.pollers, args.duration = 200, 50, 100, 2
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    for name in names:
        if name not in SCENARIOS:
            p.error(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    problem = run.target_problem("realtime")
    if problem:
        print(f"flask_realtime cannot be imported: {problem}", file=sys.stderr)
        return 1
    # The server goes to core 0 (run.Server uses taskset); this process to 1.
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {LOADGEN_CORE})
    if args.rates or args.baseline or args.tree or args.repeat > 1 or args.fresh:
        rates = [float(r) for r in (args.rates or str(args.rate)).split(",")]
        tree = args.tree.resolve() if args.tree else None
        variants = [Variant("after", tree, False)]
        if args.fresh:
            variants.append(Variant("after, new conn. per poll", tree, True))
        if args.baseline:
            variants.insert(0, Variant("before", args.baseline.resolve(), False))
        for option, path in (("--baseline", args.baseline), ("--tree", args.tree)):
            if path is None:
                continue
            if not (path / "flask_realtime").is_dir():
                p.error(f"{option}: no flask_realtime package in {path}")
            with source_tree(path.resolve()):
                problem = run.target_problem("realtime")
            if problem:
                print(f"{option} cannot be imported: {problem}", file=sys.stderr)
                return 1
        runs = compare_longpoll(args, rates, variants)
        print(compare_table(runs, args.pollers, args.duration), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(runs, indent=2))
        return 0 if all("error" not in r for v in runs.values() for r in v) else 1
    results: dict[str, dict[str, t.Any]] = {}
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        try:
            results[name] = run_one(name, args)
        except Exception as exc:  # report the others all the same
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"{name} failed: {results[name]['error']}", file=sys.stderr)
            continue
        print(table(name, results[name]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
