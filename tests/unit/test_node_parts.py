"""The node package's shape: who imports whom, where topic names live, and
the observers the memory transport's recorder relies on."""

from __future__ import annotations

import ast
import typing as t
from pathlib import Path

import pytest

import flask_realtime.node
from flask_realtime import Realtime
from flask_realtime.node import topics
from tests.unit.conftest import Factory

NODE_DIR = Path(flask_realtime.node.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the flask_realtime modules ``path`` imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = ["flask_realtime", "node"][: 3 - node.level]
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("path", sorted(NODE_DIR.glob("*.py")), ids=lambda p: p.name)
def test_the_node_imports_no_transport_recorder_or_extension(path: Path) -> None:
    forbidden = ("testing", "recorder", "transports", "extension")
    for module in imported_modules(path):
        parts = module.split(".")
        assert parts[:2] not in (["flask_realtime", f] for f in forbidden), module


def test_topic_names_are_written_in_topics_only() -> None:
    prefixes = {topics.CHANNEL, topics.USER, topics.NODE, topics.PRESENCE, topics.INBOX}
    for path in NODE_DIR.glob("*.py"):
        if path.name == "topics.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value not in prefixes, (path.name, node.value)


def test_split_and_build_topics() -> None:
    assert topics.split(topics.channel("chat.room:1")) == ("c:", "chat.room:1")
    assert topics.split(topics.user("5")) == ("u:", "5")
    assert topics.split(topics.node("ab12")) == ("n:", "ab12")
    assert topics.split(topics.presence("presence-x")) == ("p:", "presence-x")
    assert topics.inbox("ff").startswith(topics.INBOX)


@pytest.fixture
def realtime(make: Factory) -> Realtime:
    return make(REALTIME_TRANSPORTS=["websocket"])  # no recorder


@pytest.mark.usefixtures("own_initialised_apps")
def test_observers_see_every_send_before_it_is_published(realtime: Realtime) -> None:
    seen: list[tuple[t.Any, ...]] = []
    realtime.node.observe(lambda *args: seen.append(args))
    realtime.broadcast("news", "headline", 1)
    realtime.send_to_user(5, "note", {"a": 1})
    realtime.send("abc.def", "private", None)
    assert seen == [
        ("broadcast", "news", "headline", 1),
        ("user", 5, "note", {"a": 1}),
        ("connection", "abc.def", "private", None),
    ]
    with pytest.raises(RuntimeError, match="memory"):
        realtime.recorder  # noqa: B018 - no memory transport, no recorder
