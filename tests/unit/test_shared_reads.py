"""Shared history reads (``brokers/_shared_reads.py``): who may join a
round, and what each read gets back."""

from __future__ import annotations

import threading
import typing as t

from flask_realtime.brokers._shared_reads import Answer, Ask, SharedReads
from flask_realtime.brokers._support import BrokerUnavailable
from flask_realtime.brokers.interface import Position


class Broker:
    """A broker read that holds each round after its question until let go,
    and answers each read with the round's number and the read's ask."""

    def __init__(self) -> None:
        self.rounds: list[list[Ask]] = []
        self.asked = threading.Event()  # a round's question went out
        self.go = threading.Semaphore(0)
        self.fail = False

    def run(self, topic: str, close: t.Callable[[], list[Ask]]) -> list[Answer]:
        asks = close()
        self.rounds.append(asks)
        self.asked.set()
        self.go.acquire()
        if self.fail:
            raise BrokerUnavailable("down")
        number = len(self.rounds)
        return [(Position(number, topic), [repr(ask).encode()]) for ask in asks]


def start(shared: SharedReads, results: list[t.Any], after: int) -> threading.Thread:
    def read() -> None:
        try:
            results.append(shared.read("t", after, None))
        except Exception as exc:
            results.append(exc)

    thread = threading.Thread(target=read)
    thread.start()
    return thread


def wait_for(predicate: t.Callable[[], bool]) -> None:
    for _ in range(500):
        if predicate():
            return
        threading.Event().wait(0.01)
    raise AssertionError("timed out")


def test_reads_after_a_rounds_question_wait_for_the_next_round_and_share_it() -> None:
    broker = Broker()
    shared = SharedReads(broker.run)
    first: list[t.Any] = []
    leader = start(shared, first, 1)
    assert broker.asked.wait(5)  # the first round's question is out
    later: list[t.Any] = []
    threads = [start(shared, later, n) for n in range(2, 6)]
    wait_for(lambda: shared.reads == 5)
    broker.go.release()  # round 1 ends; round 2 runs, with all four
    leader.join(5)
    wait_for(lambda: len(broker.rounds) == 2)
    broker.go.release()
    for thread in threads:
        thread.join(5)
    assert first == [(Position(1, "t"), [b"(1, None)"])]
    assert broker.rounds == [[(1, None)], [(n, None) for n in range(2, 6)]]
    assert sorted(later, key=lambda answer: answer[1]) == [
        (Position(2, "t"), [repr((n, None)).encode()]) for n in range(2, 6)
    ]
    assert shared.rounds == 2


def test_a_failed_round_fails_each_of_its_reads_and_the_next_round_runs() -> None:
    broker = Broker()
    shared = SharedReads(broker.run)
    results: list[t.Any] = [None] * 4
    threads = []

    def read(n: int) -> None:
        try:
            results[n] = shared.read("t", n, None)
        except Exception as exc:
            results[n] = exc

    def begin(n: int) -> None:
        threads.append(threading.Thread(target=read, args=(n,)))
        threads[-1].start()

    begin(0)
    assert broker.asked.wait(5)  # round 1 is out
    begin(1)
    begin(2)  # both in round 2, which fails
    wait_for(lambda: shared.reads == 3)
    broker.go.release()
    wait_for(lambda: len(broker.rounds) == 2)
    broker.fail = True
    begin(3)  # in round 3
    wait_for(lambda: shared.reads == 4)
    broker.go.release()
    wait_for(lambda: len(broker.rounds) == 3)
    broker.fail = False
    broker.go.release()
    for thread in threads:
        thread.join(5)
    assert results[0] == (Position(1, "t"), [b"(0, None)"])
    assert all(isinstance(results[n], BrokerUnavailable) for n in (1, 2)), results
    assert results[3] == (Position(3, "t"), [b"(3, None)"])
    assert shared.rounds == 3
