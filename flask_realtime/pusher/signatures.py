"""Pusher's HMAC-SHA256 signatures: channel auth, user sign-in, HTTP API.

Every comparison is constant-time (hmac.compare_digest). The strings signed
are Pusher's documented ones, so its SDKs and server libraries interoperate.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import typing as t

if t.TYPE_CHECKING:
    from ..config.pusher import PusherApp


def new_socket_id() -> str:
    """A socket id of Pusher's form, two integers joined by a dot."""
    return f"{secrets.randbelow(10**9)}.{secrets.randbelow(10**9)}"


def _hex(secret: str, text: str) -> str:
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


def channel_auth(
    app: PusherApp, socket_id: str, channel: str, channel_data: str | None = None
) -> str:
    """``key:signature`` over ``socket_id:channel[:channel_data]``."""
    text = f"{socket_id}:{channel}"
    if channel_data is not None:
        text += f":{channel_data}"
    return f"{app.key}:{_hex(app.secret, text)}"


def user_auth(app: PusherApp, socket_id: str, user_data: str) -> str:
    """``key:signature`` over ``socket_id::user::user_data`` (pusher:signin)."""
    return f"{app.key}:{_hex(app.secret, f'{socket_id}::user::{user_data}')}"


def shared_secret(app: PusherApp, channel: str) -> str:
    """A private-encrypted- channel's key for its clients, in base64: the
    SHA-256 of the channel name and the app's master key, as Pusher's
    libraries derive it (the server never needs it; clients decrypt)."""
    if app.encryption_master_key is None:
        raise ValueError("the app has no encryption_master_key_base64")
    digest = hashlib.sha256(channel.encode() + app.encryption_master_key).digest()
    return base64.b64encode(digest).decode()


def same(expected: str, given: t.Any) -> bool:
    """Constant-time equality for anything a client sent (non-strings: False)."""
    if not isinstance(given, str):
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def api_signature(
    app: PusherApp, method: str, path: str, params: t.Mapping[str, str]
) -> str:
    """The HTTP API's ``auth_signature``: over ``METHOD\\npath\\nquery``, the
    query's parameters (but the signature) sorted by lower-cased name."""
    query = "&".join(
        f"{name.lower()}={params[name]}"
        for name in sorted(params, key=str.lower)
        if name.lower() != "auth_signature"
    )
    return _hex(app.secret, f"{method.upper()}\n{path}\n{query}")


def body_md5(body: bytes) -> str:
    return hashlib.md5(body, usedforsecurity=False).hexdigest()
