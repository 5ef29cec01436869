"""Webhooks in one process: config, signatures, the sender's batching,
retries and bound, and the choice of the one node that sends each event.

The receiver is a real HTTP server (tests/webhook_receiver.py); the cluster
cases drive several coordinators through an in-order fake broker so that
leader hand-over and expiry run without waiting for real time.
"""

from __future__ import annotations

import logging
import time
import types
import typing as t

import pytest

from flask_realtime import ConfigError, Realtime, WebhookSignatureError, verify_webhook
from flask_realtime import config as rt_config
from flask_realtime.webhooks import cluster, sender, wire
from flask_realtime.webhooks.events import Event
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.usefixtures("own_initialised_apps")

SECRET = "whsec-do-not-log-me"


@pytest.fixture
def receiver() -> t.Iterator[Receiver]:
    r = Receiver(SECRET)
    yield r
    r.close()


def hooks(receiver: Receiver, **options: t.Any) -> dict[str, t.Any]:
    return {"urls": [receiver.url], "secret": SECRET, "batch_window": 0.02, **options}


# -- configuration ---------------------------------------------------------------


def load(value: t.Any) -> t.Any:
    return rt_config.load({**rt_config.DEFAULTS, "REALTIME_WEBHOOKS": value}).webhooks


def test_off_unless_configured() -> None:
    assert load(None) is None and load({}) is None


def test_options_and_defaults() -> None:
    got = load({"urls": "https://h.example/x", "secret": "s", "max_queue": 5})
    assert got.urls == ("https://h.example/x",)
    assert got.events == frozenset(rt_config.webhooks.EVENTS)
    assert (got.max_queue, got.max_batch) == (5, 100)
    assert "secret" not in repr(got) and "'s'" not in repr(got)


@pytest.mark.parametrize(
    ("value", "names"),
    [
        ([], "REALTIME_WEBHOOKS must be a dict"),
        ({"secret": "x"}, 'REALTIME_WEBHOOKS["urls"]'),
        ({"urls": ["ftp://h/x"], "secret": "x"}, 'REALTIME_WEBHOOKS["urls"]'),
        ({"urls": ["http://h/"], "secret": ""}, 'REALTIME_WEBHOOKS["secret"]'),
        ({"urls": ["http://h/"], "secret": 123456789}, 'REALTIME_WEBHOOKS["secret"]'),
        (
            {"urls": ["http://h/"], "secret": "x", "events": ["channel.gone"]},
            'REALTIME_WEBHOOKS["events"]',
        ),
        (
            {"urls": ["http://h/"], "secret": "x", "max_queue": 0},
            'REALTIME_WEBHOOKS["max_queue"]',
        ),
        ({"urls": ["http://h/"], "secret": "x", "retries": 3}, "unknown option"),
    ],
)
def test_errors_name_the_key_and_never_the_secret(value: t.Any, names: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(value)
    assert names in str(info.value)
    assert "123456789" not in str(info.value)


# -- signatures ------------------------------------------------------------------


def signed(events: list[Event]) -> tuple[bytes, dict[str, str]]:
    return wire.NativeFormat().encode(events, "batch1", SECRET)


def test_verify_accepts_what_the_sender_signs() -> None:
    body, headers = signed([Event("channel.occupied", "news")])
    payload = verify_webhook(body, headers, SECRET)
    assert payload["events"] == [{"name": "channel.occupied", "channel": "news"}]
    # Header names are case-insensitive, as HTTP's are.
    lowered = {k.lower(): v for k, v in headers.items()}
    assert verify_webhook(body, lowered, SECRET) == payload


@pytest.mark.parametrize("tamper", ["secret", "body", "stale", "missing", "garbled"])
def test_verify_refuses(tamper: str) -> None:
    body, headers = signed([Event("channel.occupied", "news")])
    secret, now = SECRET, None
    if tamper == "secret":
        secret = "other"
    elif tamper == "body":
        body = body.replace(b"news", b"nevs")
    elif tamper == "stale":
        now = time.time() + wire.TOLERANCE + 5
    elif tamper == "missing":
        del headers[wire.SIGNATURE_HEADER]
    else:
        headers[wire.SIGNATURE_HEADER] = "sha256=zz"
    with pytest.raises(WebhookSignatureError):
        verify_webhook(body, headers, secret, now=now)


# -- one node, end to end ------------------------------------------------------------


def app_with_hooks(make: t.Callable[..., Realtime], webhooks: dict) -> Realtime:
    realtime = make(REALTIME_WEBHOOKS=webhooks)

    @realtime.authorizer("presence-*")
    def member(connection: t.Any, channel: str) -> dict[str, t.Any]:
        return {"name": str(connection.user_id)}

    return realtime


def names(events: list[dict[str, t.Any]]) -> list[tuple[t.Any, ...]]:
    return [(e["name"], e["channel"], e.get("user_id")) for e in events]


def test_one_node_reports_each_transition_once_in_order(
    make: t.Callable[..., Realtime], receiver: Receiver
) -> None:
    realtime = app_with_hooks(make, hooks(receiver))
    ann, ann2, bob = (realtime.test_client(user_id=u) for u in (1, 1, 2))
    for client in (ann, ann2, bob):
        assert client.subscribe("presence-room")["type"] == "subscribed"
    reply = bob.request(
        {
            "type": "event",
            "channel": "presence-room",
            "event": "client-typing",
            "data": 7,
        }
    )
    assert reply is None
    ann.disconnect()  # ann2 is still here: ann stays a member
    ann2.disconnect()
    bob.disconnect()
    got = receiver.wait_for(lambda e: len(e) >= 7)
    room = "presence-room"
    assert names(got) == [
        ("channel.occupied", room, None),
        ("member.added", room, 1),
        ("member.added", room, 2),
        ("client.event", room, 2),
        ("member.removed", room, 1),
        ("member.removed", room, 2),
        ("channel.vacated", room, None),
    ]
    assert got[3]["event"] == "client-typing" and got[3]["data"] == 7
    assert got[3]["connection_id"] == bob.connection_id
    assert receiver.bad_signatures == 0
    # Batched: seven events, fewer POSTs.
    assert len(receiver.batches) < 7


def test_only_the_configured_events(
    make: t.Callable[..., Realtime], receiver: Receiver
) -> None:
    realtime = app_with_hooks(make, hooks(receiver, events=["channel.vacated"]))
    client = realtime.test_client(user_id=1)
    client.subscribe("presence-a")
    client.unsubscribe("presence-a")
    got = receiver.wait_for(lambda e: len(e) >= 1)
    assert names(got) == [("channel.vacated", "presence-a", None)]


def test_a_failing_receiver_gets_the_batch_on_a_retry(
    make: t.Callable[..., Realtime],
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(sender, "FIRST_RETRY_DELAY", 0.01)
    receiver.fail_next(3)
    realtime = app_with_hooks(make, hooks(receiver))
    with caplog.at_level(logging.WARNING, logger="flask_realtime"):
        realtime.test_client(user_id=1).subscribe("news")
        got = receiver.wait_for(lambda e: len(e) >= 1)
    assert names(got) == [("channel.occupied", "news", None)]
    assert receiver.requests == 4
    assert caplog.text.count("retrying") == 3
    assert SECRET not in caplog.text


def test_a_receiver_down_for_long_costs_a_bounded_queue(
    make: t.Callable[..., Realtime],
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver.hang()
    realtime = app_with_hooks(make, hooks(receiver, max_queue=5, max_batch=5))
    target = realtime.node.webhooks.sender.targets[0]
    client = realtime.test_client(user_id=1)
    with caplog.at_level(logging.WARNING, logger="flask_realtime"):
        client.subscribe("first")  # taken by the worker, which then hangs
        deadline = time.monotonic() + 5
        while receiver.requests == 0 and target.pending():
            assert time.monotonic() < deadline, "the first POST never started"
            time.sleep(0.01)
        for n in range(20):
            client.subscribe(f"c{n}")
        assert target.pending() == 5
        assert target.dropped == 15
        receiver.release()
        got = receiver.wait_for(lambda e: any(x["channel"] == "c19" for x in e))
    assert [e["channel"] for e in got] == ["first", "c15", "c16", "c17", "c18", "c19"]
    assert "15 oldest event(s) dropped" in caplog.text
    assert SECRET not in caplog.text


# -- which node sends: coordinators on an in-order fake broker ----------------------


class FakeBroker:
    """Delivers each publish to every coordinator, in one order for all."""

    kind = "fake"
    connected = True

    def __init__(self) -> None:
        self.coordinators: list[cluster.Webhooks] = []

    def publish(self, topic: str, data: bytes) -> int:
        body = data.split(b"\n", 1)[1]
        for coordinator in list(self.coordinators):
            coordinator.on_message(body)
        return len(self.coordinators)


class Collect:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, t.Any]] = []

    def send(self, event: Event) -> None:
        self.sent.append((event.name, event.channel, event.fields.get("user_id")))


def fake_node(broker: FakeBroker, node_id: str) -> t.Any:
    counts: dict[str, int] = {}
    hub = types.SimpleNamespace(subscriber_count=lambda c: counts.get(c, 0))
    interest = types.SimpleNamespace(hold=lambda topic: _nothing())
    return types.SimpleNamespace(
        id=node_id,
        clustered=True,
        hub=hub,
        broker=broker,
        interest=interest,
        counts=counts,
    )


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.fixture
def nodes(monkeypatch: pytest.MonkeyPatch) -> t.Callable[[int], list[t.Any]]:
    """``nodes(n)``: n coordinators, started in order, warm, no heartbeats."""
    # No heartbeat loop (the tests beat by hand); the bye is sent at once.
    monkeypatch.setattr(
        cluster._runtime,
        "spawn",
        lambda func, *args: func(*args) if func.__name__ == "_publish" else None,
    )
    broker = FakeBroker()
    clock = iter(range(1000, 2000))
    monkeypatch.setattr(cluster.time, "time", lambda: float(next(clock)))

    def make(count: int) -> list[t.Any]:
        made = []
        for n in range(count):
            node = fake_node(broker, f"node{n}")
            node.sent = Collect()
            node.webhooks = cluster.Webhooks(node, t.cast(t.Any, node.sent))
            broker.coordinators.append(node.webhooks)
            node.webhooks.ensure_started()
            made.append(node)
        for node in made:  # a heartbeat each: all know all, then warm up
            node.webhooks._publish({"op": "hb"})
        for node in made:
            node.webhooks._warm = True
        return made

    return make


def join(node: t.Any, channel: str, user: int | None = None) -> None:
    node.counts[channel] = node.counts.get(channel, 0) + 1
    node.webhooks.channel_changed(channel)
    if user is not None:
        node.webhooks.member_changed(channel, str(user), user, True)


def leave(node: t.Any, channel: str, user: int | None = None) -> None:
    node.counts[channel] -= 1
    if user is not None:
        node.webhooks.member_changed(channel, str(user), user, False)
    node.webhooks.channel_changed(channel)


def test_the_oldest_node_alone_sends_cluster_wide_transitions(nodes: t.Any) -> None:
    a, b, c = nodes(3)
    join(b, "room", 1)
    join(c, "room", 1)  # the same user on another node: no second member.added
    join(c, "room", 2)
    leave(b, "room", 1)
    leave(c, "room", 1)
    leave(c, "room", 2)
    assert a.sent.sent == [
        ("channel.occupied", "room", None),
        ("member.added", "room", 1),
        ("member.added", "room", 2),
        ("member.removed", "room", 1),
        ("member.removed", "room", 2),
        ("channel.vacated", "room", None),
    ]
    assert b.sent.sent == c.sent.sent == []


def test_a_stopping_leader_hands_over_at_its_bye(nodes: t.Any) -> None:
    a, b = nodes(2)
    join(a, "x")
    join(b, "y")
    a.webhooks.stop()  # its channel is gone with it: b reports x vacated
    leave(b, "y")
    assert a.sent.sent == [
        ("channel.occupied", "x", None),
        ("channel.occupied", "y", None),
    ]
    assert b.sent.sent == [
        ("channel.vacated", "x", None),
        ("channel.vacated", "y", None),
    ]


def test_a_dead_leader_is_replaced_and_its_recent_events_resent(
    nodes: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = nodes(2)
    now = [100.0]
    monkeypatch.setattr(cluster.time, "monotonic", lambda: now[0])
    for node in (a, b):  # both heard each other at 100
        node.webhooks._peers["node0"].seen = node.webhooks._peers["node1"].seen = 100.0
    now[0] = 100.5
    join(b, "z")  # a sends it, or died first: b keeps it
    cluster_broker = a.broker
    cluster_broker.coordinators.remove(a.webhooks)  # a dies silently
    now[0] = 100.5 + cluster.EXPIRY + 0.1
    b.webhooks._heartbeat(1)
    assert b.webhooks.leader() == "node1"
    assert b.sent.sent == [("channel.occupied", "z", None)]


def test_a_node_cut_off_from_the_broker_drops_nobody(
    nodes: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = nodes(2)
    join(a, "kept")
    now = [time.monotonic() + cluster.EXPIRY + 1]
    monkeypatch.setattr(cluster.time, "monotonic", lambda: now[0])
    b.broker.connected = False  # b hears nothing: its silence, not a's
    b.webhooks._heartbeat(1)
    b.broker.connected = True
    now[0] += 1.0
    b.webhooks._heartbeat(2)
    assert b.webhooks.leader() == "node0"
    assert b.sent.sent == []


def test_credentials_in_the_url_become_basic_auth_and_stay_out_of_logs(
    make: t.Callable[..., Realtime],
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(sender, "FIRST_RETRY_DELAY", 0.01)
    url = receiver.url.replace("http://", "http://hook:p%40ss@")
    receiver.fail_next(1)  # one warning, which names the URL
    realtime = app_with_hooks(make, {**hooks(receiver), "urls": [url]})
    with caplog.at_level(logging.WARNING, logger="flask_realtime"):
        realtime.test_client(user_id=1).subscribe("news")
        receiver.wait_for(lambda e: len(e) >= 1)
    assert receiver.authorization[-1] == "Basic aG9vazpwQHNz"  # hook:p@ss
    assert receiver.url in caplog.text
    assert "p%40ss" not in caplog.text and "p@ss" not in caplog.text
