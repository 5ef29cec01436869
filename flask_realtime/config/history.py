"""``REALTIME_HISTORY``: which channels keep a history, and how much.

``{"chat.*": {"size": 100, "ttl": 600}, ...}``: channel pattern -> how many
events its channels keep and for how many seconds. The first matching
pattern wins, in the dict's order (PROTOCOL.md, "History and recovery").
"""

from __future__ import annotations

import json
import math
import typing as t

from .settings import ConfigError

# A recovery replays up to ``size`` events into one connection's queue at
# once, without yielding, and the broker keeps ``size`` events per channel:
# past about this many a client is better off reloading its state than
# replaying (10,000 is also the default bound of a connection's queue,
# REALTIME_MAX_QUEUE_MESSAGES, which a larger replay would overflow).
MAX_SIZE = 10_000

#: One rule: (channel pattern, size, ttl in seconds).
HistoryRule = tuple[str, int, float]

_KEY = "REALTIME_HISTORY"


def history_rules(config: t.Mapping[str, t.Any]) -> tuple[HistoryRule, ...]:
    """The validated rules, in the dict's order."""
    rules = config.get(_KEY)
    if rules is None:
        return ()
    if not isinstance(rules, dict):
        raise ConfigError(
            f"{_KEY} must be a dict of channel pattern -> "
            f"{{'size': events, 'ttl': seconds}}, got {rules!r}"
        )
    return tuple(_rule(pattern, rule) for pattern, rule in rules.items())


def _rule(pattern: t.Any, rule: t.Any) -> HistoryRule:
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(
            f"{_KEY}: each key must be a non-empty channel pattern, got {pattern!r}"
        )
    key = f"{_KEY}[{json.dumps(pattern)}]"
    if not isinstance(rule, dict):
        raise ConfigError(
            f"{key} must be {{'size': events, 'ttl': seconds}}, got {rule!r}"
        )
    unknown = set(rule) - {"size", "ttl"}
    if unknown:
        raise ConfigError(f"{key}: unknown option(s) {sorted(map(str, unknown))}")
    for name in ("size", "ttl"):
        if name not in rule:
            raise ConfigError(f'{key}["{name}"] is missing')
    size = rule["size"]
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_SIZE:
        raise ConfigError(
            f'{key}["size"] must be an integer from 1 to {MAX_SIZE}, got {size!r}'
        )
    ttl = rule["ttl"]
    if (
        isinstance(ttl, bool)
        or not isinstance(ttl, (int, float))
        or not math.isfinite(ttl)
        or ttl <= 0
    ):
        raise ConfigError(f'{key}["ttl"] must be a number of seconds > 0, got {ttl!r}')
    return pattern, size, float(ttl)
