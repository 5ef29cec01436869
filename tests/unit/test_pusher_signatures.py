"""Pusher's signatures, checked against the worked examples of Pusher's docs."""

from __future__ import annotations

import re

from flask_realtime.config.pusher import PusherApp
from flask_realtime.pusher import signatures

# The key and secret of Pusher's documentation examples.
APP = PusherApp(app_id="3", key="278d425bdf160c739803", secret="7ad3773142a6692b25b8")


def test_private_channel_auth_is_pushers_example() -> None:
    auth = signatures.channel_auth(APP, "1234.1234", "private-foobar")
    assert auth == (
        "278d425bdf160c739803:"
        "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
    )


def test_presence_auth_signs_the_channel_data_too() -> None:
    data = '{"user_id":10,"user_info":{"name":"Mr. Channels"}}'
    with_data = signatures.channel_auth(APP, "1234.1234", "presence-foobar", data)
    without = signatures.channel_auth(APP, "1234.1234", "presence-foobar")
    assert with_data != without and with_data.startswith(APP.key + ":")


def test_http_api_signature_is_pushers_example() -> None:
    body = b'{"name":"foo","channels":["project-3"],"data":"{\\"some\\":\\"data\\"}"}'
    md5 = signatures.body_md5(body)
    assert md5 == "ec365a775a4cd0599faeb73354201b6f"
    params = {
        "auth_key": APP.key,
        "auth_timestamp": "1353088179",
        "auth_version": "1.0",
        "body_md5": md5,
    }
    expected = "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
    assert signatures.api_signature(APP, "POST", "/apps/3/events", params) == expected
    # The signature itself is not signed, and names sort case-insensitively.
    params["auth_signature"] = expected
    assert signatures.api_signature(APP, "post", "/apps/3/events", params) == expected


def test_same_is_false_for_anything_but_the_string() -> None:
    assert signatures.same("abc", "abc")
    assert not signatures.same("abc", "abd")
    assert not signatures.same("abc", None)
    assert not signatures.same("abc", ["abc"])


def test_socket_ids_have_pushers_form_and_differ() -> None:
    ids = {signatures.new_socket_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"\d+\.\d+", i) for i in ids)


def test_user_auth_signs_the_user_data() -> None:
    one = signatures.user_auth(APP, "1.2", '{"id":"1"}')
    assert one != signatures.user_auth(APP, "1.2", '{"id":"2"}')
    assert one.startswith(APP.key + ":")
