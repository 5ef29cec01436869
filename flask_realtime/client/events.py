"""Callbacks per event name, and the mailbox that ``wait_for`` reads."""

from __future__ import annotations

import collections
import logging
import threading
import time
import typing as t

from .errors import RealtimeTimeout

Handler = t.Callable[[t.Any], t.Any]

# The package's logger ("flask_realtime.client"), named in the docs.
logger = logging.getLogger(__package__)


class Emitter:
    """Callbacks per event name, plus a bounded mailbox for :meth:`wait_for`.

    The mailbox keeps every event in arrival order, whether or not callbacks
    took it, so a test can trigger something and then wait without a race.
    The client and each channel are emitters sharing the client's condition.
    """

    def __init__(self, cond: threading.Condition, buffer_size: int) -> None:
        self._cond = cond
        self._handlers: dict[str, list[Handler]] = {}
        self._mailbox: collections.deque[tuple[str, t.Any]] = collections.deque(
            maxlen=buffer_size
        )

    def on(self, event: str, fn: Handler | None = None) -> t.Any:
        """Call ``fn(data)`` for each ``event``; usable as a decorator."""

        def register(handler: Handler) -> Handler:
            with self._cond:
                self._handlers.setdefault(event, []).append(handler)
            return handler

        return register if fn is None else register(fn)

    def off(self, event: str | None = None, fn: Handler | None = None) -> None:
        """Remove ``fn`` from ``event``; every handler of ``event`` without
        ``fn``; every handler of every event without arguments."""
        with self._cond:
            if event is None:
                self._handlers.clear()
            elif fn is None:
                self._handlers.pop(event, None)
            else:
                remaining = [h for h in self._handlers.get(event, []) if h != fn]
                if remaining:
                    self._handlers[event] = remaining
                else:
                    self._handlers.pop(event, None)

    def wait_for(self, event: str, timeout: float = 10.0) -> t.Any:
        """The data of the oldest unclaimed ``event``, waiting up to ``timeout``.

        Each event is returned once. Raises :class:`RealtimeTimeout`, or
        :class:`ConnectionClosed` once nothing more can arrive. From a
        callback only ``timeout=0`` (look, don't wait) is allowed.
        """
        if timeout > 0:
            self._forbid_in_reader("wait_for()")
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for index, (name, data) in enumerate(self._mailbox):
                    if name == event:
                        del self._mailbox[index]
                        return data
                self._raise_if_finished()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [name for name, _ in self._mailbox][-10:]
                    raise RealtimeTimeout(
                        f"no {event!r} event within {timeout:g} s"
                        + (f" (unclaimed meanwhile: {seen})" if seen else "")
                    )
                self._cond.wait(remaining)

    def clear(self) -> None:
        """Forget the events nobody claimed with :meth:`wait_for`."""
        with self._cond:
            self._mailbox.clear()

    def _raise_if_finished(self) -> None:
        """Raise why nothing more can arrive, if nothing can."""
        raise NotImplementedError

    def _forbid_in_reader(self, what: str) -> None:
        """Refuse a blocking call made on the reader thread."""
        raise NotImplementedError

    def _emit(self, event: str, data: t.Any, *, buffer: bool = True) -> None:
        with self._cond:
            if buffer:
                self._mailbox.append((event, data))
                self._cond.notify_all()
            handlers = list(self._handlers.get(event, ()))
        for handler in handlers:
            try:
                handler(data)
            except Exception:
                logger.exception(
                    "%r: the handler %r of %r raised", self, handler, event
                )
