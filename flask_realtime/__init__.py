"""Realtime messaging for Flask: WebSocket, SSE and long-polling, one node or many.

The public names are imported on first use (PEP 562), so that
``import flask_realtime.client`` in a script or a worker that only connects to
a server does not load Flask, the node and every transport.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .brokers import BrokerUnavailable as BrokerUnavailable
    from .config import ConfigError as ConfigError
    from .connection import Connection as Connection
    from .extension import Channel as Channel
    from .extension import Realtime as Realtime
    from .extension import broadcast as broadcast
    from .node import Rejected as Rejected
    from .webhooks import WebhookSignatureError as WebhookSignatureError
    from .webhooks import verify_webhook as verify_webhook

    realtime: Realtime

_PUBLIC = {
    "BrokerUnavailable": ".brokers",
    "Channel": ".extension",
    "ConfigError": ".config",
    "Connection": ".connection",
    "Realtime": ".extension",
    "Rejected": ".node",
    "broadcast": ".extension",
    "verify_webhook": ".webhooks",
    "WebhookSignatureError": ".webhooks",
}

__all__ = [*sorted(_PUBLIC), "realtime"]


def __getattr__(name: str) -> Any:
    if name == "realtime":
        from werkzeug.local import LocalProxy

        from .extension import current_realtime

        value: Any = LocalProxy(current_realtime)
        # The Realtime of the current app (or of the only initialised one).
    elif name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
