"""How a batch of events goes on the wire, and how a receiver checks it.

The native format: a JSON body ``{"time_ms": ..., "events": [...]}`` and
three headers. ``X-Realtime-Signature`` is ``sha256=<hex>``, the HMAC-SHA256
with the shared secret of ``<timestamp>.<body>``, where ``<timestamp>`` is
``X-Realtime-Timestamp`` (Unix seconds): the signature covers the body
byte for byte, and the timestamp lets a receiver refuse old replays.
``X-Realtime-Webhook-Id`` is the same on every retry of one batch, so a
receiver that answered too late can tell a retry from new events.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import typing as t

from .events import Event

SIGNATURE_HEADER = "X-Realtime-Signature"
TIMESTAMP_HEADER = "X-Realtime-Timestamp"
ID_HEADER = "X-Realtime-Webhook-Id"
#: Seconds a signature stays acceptable to :func:`verify_webhook` by default.
TOLERANCE = 300.0


class Format(t.Protocol):
    """Turns one batch into the body and headers of one POST."""

    def encode(
        self, events: t.Sequence[Event], batch_id: str, secret: str
    ) -> tuple[bytes, dict[str, str]]: ...


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` of ``<timestamp>.<body>`` keyed with ``secret``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class NativeFormat:
    """Our own format (docs/webhooks.md)."""

    def encode(
        self, events: t.Sequence[Event], batch_id: str, secret: str
    ) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(
            {
                "time_ms": int(time.time() * 1000),
                "events": [event.as_dict() for event in events],
            },
            separators=(",", ":"),
        ).encode()
        timestamp = str(int(time.time()))
        return body, {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: signature(secret, timestamp, body),
            ID_HEADER: batch_id,
        }


class WebhookSignatureError(ValueError):
    """A webhook request is unsigned, wrongly signed, or too old."""


def verify_webhook(
    body: bytes,
    headers: t.Mapping[str, str],
    secret: str,
    *,
    tolerance: float = TOLERANCE,
    now: float | None = None,
) -> dict[str, t.Any]:
    """Check a webhook request and return its JSON payload.

    In a Flask view: ``verify_webhook(request.get_data(), request.headers,
    secret)``. Raises :class:`WebhookSignatureError` when the signature is
    missing or wrong (compared in constant time) or the timestamp is more
    than ``tolerance`` seconds away from ``now``.
    """
    given = _header(headers, SIGNATURE_HEADER)
    timestamp = _header(headers, TIMESTAMP_HEADER)
    if not given or not timestamp:
        raise WebhookSignatureError("missing signature or timestamp header")
    expected = signature(secret, timestamp, body)
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise WebhookSignatureError("wrong signature")
    try:
        sent = int(timestamp)
    except ValueError:
        raise WebhookSignatureError("malformed timestamp") from None
    if abs((time.time() if now is None else now) - sent) > tolerance:
        raise WebhookSignatureError("timestamp outside the tolerance")
    try:
        payload = json.loads(body)
    except ValueError:
        raise WebhookSignatureError("body is not JSON") from None
    if not isinstance(payload, dict):
        raise WebhookSignatureError("body is not a JSON object")
    return payload


def _header(headers: t.Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:  # a plain dict: look case-insensitively
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value or ""
