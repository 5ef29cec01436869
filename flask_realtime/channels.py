"""Channel names, kinds and authorizer patterns (PROTOCOL.md, "Channels")."""

from __future__ import annotations

import re
import typing as t

if t.TYPE_CHECKING:  # not at run time: the client imports this module
    from .brokers.interface import Retention

PUBLIC = "public"
PRIVATE = "private"
PRESENCE = "presence"

_NAME = re.compile(r"[A-Za-z0-9._\-:=@#]{1,200}")


def is_valid_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


def compile_pattern(pattern: str) -> t.Pattern[str]:
    """``*`` matches any run of characters; the pattern matches the whole name."""
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")))


class Authorizer(t.NamedTuple):
    pattern: str
    regex: t.Pattern[str]
    func: t.Callable[..., t.Any]


class ChannelRules:
    """Decides each channel's kind and which authorizer guards it.

    Matching is cached per name: a busy server sees the same few thousand
    channel names again and again.
    """

    def __init__(self) -> None:
        self._authorizers: list[Authorizer] = []
        self._cache: dict[str, Authorizer | None] = {}
        self._history: list[tuple[t.Pattern[str], Retention]] = []
        self._retention: dict[str, Retention | None] = {}

    def set_history(self, rules: t.Iterable[tuple[str, int, float]]) -> None:
        """``REALTIME_HISTORY``'s rules, (pattern, size, ttl) in order."""
        from .brokers.interface import Retention

        self._history = [
            (compile_pattern(pattern), Retention(size, ttl))
            for pattern, size, ttl in rules
        ]
        self._retention.clear()

    @property
    def keeps_history(self) -> bool:
        """Whether any channel keeps a history."""
        return bool(self._history)

    def retention(self, name: str) -> Retention | None:
        """How much of channel ``name``'s stream is kept: the first matching
        rule of ``REALTIME_HISTORY``; None: no history."""
        try:
            return self._retention[name]
        except KeyError:
            pass
        found = next((r for regex, r in self._history if regex.fullmatch(name)), None)
        if len(self._retention) > 10_000:
            self._retention.clear()
        self._retention[name] = found
        return found

    def add_authorizer(self, pattern: str, func: t.Callable[..., t.Any]) -> None:
        if not isinstance(pattern, str) or not pattern:
            raise ValueError("an authorizer pattern must be a non-empty string")
        if not callable(func):
            raise TypeError(f"the authorizer for {pattern!r} is not callable")
        self._authorizers.append(Authorizer(pattern, compile_pattern(pattern), func))
        self._cache.clear()

    def authorizer_for(self, name: str) -> Authorizer | None:
        try:
            return self._cache[name]
        except KeyError:
            pass
        found = next((a for a in self._authorizers if a.regex.fullmatch(name)), None)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[name] = found
        return found

    def kind(self, name: str) -> str:
        if name.startswith(("presence-", "presence.")):
            return PRESENCE
        if name.startswith(("private-", "private.")):
            return PRIVATE
        if self.authorizer_for(name) is not None:
            return PRIVATE
        return PUBLIC


class HandlerTable:
    """Client-event handlers, looked up by event name and channel pattern."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[tuple[t.Pattern[str], t.Callable[..., t.Any]]]]
        self._handlers = {}

    def add(self, event: str, pattern: str, func: t.Callable[..., t.Any]) -> None:
        self._handlers.setdefault(event, []).append((compile_pattern(pattern), func))

    def find(self, event: str, channel: str) -> t.Callable[..., t.Any] | None:
        """The first handler registered for ``event`` whose pattern matches
        ``channel``: one handler, so one return value answers the event."""
        for regex, func in self._handlers.get(event, ()):
            if regex.fullmatch(channel):
                return func
        return None
