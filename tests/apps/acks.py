"""The basic test app plus handlers that answer client events: the tests of
acknowledged client events (``tests/test_acks.py``, the JavaScript client's
``tests/node/acks.test.mjs`` and ``tests/browser/test_client_acks.py``).

On ``ack.*`` channels:

- ``add`` answers ``{"sum": a + b, "user": <the sender's user id>}`` for ``[a, b]``;
- ``nothing`` does its work (a broadcast of ``done``) and returns None;
- ``refuse`` raises ``Rejected(data["message"], code=data["code"])``;
- ``not-json`` returns a set, which JSON cannot carry;
- ``boom`` raises;
- ``slow`` sleeps ``data`` seconds, then answers ``"late"``.

It also has the browser tests' pages (``tests.apps.browser``), for Chromium.
"""

from __future__ import annotations

import time
import typing as t

from flask_realtime import Rejected
from tests.apps import browser as browser  # its pages, on the same app
from tests.apps.basic import app as app
from tests.apps.basic import broadcast, realtime


@realtime.on("add", channel="ack.*")
def add(connection: t.Any, channel: str, data: t.Any) -> t.Any:
    return {"sum": data[0] + data[1], "user": connection.user_id}


@realtime.on("nothing", channel="ack.*")
def nothing(connection: t.Any, channel: str, data: t.Any) -> None:
    broadcast(channel, "done", data)


@realtime.on("refuse", channel="ack.*")
def refuse(connection: t.Any, channel: str, data: t.Any) -> None:
    raise Rejected(data["message"], code=data["code"])


@realtime.on("not-json", channel="ack.*")
def not_json(connection: t.Any, channel: str, data: t.Any) -> t.Any:
    return {1, 2}


@realtime.on("boom", channel="ack.*")
def boom(connection: t.Any, channel: str, data: t.Any) -> None:
    raise RuntimeError("a bug in the app")


@realtime.on("slow", channel="ack.*")
def slow(connection: t.Any, channel: str, data: t.Any) -> str:
    time.sleep(float(data))  # gevent's, under the test servers
    return "late"
