"""The RabbitMQ writer's copy of a tail (``_amqp_held.HeldTails``): what
it holds, and what it puts in an answer to a read's question."""

from __future__ import annotations

import pytest

from flask_realtime.brokers import _amqp_held
from flask_realtime.brokers._amqp_held import HeldTails, unpack_held
from flask_realtime.brokers.interface import Retention

RULE = Retention(size=5, ttl=60.0)


def body(n: int) -> bytes:
    return b'm\n{"data":%d,"x":"\\n"}' % n  # an escaped newline inside


def held(tails: HeldTails, topic: str, **question: int) -> list[int] | None:
    """The offsets an answer carries (None: none, the read scans)."""
    packed = tails.answer(topic, {"s": 1, **question}, last=question.pop("last", 0))
    if not packed:
        return None
    assert packed.startswith(b"\n")
    events = unpack_held(packed[1:])
    assert [b for _, _, b in events] == [body(o) for o, _, _ in events]
    return [o for o, _, _ in events]


def fill(tails: HeldTails, topic: str, offsets: range, epoch: str = "e1") -> None:
    for n in offsets:
        tails.add(topic, RULE, epoch, n, 1000 + n, body(n))


def test_an_answer_carries_the_wanted_events_only_when_all_are_held() -> None:
    tails = HeldTails()
    fill(tails, "t", range(1, 9))  # size 5: 4 to 8 held
    assert held(tails, "t", w=5, last=8) == [5, 6, 7, 8]
    assert held(tails, "t", w=4, last=7) == [4, 5, 6, 7]  # up to the position
    assert held(tails, "t", n=2, last=8) == [7, 8]
    assert held(tails, "t", w=7, n=4, last=8) == [5, 6, 7, 8]  # the lower
    assert held(tails, "t", w=3, last=8) is None  # 3 is gone: a scan
    assert held(tails, "t", w=9, last=8) is None  # nothing is wanted
    assert held(tails, "t", last=8) is None
    assert held(tails, "other", w=1, last=8) is None


def test_a_hole_or_a_new_epoch_starts_the_copy_again() -> None:
    tails = HeldTails()
    fill(tails, "t", range(1, 4))
    fill(tails, "t", range(5, 7))  # 4 never came: 5 and 6 alone
    assert held(tails, "t", w=4, last=6) is None
    assert held(tails, "t", w=5, last=6) == [5, 6]
    fill(tails, "t", range(7, 8), epoch="e2")
    assert held(tails, "t", w=6, last=7) is None
    assert held(tails, "t", w=7, last=7) == [7]
    tails.drop("t")
    assert held(tails, "t", w=7, last=7) is None and tails.size == 0


def test_the_bytes_held_are_bounded_least_lately_appended_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_amqp_held, "HELD_BYTES", 3 * len(body(1)) * 5)
    tails = HeldTails()
    for topic in ("a", "b", "c"):
        fill(tails, topic, range(1, 6))  # full
    fill(tails, "a", range(6, 7))  # a appended to lately: b is the oldest
    fill(tails, "d", range(1, 6))
    assert held(tails, "b", w=2, last=5) is None
    assert held(tails, "a", w=2, last=6) == [2, 3, 4, 5, 6]
    assert held(tails, "c", w=1, last=5) == [1, 2, 3, 4, 5]
    assert held(tails, "d", w=1, last=5) == [1, 2, 3, 4, 5]
    assert tails.size <= _amqp_held.HELD_BYTES
