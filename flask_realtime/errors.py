"""Exceptions shared across layers, in one place that imports nothing above it.

Transports catch what the node raises through these names, so that no
transport imports a broker module. :class:`BrokerUnavailable` is defined
with the brokers (they import nothing above them) and re-exported here.
"""

from __future__ import annotations

from .brokers.base import BrokerUnavailable as BrokerUnavailable

__all__ = ["BrokerUnavailable"]
