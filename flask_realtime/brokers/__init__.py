"""Brokers carry bytes between the nodes of a cluster.

A broker knows topics and bytes, nothing of transports or channels; see
:mod:`.base` for the interface and its promises. Each networked broker
connects lazily (so a process that forks after ``init_app`` connects in the
child), reconnects and re-subscribes by itself.
"""

from __future__ import annotations

import importlib
import inspect
import typing as t

from ..config import ConfigError, Settings
from .base import Broker, BrokerUnavailable, MessageCallback
from .null import NullBroker

# kind -> (module, class, the extra that installs its client library)
_NETWORKED = {
    "redis": (".redis", "RedisBroker", "redis"),
    "rabbitmq": (".rabbitmq", "RabbitMQBroker", "rabbitmq"),
    "nats": (".nats", "NatsBroker", "nats"),
}


def _interim_callback(on_message: t.Callable[..., None]) -> MessageCallback:
    """Interim, until the new brokers land: the node takes on_message(topic,
    data) and does request/reply itself; callers of the old three-argument
    form (the broker tests) keep it."""
    try:
        params = list(inspect.signature(on_message).parameters.values())
    except (TypeError, ValueError):
        return on_message
    positional = (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )
    if len([p for p in params if p.kind in positional]) >= 3 or any(
        p.kind == inspect.Parameter.VAR_POSITIONAL for p in params
    ):
        return on_message

    def deliver(topic: str, data: bytes, reply_to: str | None = None) -> None:
        on_message(topic, data)

    return deliver


def create_broker(
    settings: Settings, on_message: t.Callable[[str, bytes], None]
) -> Broker:
    deliver = _interim_callback(on_message)
    if settings.broker == "null":
        return NullBroker(deliver)
    module_name, class_name, extra = _NETWORKED[settings.broker]
    try:
        module = importlib.import_module(module_name, __name__)
    except ImportError as exc:
        raise ConfigError(
            f"REALTIME_BROKER={settings.broker!r} needs {exc.name!r}:"
            f" pip install 'flask_realtime[{extra}]'"
        ) from None
    return getattr(module, class_name)(settings, deliver)  # type: ignore[no-any-return]


__all__ = ["Broker", "BrokerUnavailable", "NullBroker", "create_broker"]
