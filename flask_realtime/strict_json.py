"""Strict JSON (RFC 8259 in UTF-8), both ways: what :mod:`.protocol` reads
from clients and writes to them.

Python's ``json`` reads and writes ``NaN`` and ``Infinity``, which JSON has
no words for and browsers' ``JSON.parse`` refuses (one relayed would spoil a
whole long-poll batch), and lets lone surrogates through, which are not text
and which UTF-8 cannot carry. Here both are errors, on the way in (the
protocol's 400) and on the way out (a ValueError in the caller).
"""

from __future__ import annotations

import json
import math
import re
import typing as t

_compact = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


class NotStrictJSON(ValueError):
    """Input or output that strict JSON (RFC 8259, in UTF-8) cannot carry."""


def _no_constants(name: str) -> t.NoReturn:
    raise NotStrictJSON(f"invalid JSON: {name} is not a JSON number")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e400: valid JSON, but no double holds it
        raise NotStrictJSON(f"invalid JSON: {text[:40]} is out of range")
    return number


_strict_decoder = json.JSONDecoder(parse_constant=_no_constants, parse_float=_finite)


SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(value: t.Any) -> str | None:
    """The first string in ``value`` (keys included) with a lone surrogate.

    The decoder pairs escaped surrogates (``"\\ud83d\\ude00"``) into one
    character, so any surrogate left in a string has no partner. Iterative,
    so that nesting as deep as the decoder allows cannot exhaust the stack.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if SURROGATE.search(item):
                return item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def loads(text: str | bytes) -> t.Any:
    """Strict JSON from a client: UTF-8, no NaN or Infinity, no lone surrogate.

    Raises :class:`NotStrictJSON` (a ValueError) for anything else, and
    RecursionError for nesting deeper than the decoder goes.
    """
    if isinstance(text, str):
        raw = text
        if SURROGATE.search(raw):
            raise NotStrictJSON("invalid JSON: a lone surrogate is not text")
    else:
        try:
            raw = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise NotStrictJSON("invalid JSON: the message is not UTF-8") from None
    try:
        value = _strict_decoder.decode(raw)
    except NotStrictJSON:
        raise
    except ValueError:
        raise NotStrictJSON("invalid JSON") from None
    # Only an escape ("\\ud800") can put a surrogate in a string of UTF-8.
    if "\\u" in raw and _lone_surrogate(value) is not None:
        raise NotStrictJSON(
            "invalid JSON: an unpaired surrogate escape (\\ud800-\\udfff) is not text"
        )
    return value


def dumps(message: t.Any) -> bytes:
    """Compact UTF-8 JSON.

    Raises ValueError for what strict JSON cannot carry (NaN, Infinity, a
    lone surrogate) and TypeError for what JSON has no type for, in the
    caller of ``broadcast()`` and the like, before anything is sent.
    """
    try:
        text = _compact(message)
    except ValueError as exc:  # NaN or Infinity, or a circular reference
        hint = (
            ": NaN and Infinity have no JSON form; send null or a string instead"
            if "Out of range" in str(exc)
            else ""
        )
        raise NotStrictJSON(f"not strict JSON ({exc}){hint}") from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise NotStrictJSON(
            f"not strict JSON: a lone surrogate ({text[exc.start]!r}) is not "
            "text, and UTF-8 cannot carry it"
        ) from None
