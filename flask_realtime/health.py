"""The health endpoints: readiness (``/health``) and liveness (``/health/live``).

Readiness says whether this worker can serve realtime clients now: 503 when
the deployment cannot work (:mod:`.deployment`) or the broker is unreachable,
so a load balancer or Kubernetes sends clients elsewhere meanwhile. Liveness
says only that the process answers HTTP, so that an orchestrator does not
restart workers for a broker outage they will ride out by themselves.
"""

from __future__ import annotations

import typing as t

from flask import Response, jsonify

from . import deployment
from .node import topics

if t.TYPE_CHECKING:
    from .node import Node


def _answer(code: int, **body: t.Any) -> Response:
    response = jsonify(**body)
    response.status_code = code
    response.headers["Cache-Control"] = "no-store"
    return response


def readiness(node: Node, environ: t.Mapping[str, t.Any]) -> Response:
    problem = deployment.request_problem(node.settings, environ)
    if problem is not None:
        return _answer(503, status="misconfigured", node=node.id, error=problem)
    # A worker connects to its broker on first use; its readiness probe may
    # come before any client, so it starts the connection as the first
    # client would (the node topic is held for the process's life).
    with node.interest.hold(topics.node(node.id)):
        pass
    node.admin.join()  # and it answers the admin commands from now on
    broker = node.broker
    if not broker.connected:
        return _answer(
            503,
            status="unavailable",
            node=node.id,
            broker={
                "kind": broker.kind,
                "url": broker.url,
                "connected": False,
                "reason": getattr(broker, "problem", None)
                or f"not connected to the {broker.kind} broker at {broker.url} yet",
            },
        )
    return _answer(
        200,
        status="ok",
        node=node.id,
        connections=len(node.hub),
        transports=list(node.settings.transports),
        broker=node.settings.broker,
        broker_messages=node.received,
    )


def liveness(node: Node) -> Response:
    """200 while the process answers; never asks the broker."""
    return _answer(200, status="ok", node=node.id)
