"""The NATS link puts a kept topic's live messages in the stream's order:
two nodes publish theirs once stored, and they may come the other way round
from how JetStream stored them (see ``brokers/_nats_link.py``)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import typing as t
from collections import deque

from nats.aio.msg import Msg

from flask_realtime.brokers import _nats_link
from flask_realtime.brokers._nats_link import Link, Unconfirmed, live_message, subject

TOPIC = "c:kept.order"
NAME = subject(TOPIC)


def _link() -> Link:
    link = Link(Unconfirmed())
    link.topic_of[NAME] = TOPIC
    link.waiting[NAME] = deque()
    return link


async def _arrive(
    link: Link, sequence: int, before: int, data: bytes, epoch: str = "E"
) -> None:
    """What nats-py does with a kept topic's live message: builds it through
    ``msg_class`` in the server's order, then hands it to the callback."""
    live = live_message(epoch, sequence, before, str(len(data)), data)
    msg = link.nc.msg_class(subject=NAME, data=live, _client=None)
    assert isinstance(msg, Msg)
    await link._on_topic(msg)


def _received(link: Link) -> list[bytes]:
    return [data for _, data in link.inbox]


def _run(make: t.Callable[[], t.Awaitable[t.Any]]) -> t.Any:
    """``asyncio.run`` on a thread of its own: the browser tests' Playwright
    leaves an event loop running in the main thread, where it refuses."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result(timeout=30)


def test_a_message_that_comes_before_the_one_stored_ahead_of_it_waits() -> None:
    async def run() -> list[bytes]:
        link = _link()
        await _arrive(link, 10, 7, b"a")
        await _arrive(link, 14, 12, b"c")  # 12 is still on its way
        assert _received(link) == [b"a"]
        await _arrive(link, 12, 10, b"b")
        await _arrive(link, 15, 14, b"d")
        return _received(link)

    assert _run(run) == [b"a", b"b", b"c", b"d"]


def test_a_message_whose_predecessor_never_comes_goes_after_a_while(
    monkeypatch: t.Any,
) -> None:
    monkeypatch.setattr(_nats_link, "_EARLY_WAIT", 0.05)

    async def run() -> list[list[bytes]]:
        link = _link()
        await _arrive(link, 3, 1, b"a")
        await _arrive(link, 9, 5, b"c")  # 5 was lost (republish is at most once)
        await _arrive(link, 11, 9, b"d")
        seen = [_received(link)]
        await asyncio.sleep(0.2)
        seen.append(_received(link))
        await _arrive(link, 12, 11, b"e")
        seen.append(_received(link))
        return seen

    before, after, later = _run(run)
    assert before == [b"a"]
    assert after == [b"a", b"c", b"d"]
    assert later == [b"a", b"c", b"d", b"e"]


def test_plain_messages_and_the_first_kept_one_go_at_once() -> None:
    async def run() -> list[bytes]:
        link = _link()
        msg = link.nc.msg_class(subject=NAME, data=b"plain", _client=None)
        await link._on_topic(msg)
        await _arrive(link, 20, 18, b"first")  # nothing placed before it here
        return _received(link)

    assert _run(run) == [b"plain", b"first"]


def test_from_the_floor_on_the_first_to_come_waits_for_the_one_before() -> None:
    """Once subscribed, the link learns the topic's last stored message (its
    floor): a later one that comes first waits for the one before it, and
    those up to the floor, the node's to read, never go out."""

    async def run() -> list[list[bytes]]:
        link = _link()
        seen = []
        await _arrive(link, 30, 20, b"old")  # on its way before the floor
        link.floor(TOPIC, "E", 40)
        await _arrive(link, 45, 42, b"b")  # 42 is still on its way
        seen.append(_received(link))
        await _arrive(link, 38, 30, b"stored before the floor")
        await _arrive(link, 42, 40, b"a")
        seen.append(_received(link))
        await _arrive(link, 42, 40, b"a")  # sent again after a reconnect
        await _arrive(link, 46, 45, b"c")
        link.floor(TOPIC, "E", 44)  # an older floor (a subscribe again) moves nothing
        await _arrive(link, 45, 42, b"b")
        seen.append(_received(link))
        return seen

    assert _run(run) == [[b"old"], [b"old", b"a", b"b"], [b"old", b"a", b"b", b"c"]]


def test_a_new_epoch_starts_the_order_anew() -> None:
    """A server that lost its data numbers its streams from 1 again."""

    async def run() -> list[bytes]:
        link = _link()
        await _arrive(link, 500, 499, b"old")
        await _arrive(link, 3, 2, b"new", epoch="F")
        await _arrive(link, 4, 3, b"next", epoch="F")
        return _received(link)

    assert _run(run) == [b"old", b"new", b"next"]


class _Recorder:
    """The link's connection, in place of nats-py's: what it publishes."""

    def __init__(self) -> None:
        self.subjects: list[str] = []

    async def publish(self, subject: str, payload: bytes = b"", **_: t.Any) -> None:
        self.subjects.append(subject)


def test_live_batches_are_kept_until_the_server_answers_something_after_them(
    monkeypatch: t.Any,
) -> None:
    """Kept for the next connection to send again, until an answer to what
    was published after them, or a marker, says the server had them."""
    monkeypatch.setattr(_nats_link, "_MARK_AFTER", 0.01)

    def answer(link: Link, name: str) -> Msg:
        return Msg(_client=t.cast(t.Any, None), subject=name, data=b"")

    async def run() -> list[list[int]]:
        link = _link()
        recorder = link.nc = t.cast(t.Any, _Recorder())
        batches = link.unconfirmed.batches
        seen = []
        link._asked = 3  # three acknowledgements asked for before
        await link.deliver([(TOPIC, b"a")])
        await link.on_answer(answer(link, link.answer_prefix + "3"))
        seen.append(list(batches))  # an answer to one sent before: kept
        await link.on_answer(answer(link, link.answer_prefix + "4"))
        seen.append(list(batches))  # one sent after: the server had it
        early = link.unconfirmed.number()  # a batch's, sent before
        await link.deliver([(TOPIC, b"b")])
        await link.on_control(answer(link, f"{link.control}.{early}"))
        seen.append(list(batches))  # its marker: says nothing of this one
        # Nothing more is published: after a while, a marker of its own.
        while not recorder.subjects[-1].startswith(link.control):
            await asyncio.sleep(0.005)
        await link.on_control(answer(link, recorder.subjects[-1]))
        seen.append(list(batches))
        return seen

    assert _run(run) == [[1], [], [3], []]
