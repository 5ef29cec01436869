"""Environment variables users already set, as ``REALTIME_*`` fallbacks.

Read once, at ``init_app``; an app's own ``REALTIME_*`` keys win over these.
"""

from __future__ import annotations

import os
import typing as t

from .broker_options import RABBITMQ_TYPES
from .settings import ConfigError


def _env_bool(value: str) -> bool:
    word = value.strip().lower()
    if word in {"1", "true", "yes", "on"}:
        return True
    if word in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(value)


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
    for key, kind in RABBITMQ_TYPES.items():
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
