"""How deep a long-poller's ``POST /send`` (subscribe) goes in Python frames.

Under gevent each connection's greenlet has a frame stack of its own, and the
worker's RSS counts every 4 KiB page of it that the connection ever touched:
its deepest chain of frames. A poller's keep-alive greenlet also serves its
subscribe, the deepest request it makes; one wrapper function more on that
chain cost 4 KB of RSS per parked poller (issue 8, PERF_FINDINGS.md).
"""

from __future__ import annotations

import sys
import typing as t

from flask import Flask

from flask_realtime import Realtime

# Frames below Flask's ``wsgi_app`` on the subscribe path: 17 crossed into a
# second page (c64a1f3); 15 now, and one more still fits in the first.
BUDGET = 16
_GENERATOR = 0x20  # a generator's frame lives in the generator, not the stack


def deepest_below(entry: t.Any, run: t.Callable[[], t.Any]) -> list[str]:
    """The longest chain of plain-function frames under ``entry`` while ``run``
    runs, innermost first."""
    deepest: list[str] = []

    def hook(frame: t.Any, event: str, arg: t.Any) -> None:
        nonlocal deepest
        if event != "call":
            return
        chain = []
        while frame is not None and frame.f_code is not entry:
            if not frame.f_code.co_flags & _GENERATOR:
                chain.append(frame.f_code.co_qualname)
            frame = frame.f_back
        if frame is not None and len(chain) > len(deepest):
            deepest = chain

    sys.setprofile(hook)
    try:
        run()
    finally:
        sys.setprofile(None)
    return deepest


def test_subscribe_through_send_stays_within_its_frame_budget() -> None:
    app = Flask(__name__)
    Realtime(app)
    client = app.test_client()
    opened = client.get("/realtime/poll").get_json()
    info = opened["messages"][0]["data"]
    body = {
        "connection_id": info["connection_id"],
        "token": info["token"],
        "message": {"type": "subscribe", "channel": "news", "id": 1},
    }
    answers = []

    def subscribe() -> None:
        answers.append(client.post("/realtime/send", json=body))

    chain = deepest_below(Flask.wsgi_app.__code__, subscribe)

    assert answers[0].status_code == 200
    assert b'"type":"subscribed"' in answers[0].data
    assert "ClientMessages._subscribe" in chain  # the path it is about
    assert len(chain) <= BUDGET, chain
