"""The RabbitMQ broker's options and routing keys, checked once at start-up.

No I/O: what ``REALTIME_RABBITMQ`` and ``REALTIME_BROKER_URL`` mean for pika
(the URL, the connection's parameters, the queue's name and flags), and the
routing key of a topic.
"""

from __future__ import annotations

import hashlib
import os
import socket
from urllib.parse import quote, urlsplit

import pika

from ..config import ConfigError, Settings
from ._support import redact

CONNECT_TIMEOUT = 2.0  # TCP (and TLS) and the AMQP handshake, all told


def routing_key(topic: str) -> str:
    """The routing key of ``topic``: one literal word, never a pattern.

    A topic exchange splits keys on '.' and treats '*' and '#' as wildcards;
    escaping them (and '%', the escape itself) makes every topic one word
    that matches only itself, on topic and direct exchanges alike. A key past
    AMQP's 255 bytes becomes a hash marked '%H', which escaping never makes.
    """
    key = topic.replace("%", "%25").replace(".", "%2E")
    key = key.replace("*", "%2A").replace("#", "%23")
    if len(key) > 63 and len(key.encode("utf-8", "surrogatepass")) > 255:
        key = "%H" + hashlib.sha256(topic.encode("utf-8", "surrogatepass")).hexdigest()
    return key


class Options:
    """REALTIME_RABBITMQ and REALTIME_BROKER_URL, checked once at start-up."""

    def __init__(self, settings: Settings) -> None:
        o = settings.rabbitmq
        self.exchange, self.exchange_type = o["exchange"], o["exchange_type"]
        if self.exchange_type not in ("topic", "direct"):
            raise ConfigError(
                "REALTIME_RABBITMQ['exchange_type'] must be 'topic' or 'direct'"
                f" (got {self.exchange_type!r}): topics are routed by exact routing"
                " key, which a fanout exchange ignores and a headers exchange"
                " only imitates"
            )
        if not self.exchange:
            raise ConfigError(
                "REALTIME_RABBITMQ['exchange'] must name an exchange: the default"
                " exchange cannot route to bound queues"
            )
        self.prefetch = o["prefetch_count"]
        if not 0 <= self.prefetch <= 65535:
            raise ConfigError(
                "REALTIME_RABBITMQ['prefetch_count'] must be 0 (no limit) to 65535,"
                f" got {self.prefetch!r}"
            )
        self.queue_prefix = o["queue_prefix"]
        if self.queue_prefix.startswith("amq."):
            raise ConfigError(
                "REALTIME_RABBITMQ['queue_prefix'] must not start with 'amq.'"
                " (RabbitMQ reserves those names)"
            )
        self.durable, self.exclusive = o["queue_durable"], o["queue_exclusive"]
        self.auto_delete = o["queue_auto_delete"]
        # A queue neither the connection nor its consumer takes along keeps
        # its name (and what arrives) across reconnects; others get a fresh
        # name, as the broker may not have noticed the old connection's end.
        self.keeps_queue = not (self.exclusive or self.auto_delete)
        self.properties = pika.BasicProperties(
            delivery_mode=2 if o["persistent_messages"] else 1
        )
        self.url = settings.broker_url
        if self.url is not None:
            if urlsplit(self.url).scheme not in ("amqp", "amqps"):
                raise ConfigError(
                    "REALTIME_BROKER_URL must be an amqp:// or amqps:// URL for"
                    f" RabbitMQ, got {redact(self.url)!r}"
                )
            self.password = urlsplit(self.url).password or ""
        else:
            self.password = o["password"]
            self.url = (
                f"amqp://{quote(o['user'], safe='')}:{quote(o['password'], safe='')}"
                f"@{o['host']}:{o['port']}/{quote(o['vhost'], safe='')}"
            )

    def parameters(self, role: str) -> pika.URLParameters:
        params = pika.URLParameters(self.url)
        # Retries and their pace are the base's; an attempt must fail fast.
        params.connection_attempts, params.retry_delay = 1, 0
        params.socket_timeout = params.stack_timeout = CONNECT_TIMEOUT
        if role in ("publisher", "history"):
            # Nobody pumps an idle publisher (nor an idle history connection:
            # no read for minutes), so it could not answer heartbeats, and
            # RabbitMQ reset it (a 1,000-channel recovery storm's reads got
            # 503s); a dead one is found by the next publish or read instead.
            params.heartbeat = 0
        params.client_properties = {
            "connection_name": f"flask_realtime {role} {socket.gethostname()}"
            f" pid {os.getpid()}"
        }
        return params

    def queue_name(self) -> str:
        # Host and pid help an operator reading `rabbitmqctl list_queues`.
        host = socket.gethostname()[:40]
        return f"{self.queue_prefix}.{host}.{os.getpid()}.{os.urandom(4).hex()}"
