"""Fork safety: every live broker forgets its parent's connections in a child.

A gunicorn master that used a broker before forking must not share its
sockets with the workers: each child drops them at once and reconnects on
first use.
"""

from __future__ import annotations

import os
import typing as t
import weakref


class ForkAware(t.Protocol):
    def _after_fork(self) -> None: ...


_live: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def watch(broker: ForkAware) -> None:
    """Call ``broker._after_fork()`` in every child forked from now on."""
    _live.add(broker)


def _forget_parent_connections() -> None:
    # At once, not on first use: under gevent the reader greenlet survives
    # the fork and would read the parent's messages off the shared socket.
    for broker in list(_live):
        broker._after_fork()


os.register_at_fork(after_in_child=_forget_parent_connections)
