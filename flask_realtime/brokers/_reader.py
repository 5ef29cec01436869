"""The reader half of the broker base: connect, read, reconnect with backoff.

One reader per broker and process (a greenlet under gevent, a thread
otherwise) owns the connection's life: it connects with every subscription
in place, lets the outbox send what waited, reads until the link fails,
and then reconnects with backoff, warning once per outage.
"""

from __future__ import annotations

import logging
import threading
import typing as t

from .._runtime import event, spawn
from ._support import Backoff

if t.TYPE_CHECKING:
    from .base import BrokerBase

log = logging.getLogger("flask_realtime")


class Reader:
    def __init__(self, broker: BrokerBase) -> None:
        self._broker = broker
        self.ident: int | None = None
        self.settled = event()  # the first connection is up, or failed
        self._wake = event()
        self._task: t.Any = None

    def start(self) -> None:
        self._task = spawn(self._run)

    def current(self) -> bool:
        """Whether the caller runs in this reader."""
        return threading.get_ident() == self.ident

    def stop(self) -> None:
        """Wake a reader waiting to reconnect, and wait for it (not from itself)."""
        self._wake.set()
        if self._task is not None and not self.current():
            self._task.join(2.0)

    def abandon(self) -> None:
        """In a forked child: a reader greenlet copied from the parent must
        never run again, or it would read the parent's socket."""
        task, self._task = self._task, None
        if hasattr(task, "kill"):  # a greenlet; a thread does not survive fork
            task.kill(block=False)

    def _run(self) -> None:
        self.ident = threading.get_ident()
        broker = self._broker
        backoff = Backoff()
        warned = False  # one WARNING per outage; the retries log at DEBUG
        while broker._reading():
            problem: BaseException | None = None
            try:
                broker._go_up()
            except Exception as exc:
                problem = exc
            if problem is None:
                log.info("connected to the %s broker at %s", broker.kind, broker.url)
                broker.problem = None
                self.settled.set()
                backoff.reset()
                warned = False
                broker._outbox.link_up()
                try:
                    broker._read()
                except Exception as exc:
                    problem = exc
                verb = "lost the connection to"
            else:
                verb = "cannot connect to"
            if not broker._reading():
                break  # closed (close() disconnects), or a parent's reader after fork
            broker._go_down()
            broker.problem = f"{verb} the {broker.kind} broker at {broker.url}"
            broker.problem += f": {problem}" if problem is not None else ""
            self.settled.set()
            if problem is not None and not isinstance(problem, broker.link_errors):
                log.error(
                    "the %s broker's reader failed", broker.kind, exc_info=problem
                )
            if warned:
                log.debug("%s broker at %s: %s", broker.kind, broker.url, problem)
            else:
                log.warning(
                    "%s the %s broker at %s (%s); retrying",
                    verb,
                    broker.kind,
                    broker.url,
                    problem,
                )
                warned = True
            self._wake.wait(backoff.next_delay())
        if self.current() and broker._reader is self:
            broker._disconnect()  # what a connect racing close() may have opened
