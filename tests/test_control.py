"""node/control.py: request/reply on plain publish/subscribe, on real brokers.

Each broker carries the node's tagged payloads verbatim; requests and
replies travel through an inbox topic per process. Run from plain threads,
against real servers started by the suite.
"""

from __future__ import annotations

import logging
import threading
import time
import typing as t

import pytest

from flask_realtime.brokers import BrokerUnavailable, create_broker
from flask_realtime.node import control as control_module
from flask_realtime.node.control import Control, message, split_message
from tests import brokerservers
from tests.brokerclients import TIMEOUT, settings_for
from tests.brokerservers import BrokerServer

# Every broker: the control layer runs on plain publish/subscribe.
KINDS = ("null", *brokerservers.KINDS)

Answer = t.Callable[[Control, str, bytes, str], None]


class Endpoint:
    """A Control and what reached it; ``answer`` handles its requests."""

    def __init__(self, kind: str, url: str | None) -> None:
        self.plain: list[tuple[str, bytes]] = []
        self.requests: list[tuple[str, bytes, str]] = []
        self.answer: Answer | None = None
        self._changed = threading.Condition()
        settings = settings_for(kind, url)
        self.control = Control(
            lambda on_message: create_broker(settings, on_message),
            self._on_plain,
            self._on_request,
        )

    def _on_plain(self, topic: str, data: bytes) -> None:
        with self._changed:
            self.plain.append((topic, data))
            self._changed.notify_all()

    def _on_request(self, topic: str, body: bytes, reply_to: str) -> None:
        self.requests.append((topic, body, reply_to))
        if self.answer is not None:
            self.answer(self.control, topic, body, reply_to)

    def wait_for_plain(self, count: int) -> None:
        deadline = time.monotonic() + TIMEOUT
        with self._changed:
            while len(self.plain) < count:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"timed out; received {self.plain!r}"
                self._changed.wait(remaining)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def endpoints(
    kind: str, broker_servers: t.Callable[[str], BrokerServer]
) -> t.Iterator[t.Callable[[], tuple[Endpoint, Endpoint]]]:
    """``endpoints()``: a requester and a responder on the same broker.

    With the null broker (one process, no server) they are one endpoint.
    """
    made: list[Endpoint] = []
    url = None if kind == "null" else broker_servers(kind).url

    def make() -> tuple[Endpoint, Endpoint]:
        requester = Endpoint(kind, url)
        made.append(requester)
        if kind == "null":
            return requester, requester
        responder = Endpoint(kind, url)
        made.append(responder)
        return requester, responder

    yield make
    for endpoint in made:
        endpoint.control.broker.close()


def echo(control: Control, topic: str, body: bytes, reply_to: str) -> None:
    control.reply(reply_to, body + b" back")


def test_request_gets_the_first_reply(endpoints: t.Any) -> None:
    requester, responder = endpoints()
    responder.answer = echo
    responder.control.broker.subscribe("n:responder")
    for n in range(5):
        answer = requester.control.request("n:responder", b"hello %d" % n, TIMEOUT)
        assert answer == b"hello %d back" % n
    assert [body for _, body, _ in responder.requests] == [
        b"hello %d" % n for n in range(5)
    ]
    # Every reply address names the requester's inbox.
    inboxes = {reply_to.partition("#")[0] for _, _, reply_to in responder.requests}
    assert len(inboxes) == 1 and inboxes.pop().startswith("i:")


def test_reply_may_come_from_another_thread(endpoints: t.Any) -> None:
    requester, responder = endpoints()

    def in_a_thread(control: Control, topic: str, body: bytes, reply_to: str) -> None:
        answer = (reply_to, b"from a thread")
        threading.Thread(target=control.reply, args=answer).start()

    responder.answer = in_a_thread
    responder.control.broker.subscribe("n:threaded")
    assert requester.control.request("n:threaded", b"?", TIMEOUT) == b"from a thread"


def test_request_nobody_subscribes_to_is_none_at_once(endpoints: t.Any) -> None:
    requester, _ = endpoints()
    requester.control.request("n:warmup-nobody", b"connect first", TIMEOUT)
    started = time.monotonic()
    assert requester.control.request("n:nobody-here", b"anyone?", 30.0) is None
    assert time.monotonic() - started < 5.0


def test_request_without_reply_times_out(endpoints: t.Any) -> None:
    requester, responder = endpoints()
    responder.control.broker.subscribe("n:silent")
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        requester.control.request("n:silent", b"hello?", 0.5)
    assert 0.5 <= time.monotonic() - started < 5.0
    assert len(responder.requests) == 1


def test_a_late_reply_is_dropped(endpoints: t.Any) -> None:
    requester, responder = endpoints()
    responder.control.broker.subscribe("n:late")
    with pytest.raises(TimeoutError):
        requester.control.request("n:late", b"1", 0.2)
    (_, _, late_address) = responder.requests[0]
    responder.answer = echo
    responder.control.reply(late_address, b"too late")
    assert requester.control.request("n:late", b"2", TIMEOUT) == b"2 back"


def test_plain_messages_pass_through_with_their_header(endpoints: t.Any) -> None:
    sender, receiver = endpoints()
    receiver.control.broker.subscribe("c:news")
    data = bytes(range(256))
    assert sender.control.broker.publish("c:news", message(b"skip-me", data)) != 0
    receiver.wait_for_plain(1)
    (topic, received), *_ = receiver.plain
    assert topic == "c:news"
    assert split_message(received) == (b"skip-me", data)
    assert receiver.requests == []


def test_the_inbox_is_subscribed_on_the_first_request_only(
    endpoints: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    requester, responder = endpoints()
    responder.answer = echo
    responder.control.broker.subscribe("n:responder")
    broker = requester.control.broker
    subscribed: list[str] = []
    real_subscribe = broker.subscribe

    def record(*topics: str) -> None:
        subscribed.extend(topics)
        real_subscribe(*topics)

    monkeypatch.setattr(broker, "subscribe", record)
    requester.control.request("n:responder", b"1", TIMEOUT)
    requester.control.request("n:responder", b"2", TIMEOUT)
    assert len(subscribed) == 1 and subscribed[0].startswith("i:")
    # A forked child gets an inbox of its own.
    monkeypatch.setattr(control_module.os, "getpid", lambda: -1)
    assert requester.control.request("n:responder", b"3", TIMEOUT) == b"3 back"
    assert len(subscribed) == 2 and subscribed[1] != subscribed[0]


def test_request_inside_on_message_is_refused(endpoints: t.Any) -> None:
    requester, responder = endpoints()
    refused: list[BaseException] = []

    def nested(control: Control, topic: str, body: bytes, reply_to: str) -> None:
        try:
            control.request("n:anything", b"", 1.0)
        except RuntimeError as exc:
            refused.append(exc)
        control.reply(reply_to, b"done")

    responder.answer = nested
    responder.control.broker.subscribe("n:nested")
    assert requester.control.request("n:nested", b"", TIMEOUT) == b"done"
    assert len(refused) == 1


def test_untagged_payloads_are_dropped_and_logged(
    endpoints: t.Any, caplog: pytest.LogCaptureFixture
) -> None:
    sender, receiver = endpoints()
    receiver.control.broker.subscribe("c:odd")
    with caplog.at_level(logging.WARNING, logger="flask_realtime"):
        sender.control.broker.publish("c:odd", b"x no tag")
        sender.control.broker.publish("c:odd", b"q no newline")
        sender.control.broker.publish("c:odd", message(b"", b"after"))
        receiver.wait_for_plain(1)
    assert [split_message(d)[1] for _, d in receiver.plain] == [b"after"]
    assert receiver.requests == []
    assert sum("c:odd" in r.getMessage() for r in caplog.records) == 2


class UnreachableBroker:
    kind = "stub"
    url = "stub://"
    connected = False

    def subscribe(self, *topics: str) -> None:
        pass  # recorded for when the link is back

    def publish(self, topic: str, data: bytes) -> int | None:
        raise AssertionError("a request must not be buffered")


def test_a_request_while_the_broker_is_unreachable_fails_at_once() -> None:
    control = Control(lambda on_message: UnreachableBroker(), print, print)  # type: ignore[arg-type,return-value]
    with pytest.raises(BrokerUnavailable, match="unreachable"):
        control.request("n:elsewhere", b"{}", 0.5)


def test_gather_collects_every_reply_and_ends_when_the_count_is_in(
    kind: str, endpoints: t.Any
) -> None:
    requester, first = endpoints()
    _, second = endpoints()
    silent = endpoints()[1] if kind != "null" else None
    for n, responder in enumerate((first, second)):
        responder.answer = lambda c, topic, body, to, n=n: c.reply(to, b"%d" % n)
        responder.control.broker.subscribe("a:all")
    if silent is not None:
        silent.control.broker.subscribe("a:all")  # counted, never answers
    started = time.monotonic()
    replies, counted = requester.control.gather("a:all", b"report", 0.5)
    took = time.monotonic() - started
    # (The null broker's endpoints are one, and each endpoints() a world.)
    expected = [b"0"] if kind == "null" else [b"0", b"1"]
    assert sorted(replies) == expected
    if kind == "redis":
        assert counted == 3  # the silent one too, so the window ran out
    else:
        assert counted == (1 if kind == "null" else None)
    if silent is not None:
        assert took >= 0.5  # Redis waited for the silent one; others, the window
        silent.answer = lambda c, topic, body, to: c.reply(to, b"2")
        expected.append(b"2")
    # Every counted receiver answers now: Redis ends at once, long before
    # its window; the others collect for theirs.
    started = time.monotonic()
    replies, _ = requester.control.gather(
        "a:all", b"report", 10.0 if kind in ("redis", "null") else 0.3
    )
    assert sorted(replies) == expected
    assert time.monotonic() - started < 5.0
    assert requester.control._waiting == {}


def test_gather_while_the_broker_is_unreachable_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(control_module, "GATHER_CONNECT", 0.1)
    control = Control(lambda on_message: UnreachableBroker(), print, print)  # type: ignore[arg-type,return-value]
    with pytest.raises(BrokerUnavailable, match="stub:// is unreachable"):
        control.gather("a:all", b"{}", 0.5)
