"""``REALTIME_WEBHOOKS``: where the cluster's events are POSTed, and how.

``{"urls": ["https://..."], "secret": "...", "events": [...]}`` plus tuning
options (see :data:`OPTIONS`); unset, ``None`` or ``{}`` turns webhooks off.
``"format": "pusher"`` (for every URL, or per URL in a dict entry) sends
Pusher's format instead, signed with a ``REALTIME_PUSHER`` app's key and
secret (``"pusher_app"``: its ``app_id``). Errors name the key and never echo
a secret.
"""

from __future__ import annotations

import dataclasses
import math
import typing as t
import urllib.parse

from .settings import ConfigError

if t.TYPE_CHECKING:
    from .pusher import PusherApp, PusherSettings

_KEY = "REALTIME_WEBHOOKS"

#: Every event a webhook can carry (docs/webhooks.md).
EVENTS = (
    "channel.occupied",
    "channel.vacated",
    "member.added",
    "member.removed",
    "client.event",
)


#: Wire formats: ours (webhooks/wire.py) and Pusher's (pusher/webhooks.py).
FORMATS = ("native", "pusher")


@dataclasses.dataclass(frozen=True)
class WebhookURL:
    """One receiver: where, in which format, and for Pusher's the app that signs."""

    url: str
    format: str = "native"
    pusher_app: PusherApp | None = None


@dataclasses.dataclass(frozen=True)
class WebhookSettings:
    urls: tuple[str, ...]
    # Never in a repr, so never in a log line or a traceback's locals.
    secret: str = dataclasses.field(repr=False)
    events: frozenset[str] = frozenset(EVENTS)
    # Seconds a first event waits for others to share its POST.
    batch_window: float = 0.1
    max_batch: int = 100
    # Events waiting per URL; past it the oldest are dropped (and counted).
    max_queue: int = 10_000
    # Seconds for one POST (connect, send, answer).
    timeout: float = 5.0
    # Retries back off from 0.5 s, doubling up to this many seconds.
    max_retry_delay: float = 30.0
    # Each URL with its format; empty: every URL in the native format.
    targets: tuple[WebhookURL, ...] = ()

    def receivers(self) -> tuple[WebhookURL, ...]:
        return self.targets or tuple(WebhookURL(url) for url in self.urls)


# option -> (kind, minimum) for the numbers.
OPTIONS: dict[str, tuple[type, float]] = {
    "batch_window": (float, 0.0),
    "max_batch": (int, 1),
    "max_queue": (int, 1),
    "timeout": (float, 0.001),
    "max_retry_delay": (float, 0.001),
}


def webhook_settings(
    config: t.Mapping[str, t.Any], pusher: PusherSettings | None = None
) -> WebhookSettings | None:
    """The validated webhooks, or None when they are off (``pusher``: the
    validated ``REALTIME_PUSHER``, for URLs in Pusher's format)."""
    value = config.get(_KEY)
    if value is None or value == {}:
        return None
    if not isinstance(value, dict):
        raise ConfigError(
            f"{_KEY} must be a dict like {{'urls': [...], 'secret': '...'}},"
            f" got a {type(value).__name__}"
        )
    unknown = set(value) - {"urls", "secret", "events", *_FORMAT_OPTIONS, *OPTIONS}
    if unknown:
        raise ConfigError(f"{_KEY}: unknown option(s) {sorted(map(str, unknown))}")
    urls = value.get("urls")
    if isinstance(urls, (str, dict)):
        urls = [urls]
    if not isinstance(urls, (list, tuple)) or not urls:
        raise ConfigError(f'{_KEY}["urls"] must be a non-empty list of http(s) URLs')
    targets = [_target(entry, value, pusher) for entry in urls]
    secret = value.get("secret")
    if any(target.format == "native" for target in targets) and (
        not isinstance(secret, str) or not secret
    ):
        # The value itself is never shown: it may be the secret, misplaced.
        raise ConfigError(f'{_KEY}["secret"] must be a non-empty string')
    if secret is not None and not isinstance(secret, str):
        raise ConfigError(f'{_KEY}["secret"] must be a non-empty string')
    events = value.get("events", EVENTS)
    if isinstance(events, str) or not isinstance(events, (list, tuple, set, frozenset)):
        raise ConfigError(f'{_KEY}["events"] must be a list of {list(EVENTS)}')
    for name in events:
        if name not in EVENTS:
            raise ConfigError(
                f'{_KEY}["events"]: unknown event {name!r}; choose from {list(EVENTS)}'
            )
    numbers = {name: _number(value, name, *rule) for name, rule in OPTIONS.items()}
    targets = list(dict.fromkeys(targets))
    return WebhookSettings(
        urls=tuple(target.url for target in targets),
        secret=secret or "",
        targets=tuple(targets),
        events=frozenset(events),
        **{k: v for k, v in numbers.items() if v is not None},
    )


# Options that say how a URL's webhooks are encoded: for every URL at the
# top level, or for one URL in its dict entry.
_FORMAT_OPTIONS = ("format", "pusher_app")


def _target(
    entry: t.Any, top: dict[str, t.Any], pusher: PusherSettings | None
) -> WebhookURL:
    """One ``urls`` entry: a URL, or a dict with ``url`` and format options."""
    options = {name: top[name] for name in _FORMAT_OPTIONS if name in top}
    if isinstance(entry, dict):
        unknown = set(entry) - {"url", *_FORMAT_OPTIONS}
        if unknown:
            raise ConfigError(
                f'{_KEY}["urls"]: unknown option(s) {sorted(map(str, unknown))}'
            )
        options.update({k: v for k, v in entry.items() if k != "url"})
        url = entry.get("url")
    else:
        url = entry
    parsed = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f'{_KEY}["urls"]: not an http(s) URL: {url!r}')
    kind = options.get("format", "native")
    if kind not in FORMATS:
        raise ConfigError(
            f'{_KEY}["format"] must be one of {list(FORMATS)}, got {kind!r}'
        )
    if kind == "native":
        if "pusher_app" in options:
            raise ConfigError(f'{_KEY}["pusher_app"] needs "format": "pusher"')
        return WebhookURL(url)
    if pusher is None:
        raise ConfigError(f'{_KEY}: "format": "pusher" needs REALTIME_PUSHER set')
    app_id = options.get("pusher_app")
    if app_id is None:
        if len(pusher.apps) != 1:
            raise ConfigError(
                f'{_KEY}["pusher_app"]: REALTIME_PUSHER has several apps;'
                " name the one whose key and secret sign"
            )
        return WebhookURL(url, "pusher", pusher.apps[0])
    if isinstance(app_id, int) and not isinstance(app_id, bool):
        app_id = str(app_id)
    app = pusher.by_id(app_id) if isinstance(app_id, str) else None
    if app is None:
        raise ConfigError(
            f'{_KEY}["pusher_app"]: no REALTIME_PUSHER app has the app_id {app_id!r}'
        )
    return WebhookURL(url, "pusher", app)


def _number(options: dict[str, t.Any], name: str, kind: type, minimum: float) -> t.Any:
    if name not in options:
        return None
    value = options[name]
    ok = (int,) if kind is int else (int, float)
    if (
        isinstance(value, bool)
        or not isinstance(value, ok)
        or not math.isfinite(value)
        or value < minimum
    ):
        what = "an integer" if kind is int else "a number"
        raise ConfigError(
            f'{_KEY}["{name}"] must be {what} >= {minimum}, got {value!r}'
        )
    return kind(value)
