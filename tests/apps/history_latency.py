"""``tests.apps.basic`` with a broker whose history read takes a while.

The null broker reads its history in memory, without yielding, so nothing
can be published during a subscribe's read. A networked broker's read is a
round trip, during which live events keep arriving; this app makes the
null broker's read take 20 ms before and after it (``time.sleep``, which
yields under gevent), so that the recovery's hand-over from history to
live delivery is tested against events published during the read.
"""

from __future__ import annotations

import time
import typing as t

from tests.apps.basic import app, realtime

LATENCY = 0.02

_broker = realtime.node.broker
_read = _broker.history


def _slow_history(topic: str, **kwargs: t.Any) -> t.Any:
    time.sleep(LATENCY)
    result = _read(topic, **kwargs)
    time.sleep(LATENCY)
    return result


_broker.history = _slow_history  # type: ignore[method-assign]

__all__ = ["app"]
