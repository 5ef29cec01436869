"""Every error from a realtime endpoint is JSON, on every server kind.

Under the blueprint's URL prefix, 404 (no such endpoint), 405, 413 (past the
app's ``MAX_CONTENT_LENGTH``) and 500 (an exception in the app's callback)
answer ``{"error": {"code", "message"}}``, never Werkzeug's HTML page. The
app's own paths keep the app's errors.
"""

from __future__ import annotations

import pytest
import requests

from tests.conftest import module_server
from tests.http_helpers import assert_json_error
from tests.servers import Server

APP = "tests.apps.errors:app"


server = module_server(app=APP)


@pytest.mark.parametrize(
    "path",
    ["/realtime/nothing", "/realtime/", "/realtime", "/realtime/sse/", "/realtime/a/b"],
)
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_no_endpoint_is_404_json(server: Server, path: str, method: str) -> None:
    response = requests.request(
        method, server.url + path, timeout=5, allow_redirects=False
    )
    assert_json_error(response, 404)


@pytest.mark.parametrize("path", ["/realtime/nothing", "/realtime/"])
def test_websocket_upgrade_to_no_endpoint_is_404_json(
    server: Server, path: str
) -> None:
    response = requests.get(
        server.url + path,
        headers={
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
        },
        timeout=5,
    )
    assert_json_error(response, 404)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/realtime/sse"),
        ("POST", "/realtime/poll"),
        ("GET", "/realtime/send"),
        ("PUT", "/realtime/close"),
        ("POST", "/realtime/client.js"),
        ("PATCH", "/realtime/ws"),
    ],
)
def test_wrong_method_is_405_json(server: Server, method: str, path: str) -> None:
    response = requests.request(method, server.url + path, timeout=5)
    assert_json_error(response, 405)
    assert response.headers["Allow"]


@pytest.mark.parametrize("path", ["/realtime/send", "/realtime/close"])
def test_body_past_max_content_length_is_413_json(server: Server, path: str) -> None:
    response = requests.post(
        server.url + path,
        data=b'{"pad": "' + b"x" * 5000 + b'"}',
        headers={"Content-Type": "application/json"},
        timeout=5,
    )
    assert_json_error(response, 413)


@pytest.mark.parametrize("path", ["/realtime/poll", "/realtime/sse"])
def test_exception_in_the_app_is_500_json(server: Server, path: str) -> None:
    response = requests.get(
        server.url + path, params={"broken": "1"}, timeout=5, stream=True
    )
    with response:
        assert_json_error(response, 500)
    assert "authenticate must return" in server.log()  # logged, as Flask does


def test_the_apps_own_errors_are_left_alone(server: Server) -> None:
    assert requests.get(server.url + "/page", timeout=5).status_code == 200
    response = requests.get(server.url + "/nothing", timeout=5)
    assert response.status_code == 404
    assert response.headers["Content-Type"].startswith("text/html")
