"""The settings: the frozen result, and the default of every ``REALTIME_*`` key."""

from __future__ import annotations

import dataclasses
import typing as t

if t.TYPE_CHECKING:
    from .pusher import PusherSettings
    from .webhooks import WebhookSettings

TRANSPORTS = ("websocket", "sse", "longpolling", "memory")
BROKERS = ("null", "redis", "rabbitmq", "nats")


class ConfigError(ValueError):
    """A ``REALTIME_*`` setting has a value the extension cannot use."""


@dataclasses.dataclass(frozen=True)
class Settings:
    transports: tuple[str, ...]
    broker: str
    broker_url: str | None
    redis: dict[str, t.Any]
    rabbitmq: dict[str, t.Any]
    nats_url: str
    broker_buffer: int
    url_prefix: str
    websocket_path: str
    sse_path: str
    longpoll_path: str
    host: str
    port: int
    ssl: dict[str, str] | None
    heartbeat: float
    longpoll_timeout: float
    longpoll_expiry: float
    max_message_size: int
    max_message_fragments: int
    fragment_timeout: float
    max_subscriptions: int
    max_queue_messages: int
    max_queue_bytes: int
    backpressure_bytes: int
    rate_limit_enabled: bool
    messages_per_minute: int
    rate_limit_close_after: int
    user_messages_per_minute: int
    max_connections: int | None
    max_connections_per_ip: int | None
    allowed_origins: tuple[str, ...]
    shutdown_timeout: float
    # REALTIME_HISTORY: (channel pattern, size, ttl), first match wins.
    history: tuple[tuple[str, int, float], ...] = ()
    # REALTIME_WEBHOOKS (config/webhooks.py); None: off.
    webhooks: WebhookSettings | None = None
    # REALTIME_PUSHER and REALTIME_PUSHER_PATHS (config/pusher.py); None: off.
    pusher: PusherSettings | None = None
    # REALTIME_METRICS: the /metrics endpoint's bearer token; None: off.
    metrics_token: str | None = None
    # REALTIME_FORWARD_TIMEOUT: a forwarded request's wait for its owner.
    forward_timeout: float = 10.0
    # REALTIME_PRESENCE_QUERY_TIMEOUT: a replica-less presence query's wait.
    presence_query_timeout: float = 2.0


# Key -> default. The environment fallbacks (environment.py) are applied first.
DEFAULTS: dict[str, t.Any] = {
    "REALTIME_TRANSPORTS": ["websocket", "sse", "longpolling"],
    "REALTIME_BROKER": "null",
    "REALTIME_BROKER_URL": None,
    "REALTIME_REDIS": {},
    "REALTIME_RABBITMQ": {},
    "REALTIME_REDIS_URL": None,
    "REALTIME_RABBITMQ_URL": None,
    "REALTIME_NATS_URL": "nats://127.0.0.1:4222",
    # Messages a node holds while its broker is down; past that, publishing
    # raises BrokerUnavailable.
    "REALTIME_BROKER_BUFFER": 10_000,
    # Seconds a worker waits for the node that holds an SSE or long-poll
    # connection to answer a request forwarded to it (a poll: the poll
    # timeout plus this); then a 504.
    "REALTIME_FORWARD_TIMEOUT": 10,
    # Seconds a process without a replica of a presence channel waits for a
    # node that has one; none answering: nobody present.
    "REALTIME_PRESENCE_QUERY_TIMEOUT": 2,
    "REALTIME_URL_PREFIX": "/realtime",
    "REALTIME_WEBSOCKET_PATH": "/ws",
    "REALTIME_SSE_PATH": "/sse",
    "REALTIME_LONGPOLL_PATH": "/poll",
    "REALTIME_HOST": "0.0.0.0",
    "REALTIME_PORT": 6001,
    "REALTIME_SSL": False,
    "REALTIME_HEARTBEAT": 25,
    "REALTIME_LONGPOLL_TIMEOUT": 30,
    "REALTIME_LONGPOLL_EXPIRY": 60,
    "REALTIME_MAX_MESSAGE_SIZE": 64 * 1024,
    # A WebSocket message in fragments: at most this many, complete within
    # this many seconds of the first (1009 / 1008 past them).
    "REALTIME_MAX_MESSAGE_FRAGMENTS": 1024,
    "REALTIME_FRAGMENT_TIMEOUT": 30,
    "REALTIME_MAX_SUBSCRIPTIONS": 100,
    "REALTIME_MAX_QUEUE_MESSAGES": 10_000,
    "REALTIME_MAX_QUEUE_BYTES": 1024 * 1024,
    "REALTIME_BACKPRESSURE_BYTES": 64 * 1024 * 1024,
    "REALTIME_RATE_LIMIT": {"enabled": True, "messages_per_minute": 60},
    # Connections per node (every transport), and per client address.
    "REALTIME_MAX_CONNECTIONS": 20_000,
    "REALTIME_MAX_CONNECTIONS_PER_IP": 1000,
    "REALTIME_ALLOWED_ORIGINS": [],
    "REALTIME_AUTHORIZERS": {},
    # Seconds a stopping process waits for queued messages to go out before
    # the 4200 close (flask realtime serve, flask run; gunicorn: see lifecycle).
    "REALTIME_SHUTDOWN_TIMEOUT": 10,
    # Channel pattern -> {"size": events, "ttl": seconds} (config/history.py).
    "REALTIME_HISTORY": {},
    # {"urls": [...], "secret": "...", "events": [...]} (config/webhooks.py).
    "REALTIME_WEBHOOKS": None,
    # {"app_id": "1", "key": "...", "secret": "..."} or a list (config/pusher.py).
    "REALTIME_PUSHER": None,
    # Route name -> path, for the Pusher routes moved from their defaults.
    "REALTIME_PUSHER_PATHS": None,
    # {"enabled": True, "token": "..."}: GET <prefix>/metrics (config/metrics.py).
    "REALTIME_METRICS": {"enabled": False},
}
