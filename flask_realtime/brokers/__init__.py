"""Brokers carry bytes between the nodes of a cluster.

A broker knows topics and bytes, nothing of transports or channels:
``publish(topic, data)``, ``subscribe(*topics)``, ``unsubscribe(*topics)``,
``close()``, and a callback for what arrives. Each reconnects and
re-subscribes by itself.
"""

from __future__ import annotations

from ..config import Settings
from .base import Broker, MessageCallback
from .null import NullBroker


def create_broker(settings: Settings, on_message: MessageCallback) -> Broker:
    if settings.broker == "null":
        return NullBroker(on_message)
    raise NotImplementedError(  # pragma: no cover - brokers land with issue 4
        f"REALTIME_BROKER={settings.broker!r} is not available yet"
    )


__all__ = ["Broker", "NullBroker", "create_broker"]
