"""Prometheus metrics (``REALTIME_METRICS``): every metric object lives here.

Off by default, and then each call site in the node, hub and transports is a
function call that tests one module global and returns: nothing is imported,
nothing counted. :func:`enable` (from the blueprint, when the app's
``REALTIME_METRICS`` enables them) imports ``prometheus_client`` and creates
the metrics once per process.

Counting stays off the per-recipient path: a broadcast adds its recipients
once, after the hub's loop, and gauges that would need a call per queued
frame (queued bytes) or reach into the broker and presence are *sampled* by
the node's timer and just before a scrape.

Several processes (gunicorn workers) use prometheus_client's multiprocess
mode: with ``PROMETHEUS_MULTIPROC_DIR`` set before the app is imported, each
process writes its values to files in that directory and a scrape of any
worker reads every process's files (docs/metrics.md, docs/architecture.md).
Gauges say how to combine the processes: ``livesum`` for counts of things a
process holds, ``livemin`` for the broker's state; gunicorn's ``child_exit``
(:func:`flask_realtime.gunicorn.child_exit`) forgets a dead worker's gauges.
"""

from __future__ import annotations

import glob
import hmac
import logging
import os
import time
import typing as t
import weakref

if t.TYPE_CHECKING:
    from flask import Response

    from .connection import Connection
    from .node import Node

logger = logging.getLogger("flask_realtime")

#: The environment variable of prometheus_client's multiprocess mode.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Seconds from publish to the last local subscriber's queue.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

_TRANSPORTS = ("websocket", "sse", "longpolling", "memory")
_RECEIVED = ("ping", "subscribe", "unsubscribe", "event")
_SENT = ("channel", "user", "connection", "reply")
_PUBLISHED = ("channel", "user", "connection")
_REFUSALS = ("429", "503")
_CLOSES = ("1000", "1001", "4100", "4101", "4129", "4200")

# Whether anything is counted in this process (one app enabled metrics).
_on = False
_m: _Metrics | None = None
# The nodes whose state the sampled gauges add up.
_nodes: weakref.WeakSet[Node] = weakref.WeakSet()
# node -> broker links seen at its last sample (reconnects are the growth).
_links: weakref.WeakKeyDictionary[Node, int] = weakref.WeakKeyDictionary()


class _Metrics:
    """The metric objects, created once per process."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        p = "flask_realtime_"
        self.connections = Gauge(
            p + "connections",
            "Open client connections, by transport.",
            ["transport"],
            multiprocess_mode="livesum",
        )
        self.opened = Counter(
            p + "connections_opened", "Connections opened, by transport.", ["transport"]
        )
        self.disconnected = Counter(
            p + "connections_closed",
            "Connections gone (closed either side, or lost), by transport.",
            ["transport"],
        )
        self.refused = Counter(
            p + "connections_refused",
            "Connections refused before opening (limits, deployment), by HTTP status.",
            ["status"],
        )
        self.closes = Counter(
            p + "closes",
            "Connections closed with a close code, by code (others: 'other').",
            ["code"],
        )
        self.subscriptions = Gauge(
            p + "subscriptions",
            "Channel subscriptions of local connections.",
            multiprocess_mode="livesum",
        )
        self.received = Counter(
            p + "messages_received",
            "Client messages handled, by kind (ping, subscribe, unsubscribe, event).",
            ["kind"],
        )
        self.sent = Counter(
            p + "messages_sent",
            "Messages queued to clients, by kind (channel and user events, direct"
            " messages, replies).",
            ["kind"],
        )
        self.published = Counter(
            p + "messages_published",
            "Server-side sends published to the broker, by kind.",
            ["kind"],
        )
        self.latency = Histogram(
            p + "broadcast_latency_seconds",
            "Seconds from a broadcast's publish to its last local subscriber's queue.",
            buckets=LATENCY_BUCKETS,
        )
        self.queued_bytes = Gauge(
            p + "queued_bytes",
            "Bytes waiting in connections' outbound queues (sampled).",
            multiprocess_mode="livesum",
        )
        self.rate_limited = Counter(
            p + "rate_limited", "Client messages refused by the rate limit (429)."
        )
        self.broker_connected = Gauge(
            p + "broker_connected",
            "1 while the broker link is up (lowest over processes), by broker.",
            ["broker"],
            multiprocess_mode="livemin",
        )
        self.reconnects = Counter(
            p + "broker_reconnects", "Broker links made again after the first."
        )
        self.buffered = Gauge(
            p + "broker_buffered_messages",
            "Messages in the outage buffer, waiting for the broker (sampled).",
            multiprocess_mode="livesum",
        )
        self.presence = Gauge(
            p + "presence_members",
            "Presence members (one per channel and user) held by local connections"
            " (sampled).",
            multiprocess_mode="livesum",
        )
        # Children made once: a call site does a dict lookup, not labels().
        self.connections_of: dict[str, t.Any] = {}
        self.opened_of: dict[str, t.Any] = {}
        self.disconnected_of: dict[str, t.Any] = {}
        for transport in _TRANSPORTS:
            self.add_transport(transport)
        self.received_of = {k: self.received.labels(k) for k in _RECEIVED}
        self.sent_of = {k: self.sent.labels(k) for k in _SENT}
        self.published_of = {k: self.published.labels(k) for k in _PUBLISHED}
        # Series at zero from the start, for dashboards (others come as seen).
        for status in _REFUSALS:
            self.refused.labels(status)
        for code in _CLOSES:
            self.closes.labels(code)

    def add_transport(self, name: str) -> None:
        self.connections_of[name] = self.connections.labels(name)
        self.opened_of[name] = self.opened.labels(name)
        self.disconnected_of[name] = self.disconnected.labels(name)


def enable(node: Node) -> None:
    """Count from now on in this process, and sample ``node``'s state.

    :raises ConfigError: ``PROMETHEUS_MULTIPROC_DIR`` names no directory.
    """
    global _on, _m
    from .config import ConfigError

    # Checked before the import, which reads the variable once for good.
    directory = os.environ.get(MULTIPROC_ENV)
    if directory is not None and not os.path.isdir(directory):
        raise ConfigError(
            f"REALTIME_METRICS: {MULTIPROC_ENV}={directory!r} is not a directory"
        )
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ConfigError(
            "REALTIME_METRICS needs prometheus_client:"
            " pip install 'flask_realtime[metrics]'"
        ) from None
    if _m is None:
        from prometheus_client import values

        if directory is not None and values.ValueClass is values.MutexValue:
            logger.warning(
                "flask_realtime: %s was set after prometheus_client was imported;"
                " this process's metrics are not shared with the others",
                MULTIPROC_ENV,
            )
        _m = _Metrics()
    _nodes.add(node)
    _on = True


def enabled() -> bool:
    return _on


# -- call sites (each a no-op while metrics are off) -----------------------------


def opened(conn: Connection) -> None:
    if _on:
        m = t.cast(_Metrics, _m)
        transport = conn.transport
        if transport not in m.opened_of:  # a transport added later
            m.add_transport(transport)
        m.connections_of[transport].inc()
        m.opened_of[transport].inc()


def disconnected(conn: Connection) -> None:
    if _on:
        m = t.cast(_Metrics, _m)
        transport = conn.transport
        m.connections_of[transport].dec()
        m.disconnected_of[transport].inc()


def refused(refusal: tuple[int, str] | None) -> None:
    if _on and refusal is not None:
        t.cast(_Metrics, _m).refused.labels(str(refusal[0])).inc()


def closed(code: int) -> None:
    if _on:
        # Bounded labels: a peer chooses its close code.
        known = 1000 <= code <= 1015 or 4000 <= code < 4300
        t.cast(_Metrics, _m).closes.labels(str(code) if known else "other").inc()


def subscriptions(change: int) -> None:
    if _on:
        t.cast(_Metrics, _m).subscriptions.inc(change)


def received(kind: str) -> None:
    if _on:
        t.cast(_Metrics, _m).received_of[kind].inc()


def sent(kind: str, count: int = 1) -> None:
    """``count`` messages of ``kind`` queued (a broadcast's recipients at once)."""
    if _on and count:
        t.cast(_Metrics, _m).sent_of[kind].inc(count)


def published(kind: str) -> None:
    if _on:
        t.cast(_Metrics, _m).published_of[kind].inc()


def rate_limited() -> None:
    if _on:
        t.cast(_Metrics, _m).rate_limited.inc()


# -- broadcast latency: the publish time rides in the message's header -----------


def stamp(header: bytes) -> bytes:
    """A channel message's header, with the publish time when metrics are on.

    The header is the excluded connection's id (or nothing); a space and the
    wall-clock time follow it (ids have no spaces). Wall clock, so that every
    node can read it: gunicorn's workers share one, other hosts are as close
    as NTP keeps them.
    """
    if not _on:
        return header
    return b"%s %.6f" % (header, time.time())


def unstamp(header: bytes) -> tuple[bytes, float | None]:
    """``(header without the time, publish time or None)``: stripped even
    while metrics are off here, since the publisher may count."""
    if b" " not in header:
        return header, None
    header, _, sent_at = header.partition(b" ")
    try:
        return header, float(sent_at)
    except ValueError:
        return header, None


def broadcast_done(sent_at: float | None) -> None:
    """A broadcast stamped at ``sent_at`` is in its last local queue."""
    if _on and sent_at is not None:
        t.cast(_Metrics, _m).latency.observe(max(0.0, time.time() - sent_at))


# -- sampled gauges ----------------------------------------------------------------


def sample(*_: t.Any) -> None:
    """Set the sampled gauges from every node of this process (the timer's
    tick, and the scrape)."""
    if not _on:
        return
    m = t.cast(_Metrics, _m)
    from .node import topics

    queued = members = buffered = 0
    for node in list(_nodes):
        queued += sum(conn.queued_bytes for conn in node.hub.all())
        presence = node.presence
        for channel in presence.local_channels():
            members += len(presence.local_members(channel))
        broker = node.broker
        buffered += getattr(broker, "buffered", 0)
        # A process that never needed its broker (no client yet, no health
        # check) has not connected, and is not down either: no value.
        if node.interest.is_subscribed(topics.node(node.id)):
            m.broker_connected.labels(broker.kind).set(1 if broker.connected else 0)
        links = broker.links
        before = _links.get(node, links)
        if links > before:
            m.reconnects.inc(links - max(before, 1))
        _links[node] = max(before, links)
    m.queued_bytes.set(queued)
    m.presence.set(members)
    m.buffered.set(buffered)


# -- the endpoint ------------------------------------------------------------------


def authorized(header: str | None, token: str) -> bool:
    """Whether ``Authorization: Bearer <token>`` names ``token`` (in constant
    time: a timing must not tell how much of a guess was right)."""
    if not header:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def exposition() -> tuple[bytes, str]:
    """Every process's metrics in the text format, and its content type."""
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        REGISTRY,
        CollectorRegistry,
        generate_latest,
    )

    sample()
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def view(token: str) -> Response:
    """``GET /realtime/metrics``: the metrics, with the right bearer token."""
    from flask import Response, request

    from .transports.http import json_error

    if not authorized(request.headers.get("Authorization"), token):
        response = json_error(401, "metrics need 'Authorization: Bearer <token>'")
        response.headers["WWW-Authenticate"] = 'Bearer realm="flask_realtime"'
        return response
    body, content_type = exposition()
    response = Response(body, content_type=content_type)
    response.headers["Cache-Control"] = "no-store"
    return response


# -- gunicorn ----------------------------------------------------------------------


def process_dead(pid: int) -> None:
    """Forget the live gauges of a process that exited (multiprocess mode)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def clear_directory() -> None:
    """Remove the files of an earlier run from ``PROMETHEUS_MULTIPROC_DIR``
    (a restarted server would otherwise add the old counters to its own)."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory or not os.path.isdir(directory):
        return
    for kind in ("counter", "gauge_*", "histogram", "summary"):
        for path in glob.glob(os.path.join(directory, f"{kind}_*.db")):
            os.remove(path)
