"""Brokers carry bytes between the nodes of a cluster.

A broker knows topics and bytes, nothing of transports or channels; see
:mod:`.base` for the interface and its promises. Each networked broker
connects lazily (so a process that forks after ``init_app`` connects in the
child), reconnects and re-subscribes by itself.
"""

from __future__ import annotations

import importlib

from ..config import ConfigError, Settings
from .base import Broker, BrokerUnavailable, MessageCallback
from .null import NullBroker

# kind -> (module, class, the extra that installs its client library)
_NETWORKED = {
    "redis": (".redis", "RedisBroker", "redis"),
    "rabbitmq": (".rabbitmq", "RabbitMQBroker", "rabbitmq"),
    "nats": (".nats", "NatsBroker", "nats"),
}


def create_broker(settings: Settings, on_message: MessageCallback) -> Broker:
    if settings.broker == "null":
        return NullBroker(on_message)
    module_name, class_name, extra = _NETWORKED[settings.broker]
    try:
        module = importlib.import_module(module_name, __name__)
    except ImportError as exc:
        raise ConfigError(
            f"REALTIME_BROKER={settings.broker!r} needs {exc.name!r}:"
            f" pip install 'flask_realtime[{extra}]'"
        ) from None
    return getattr(module, class_name)(settings, on_message)  # type: ignore[no-any-return]


__all__ = [
    "Broker",
    "BrokerUnavailable",
    "MessageCallback",
    "NullBroker",
    "create_broker",
]
