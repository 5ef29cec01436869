"""``REALTIME_*`` settings: defaults, environment fallbacks, validation.

Everything is resolved once, at ``init_app``; a wrong value raises
:class:`ConfigError` naming the key, so a typo never surfaces as a runtime
surprise on the first connection.
"""

from __future__ import annotations

from .environment import environment_defaults as environment_defaults
from .settings import BROKERS as BROKERS
from .settings import DEFAULTS as DEFAULTS
from .settings import TRANSPORTS as TRANSPORTS
from .settings import ConfigError as ConfigError
from .settings import Settings as Settings
from .validate import load as load

__all__ = [
    "BROKERS",
    "DEFAULTS",
    "TRANSPORTS",
    "ConfigError",
    "Settings",
    "environment_defaults",
    "load",
]
