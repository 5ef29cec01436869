"""``REALTIME_*`` settings: defaults, environment fallbacks, validation.

Everything is resolved once, at ``init_app``; a wrong value raises
:class:`ConfigError` naming the key, so a typo never surfaces as a runtime
surprise on the first connection.
"""

from __future__ import annotations

import dataclasses
import os
import typing as t

TRANSPORTS = ("websocket", "sse", "longpolling", "memory")
BROKERS = ("null", "redis", "rabbitmq", "nats")


class ConfigError(ValueError):
    """A ``REALTIME_*`` setting has a value the extension cannot use."""


def _env_bool(value: str) -> bool:
    word = value.strip().lower()
    if word in {"1", "true", "yes", "on"}:
        return True
    if word in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(value)


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


# Key -> default. The environment fallbacks below are applied first.
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
}

_RABBITMQ_DEFAULTS: dict[str, t.Any] = {
    "host": "127.0.0.1",
    "port": 5672,
    "user": "guest",
    "password": "guest",
    "vhost": "/",
    "exchange": "realtime",
    "exchange_type": "topic",
    "prefetch_count": 50,
    "queue_prefix": "realtime",
    "queue_durable": False,
    "queue_exclusive": True,
    "queue_auto_delete": True,
    "persistent_messages": True,
}
_RABBITMQ_TYPES = {k: type(v) for k, v in _RABBITMQ_DEFAULTS.items()}


def environment_defaults(environ: t.Mapping[str, str] = os.environ) -> dict[str, t.Any]:
    """Environment variables users already set, translated to ``REALTIME_*`` keys."""
    found: dict[str, t.Any] = {}
    if environ.get("REALTIME_TRANSPORT"):
        found["REALTIME_TRANSPORTS"] = [
            part.strip()
            for part in environ["REALTIME_TRANSPORT"].split(",")
            if part.strip()
        ]
    if environ.get("REALTIME_BROKER"):
        found["REALTIME_BROKER"] = environ["REALTIME_BROKER"].strip()
    if environ.get("REALTIME_BROKER_URL"):
        found["REALTIME_BROKER_URL"] = environ["REALTIME_BROKER_URL"]
    redis = {}
    for name, key, cast in (
        ("REDIS_HOST", "host", str),
        ("REDIS_PORT", "port", int),
        ("REDIS_PASSWORD", "password", str),
        ("REDIS_DB", "db", int),
    ):
        if environ.get(name):
            try:
                redis[key] = cast(environ[name])
            except ValueError:
                raise ConfigError(
                    f"{name}={environ[name]!r} is not an integer"
                ) from None
    if redis:
        found["REALTIME_REDIS"] = redis
    rabbit = {}
    for key, kind in _RABBITMQ_TYPES.items():
        name = "RABBITMQ_" + key.upper()
        if name in environ:
            raw = environ[name]
            try:
                rabbit[key] = _env_bool(raw) if kind is bool else kind(raw)
            except ValueError:
                raise ConfigError(
                    f"{name}={raw!r} is not a valid {kind.__name__}"
                ) from None
    if rabbit:
        found["REALTIME_RABBITMQ"] = rabbit
    # The URL variables hosting platforms and other libraries set.
    for names, key in (
        (("REDIS_URL",), "REALTIME_REDIS_URL"),
        (("RABBITMQ_URL", "AMQP_URL"), "REALTIME_RABBITMQ_URL"),
        (("NATS_URL",), "REALTIME_NATS_URL"),
    ):
        for name in names:
            if environ.get(name):
                found[key] = environ[name]
                break
    return found


def _number(
    config: t.Mapping[str, t.Any], key: str, *, minimum: float, integer: bool = True
) -> t.Any:
    value = config[key]
    ok_types = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types) or value < minimum:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{key} must be {kind} >= {minimum}, got {value!r}")
    return value


def _limit(config: t.Mapping[str, t.Any], key: str) -> int | None:
    """A positive integer, or None for no limit."""
    value = config.get(key, DEFAULTS[key])
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"{key} must be a positive integer, or None for no limit, got {value!r}"
        )
    return value


def _path(config: t.Mapping[str, t.Any], key: str, *, allow_empty: bool = False) -> str:
    value = config[key]
    if not isinstance(value, str) or (value and not value.startswith("/")):
        raise ConfigError(f"{key} must be a path starting with '/', got {value!r}")
    if not value and not allow_empty:
        raise ConfigError(f"{key} must not be empty")
    return value.rstrip("/") if len(value) > 1 else value


def load(config: t.Mapping[str, t.Any]) -> Settings:
    """Validate the app's ``REALTIME_*`` keys (already defaulted) into Settings."""
    transports = config["REALTIME_TRANSPORTS"]
    if isinstance(transports, str):
        transports = [p.strip() for p in transports.split(",") if p.strip()]
    if not isinstance(transports, (list, tuple)) or not transports:
        raise ConfigError(
            f"REALTIME_TRANSPORTS must be a non-empty list of {TRANSPORTS}, "
            f"got {transports!r}"
        )
    for name in transports:
        if name not in TRANSPORTS:
            raise ConfigError(
                f"REALTIME_TRANSPORTS: unknown transport {name!r};"
                f" choose from {TRANSPORTS}"
            )

    broker = config["REALTIME_BROKER"]
    if broker not in BROKERS:
        raise ConfigError(f"REALTIME_BROKER must be one of {BROKERS}, got {broker!r}")
    broker_url = config["REALTIME_BROKER_URL"]
    if broker_url is not None and not isinstance(broker_url, str):
        raise ConfigError(f"REALTIME_BROKER_URL must be a string, got {broker_url!r}")
    for key in ("REALTIME_REDIS_URL", "REALTIME_RABBITMQ_URL"):
        value = config.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"{key} must be a URL string, got {value!r}")
    if broker_url is None:
        # REALTIME_BROKER_URL wins; else the chosen broker's own URL, if any.
        broker_url = {
            "redis": config.get("REALTIME_REDIS_URL"),
            "rabbitmq": config.get("REALTIME_RABBITMQ_URL"),
        }.get(broker)

    redis = config["REALTIME_REDIS"]
    if not isinstance(redis, dict):
        raise ConfigError(f"REALTIME_REDIS must be a dict, got {redis!r}")
    unknown = set(redis) - {"host", "port", "password", "db"}
    if unknown:
        raise ConfigError(f"REALTIME_REDIS: unknown option(s) {sorted(unknown)}")
    for key, kinds in (
        ("host", (str,)),
        ("port", (int,)),
        ("password", (str, type(None))),
        ("db", (int,)),
    ):
        if key in redis and (
            not isinstance(redis[key], kinds) or isinstance(redis[key], bool)
        ):
            raise ConfigError(
                f"REALTIME_REDIS[{key!r}] must be"
                f" {' or '.join(k.__name__ for k in kinds)}, got {redis[key]!r}"
            )
    redis = {"host": "127.0.0.1", "port": 6379, "password": None, "db": 0, **redis}

    rabbitmq = config["REALTIME_RABBITMQ"]
    if not isinstance(rabbitmq, dict):
        raise ConfigError(f"REALTIME_RABBITMQ must be a dict, got {rabbitmq!r}")
    for key, value in rabbitmq.items():
        if key not in _RABBITMQ_TYPES:
            raise ConfigError(f"REALTIME_RABBITMQ: unknown option {key!r}")
        expected = _RABBITMQ_TYPES[key]
        if not isinstance(value, expected) or (
            expected is int and isinstance(value, bool)
        ):
            raise ConfigError(
                f"REALTIME_RABBITMQ[{key!r}] must be {expected.__name__}, got {value!r}"
            )
    rabbitmq = {**_RABBITMQ_DEFAULTS, **rabbitmq}

    nats_url = config["REALTIME_NATS_URL"]
    if not isinstance(nats_url, str) or not nats_url:
        raise ConfigError(f"REALTIME_NATS_URL must be a URL string, got {nats_url!r}")

    rate = config["REALTIME_RATE_LIMIT"]
    if not isinstance(rate, dict):
        raise ConfigError(f"REALTIME_RATE_LIMIT must be a dict, got {rate!r}")
    unknown = set(rate) - {
        "enabled",
        "messages_per_minute",
        "close_after",
        "user_messages_per_minute",
    }
    if unknown:
        raise ConfigError(f"REALTIME_RATE_LIMIT: unknown option(s) {sorted(unknown)}")
    rate = {
        "enabled": True,
        "messages_per_minute": 60,
        "close_after": 60,
        "user_messages_per_minute": 120,
        **rate,
    }
    if not isinstance(rate["enabled"], bool):
        raise ConfigError("REALTIME_RATE_LIMIT['enabled'] must be True or False")
    for key in ("messages_per_minute", "close_after", "user_messages_per_minute"):
        value = rate[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(
                f"REALTIME_RATE_LIMIT[{key!r}] must be a positive integer,"
                f" got {value!r}"
            )

    origins = config["REALTIME_ALLOWED_ORIGINS"]
    if isinstance(origins, str):
        origins = [o.strip() for o in origins.split(",") if o.strip()]
    if not isinstance(origins, (list, tuple)) or not all(
        isinstance(o, str) for o in origins
    ):
        raise ConfigError(
            f"REALTIME_ALLOWED_ORIGINS must be a list of origins, got {origins!r}"
        )

    authorizers = config["REALTIME_AUTHORIZERS"]
    if not isinstance(authorizers, dict) or not all(
        isinstance(k, str) and callable(v) for k, v in authorizers.items()
    ):
        raise ConfigError("REALTIME_AUTHORIZERS must map channel patterns to callables")

    host = config["REALTIME_HOST"]
    if not isinstance(host, str) or not host:
        raise ConfigError(f"REALTIME_HOST must be a host name, got {host!r}")
    port = _number(config, "REALTIME_PORT", minimum=0)
    if port > 65535:
        raise ConfigError(f"REALTIME_PORT must be at most 65535, got {port!r}")

    ssl = config["REALTIME_SSL"]
    if ssl is False or ssl is None:
        ssl = None
    elif (
        not isinstance(ssl, dict)
        or set(ssl) != {"certfile", "keyfile"}
        or not all(isinstance(v, str) and v for v in ssl.values())
    ):
        raise ConfigError(
            "REALTIME_SSL must be False or {'certfile': path, 'keyfile': path},"
            f" got {ssl!r}"
        )
    else:
        for key, path in ssl.items():
            if not os.path.isfile(path):
                raise ConfigError(f"REALTIME_SSL[{key!r}]: no such file {path!r}")

    return Settings(
        transports=tuple(dict.fromkeys(transports)),
        broker=broker,
        broker_url=broker_url,
        redis=redis,
        rabbitmq=rabbitmq,
        nats_url=nats_url,
        broker_buffer=_number(config, "REALTIME_BROKER_BUFFER", minimum=0),
        url_prefix=_path(config, "REALTIME_URL_PREFIX", allow_empty=True),
        websocket_path=_path(config, "REALTIME_WEBSOCKET_PATH"),
        sse_path=_path(config, "REALTIME_SSE_PATH"),
        longpoll_path=_path(config, "REALTIME_LONGPOLL_PATH"),
        host=host,
        port=port,
        ssl=ssl,
        heartbeat=_number(config, "REALTIME_HEARTBEAT", minimum=0.05, integer=False),
        longpoll_timeout=_number(
            config, "REALTIME_LONGPOLL_TIMEOUT", minimum=0, integer=False
        ),
        longpoll_expiry=_number(
            config, "REALTIME_LONGPOLL_EXPIRY", minimum=0.1, integer=False
        ),
        max_message_size=_number(config, "REALTIME_MAX_MESSAGE_SIZE", minimum=64),
        max_message_fragments=_number(
            config, "REALTIME_MAX_MESSAGE_FRAGMENTS", minimum=1
        ),
        fragment_timeout=_number(
            config, "REALTIME_FRAGMENT_TIMEOUT", minimum=0.1, integer=False
        ),
        max_subscriptions=_number(config, "REALTIME_MAX_SUBSCRIPTIONS", minimum=1),
        max_queue_messages=_number(config, "REALTIME_MAX_QUEUE_MESSAGES", minimum=1),
        max_queue_bytes=_number(config, "REALTIME_MAX_QUEUE_BYTES", minimum=1024),
        backpressure_bytes=_number(
            config, "REALTIME_BACKPRESSURE_BYTES", minimum=64 * 1024
        ),
        rate_limit_enabled=rate["enabled"],
        messages_per_minute=rate["messages_per_minute"],
        rate_limit_close_after=rate["close_after"],
        user_messages_per_minute=rate["user_messages_per_minute"],
        max_connections=_limit(config, "REALTIME_MAX_CONNECTIONS"),
        max_connections_per_ip=_limit(config, "REALTIME_MAX_CONNECTIONS_PER_IP"),
        allowed_origins=tuple(o.rstrip("/") for o in origins),
        shutdown_timeout=_number(
            config, "REALTIME_SHUTDOWN_TIMEOUT", minimum=0, integer=False
        ),
    )
