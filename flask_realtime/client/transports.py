"""Which transports a client may use, and falling back from one to the next.

The names and the order are the JavaScript client's: ``"websocket"``,
``"sse"``, ``"longpolling"``. Each connection attempt tries the transport
that worked last first, then the others in the configured order. A transport
that cannot connect (unreachable, disabled, refused by a proxy: a
:class:`ConnectError`) gives way to the next; a refusal of the client itself
(:class:`ConnectionClosed`, e.g. 4001) ends the attempt, since another
transport would be refused too.
"""

from __future__ import annotations

import typing as t

from .errors import ConnectError
from .websocket import Opened

#: Every transport, in the default order of the JavaScript client.
TRANSPORTS = ("websocket", "sse", "longpolling")


def check_transports(names: t.Iterable[str] | str) -> tuple[str, ...]:
    """``names`` as a tuple, or ValueError for an unknown or missing one."""
    chosen = (names,) if isinstance(names, str) else tuple(names)
    for name in chosen:
        if name not in TRANSPORTS:
            raise ValueError(
                f"unknown transport {name!r}; expected some of {TRANSPORTS}"
            )
    if not chosen:
        raise ValueError("transports must name at least one transport")
    return chosen


def candidates(names: t.Sequence[str], preferred: str | None) -> list[str]:
    """The order of one attempt: the transport that worked last first."""
    if preferred not in names:
        return list(names)
    return [preferred, *(name for name in names if name != preferred)]


def open_first(names: t.Sequence[str], open_one: t.Callable[[str], Opened]) -> Opened:
    """The first transport of ``names`` that connects.

    With one transport its own error is raised unchanged; with several, a
    :class:`ConnectError` that names each failure.
    """
    failures: list[tuple[str, ConnectError]] = []
    for name in names:
        try:
            return open_one(name)
        except ConnectError as exc:
            failures.append((name, exc))
    if len(failures) == 1:
        raise failures[0][1]
    text = "; ".join(f"{name}: {exc}" for name, exc in failures)
    raise ConnectError(f"could not connect with any transport ({text})")
