"""A RabbitMQ that has lost its stream queues is reported, once, with the fix.

A RabbitMQ killed within seconds of the first stream declared on it can
restart without its stream coordinator: it then answers NOT_FOUND for the
history streams for good, and the node can never connect. After a while
(``_streams_lost_after``, 30 s; less here) the node logs one ERROR that
names the likely cause and the operator's fix, and ``/health`` gives it as
its reason. Here another connection deletes a kept channel's stream each
time the node has declared it and checks it, before the node consumes it:
the same NOT_FOUND at every connect.
"""

from __future__ import annotations

import logging
import time
import typing as t

import pika
import pika.exceptions
import pytest
from flask import Flask

from flask_realtime import Realtime
from flask_realtime.brokers import _amqp_ready
from flask_realtime.node import topics
from tests.brokerclients import wait_until
from tests.brokerservers import BrokerServer

LOST = "RabbitMQ has lost its stream queues"


@pytest.fixture
def server(broker_servers: t.Callable[[str], BrokerServer]) -> BrokerServer:
    return broker_servers("rabbitmq")


def delete(url: str, name: str) -> None:
    """Delete the queue ``name`` from a connection of its own."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        connection.channel().queue_delete(name)
    finally:
        connection.close()


def test_a_stream_missing_at_every_connect_is_reported_once_with_the_fix(
    server: BrokerServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A new stream's readiness checks give up soon (it is consumed anyway).
    monkeypatch.setattr(_amqp_ready, "READY_WAIT", 0.2)
    app = Flask(__name__)
    app.config.update(
        REALTIME_TRANSPORTS=["memory"],
        REALTIME_BROKER="rabbitmq",
        REALTIME_BROKER_URL=server.url,
        REALTIME_HISTORY={"lost.*": {"size": 10, "ttl": 60}},
    )
    realtime = Realtime(app)
    broker = realtime.node.broker
    broker._streams_lost_after = 0.3
    topic = topics.channel(f"lost.{time.monotonic_ns()}")
    name = broker._history.name(topic)
    checks = broker._checks
    check = checks._connect

    def gone_before_each_check() -> t.Any:
        # The node declared the stream and checks it before consuming it:
        # gone, as RabbitMQ's lost streams are after their declare.
        delete(server.url, name)
        return check()

    checks._connect = gone_before_each_check
    health = app.test_client()
    caplog.set_level(logging.ERROR, logger="flask_realtime")
    try:
        assert health.get("/realtime/health").status_code == 200
        broker.subscribe(topic)  # followed from now on, at every connect

        def reported() -> bool:
            answer = health.get("/realtime/health")
            if answer.status_code != 503:
                return False
            return LOST in t.cast(dict, answer.json)["broker"]["reason"]

        wait_until(reported, 10)
        lost = [r for r in caplog.records if LOST in r.getMessage()]
        assert len(lost) == 1 and lost[0].levelno == logging.ERROR
        message = lost[0].getMessage()
        assert "stream coordinator" in message and "delete_queue" in message
        assert name in message and "NOT_FOUND" in message  # what RabbitMQ said
    finally:
        broker.close()
