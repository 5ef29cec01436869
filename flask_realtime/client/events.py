"""Callbacks per event name, and the mailbox that ``wait_for`` reads."""

from __future__ import annotations

import collections
import logging
import threading
import time
import typing as t

from .errors import RealtimeTimeout

Handler = t.Callable[..., t.Any]

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
        # Each handler with whether it also takes the envelope.
        self._handlers: dict[str, list[tuple[Handler, bool]]] = {}
        self._mailbox: collections.deque[tuple[str, t.Any, dict[str, t.Any]]] = (
            collections.deque(maxlen=buffer_size)
        )

    def on(
        self, event: str, fn: Handler | None = None, *, envelope: bool = False
    ) -> t.Any:
        """Call ``fn(data)`` for each ``event``; usable as a decorator.

        With ``envelope=True``, ``fn(data, envelope)``: the whole message, so
        that a handler can read what lies beside ``data``, such as the
        sender's ``user_id`` on a relayed client event.
        """

        def register(handler: Handler) -> Handler:
            with self._cond:
                self._handlers.setdefault(event, []).append((handler, envelope))
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
                remaining = [
                    entry for entry in self._handlers.get(event, []) if entry[0] != fn
                ]
                if remaining:
                    self._handlers[event] = remaining
                else:
                    self._handlers.pop(event, None)

    def wait_for(
        self, event: str, timeout: float = 10.0, *, envelope: bool = False
    ) -> t.Any:
        """The data of the oldest unclaimed ``event``, waiting up to ``timeout``.

        Each event is returned once; with ``envelope=True`` its whole message
        rather than its data. Raises :class:`RealtimeTimeout`, or
        :class:`ConnectionClosed` once nothing more can arrive. From a
        callback only ``timeout=0`` (look, don't wait) is allowed.
        """
        if timeout > 0:
            self._forbid_in_reader("wait_for()")
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for index, (name, data, message) in enumerate(self._mailbox):
                    if name == event:
                        del self._mailbox[index]
                        return message if envelope else data
                self._raise_if_finished()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [entry[0] for entry in self._mailbox][-10:]
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

    def _emit(
        self,
        event: str,
        data: t.Any,
        *,
        buffer: bool = True,
        message: dict[str, t.Any] | None = None,
    ) -> None:
        """Hand ``event`` to its handlers and the mailbox. ``message`` is the
        server's envelope; the client's own events get ``{"event", "data"}``."""
        envelope = {"event": event, "data": data} if message is None else message
        with self._cond:
            if buffer:
                self._mailbox.append((event, data, envelope))
                self._cond.notify_all()
            handlers = list(self._handlers.get(event, ()))
        for handler, wants_envelope in handlers:
            try:
                if wants_envelope:
                    handler(data, envelope)
                else:
                    handler(data)
            except Exception:
                logger.exception(
                    "%r: the handler %r of %r raised", self, handler, event
                )
