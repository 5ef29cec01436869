"""``REALTIME_WEBHOOKS``: where the cluster's events are POSTed, and how.

``{"urls": ["https://..."], "secret": "...", "events": [...]}`` plus tuning
options (see :data:`OPTIONS`); unset, ``None`` or ``{}`` turns webhooks off.
Errors name the key and never echo the secret.
"""

from __future__ import annotations

import dataclasses
import math
import typing as t
import urllib.parse

from .settings import ConfigError

_KEY = "REALTIME_WEBHOOKS"

#: Every event a webhook can carry (docs/webhooks.md).
EVENTS = (
    "channel.occupied",
    "channel.vacated",
    "member.added",
    "member.removed",
    "client.event",
)


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


# option -> (kind, minimum) for the numbers.
OPTIONS: dict[str, tuple[type, float]] = {
    "batch_window": (float, 0.0),
    "max_batch": (int, 1),
    "max_queue": (int, 1),
    "timeout": (float, 0.001),
    "max_retry_delay": (float, 0.001),
}


def webhook_settings(config: t.Mapping[str, t.Any]) -> WebhookSettings | None:
    """The validated webhooks, or None when they are off."""
    value = config.get(_KEY)
    if value is None or value == {}:
        return None
    if not isinstance(value, dict):
        raise ConfigError(
            f"{_KEY} must be a dict like {{'urls': [...], 'secret': '...'}},"
            f" got a {type(value).__name__}"
        )
    unknown = set(value) - {"urls", "secret", "events", *OPTIONS}
    if unknown:
        raise ConfigError(f"{_KEY}: unknown option(s) {sorted(map(str, unknown))}")
    urls = value.get("urls")
    if isinstance(urls, str):
        urls = [urls]
    if not isinstance(urls, (list, tuple)) or not urls:
        raise ConfigError(f'{_KEY}["urls"] must be a non-empty list of http(s) URLs')
    for url in urls:
        parsed = urllib.parse.urlsplit(url) if isinstance(url, str) else None
        if (
            parsed is None
            or parsed.scheme not in ("http", "https")
            or not parsed.hostname
        ):
            raise ConfigError(f'{_KEY}["urls"]: not an http(s) URL: {url!r}')
    secret = value.get("secret")
    if not isinstance(secret, str) or not secret:
        # The value itself is never shown: it may be the secret, misplaced.
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
    return WebhookSettings(
        urls=tuple(dict.fromkeys(urls)),
        secret=secret,
        events=frozenset(events),
        **{k: v for k, v in numbers.items() if v is not None},
    )


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
