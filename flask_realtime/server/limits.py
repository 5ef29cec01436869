"""What a client may make the server hold before the application runs.

One set of numbers for both servers of the project, gunicorn's
``flask_realtime.gunicorn.Worker`` and ``flask realtime serve``: how long a
request head and body may take to arrive, how long a kept-alive connection
may stay idle, and how large a head may be. Each comes from an environment
variable (both servers), from gunicorn's own setting where gunicorn has one,
or from its default here.
"""

from __future__ import annotations

import dataclasses
import os
import typing as t

from ..config import ConfigError


@dataclasses.dataclass(frozen=True)
class Limits:
    """Timeouts in seconds, sizes in bytes."""

    #: From the connection's opening, or the first byte of a later request on
    #: a kept-alive connection, to the end of the request's head.
    head_timeout: float = 10.0
    #: From the end of the head to the end of the body (a chunked body that
    #: never ends is cut off here).
    body_timeout: float = 30.0
    #: How long a kept-alive connection may wait for its next request.
    keepalive_timeout: float = 5.0
    #: The request line (method, target, version).
    max_request_line: int = 8190
    #: Header fields in one head.
    max_header_fields: int = 100
    #: One header field, name and value.
    max_header_field_size: int = 8190
    #: The whole head: request line and every field.
    max_head_size: int = 64 * 1024


#: Environment variable -> (field, type).
ENVIRONMENT: dict[str, tuple[str, type]] = {
    "REALTIME_HEAD_TIMEOUT": ("head_timeout", float),
    "REALTIME_BODY_TIMEOUT": ("body_timeout", float),
    "REALTIME_KEEPALIVE_TIMEOUT": ("keepalive_timeout", float),
    "REALTIME_MAX_REQUEST_LINE": ("max_request_line", int),
    "REALTIME_MAX_HEADER_FIELDS": ("max_header_fields", int),
    "REALTIME_MAX_HEADER_FIELD_SIZE": ("max_header_field_size", int),
    "REALTIME_MAX_HEAD_SIZE": ("max_head_size", int),
}


def from_environment(
    base: Limits = Limits(), environ: t.Mapping[str, str] = os.environ
) -> Limits:
    """``base`` with the values the environment sets; a bad one raises
    :class:`~flask_realtime.ConfigError` naming the variable."""
    changes: dict[str, t.Any] = {}
    for name, (field, kind) in ENVIRONMENT.items():
        text = environ.get(name, "").strip()
        if not text:
            continue
        try:
            value = kind(text)
        except ValueError:
            raise ConfigError(
                f"{name} must be a {'number' if kind is float else 'whole number'}"
                f" of {'seconds' if kind is float else 'bytes or fields'},"
                f" not {text!r}"
            ) from None
        if not value > 0:
            raise ConfigError(f"{name} must be greater than 0, not {text!r}")
        changes[field] = value
    return dataclasses.replace(base, **changes)


def from_gunicorn(cfg: t.Any, environ: t.Mapping[str, str] = os.environ) -> Limits:
    """The limits under gunicorn: its ``--keep-alive`` and ``--limit-request-*``
    settings where set (0 keeps ours: gunicorn's 0 means "unlimited", which
    this worker does not offer), then the environment."""
    base = Limits()
    gunicorn_values = {
        "keepalive_timeout": cfg.keepalive,
        "max_request_line": cfg.limit_request_line,
        "max_header_fields": cfg.limit_request_fields,
        "max_header_field_size": cfg.limit_request_field_size,
    }
    base = dataclasses.replace(
        base, **{field: value for field, value in gunicorn_values.items() if value}
    )
    return from_environment(base, environ)
