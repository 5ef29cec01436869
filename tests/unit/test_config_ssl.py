"""REALTIME_SSL: the seed's ``ssl`` option of the WebSocket server."""

from __future__ import annotations

from pathlib import Path

import pytest

from flask_realtime import config
from flask_realtime.config import ConfigError


def _load(**overrides: object) -> config.Settings:
    return config.load({**config.DEFAULTS, **overrides})


def test_off_by_default() -> None:
    assert _load().ssl is None


def test_certificate_and_key(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("y")
    settings = _load(REALTIME_SSL={"certfile": str(cert), "keyfile": str(key)})
    assert settings.ssl == {"certfile": str(cert), "keyfile": str(key)}


@pytest.mark.parametrize(
    "value",
    [True, "yes", {"certfile": "a.pem"}, {"certfile": "a", "keyfile": 5}, []],
)
def test_wrong_values_name_the_key(value: object) -> None:
    with pytest.raises(ConfigError, match="REALTIME_SSL"):
        _load(REALTIME_SSL=value)


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        _load(
            REALTIME_SSL={
                "certfile": str(tmp_path / "gone.pem"),
                "keyfile": str(tmp_path / "gone.key"),
            }
        )
