"""Reads of one topic at once share one broker read (a recovery storm).

A thousand clients coming back at once ask a worker for the same channel's
history a thousand times, mostly from the same position. :class:`SharedReads`
turns the reads of one topic into rounds: the first read of a topic opens a
round and leads it, later reads join the open round, and the leader runs
one read for all of them (one position question, one scan) when the round
before it on that topic is over. Reads arriving meanwhile open the next
round, so at most one round per topic runs at a time and a burst costs a
few rounds, not one read each.

Why it is as good as a read of one's own: the recovery's hand-over
(``node/recovery.py``) needs a position at or past every event this node
delivered before the read began. A round's position is asked for only when
the round is closed (``close``, right before the question goes out), and
nobody joins a closed round, so every read in it began before its question.
Each read gets its own answer (its own ``after`` and ``limit``) from the
round's one position and the events the round read for all.
"""

from __future__ import annotations

import typing as t

from .._runtime import event, real_lock
from ._support import BrokerUnavailable
from .interface import Position

_WAIT = 60.0  # a joiner gives up on a round after this (its run has deadlines)

Ask = tuple["int | None", "int | None"]  # (after, limit), as Broker.history
Answer = tuple[Position, "list[bytes] | None"]
#: ``run(topic, close)``: one broker read answering every ask ``close()``
#: returns (in that order); ``close`` is called right before the position
#: is asked for, and nobody joins the round after it.
Run = t.Callable[[str, t.Callable[[], list[Ask]]], list[Answer]]


class _Round:
    __slots__ = ("asks", "answers", "error", "previous", "done")

    def __init__(self, previous: _Round | None) -> None:
        self.asks: list[Ask] = []
        self.answers: list[Answer] = []
        self.error: BaseException | None = None
        self.previous = previous  # the topic's round before: it runs first
        self.done = event()


class SharedReads:
    """Rounds of reads per topic; see the module docstring."""

    def __init__(self, run: Run) -> None:
        self._run = run
        self._lock = real_lock()  # never held across I/O
        self._open: dict[str, _Round] = {}  # still taking reads
        self._last: dict[str, _Round] = {}  # the newest, open or running
        self.rounds = 0  # broker reads run (for tests and benchmarks)
        self.reads = 0  # reads asked

    def read(self, topic: str, after: int | None, limit: int | None) -> Answer:
        """``Broker.history(topic, after=, limit=)`` in a round."""
        with self._lock:
            self.reads += 1
            current = self._open.get(topic)
            leading = current is None
            if current is None:
                current = _Round(self._last.get(topic))
                self._open[topic] = self._last[topic] = current
            index = len(current.asks)
            current.asks.append((after, limit))
        if leading:
            self._lead(topic, current)
        elif not current.done.wait(_WAIT):
            raise BrokerUnavailable(f"a shared history read of {topic!r} hung")
        error = current.error
        if error is not None:
            if leading or isinstance(error, BrokerUnavailable):
                raise error
            raise BrokerUnavailable(
                f"reading the history of {topic!r} failed: {error!r}"
            ) from error
        return current.answers[index]

    def _lead(self, topic: str, current: _Round) -> None:
        try:
            previous, current.previous = current.previous, None
            if previous is not None:
                previous.done.wait(_WAIT)  # one round of a topic at a time
            with self._lock:
                self.rounds += 1
            answers = self._run(topic, lambda: self._close(topic, current))
            if len(answers) != len(current.asks):
                raise RuntimeError("a shared read answered the wrong reads")
            current.answers = answers
        except BaseException as exc:  # the joiners must hear of it too
            current.error = exc
        finally:
            self._close(topic, current)
            with self._lock:
                if self._last.get(topic) is current:
                    del self._last[topic]
            current.done.set()

    def _close(self, topic: str, current: _Round) -> list[Ask]:
        """Take no more reads into ``current``; its reads."""
        with self._lock:
            if self._open.get(topic) is current:
                del self._open[topic]
            return list(current.asks)
