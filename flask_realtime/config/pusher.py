"""``REALTIME_PUSHER``: the Pusher Channels apps this server speaks for.

``{"app_id": "1", "key": "app-key", "secret": "app-secret"}``, or a list of
such dicts for several apps; unset, ``None`` or ``[]`` turns the Pusher
protocol off. ``REALTIME_PUSHER_PATHS`` moves the routes away from the root,
where Pusher's SDKs look for them by default. Errors name the key and never
echo a secret.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
import re
import typing as t

from .settings import ConfigError

_KEY = "REALTIME_PUSHER"
_PATHS_KEY = "REALTIME_PUSHER_PATHS"

#: Route name -> default path (pusher-js's and the server libraries' defaults).
DEFAULT_PATHS = {
    "websocket": "/app",  # + "/<key>"
    "api": "/apps",  # + "/<app_id>/events", ...
    "auth": "/pusher/auth",
    "user_auth": "/pusher/user-auth",
}

# Pusher's own limits for an app id, key: printable, no slash (they are path
# segments), no colon (the auth string is "key:signature").
_TOKEN = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


@dataclasses.dataclass(frozen=True)
class PusherApp:
    app_id: str
    key: str
    # Never in a repr, so never in a log line or a traceback's locals.
    secret: str = dataclasses.field(repr=False)
    # Seconds of silence before a client pings (sent in connection_established).
    activity_timeout: int = 120
    # Client events a connection may send per second (Pusher's default: 10).
    client_event_rate: int = 10
    # Bytes of an HTTP API request body: a batch of 10 events of Pusher's
    # 10 KB each, and room for their names and channels.
    max_body: int = 128 * 1024
    # ``encryption_master_key_base64``: 32 bytes from which the auth endpoint
    # derives each private-encrypted- channel's shared secret; None: no such
    # channels. Never in a repr.
    encryption_master_key: bytes | None = dataclasses.field(default=None, repr=False)


# option -> minimum, for the integer options.
OPTIONS: dict[str, int] = {
    "activity_timeout": 1,
    "client_event_rate": 1,
    "max_body": 1024,
}


@dataclasses.dataclass(frozen=True)
class PusherSettings:
    apps: tuple[PusherApp, ...]
    paths: dict[str, str] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_PATHS)
    )

    def by_key(self, key: str) -> PusherApp | None:
        return next((app for app in self.apps if app.key == key), None)

    def by_id(self, app_id: str) -> PusherApp | None:
        return next((app for app in self.apps if app.app_id == app_id), None)


def pusher_settings(config: t.Mapping[str, t.Any]) -> PusherSettings | None:
    """The validated Pusher apps, or None when the protocol is off."""
    value = config.get(_KEY)
    if value is None or value == [] or value == {}:
        if config.get(_PATHS_KEY):
            raise ConfigError(f"{_PATHS_KEY} is set but {_KEY} is not")
        return None
    entries = [value] if isinstance(value, dict) else value
    if not isinstance(entries, (list, tuple)):
        raise ConfigError(
            f"{_KEY} must be a dict like {{'app_id': '1', 'key': '...',"
            f" 'secret': '...'}} or a list of them, got a {type(value).__name__}"
        )
    apps = tuple(
        _app(entry, _KEY if isinstance(value, dict) else f"{_KEY}[{index}]")
        for index, entry in enumerate(entries)
    )
    for field in ("app_id", "key"):
        seen = [getattr(app, field) for app in apps]
        if len(set(seen)) != len(seen):
            raise ConfigError(f"{_KEY}: two apps share the {field} {_dupe(seen)!r}")
    return PusherSettings(apps=apps, paths=_paths(config.get(_PATHS_KEY)))


def _app(entry: t.Any, where: str) -> PusherApp:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a dict, got a {type(entry).__name__}")
    unknown = set(entry) - {
        "app_id",
        "key",
        "secret",
        "encryption_master_key_base64",
        *OPTIONS,
    }
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {sorted(map(str, unknown))}")
    fields: dict[str, t.Any] = {}
    for name in ("app_id", "key"):
        item = entry.get(name)
        if isinstance(item, int) and not isinstance(item, bool):
            item = str(item)
        if not isinstance(item, str) or not _TOKEN.match(item):
            raise ConfigError(
                f'{where}["{name}"] must be 1-64 letters, digits, "_", "." or "-",'
                f" got {item!r}"
            )
        fields[name] = item
    secret = entry.get("secret")
    if not isinstance(secret, str) or not secret:
        # The value itself is never shown: it may be the secret, misplaced.
        raise ConfigError(f'{where}["secret"] must be a non-empty string')
    for name, minimum in OPTIONS.items():
        if name in entry:
            number = entry[name]
            if (
                isinstance(number, bool)
                or not isinstance(number, int)
                or not math.isfinite(number)
                or number < minimum
            ):
                raise ConfigError(
                    f'{where}["{name}"] must be an integer >= {minimum}, got {number!r}'
                )
            fields[name] = number
    if "encryption_master_key_base64" in entry:
        fields["encryption_master_key"] = _master_key(
            entry["encryption_master_key_base64"], where
        )
    return PusherApp(secret=secret, **fields)


def _master_key(value: t.Any, where: str) -> bytes:
    """The 32 bytes Pusher's libraries take as ``encryption_master_key_base64``
    (``openssl rand -base64 32``); the value is never shown in an error."""
    try:
        if not isinstance(value, str):
            raise ValueError
        key = base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error):
        key = b""
    if len(key) != 32:
        raise ConfigError(
            f'{where}["encryption_master_key_base64"] must be 32 bytes in base64'
            " (openssl rand -base64 32)"
        )
    return key


def _paths(value: t.Any) -> dict[str, str]:
    paths = dict(DEFAULT_PATHS)
    if value is None:
        return paths
    if not isinstance(value, dict):
        raise ConfigError(
            f"{_PATHS_KEY} must be a dict with some of {list(DEFAULT_PATHS)},"
            f" got a {type(value).__name__}"
        )
    for name, path in value.items():
        if name not in DEFAULT_PATHS:
            raise ConfigError(
                f"{_PATHS_KEY}: unknown route {name!r};"
                f" choose from {list(DEFAULT_PATHS)}"
            )
        if (
            not isinstance(path, str)
            or not path.startswith("/")
            or (path.endswith("/") and path != "/")
        ):
            raise ConfigError(
                f'{_PATHS_KEY}["{name}"] must be a path like "/pusher/auth"'
                f" (leading slash, no trailing one), got {path!r}"
            )
        paths[name] = path
    return paths


def _dupe(values: list[str]) -> str:
    return next(v for v in values if values.count(v) > 1)
