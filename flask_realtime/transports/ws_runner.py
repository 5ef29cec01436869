"""Server adapter: a pool of greenlets that run WebSocket client messages.

Under gevent, for sessions on detached sockets (:mod:`.ws_session`): their
read watcher runs in the event loop, where nothing may block, so client
messages (authorizers and event handlers are app code) run here.
"""

from __future__ import annotations

import contextvars
import os
import typing as t
from collections import deque


class Drainable(t.Protocol):
    def drain(self) -> None: ...


class Runner:
    """Greenlets that run client messages, reused from one connection to the next.

    Each connection's messages run in order in a greenlet, because authorizers
    and handlers are app code and may block. Spawning a greenlet for every
    batch costs about 13 µs here, more than the rest of handling a
    ``subscribe`` (Python 3.11 gives each new greenlet a fresh frame stack,
    allocated and freed again), so a finished worker waits for more work
    instead of exiting, and one worker takes connection after connection.

    A handler that blocks must not hold up other connections: a worker that
    starts on a connection while others wait makes sure another worker is on
    its way (``coming``), which takes over if this one blocks. Each batch runs
    in a fresh ``contextvars`` context, as it did in a greenlet of its own.
    Up to ``KEEP`` idle workers are kept.
    """

    KEEP = 64

    def __init__(self) -> None:
        import gevent
        from gevent.hub import Waiter

        self._hub = gevent.get_hub()
        self._spawn = gevent.spawn
        self._waiter = Waiter
        self.ready: deque[Drainable] = deque()
        self.idle: list[t.Any] = []  # the Waiters of parked workers
        self.coming = 0  # workers spawned or woken, not yet at ``ready``
        self.spawned = 0  # workers started in all (for tests)

    def schedule(self, session: Drainable) -> None:
        self.ready.append(session)
        if not self.coming:
            self._call_worker()

    def _call_worker(self) -> None:
        self.coming += 1
        if self.idle:
            self._hub.loop.run_callback(self.idle.pop().switch, None)
        else:
            self.spawned += 1
            self._spawn(self._work)

    def _work(self) -> None:
        ready = self.ready
        while True:
            self.coming -= 1
            while ready:
                session = ready.popleft()
                if ready and not self.coming:
                    self._call_worker()  # for the others, should this one block
                contextvars.Context().run(session.drain)
            if len(self.idle) >= self.KEEP:
                return
            waiter = self._waiter(self._hub)
            self.idle.append(waiter)
            try:
                waiter.get()
            except BaseException:
                # Killed while parked (the process is exiting): if it had been
                # called already, another worker comes in its place.
                if waiter in self.idle:
                    self.idle.remove(waiter)
                else:
                    self.coming -= 1
                    if ready and not self.coming:
                        self._call_worker()
                raise


_runners: dict[int, Runner] = {}


def runner() -> Runner:
    """This process's runner (a forked worker gets its own)."""
    pid = os.getpid()
    found = _runners.get(pid)
    if found is None:
        found = _runners[pid] = Runner()
    return found
