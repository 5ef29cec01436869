"""Validation: the app's ``REALTIME_*`` keys into :class:`Settings`.

Every check raises :class:`ConfigError` naming the key, at ``init_app``, so a
typo never surfaces as a runtime surprise on the first connection.
"""

from __future__ import annotations

import os
import typing as t

from . import broker_options
from .history import history_rules
from .metrics import metrics_token
from .pusher import pusher_settings
from .settings import DEFAULTS, TRANSPORTS, ConfigError, Settings
from .webhooks import webhook_settings

# REALTIME_RATE_LIMIT's options: what a dict without them means.
RATE_LIMIT_DEFAULTS: dict[str, t.Any] = {
    "enabled": True,
    "messages_per_minute": 60,
    "close_after": 60,
    "user_messages_per_minute": 120,
}


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

    broker, broker_url = broker_options.broker(config)
    redis = broker_options.redis_options(config)
    rabbitmq = broker_options.rabbitmq_options(config)
    nats_url = broker_options.nats_url(config)

    rate = config["REALTIME_RATE_LIMIT"]
    if not isinstance(rate, dict):
        raise ConfigError(f"REALTIME_RATE_LIMIT must be a dict, got {rate!r}")
    unknown = set(rate) - set(RATE_LIMIT_DEFAULTS)
    if unknown:
        raise ConfigError(f"REALTIME_RATE_LIMIT: unknown option(s) {sorted(unknown)}")
    rate = {**RATE_LIMIT_DEFAULTS, **rate}
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

    pusher = pusher_settings(config)
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
        history=history_rules(config),
        webhooks=webhook_settings(config, pusher),
        pusher=pusher,
        metrics_token=metrics_token(config),
        forward_timeout=_number(
            config, "REALTIME_FORWARD_TIMEOUT", minimum=0.1, integer=False
        ),
        presence_query_timeout=_number(
            config, "REALTIME_PRESENCE_QUERY_TIMEOUT", minimum=0.1, integer=False
        ),
    )
