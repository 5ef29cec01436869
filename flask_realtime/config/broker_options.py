"""The broker's settings: which broker, its URL, and each backend's options.

Kept apart from the rest of validation because the environment fallbacks read
the same option table (``RABBITMQ_<OPTION>``), so the two never disagree.
"""

from __future__ import annotations

import typing as t

from .settings import BROKERS, ConfigError

RABBITMQ_DEFAULTS: dict[str, t.Any] = {
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
RABBITMQ_TYPES = {k: type(v) for k, v in RABBITMQ_DEFAULTS.items()}
REDIS_DEFAULTS: dict[str, t.Any] = {
    "host": "127.0.0.1",
    "port": 6379,
    "password": None,
    "db": 0,
}


def broker(config: t.Mapping[str, t.Any]) -> tuple[str, str | None]:
    """The broker's name and URL: ``REALTIME_BROKER_URL``, else the broker's own."""
    name = config["REALTIME_BROKER"]
    if name not in BROKERS:
        raise ConfigError(f"REALTIME_BROKER must be one of {BROKERS}, got {name!r}")
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
        }.get(name)
    return name, broker_url


def redis_options(config: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """``REALTIME_REDIS``, checked option by option, over the defaults."""
    redis = config["REALTIME_REDIS"]
    if not isinstance(redis, dict):
        raise ConfigError(f"REALTIME_REDIS must be a dict, got {redis!r}")
    unknown = set(redis) - set(REDIS_DEFAULTS)
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
    return {**REDIS_DEFAULTS, **redis}


def rabbitmq_options(config: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """``REALTIME_RABBITMQ``, each option of its default's type, over the defaults."""
    rabbitmq = config["REALTIME_RABBITMQ"]
    if not isinstance(rabbitmq, dict):
        raise ConfigError(f"REALTIME_RABBITMQ must be a dict, got {rabbitmq!r}")
    for key, value in rabbitmq.items():
        if key not in RABBITMQ_TYPES:
            raise ConfigError(f"REALTIME_RABBITMQ: unknown option {key!r}")
        expected = RABBITMQ_TYPES[key]
        if not isinstance(value, expected) or (
            expected is int and isinstance(value, bool)
        ):
            raise ConfigError(
                f"REALTIME_RABBITMQ[{key!r}] must be {expected.__name__}, got {value!r}"
            )
    return {**RABBITMQ_DEFAULTS, **rabbitmq}


def nats_url(config: t.Mapping[str, t.Any]) -> str:
    """``REALTIME_NATS_URL``: a non-empty string (the client parses it)."""
    value = config["REALTIME_NATS_URL"]
    if not isinstance(value, str) or not value:
        raise ConfigError(f"REALTIME_NATS_URL must be a URL string, got {value!r}")
    return value
