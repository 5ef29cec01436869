"""Webhooks: cluster events POSTed to the app's receivers (docs/webhooks.md).

:mod:`.events` says what happened, :mod:`.wire` how a batch is encoded and
signed, :mod:`.sender` how it is POSTed and retried, and :mod:`.cluster`
which node sends each event. A receiver needs only :func:`verify_webhook`.
"""

from __future__ import annotations

from .events import Event as Event
from .wire import Format as Format
from .wire import NativeFormat as NativeFormat
from .wire import WebhookSignatureError as WebhookSignatureError
from .wire import verify_webhook as verify_webhook

__all__ = ["Event", "Format", "NativeFormat", "WebhookSignatureError", "verify_webhook"]
