"""Admin requests: every node of the cluster reports, the asker adds up.

``flask realtime stats`` and its siblings run in a process that serves no
connections, so they ask the nodes over the broker: one request (see
:mod:`.control`) to the topic all nodes share, ``a:nodes``, which a node
subscribes to at its first connection or readiness probe
(``/realtime/health``), whichever comes first; each node answers with a
report of its own connections and channels. A process that only publishes
(a Celery worker, a script, the command itself) is no node and stays silent.

Nodes do not know each other, so the asker must decide when everybody has
answered. Redis counts the receivers of a publish: the gather ends as soon
as that many reports came, and a counted node that stays silent past the
window (frozen, or cut off with its connection open) is reported as
missing. RabbitMQ and NATS count nobody, so there the asker collects for the
whole window (:data:`WINDOW`, one second by default), which a node that
answers at all does in milliseconds. A registry of nodes kept by heartbeats
was the alternative: it would cost every node a message per period for the
life of the cluster, and it would still need a timeout to declare a node
gone; an admin command is rare, and a second is cheap.

A process with the null broker has no cluster to ask: it reports itself
alone, which is what the commands print then (see ``scope``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import typing as t
from collections import Counter

from .. import protocol
from ..brokers import BrokerUnavailable
from ..channels import compile_pattern
from . import topics

if t.TYPE_CHECKING:
    from . import Node

logger = logging.getLogger("flask_realtime")

#: How long a gather collects reports when the broker cannot count its
#: receivers, and the most it waits for a counted node.
WINDOW = 1.0
#: The most channels one node lists in a report (its busiest first).
CHANNEL_LIMIT = 10_000

Report = dict[str, t.Any]


class Gathered(t.NamedTuple):
    """The reports of one gather."""

    reports: list[Report]  # one per node that answered, ordered by host, pid
    counted: int | None  # receivers the broker counted (None: it cannot tell)
    scope: str  # "cluster", or "process" with the null broker

    @property
    def missing(self) -> int:
        """Nodes the broker counted that did not answer in time."""
        if self.counted is None:
            return 0
        return max(0, self.counted - len(self.reports))


class Admin:
    """One node's side of the admin requests, and the asking side."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._joined_pid: int | None = None

    def join(self) -> None:
        """Answer admin requests from now on: called at each connection and
        readiness probe, it subscribes once per process.

        Subscribed at the broker directly, not through the node's interest:
        like the node topic it is kept for the process's life, and the
        broker restores it after an outage.
        """
        node = self._node
        if not node.clustered or self._joined_pid == os.getpid():
            return
        self._joined_pid = os.getpid()
        try:
            node.broker.subscribe(topics.all_nodes())
        except BrokerUnavailable:
            self._joined_pid = None  # the next connection tries again
            raise

    # -- answering -------------------------------------------------------------

    def report(self, request: dict[str, t.Any]) -> Report:
        """This node's numbers; ``request`` may narrow its channels with
        ``pattern`` (``*`` is a wildcard) and ``limit``, and ask how many
        connections a ``user`` (its key) or a ``connection`` (an id) has
        here (``matched``)."""
        node = self._node
        hub = node.hub
        conns = hub.all()
        pattern = request.get("pattern")
        regex = compile_pattern(pattern) if isinstance(pattern, str) else None
        names = hub.channels()
        counts = {
            name: hub.subscriber_count(name)
            for name in names
            if regex is None or regex.fullmatch(name)
        }
        limit = request.get("limit")
        if not isinstance(limit, int) or limit < 0:
            limit = CHANNEL_LIMIT
        truncated = len(counts) > limit
        if truncated:
            busiest = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
            counts = dict(busiest[:limit])
        report: Report = {
            "id": node.id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "app": node.app.import_name,
            "broker": node.broker.kind,
            "broker_connected": bool(node.broker.connected),
            "connections": len(conns),
            "transports": dict(Counter(conn.transport for conn in conns)),
            "users": len(hub.users()),
            "channels": len(names),
            "subscriptions": sum(len(conn.channels) for conn in conns),
            "shutting_down": node.shutting_down,
            "channel_subscribers": counts,
            "channels_truncated": truncated,
        }
        user, connection = request.get("user"), request.get("connection")
        if isinstance(user, str):
            report["matched"] = len(hub.user_connections(user))
        elif isinstance(connection, str):
            report["matched"] = int(connection in hub.connections)
        return report

    def answer(self, body: bytes, reply_to: str) -> None:
        """An admin request from the broker: reply with this node's report."""
        try:
            request = json.loads(body)
            if request.get("op") != "report":
                raise ValueError(f"unknown admin op {request.get('op')!r}")
            answer = self.report(request)
        except (ValueError, AttributeError) as exc:
            logger.warning("flask_realtime: admin request not understood: %s", exc)
            answer = {"id": self._node.id, "error": str(exc)}
        try:
            self._node.control.reply(reply_to, protocol.encode(answer))
        except BrokerUnavailable:
            logger.warning("flask_realtime: admin request not answered")

    # -- asking ------------------------------------------------------------------

    def gather(
        self,
        *,
        pattern: str | None = None,
        limit: int = CHANNEL_LIMIT,
        window: float = WINDOW,
        user: str | None = None,
        connection: str | None = None,
    ) -> Gathered:
        """Every node's report (see the module's docstring for when it ends).

        Raises :class:`~flask_realtime.BrokerUnavailable` when the broker
        cannot be reached.
        """
        request = {
            "op": "report",
            "pattern": pattern,
            "limit": limit,
            "user": user,
            "connection": connection,
        }
        node = self._node
        if not node.clustered:
            return Gathered([self.report(request)], None, "process")
        replies, counted = node.control.gather(
            topics.all_nodes(), protocol.encode(request), window
        )
        reports = []
        for reply in replies:
            try:
                report = json.loads(reply)
            except ValueError:
                logger.warning("flask_realtime: malformed admin report dropped")
                continue
            if isinstance(report, dict) and "error" not in report:
                reports.append(report)
        reports.sort(key=lambda r: (str(r.get("host")), r.get("pid", 0), r["id"]))
        return Gathered(reports, counted, "cluster")


def channel_totals(reports: t.Iterable[Report]) -> list[dict[str, t.Any]]:
    """Channels across the nodes: ``name``, ``subscribers`` (connections,
    summed over the nodes) and ``nodes`` (how many have subscribers), the
    busiest first."""
    subscribers: Counter[str] = Counter()
    nodes: Counter[str] = Counter()
    for report in reports:
        for name, count in report.get("channel_subscribers", {}).items():
            subscribers[name] += count
            nodes[name] += 1
    ordered = sorted(subscribers.items(), key=lambda item: (-item[1], item[0]))
    return [
        {"name": name, "subscribers": count, "nodes": nodes[name]}
        for name, count in ordered
    ]
