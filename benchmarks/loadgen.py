"""WebSocket load generator for the flask_realtime benchmarks.

One process, one thread, one epoll loop over raw non-blocking sockets: the
client handshake, masking and frame parsing are done here so that the
generator costs far less CPU per delivery than the server it measures.
In the burst scenario broadcasts are counted by a byte marker with one C
scan per read (no framing, no JSON); in the steady scenario frames are
parsed and only the ``"t"`` field is sliced out and parsed as a float.
Receive times are the kernel's arrival timestamps (``SO_TIMESTAMPNS``).

It speaks three client protocols:

* ``floor``    -- ``/ws``; the server's first frame means subscribed.
* ``socketio`` -- engine.io v4 + Socket.IO v5 over WebSocket, by hand:
  ``0{...}`` open, send ``40``, get ``40{...}``, send ``42["join","bench"]``,
  get ``42["joined"]``; answers ``2`` pings with ``3``.
* ``realtime`` -- flask_realtime protocol 1: ``connected``, then
  ``subscribe``/``subscribed``; answers WebSocket pings with pongs.
* ``pusher``   -- Pusher protocol 7 on the same server (``/app/bench-key``):
  ``pusher:connection_established``, then ``pusher:subscribe`` /
  ``pusher_internal:subscription_succeeded``. Its ``data`` is a JSON string,
  so the markers are the escaped ``seq\\":`` and ``t\\":`` (same lengths).

Run by ``benchmarks/run.py``; it prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import base64
import errno
import http.client
import json
import os
import pathlib
import resource
import select
import socket
import struct
import sys
import time
import typing as t
from array import array

FLOOR = "floor"
SOCKETIO = "socketio"
REALTIME = "realtime"
PUSHER = "pusher"
PROTOCOLS = (FLOOR, SOCKETIO, REALTIME, PUSHER)
PATHS = {
    FLOOR: "/ws",
    SOCKETIO: "/socket.io/?EIO=4&transport=websocket",
    REALTIME: "/realtime/ws",
    PUSHER: "/app/bench-key?protocol=7&client=loadgen&version=1",
}

# Client states, in handshake order.
CONNECTING, UPGRADING, HELLO, NSCONNECT, JOINING, READY, DEAD = range(7)

RECV_SIZE = 1 << 18
EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLERRS = select.EPOLLERR | select.EPOLLHUP
SEQ_MARK = b'"seq":'
T_MARK = b'"t":'
SEQ_TAIL = len(SEQ_MARK) - 1
# Inside Pusher's ``data`` string, the same fields escaped (same lengths).
PUSHER_SEQ_MARK = b'seq\\":'
PUSHER_T_MARK = b't\\":'

# A server ping as it starts a frame: WebSocket ping (FIN+opcode 9), or a
# Socket.IO "2" in a 1-byte text frame. Neither byte 0x89 nor 0x81 can occur
# inside the ASCII JSON of the broadcasts, so a hit is a real ping.
PING_WS = b"\x89"
PING_SIO = b"\x81\x012"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Linux SO_TIMESTAMPNS (== SCM_TIMESTAMPNS); the socket module lacks it.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
ANC_SIZE = socket.CMSG_SPACE(16)
TIMESPEC = struct.Struct("qq")
SATURATED = 0.9  # loadgen CPU share above which its figures are suspect


def mask_frame(payload: bytes, opcode: int = 1) -> bytes:
    """Build one FIN client frame; RFC 6455 requires client frames masked."""
    n = len(payload)
    key = os.urandom(4)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0xFE)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0xFF)) + n.to_bytes(8, "big")
    if not n:
        return head + key
    k = (key * (n // 4 + 1))[:n]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(k, "big")).to_bytes(
        n, "big"
    )
    return head + key + body


def read_rss_kb(pid: int) -> int:
    """VmRSS of ``pid`` in KiB, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def count_fds(pid: int) -> int:
    """Open descriptors of ``pid`` (the per-process limit here is 20,000)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def read_cpu_s(pid: int) -> float:
    """User+system CPU seconds used so far by ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu_s(root: int) -> float:
    """User+system CPU seconds of a process and its live descendants
    (rabbitmq-server's Erlang VM runs under ``su`` and a shell script)."""
    parent, ticks = {}, {}
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        pid = int(stat.parent.name)
        parent[pid] = int(fields[1])
        ticks[pid] = int(fields[11]) + int(fields[12])
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo.extend(child for child, up in parent.items() if up == pid)
    return total / CLK_TCK


def core_times() -> dict[str, tuple[float, float]]:
    """Per-core (busy, steal) seconds from /proc/stat, to spot a noisy host."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            name, *vals = line.split()
            v = [int(x) for x in vals]
            idle = v[3] + v[4]
            steal = v[7] if len(v) > 7 else 0
            out[name] = ((sum(v[:8]) - idle - steal) / CLK_TCK, steal / CLK_TCK)
    return out


def self_cpu_s() -> float:
    """User+system CPU seconds used so far by this process."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Meter:
    """CPU share of this process and of the server worker over a window."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.wall0 = time.time()
        self.cpu0 = self_cpu_s()
        self.srv0 = read_cpu_s(pid)
        self.cores0 = core_times()

    def stop(self, wall_end: float | None = None) -> dict[str, float]:
        """Return CPU shares (1.0 = one full core) since construction."""
        wall = max((wall_end or time.time()) - self.wall0, 1e-9)
        now_wall = max(time.time() - self.wall0, 1e-9)
        own = (self_cpu_s() - self.cpu0) / now_wall
        srv = (read_cpu_s(self.pid) - self.srv0) / now_wall
        cores = core_times()
        d = {
            k: (
                (cores[k][0] - self.cores0[k][0]) / now_wall,
                (cores[k][1] - self.cores0[k][1]) / now_wall,
            )
            for k in cores
            if k in self.cores0
        }
        res = {
            "wall_s": round(wall, 3),
            "loadgen_cpu": round(own, 3),
            "server_cpu": round(srv, 3),
        }
        # Busy share of each core not explained by our two processes (other
        # tenants, kernel softirq work), and hypervisor steal: noise gauges.
        if "cpu0" in d:
            res["core0_other"] = round(max(0.0, d["cpu0"][0] - srv), 3)
            res["core0_steal"] = round(d["cpu0"][1], 3)
        if "cpu1" in d:
            res["core1_other"] = round(max(0.0, d["cpu1"][0] - own), 3)
            res["core1_steal"] = round(d["cpu1"][1], 3)
        return res


class Client:
    """One WebSocket connection and its counters."""

    __slots__ = ("sock", "fd", "state", "buf", "count", "last")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.state = CONNECTING
        self.buf = b""
        self.count = 0
        self.last = 0.0


class LoadGen:
    """Opens many WebSocket clients on one epoll loop and runs a scenario."""

    def __init__(self, proto: str, port: int, host: str = "127.0.0.1") -> None:
        self.proto = proto
        self.host = host
        self.port = port
        self.addr = (host, port)
        self.ep = select.epoll()
        self.clients: dict[int, Client] = {}
        self.pending = 0
        self.ready = 0
        self.failed = 0
        self.dropped = 0
        self.pings = 0  # server pings answered (WebSocket or engine.io)
        self.reasons: dict[str, int] = {}
        self.latencies: array | None = None  # from kernel arrival stamps
        self.user_latencies: array | None = None  # from time.time() at recv
        # Kernel receive timestamps: when the bytes reached our socket, so the
        # generator's own queueing (reading 1000 sockets in turn) and batching
        # sleeps are not counted as server latency.
        self.kstamp = True
        self.first_t = 0.0
        self.first_seq = -1
        self.expect = -1  # per-client broadcasts that complete a client
        self.done = 0  # clients that reached ``expect``
        self.batch = 0.0  # seconds to sleep between polls while receiving
        self.fast = False  # count broadcasts by marker (see count_fast)
        self.unanswered_pings = 0
        pusher = proto == PUSHER
        self.seq_mark = PUSHER_SEQ_MARK if pusher else SEQ_MARK
        self.t_mark = PUSHER_T_MARK if pusher else T_MARK
        self.request = (
            f"GET {PATHS[proto]} HTTP/1.1\r\n"
            f"Host: {host}:{port}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            f"Origin: http://{host}:{port}\r\n"
            "Sec-WebSocket-Key: {key}\r\n\r\n"
        )
        self.pong_sio = mask_frame(b"3")
        self.subscribe = mask_frame(b'{"type":"subscribe","channel":"bench","id":1}')
        self.pusher_subscribe = mask_frame(
            b'{"event":"pusher:subscribe","data":{"channel":"bench"}}'
        )
        self.sio_connect = mask_frame(b"40")
        self.sio_join = mask_frame(b'42["join","bench"]')

    # -- connection lifecycle -------------------------------------------

    def start_one(self) -> None:
        """Begin a non-blocking connect for one more client."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.kstamp:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        c = Client(sock)
        self.clients[c.fd] = c
        self.pending += 1
        err = sock.connect_ex(self.addr)
        if err not in (0, errno.EINPROGRESS):
            self.kill(c, f"connect:{errno.errorcode.get(err, err)}")
            return
        self.ep.register(c.fd, EPOLLOUT)

    def on_connected(self, c: Client) -> None:
        """TCP is up: send the HTTP upgrade request."""
        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.kill(c, f"connect:{errno.errorcode.get(err, err)}")
            return
        self.ep.modify(c.fd, EPOLLIN)
        key = base64.b64encode(os.urandom(16)).decode()
        c.state = UPGRADING
        self.send(c, self.request.replace("{key}", key).encode())

    def send(self, c: Client, data: bytes) -> None:
        """Send a small control message; a full buffer counts as a failure."""
        try:
            c.sock.send(data)
        except OSError as exc:
            self.kill(c, f"send:{type(exc).__name__}")

    def kill(self, c: Client, reason: str) -> None:
        """Close a client and account for why."""
        if c.state == DEAD:
            return
        if c.state == READY:
            self.ready -= 1
            self.dropped += 1
        else:
            self.pending -= 1
            self.failed += 1
        c.state = DEAD
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        try:
            self.ep.unregister(c.fd)
        except (OSError, ValueError):
            pass
        self.clients.pop(c.fd, None)
        c.sock.close()

    def set_ready(self, c: Client) -> None:
        """The client is subscribed: from now on broadcasts are counted."""
        c.state = READY
        self.pending -= 1
        self.ready += 1

    def close_all(self) -> None:
        """Close every client without a closing handshake (fast teardown)."""
        for c in list(self.clients.values()):
            try:
                self.ep.unregister(c.fd)
            except (OSError, ValueError):
                pass
            c.sock.close()
        self.clients.clear()
        self.ready = self.pending = 0

    # -- event loop --------------------------------------------------------

    def poll(self, timeout: float) -> None:
        """Wait for events once and process them all."""
        clients = self.clients
        kstamp = self.kstamp
        for fd, _ev in self.ep.poll(timeout):
            c = clients.get(fd)
            if c is None:
                continue
            if c.state == CONNECTING:
                self.on_connected(c)
                continue
            try:
                if kstamp:
                    data, anc, _flags, _addr = c.sock.recvmsg(RECV_SIZE, ANC_SIZE)
                else:
                    data, anc = c.sock.recv(RECV_SIZE), None
            except BlockingIOError:
                continue
            except OSError as exc:
                self.kill(c, f"recv:{type(exc).__name__}")
                continue
            if not data:
                self.kill(c, "eof" if c.state == READY else "eof-handshake")
                continue
            now = time.time()
            arrived = now
            if anc:
                for _level, kind, cdata in anc:
                    if kind == SO_TIMESTAMPNS:
                        sec, nsec = TIMESPEC.unpack_from(cdata)
                        arrived = sec + nsec * 1e-9
            if self.fast and c.state == READY:
                self.count_fast(c, data, arrived)
            else:
                self.feed(c, data, now, arrived)

    def count_fast(self, c: Client, data: bytes, arrived: float) -> None:
        """Count broadcasts by their ``"seq":`` marker, without framing.

        Burst mode only. Every broadcast frame holds the marker exactly once
        and nothing else the servers send does, so counting it in the byte
        stream counts frames; a marker split across two reads is caught by
        keeping the last ``len(marker) - 1`` bytes. Costs one C-level scan
        per read instead of Python work per frame. Pings cannot be answered
        here (a burst lasts seconds, heartbeats are 25 s); they are counted.
        """
        tail = c.buf
        got = data.count(self.seq_mark)
        if tail:
            got += (tail[-SEQ_TAIL:] + data[:SEQ_TAIL]).count(self.seq_mark)
        c.buf = data[-SEQ_TAIL:]
        if PING_WS in data or PING_SIO in data:
            self.unanswered_pings += 1
        if not got:
            return
        before = c.count
        c.count = before + got
        c.last = arrived
        if before < self.expect <= c.count:
            self.done += 1
        if not self.first_t:
            i = data.find(self.seq_mark)
            j = data.rfind(self.t_mark, 0, i)
            if j >= 0:
                self.note_first(data[j:])

    def feed(self, c: Client, data: bytes, now: float, arrived: float) -> None:
        """Parse every complete frame in ``data``; keep the tail for later.

        ``now`` is when we read the bytes, ``arrived`` when the kernel got
        the last of them (equal to ``now`` without kernel timestamps).
        """
        if c.buf:
            data = c.buf + data
            c.buf = b""
        if c.state == UPGRADING:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                c.buf = data
                return
            if not data.startswith(b"HTTP/1.1 101"):
                status = data.split(b"\r\n", 1)[0].decode(errors="replace")
                self.kill(c, f"upgrade:{status[:40]}")
                return
            data = data[end + 4 :]
            c.state = HELLO
        n = len(data)
        pos = 0
        latencies = self.latencies
        user_latencies = self.user_latencies
        while n - pos >= 2:
            b0 = data[pos]
            ln = data[pos + 1]
            if ln & 0x80:
                self.kill(c, "masked-server-frame")
                return
            if ln < 126:
                start = pos + 2
            elif ln == 126:
                if n - pos < 4:
                    break
                ln = (data[pos + 2] << 8) | data[pos + 3]
                start = pos + 4
            else:
                if n - pos < 10:
                    break
                ln = int.from_bytes(data[pos + 2 : pos + 10], "big")
                start = pos + 10
            end = start + ln
            if end > n:
                break
            pos = end
            opcode = b0 & 0x0F
            if opcode == 1 or opcode == 2:
                if c.state == READY and data.find(self.seq_mark, start, end) >= 0:
                    c.count += 1
                    c.last = arrived
                    if c.count == self.expect:
                        self.done += 1
                    if latencies is not None:
                        i = data.find(self.t_mark, start, end) + 4
                        sent = float(data[i : data.find(b",", i, end)])
                        latencies.append(arrived - sent)
                        user_latencies.append(now - sent)  # type: ignore[union-attr]
                    elif not self.first_t:
                        self.note_first(data[start:end])
                else:
                    self.control(c, data[start:end])
                    if c.state == DEAD:
                        return
            elif opcode == 9:
                self.pings += 1
                self.send(c, mask_frame(data[start:end], 0xA))
            elif opcode == 8:
                code = int.from_bytes(data[start : start + 2], "big") if ln >= 2 else 0
                self.kill(c, f"close:{code}")
                return
        if pos < n:
            c.buf = data[pos:]

    def note_first(self, payload: bytes) -> None:
        """Remember publish time and seq of the first broadcast seen."""
        i = payload.find(self.t_mark) + 4
        self.first_t = float(payload[i : payload.find(b",", i)])
        j = payload.find(self.seq_mark) + 6
        self.first_seq = int(payload[j : payload.find(b",", j)])

    def control(self, c: Client, p: bytes) -> None:
        """Handshake steps and protocol-level pings (non-broadcast frames)."""
        proto = self.proto
        if proto == SOCKETIO:
            if p == b"2":
                self.pings += 1
                self.send(c, self.pong_sio)
            elif c.state == HELLO and p.startswith(b"0{"):
                c.state = NSCONNECT
                self.send(c, self.sio_connect)
            elif c.state == NSCONNECT and p.startswith(b"40"):
                c.state = JOINING
                self.send(c, self.sio_join)
            elif c.state == JOINING and p.startswith(b'42["joined"'):
                self.set_ready(c)
            elif p.startswith(b"44") or p.startswith(b"1"):
                self.kill(c, f"sio:{p[:30].decode(errors='replace')}")
        elif proto == REALTIME:
            if c.state == HELLO and b'"connected"' in p:
                c.state = JOINING
                self.send(c, self.subscribe)
            elif c.state == JOINING and b'"subscribed"' in p:
                self.set_ready(c)
            elif b'"type":"ping"' in p:
                self.send(c, mask_frame(b'{"type":"pong"}'))
            elif b'"type":"error"' in p:
                self.kill(c, f"rt-error:{p[:80].decode(errors='replace')}")
        elif proto == PUSHER:
            if c.state == HELLO and b"pusher:connection_established" in p:
                c.state = JOINING
                self.send(c, self.pusher_subscribe)
            elif c.state == JOINING and b"subscription_succeeded" in p:
                self.set_ready(c)
            elif b'"pusher:ping"' in p:
                self.send(c, mask_frame(b'{"event":"pusher:pong","data":{}}'))
            elif b'"pusher:error"' in p:
                self.kill(c, f"pusher-error:{p[:80].decode(errors='replace')}")
        elif c.state == HELLO:
            self.set_ready(c)

    # -- phases ------------------------------------------------------------

    def open(self, n: int, inflight: int, timeout: float) -> dict[str, t.Any]:
        """Open ``n`` clients with at most ``inflight`` handshakes in progress."""
        t0 = time.time()
        started = 0
        deadline = t0 + timeout
        while self.ready + self.failed < n and time.time() < deadline:
            while started < n and self.pending < inflight:
                self.start_one()
                started += 1
            self.poll(0.05)
            if started >= n and self.pending == 0:
                break
        elapsed = time.time() - t0
        return {
            "opened": self.ready,
            "failed": self.failed,
            "timed_out": self.pending,
            "open_s": round(elapsed, 3),
            "connects_per_s": round(self.ready / elapsed, 1) if elapsed else 0.0,
        }

    def wait(self, seconds: float) -> None:
        """Keep serving the sockets (pings, stray frames) for a while."""
        end = time.time() + seconds
        while (left := end - time.time()) > 0:
            self.poll(min(left, 0.1))

    def http_get(self, path: str) -> dict[str, t.Any]:
        """Small blocking HTTP GET to the server's bench endpoints."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"GET {path}: HTTP {resp.status} {body[:200]!r}")
            return json.loads(body)
        finally:
            conn.close()

    def receive(self, per_client: int, idle: float, limit: float) -> None:
        """Run until every live client has ``per_client`` broadcasts.

        Gives up after ``idle`` seconds without any delivery or ``limit``
        seconds in all, so lost messages end the run instead of hanging it.
        Completion is counted in :meth:`feed`, so the check here is O(1).
        """
        self.expect = per_client
        self.done = sum(1 for c in self.clients.values() if c.count >= per_client)
        start = progress = check = time.time()
        seen = -1
        batch = self.batch
        while self.done < self.ready:
            if batch:
                # Let frames pile up so each recv() returns many of them:
                # on loopback the recv syscall, not Python, is the cost.
                time.sleep(batch)
            self.poll(0.05)
            now = time.time()
            if now - check > 0.5:
                check = now
                got = sum(c.count for c in self.clients.values())
                if got != seen:
                    seen, progress = got, now
                elif now - progress > idle:
                    return
            if now - start > limit:
                return

    def reset_counts(self) -> None:
        """Forget deliveries so far (handshake frames, earlier phases)."""
        for c in self.clients.values():
            c.count = 0
            c.last = 0.0
        self.first_t = 0.0
        self.first_seq = -1

    def delivery_summary(
        self, expected_each: int, subscribers: int
    ) -> dict[str, t.Any]:
        """Received vs expected, so lost or duplicated deliveries show up."""
        counts = [c.count for c in self.clients.values() if c.state == READY]
        received = sum(counts)
        return {
            "subscribers": subscribers,
            "live_at_end": len(counts),
            "expected": expected_each * subscribers,
            "received": received,
            "lost": expected_each * subscribers - received,
            "short_clients": sum(1 for x in counts if x < expected_each),
            "extra": sum(max(0, x - expected_each) for x in counts),
        }


def percentile(sorted_vals: t.Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_vals:
        return float("nan")
    k = min(len(sorted_vals) - 1, max(0, round(q / 100 * len(sorted_vals) + 0.5) - 1))
    return sorted_vals[k]


def scenario_burst(lg: LoadGen, args: argparse.Namespace, pid: int) -> dict[str, t.Any]:
    """Fan-out: N broadcasts as fast as the server can, to every subscriber."""
    opened = lg.open(args.clients, args.inflight, args.connect_timeout)
    lg.wait(0.5)
    lg.reset_counts()
    lg.fast = args.fast
    meter = Meter(pid)
    lg.http_get(
        f"/bench/publish?count={args.count}&rate=0&size={args.size}&channel=bench"
    )
    lg.receive(args.count, idle=args.idle, limit=args.limit)
    last = max((c.last for c in lg.clients.values()), default=0.0)
    cpu = meter.stop(last or None)
    res = {**opened, **lg.delivery_summary(args.count, opened["opened"]), **cpu}
    span = last - lg.first_t if lg.first_t and last else 0.0
    res["span_s"] = round(span, 4)
    res["first_seq"] = lg.first_seq
    res["fast_count"] = lg.fast
    res["unanswered_pings"] = lg.unanswered_pings
    res["deliveries_per_s"] = round(res["received"] / span, 1) if span > 0 else 0.0
    return res


def scenario_steady(
    lg: LoadGen, args: argparse.Namespace, pid: int
) -> dict[str, t.Any]:
    """Paced broadcasts; latency = receive time - publish time in the message."""
    opened = lg.open(args.clients, args.inflight, args.connect_timeout)
    lg.wait(0.5)
    lg.reset_counts()
    count = int(args.rate * args.duration)
    lg.latencies = array("d")
    lg.user_latencies = array("d")
    meter = Meter(pid)
    lg.http_get(
        f"/bench/publish?count={count}&rate={args.rate}&size={args.size}&channel=bench"
    )
    lg.receive(count, idle=args.idle, limit=args.duration + args.limit)
    cpu = meter.stop()
    lat = sorted(lg.latencies)
    res = {**opened, **lg.delivery_summary(count, opened["opened"]), **cpu}
    res["rate"] = args.rate
    res["samples"] = len(lat)
    for q in (50, 90, 99, 99.9):
        res[f"p{q:g}_ms"] = round(percentile(lat, q) * 1000, 3)
    res["max_ms"] = round(lat[-1] * 1000, 3) if lat else float("nan")
    # A negative latency would mean the receive stamp is not comparable with
    # the server's time.time(); kept visible as a sanity check.
    res["min_ms"] = round(lat[0] * 1000, 3) if lat else float("nan")
    res["mean_ms"] = round(sum(lat) / len(lat) * 1000, 3) if lat else float("nan")
    ulat = sorted(lg.user_latencies)
    for q in (50, 99):
        res[f"user_p{q}_ms"] = round(percentile(ulat, q) * 1000, 3)
    res["kernel_timestamps"] = lg.kstamp
    return res


def scenario_capacity(
    lg: LoadGen, args: argparse.Namespace, pid: int
) -> dict[str, t.Any]:
    """Idle connections: connect rate and server RSS per connection."""
    # Warm up first so lazily imported modules and first-request caches
    # are not charged to the per-connection figure.
    warm = lg.open(min(args.warmup, args.clients), args.inflight, args.connect_timeout)
    lg.close_all()
    lg.failed = 0
    lg.reasons.clear()
    time.sleep(1.0)
    rss0 = read_rss_kb(pid)
    meter = Meter(pid)
    opened = lg.open(args.clients, args.inflight, args.connect_timeout)
    cpu = meter.stop()
    rss_open = read_rss_kb(pid)
    lg.wait(args.hold)
    rss1 = read_rss_kb(pid)
    n = opened["opened"]
    res = {**opened, **cpu, "warmup_opened": warm["opened"]}
    res["rss_before_kb"] = rss0
    res["rss_open_kb"] = rss_open
    res["rss_after_kb"] = rss1
    res["kb_per_conn"] = round((rss1 - rss0) / n, 2) if n else float("nan")
    res["server_fds"] = count_fds(pid)
    if args.verify:
        lg.reset_counts()
        lg.http_get("/bench/publish?count=1&rate=0&size=100&channel=bench")
        lg.receive(1, idle=args.idle, limit=args.limit)
        summary = lg.delivery_summary(1, n)
        res["verify_received"] = summary["received"]
        res["verify_lost"] = summary["lost"]
        res["rss_after_broadcast_kb"] = read_rss_kb(pid)
    return res


SCENARIOS = {
    "burst": scenario_burst,
    "steady": scenario_steady,
    "capacity": scenario_capacity,
}


def main(argv: list[str] | None = None) -> int:
    """Parse options, run one scenario against one server, print JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("--proto", choices=PROTOCOLS, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--count", type=int, default=200, help="burst broadcasts")
    p.add_argument("--rate", type=float, default=100.0, help="steady broadcasts/s")
    p.add_argument("--duration", type=float, default=10.0, help="steady seconds")
    p.add_argument("--size", type=int, default=100, help="wire bytes per message")
    p.add_argument("--inflight", type=int, default=200, help="concurrent handshakes")
    p.add_argument("--warmup", type=int, default=100, help="capacity warm-up conns")
    p.add_argument("--hold", type=float, default=3.0, help="capacity settle seconds")
    p.add_argument("--no-verify", dest="verify", action="store_false")
    p.add_argument(
        "--batch-ms",
        type=float,
        default=None,
        help="sleep between polls while receiving (default: 50 for burst, 0 else)",
    )
    p.add_argument(
        "--no-kernel-timestamps",
        dest="kstamp",
        action="store_false",
        help="time receipts with time.time() after recv instead of SO_TIMESTAMPNS",
    )
    p.add_argument(
        "--parse-frames",
        dest="fast",
        action="store_false",
        help="burst: parse every frame instead of counting markers",
    )
    p.add_argument("--idle", type=float, default=5.0, help="give up after idle s")
    p.add_argument("--limit", type=float, default=120.0, help="hard limit s")
    p.add_argument("--connect-timeout", type=float, default=120.0)
    args = p.parse_args(argv)

    lg = LoadGen(args.proto, args.port)
    if args.batch_ms is None:
        args.batch_ms = 10.0 if args.scenario == "burst" else 0.0
    lg.batch = args.batch_ms / 1000
    lg.kstamp = args.kstamp
    pid = int(lg.http_get("/bench/stats")["pid"])
    try:
        res = SCENARIOS[args.scenario](lg, args, pid)
    finally:
        lg.close_all()
    res.update(
        scenario=args.scenario,
        proto=args.proto,
        server_pid=pid,
        reasons=lg.reasons,
        dropped=lg.dropped,
        pings_answered=lg.pings,
        loadgen_saturated=res.get("loadgen_cpu", 0) >= SATURATED,
    )
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
