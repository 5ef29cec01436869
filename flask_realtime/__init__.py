"""Realtime messaging for Flask: WebSocket, SSE and long-polling, one node or many."""

from __future__ import annotations

from werkzeug.local import LocalProxy

from .brokers import BrokerUnavailable as BrokerUnavailable
from .config import ConfigError as ConfigError
from .connection import Connection as Connection
from .extension import Channel as Channel
from .extension import Realtime as Realtime
from .extension import broadcast as broadcast
from .extension import current_realtime as _current_realtime
from .node import Rejected as Rejected

realtime: Realtime = LocalProxy(_current_realtime)  # type: ignore[assignment]
"""The Realtime of the current app (or of the only initialised one)."""

__all__ = [
    "BrokerUnavailable",
    "Channel",
    "ConfigError",
    "Connection",
    "Realtime",
    "Rejected",
    "broadcast",
    "realtime",
]
