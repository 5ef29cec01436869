"""Helpers of the node's tests."""

from __future__ import annotations

import typing as t

from flask_realtime import Connection


def allow(connection: Connection, channel: str) -> bool:
    return True


def error_code(reply: dict[str, t.Any] | None) -> int:
    assert reply is not None and reply["type"] == "error", reply
    return int(reply["data"]["code"])
