"""extension.py: init_app, accessors, the recorder and app lifetimes."""

from __future__ import annotations

import gc
import os
import typing as t
import weakref

import pytest
from flask import Flask

import flask_realtime
from flask_realtime import Channel, Realtime, broadcast, extension, realtime
from flask_realtime.testing import ANY


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(("REALTIME_", "REDIS_", "RABBITMQ_")) or key == "NATS_URL":
            monkeypatch.delenv(key)


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch) -> weakref.WeakSet[Flask]:
    """Forget the apps other tests initialised: accessors count them all."""
    fresh: weakref.WeakSet[Flask] = weakref.WeakSet()
    monkeypatch.setattr(extension, "_initialised", fresh)
    return fresh


# Apps made for the current test. The accessors see apps through weak
# references, so a test that drops its app must not lose it by accident.
_apps: list[Flask] = []


@pytest.fixture(autouse=True)
def _keep_apps_for_the_test() -> t.Iterator[None]:
    yield
    _apps.clear()


def new_app(**config: t.Any) -> Flask:
    app = Flask(__name__)
    app.config["REALTIME_TRANSPORTS"] = ["memory"]
    app.config.update(config)
    return app


def make_app(**config: t.Any) -> Flask:
    """An app with the memory transport, alive until the test ends."""
    app = new_app(**config)
    _apps.append(app)
    return app


# -- registration --------------------------------------------------------------------


def test_realtime_app_registers_in_extensions() -> None:
    app = make_app()
    rt = Realtime(app)
    assert app.extensions["realtime"] is rt
    assert "realtime" in app.blueprints


def test_factory_pattern() -> None:
    rt = Realtime()
    app = make_app()
    rt.init_app(app)
    assert app.extensions["realtime"] is rt
    client = rt.test_client()
    client.subscribe("news")
    rt.broadcast("news", "e", 1)
    assert client.events() == [("e", 1)]


def test_init_app_twice_on_one_app_is_refused() -> None:
    app = make_app()
    rt = Realtime(app)
    with pytest.raises(RuntimeError, match="already"):
        rt.init_app(app)
    with pytest.raises(RuntimeError, match="already"):
        Realtime(app)
    assert app.extensions["realtime"] is rt


def test_one_instance_serves_two_apps_separately() -> None:
    rt = Realtime()
    one, two = make_app(), make_app()
    rt.init_app(one)
    rt.init_app(two)
    with one.app_context():
        a = rt.test_client()
        a.subscribe("news")
    with two.app_context():
        b = rt.test_client()
        b.subscribe("news")
        rt.broadcast("news", "only-two", 2)
    assert a.received == []
    assert b.events() == [("only-two", 2)]


def test_several_apps_need_an_app_context() -> None:
    rt = Realtime()
    rt.init_app(make_app())
    rt.init_app(make_app())
    with pytest.raises(RuntimeError, match="app context"):
        rt.broadcast("news", "e", 1)


def test_instance_without_app_says_to_call_init_app() -> None:
    rt = Realtime()
    with pytest.raises(RuntimeError, match="init_app"):
        rt.broadcast("news", "e", 1)
    with pytest.raises(RuntimeError, match="init_app"):
        with make_app().app_context():
            rt.broadcast("news", "e", 1)


def test_health_route() -> None:
    app = make_app()
    rt = Realtime(app)
    rt.test_client()
    response = app.test_client().get("/realtime/health")
    assert response.status_code == 200
    assert response.json == {
        "status": "ok",
        "node": rt.node.id,
        "connections": 1,
        "transports": ["memory"],
        "broker": "null",
        "broker_messages": {"channel": 0, "user": 0, "node": 0, "presence": 0},
    }


# -- accessors -----------------------------------------------------------------------


def test_public_names() -> None:
    assert flask_realtime.Realtime is Realtime
    assert set(flask_realtime.__all__) >= {
        "Channel",
        "ConfigError",
        "Connection",
        "Realtime",
        "Rejected",
        "broadcast",
        "realtime",
    }


def test_accessors_inside_an_app_context() -> None:
    app_one, app_two = make_app(), make_app()
    rt_one, rt_two = Realtime(app_one), Realtime(app_two)
    one, two = rt_one.test_client(), rt_two.test_client()
    one.subscribe("news")
    two.subscribe("news")
    with app_two.app_context():
        assert realtime._get_current_object() is rt_two  # type: ignore[attr-defined]
        broadcast("news", "via-helper", 1)
        realtime.broadcast("news", "via-proxy", 2)
    assert one.received == []
    assert two.events() == [("via-helper", 1), ("via-proxy", 2)]


def test_accessors_outside_an_app_context_with_one_app() -> None:
    rt = Realtime(make_app())
    client = rt.test_client()
    client.subscribe("news")
    broadcast("news", "via-helper", {"n": 1})
    realtime.broadcast("news", "via-proxy", {"n": 2})
    assert realtime._get_current_object() is rt  # type: ignore[attr-defined]
    assert client.events() == [("via-helper", {"n": 1}), ("via-proxy", {"n": 2})]


def test_accessors_without_any_app_mention_init_app() -> None:
    with pytest.raises(RuntimeError, match="init_app"):
        broadcast("news", "e", 1)
    with pytest.raises(RuntimeError, match="init_app"):
        realtime.broadcast("news", "e", 1)


def test_accessors_in_the_context_of_an_app_without_realtime() -> None:
    Realtime(make_app())
    with Flask(__name__).app_context():
        with pytest.raises(RuntimeError, match="init_app"):
            broadcast("news", "e", 1)


def test_accessors_with_several_apps_and_no_context() -> None:
    Realtime(make_app())
    Realtime(make_app())
    with pytest.raises(RuntimeError, match="app context"):
        broadcast("news", "e", 1)


def test_current_app_extension_works_too() -> None:
    app = make_app()
    rt = Realtime(app)
    client = rt.test_client()
    client.subscribe("news")
    with app.app_context():
        from flask import current_app

        current_app.extensions["realtime"].broadcast("news", "e", 3)
    assert client.events() == [("e", 3)]


# -- channel and argument checks -----------------------------------------------------


@pytest.mark.parametrize("name", ["", "bad name", "a/b", "x" * 201, "café"])
def test_broadcast_to_an_invalid_channel_is_a_value_error(name: str) -> None:
    rt = Realtime(make_app())
    with pytest.raises(ValueError):
        rt.broadcast(name, "e", 1)
    with pytest.raises(ValueError):
        broadcast(name, "e", 1)
    with pytest.raises(ValueError):
        rt.channel(name)
    assert rt.recorder.records == []


def test_broadcast_with_an_invalid_event_is_a_value_error() -> None:
    rt = Realtime(make_app())
    with pytest.raises(ValueError):
        rt.broadcast("news", "", 1)


def test_channel_object() -> None:
    rt = Realtime(make_app())
    channel = rt.channel("presence-room.1")
    assert isinstance(channel, Channel)
    assert channel.name == "presence-room.1"
    assert channel.kind == "presence"
    assert rt.channel("news").kind == "public"
    assert rt.channel("private-x").kind == "private"
    client = rt.test_client()
    client.subscribe("news")
    rt.channel("news").broadcast("e", 5)
    assert client.events() == [("e", 5)]
    rt.recorder.assert_broadcast("news", "e", 5)


# -- the recorder --------------------------------------------------------------------


def test_recorder_records_broadcasts() -> None:
    rt = Realtime(make_app())
    rt.broadcast("chat.room.1", "message.sent", {"text": "Hello!"})
    record = rt.recorder.assert_broadcast(
        "chat.room.1", "message.sent", {"text": "Hello!"}
    )
    assert record.data == {"text": "Hello!"}
    rt.recorder.assert_broadcast("chat.room.1", "message.sent")  # any data
    rt.recorder.assert_broadcast("chat.room.1", "message.sent", ANY)
    assert [r.target for r in rt.recorder.broadcasts()] == ["chat.room.1"]
    assert rt.recorder.broadcasts("other") == []


def test_recorder_assert_sent_to_user_compares_by_value() -> None:
    rt = Realtime(make_app())
    rt.send_to_user("5", "notification.new", {"title": "t"})
    rt.recorder.assert_sent_to_user(5, "notification.new", {"title": "t"})
    rt.recorder.assert_sent_to_user("5", "notification.new")
    with pytest.raises(AssertionError):
        rt.recorder.assert_sent_to_user(6, "notification.new")


def test_recorder_assert_sent() -> None:
    rt = Realtime(make_app())
    client = rt.test_client()
    rt.send(client.connection_id, "private.message", {"text": "Welcome"})
    rt.recorder.assert_sent(
        client.connection_id, "private.message", {"text": "Welcome"}
    )
    with pytest.raises(AssertionError):
        rt.recorder.assert_sent("someone.else", "private.message")


def test_recorder_failure_lists_what_was_recorded() -> None:
    rt = Realtime(make_app())
    rt.broadcast("news", "headline", {"n": 1})
    rt.send_to_user(7, "ping", None)
    with pytest.raises(AssertionError) as info:
        rt.recorder.assert_broadcast("news", "headline", {"n": 2})
    message = str(info.value)
    assert "'headline'" in message and "'news'" in message
    assert "{'n': 1}" in message  # what was actually broadcast
    assert "'ping'" in message and "7" in message


def test_recorder_failure_when_nothing_was_recorded() -> None:
    rt = Realtime(make_app())
    with pytest.raises(AssertionError, match="nothing"):
        rt.recorder.assert_broadcast("news", "headline")


def test_recorder_kinds_do_not_mix() -> None:
    rt = Realtime(make_app())
    rt.send_to_user(5, "e", 1)
    with pytest.raises(AssertionError):
        rt.recorder.assert_broadcast("5", "e")
    with pytest.raises(AssertionError):
        rt.recorder.assert_sent("5", "e")


def test_recorder_assert_nothing_broadcast_and_clear() -> None:
    rt = Realtime(make_app())
    rt.recorder.assert_nothing_broadcast()
    rt.broadcast("news", "e", 1)
    with pytest.raises(AssertionError):
        rt.recorder.assert_nothing_broadcast()
    rt.recorder.clear()
    rt.recorder.assert_nothing_broadcast()


def test_recorder_through_the_accessor() -> None:
    Realtime(make_app())
    broadcast("news", "e", 1)
    realtime.recorder.assert_broadcast("news", "e", 1)


def test_recorder_needs_the_memory_transport() -> None:
    rt = Realtime(make_app(REALTIME_TRANSPORTS=["websocket", "sse"]))
    with pytest.raises(RuntimeError, match="memory"):
        rt.recorder  # noqa: B018


def test_memory_transport_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REALTIME_TRANSPORT", "memory")
    app = Flask(__name__)
    rt = Realtime(app)
    rt.broadcast("news", "e", 1)
    rt.recorder.assert_broadcast("news", "e", 1)


# -- app lifetimes ---------------------------------------------------------------------


def test_an_app_that_is_gone_is_forgotten(isolated: weakref.WeakSet[Flask]) -> None:
    def use_once() -> weakref.ref[Flask]:
        app = new_app()
        rt = Realtime(app)
        with rt.test_client(user_id=1) as client:
            client.subscribe("news")
        return weakref.ref(app)

    ref = use_once()
    gc.collect()
    assert ref() is None
    assert len(isolated) == 0


def test_a_shared_instance_does_not_keep_apps_alive(
    isolated: weakref.WeakSet[Flask],
) -> None:
    rt = Realtime()  # module level in a real app, with an app factory

    def create_app() -> weakref.ref[Flask]:
        app = new_app()
        rt.init_app(app)
        return weakref.ref(app)

    ref = create_app()
    gc.collect()
    assert ref() is None
    # the next app created by the factory is then the only one
    app = make_app()
    rt.init_app(app)
    broadcast("news", "e", 1)
    rt.broadcast("news", "e", 2)
    assert [r.data for r in rt.recorder.broadcasts()] == [1, 2]
