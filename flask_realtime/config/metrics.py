"""``REALTIME_METRICS``: the Prometheus endpoint, off unless enabled.

``{"enabled": True, "token": "..."}``: ``GET <prefix>/metrics`` answers
only with ``Authorization: Bearer <token>``. The token is required: the
metrics name channels' activity and the server's load, which are nobody's
business but the operator's.
"""

from __future__ import annotations

import typing as t

from .settings import ConfigError

_KEY = "REALTIME_METRICS"

#: Shorter tokens are refused: guessable, or a placeholder left in.
MIN_TOKEN_LENGTH = 16


def metrics_token(config: t.Mapping[str, t.Any]) -> str | None:
    """The endpoint's token, or None when metrics are off."""
    options = config.get(_KEY)
    if options is None:
        return None
    if not isinstance(options, dict):
        raise ConfigError(
            f"{_KEY} must be a dict like {{'enabled': True, 'token': '...'}},"
            f" got {type(options).__name__}"
        )
    unknown = set(options) - {"enabled", "token"}
    if unknown:
        raise ConfigError(f"{_KEY}: unknown option(s) {sorted(map(str, unknown))}")
    enabled = options.get("enabled", False)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{_KEY}['enabled'] must be True or False")
    if not enabled:
        return None
    token = options.get("token")
    # The value is never shown: it is a secret, even when wrong.
    if not isinstance(token, str) or len(token.strip()) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"{_KEY}['token'] must be a string of at least {MIN_TOKEN_LENGTH}"
            " characters (e.g. secrets.token_urlsafe())"
        )
    if token != token.strip() or any(c.isspace() for c in token):
        raise ConfigError(f"{_KEY}['token'] must not contain whitespace")
    return token
