"""The chat example's ``POST /rooms/N/messages`` leaves out the page that
posted (its ``X-Socket-ID``), in a process of its own with the memory
transport: the chat app is imported there, not in the test process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests import servers

SCRIPT = textwrap.dedent(
    """
    from examples.chat.app import app, realtime

    poster, other = realtime.test_client(), realtime.test_client()
    for client in (poster, other):
        client.subscribe("chat.room.1")
    http = app.test_client()
    assert http.post("/login", data={"name": "Ann"}).status_code == 302
    for headers in ({"X-Socket-ID": poster.connection_id}, {}):
        response = http.post("/rooms/1/messages", json={"text": "hi"}, headers=headers)
        assert response.status_code == 201, response.get_data(as_text=True)
    texts = lambda c: [d["text"] for e, d in c.events("chat.room.1")]
    assert texts(other) == ["hi", "hi"], texts(other)
    assert texts(poster) == ["hi"], texts(poster)  # only the one without the header
    print("ok")
    """
)


def test_posting_with_x_socket_id_excludes_the_poster() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=servers.child_environment({"REALTIME_TRANSPORT": "memory"}),
        cwd=servers.ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
