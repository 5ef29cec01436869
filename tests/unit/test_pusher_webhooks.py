"""Webhooks in Pusher's format: the configuration that asks for them, and
each event as Pusher writes it, checked by the official ``pusher`` library's
``validate_webhook`` (what existing Pusher webhook handlers call)."""

from __future__ import annotations

import json
import typing as t

import pusher
import pytest

from flask_realtime import ConfigError
from flask_realtime import config as rt_config
from flask_realtime.pusher.webhooks import PusherFormat
from flask_realtime.webhooks import events
from flask_realtime.webhooks.sender import Sender

APP = {"app_id": "7", "key": "hook-key", "secret": "hook-secret"}
OTHER = {"app_id": "8", "key": "other-key", "secret": "other-secret"}
URL = "https://h.example/hooks"


def load(webhooks: t.Any, apps: t.Any = APP) -> t.Any:
    config = {**rt_config.DEFAULTS, "REALTIME_WEBHOOKS": webhooks}
    return rt_config.load({**config, "REALTIME_PUSHER": apps}).webhooks


def library(app: dict[str, str] = APP) -> pusher.Pusher:
    return pusher.Pusher(app_id=app["app_id"], key=app["key"], secret=app["secret"])


def test_every_url_in_pusher_format_needs_no_native_secret() -> None:
    got = load({"urls": [URL], "format": "pusher"})
    [receiver] = got.receivers()
    assert (receiver.url, receiver.format, receiver.pusher_app.key) == (
        URL,
        "pusher",
        "hook-key",
    )
    assert "hook-secret" not in repr(got)
    assert isinstance(Sender(got).targets[0]._wire, PusherFormat)


def test_formats_per_url_and_the_app_by_its_id() -> None:
    per_url = {"url": "http://p.example/", "format": "pusher", "pusher_app": 8}
    got = load({"urls": [URL, per_url], "secret": "native"}, [APP, OTHER])
    native, other = got.receivers()
    assert (native.format, native.pusher_app) == ("native", None)
    assert (other.format, other.pusher_app.app_id) == ("pusher", "8")
    assert got.urls == (URL, "http://p.example/")


@pytest.mark.parametrize(
    ("webhooks", "apps", "message"),
    [
        ({"urls": [URL], "format": "pusher"}, None, "needs REALTIME_PUSHER"),
        ({"urls": [URL], "format": "pusher"}, [APP, OTHER], "several apps"),
        ({"urls": [URL], "format": "pusher", "pusher_app": "9"}, APP, "'9'"),
        ({"urls": [URL], "format": "xml"}, APP, "one of ['native', 'pusher']"),
        ({"urls": [URL], "secret": "s", "pusher_app": "7"}, APP, '"format"'),
        ({"urls": [URL, {"url": URL, "format": "pusher"}]}, APP, '["secret"]'),
        ({"urls": [{"url": URL, "colour": 1}]}, APP, "['colour']"),
        ({"urls": [{"format": "pusher"}]}, APP, "not an http(s) URL: None"),
    ],
)
def test_mistakes_name_the_option(webhooks: t.Any, apps: t.Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(webhooks, apps)
    assert message in str(caught.value)
    assert "hook-secret" not in str(caught.value)


def test_each_event_as_pusher_writes_it_and_the_library_accepts_it() -> None:
    batch = [
        events.occupied("presence-room.1"),
        events.member_added("presence-room.1", 42),
        events.client_event("presence-room.1", "client-typing", {"x": 1}, 42, "1.2"),
        events.client_event("private-room.42", "client-raw", "as sent", 42, "3.4"),
        events.member_removed("presence-room.1", "42"),
        events.vacated("presence-room.1"),
    ]
    app = load({"urls": [URL], "format": "pusher"}).receivers()[0].pusher_app
    body, headers = PusherFormat(app).encode(batch, "b-1", "unused native secret")
    assert headers["X-Pusher-Key"] == "hook-key"
    payload = library().validate_webhook(
        headers["X-Pusher-Key"], headers["X-Pusher-Signature"], body
    )
    assert payload is not None
    assert payload["events"] == [
        {"name": "channel_occupied", "channel": "presence-room.1"},
        {"name": "member_added", "channel": "presence-room.1", "user_id": "42"},
        {
            "name": "client_event",
            "channel": "presence-room.1",
            "event": "client-typing",
            "data": '{"x":1}',
            "socket_id": "1.2",
            "user_id": "42",
        },
        {
            "name": "client_event",
            "channel": "private-room.42",
            "event": "client-raw",
            "data": "as sent",
            "socket_id": "3.4",
        },
        {"name": "member_removed", "channel": "presence-room.1", "user_id": "42"},
        {"name": "channel_vacated", "channel": "presence-room.1"},
    ]
    # The library refuses another secret's signature, and a changed body.
    signature = headers["X-Pusher-Signature"]
    wrong = library({**APP, "secret": OTHER["secret"]})
    assert wrong.validate_webhook("hook-key", signature, body) is None
    assert library(OTHER).validate_webhook("hook-key", signature, body) is None
    tampered = body.replace(b"client-typing", b"client-forged")
    assert library().validate_webhook("hook-key", signature, tampered) is None
    assert json.loads(body)["time_ms"] == payload["time_ms"]
