"""channels.py: names, kinds, patterns and the handler table
(PROTOCOL.md, "Channels")."""

from __future__ import annotations

import pytest

from flask_realtime import channels
from flask_realtime.channels import (
    PRESENCE,
    PRIVATE,
    PUBLIC,
    ChannelRules,
    HandlerTable,
    compile_pattern,
    is_valid_name,
)


def allow(connection: object, channel: str) -> bool:
    return True


# -- names -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "Z",
        "0",
        "a" * 200,
        "chat.room.1",
        "private-chat_5",
        "user:42",
        "key=value",
        "user@example.com",
        "tag#1",
        "ABCxyz0189",
        "._-:=@#",
        "presence-room.1",
    ],
)
def test_valid_names(name: str) -> None:
    assert is_valid_name(name)


@pytest.mark.parametrize("char", list(".-_:=@#"))
def test_each_allowed_punctuation_character(char: str) -> None:
    assert is_valid_name(f"a{char}b")
    assert is_valid_name(char)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a" * 201,
        "chat room",
        " chat",
        "chat/1",
        "chat\\1",
        "café",
        "\u0661",  # ARABIC-INDIC DIGIT ONE: a digit, but not 0-9
        "ｃｈａｔ",  # fullwidth letters
        "chat\n",
        "chat\t1",
        "a,b",
        "a*b",
        "a+b",
        "a?b",
        "a!b",
        "a$",
        "a%20b",
        "a'b",
        'a"b',
        "<chat>",
    ],
)
def test_invalid_names(name: str) -> None:
    assert not is_valid_name(name)


# -- kinds -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("private-chat.5", PRIVATE),
        ("private.chat.5", PRIVATE),
        ("presence-room.1", PRESENCE),
        ("presence.room.1", PRESENCE),
        ("chat.room.1", PUBLIC),
        ("privatechat", PUBLIC),
        ("private", PUBLIC),
        ("private_chat", PUBLIC),
        ("presence", PUBLIC),
        ("presencex.room", PUBLIC),
        ("my-private-chat", PUBLIC),
        ("Private-chat", PUBLIC),
    ],
)
def test_kind_by_prefix(name: str, kind: str) -> None:
    assert ChannelRules().kind(name) == kind


def test_name_matched_by_an_authorizer_pattern_is_private() -> None:
    rules = ChannelRules()
    rules.add_authorizer("user.*", allow)
    assert rules.kind("user.5") == PRIVATE
    assert rules.kind("user.") == PRIVATE
    assert rules.kind("users.5") == PUBLIC
    assert rules.kind("xuser.5") == PUBLIC


def test_presence_prefix_wins_over_an_authorizer_pattern() -> None:
    rules = ChannelRules()
    rules.add_authorizer("*", allow)
    assert rules.kind("presence-room.1") == PRESENCE
    assert rules.kind("anything") == PRIVATE


def test_adding_an_authorizer_updates_kinds_already_looked_up() -> None:
    rules = ChannelRules()
    assert rules.kind("user.5") == PUBLIC
    assert rules.authorizer_for("user.5") is None
    rules.add_authorizer("user.*", allow)
    assert rules.kind("user.5") == PRIVATE


def test_authorizer_for_returns_the_first_match_in_registration_order() -> None:
    def first(connection: object, channel: str) -> bool:
        return True

    def second(connection: object, channel: str) -> bool:
        return False

    rules = ChannelRules()
    rules.add_authorizer("private-chat.*", first)
    rules.add_authorizer("private-*", second)
    found = rules.authorizer_for("private-chat.1")
    assert (
        found is not None
        and found.func is first
        and found.pattern == ("private-chat.*")
    )
    other = rules.authorizer_for("private-room.1")
    assert other is not None and other.func is second
    assert rules.authorizer_for("private") is None


@pytest.mark.parametrize("pattern", ["", None, 5])
def test_authorizer_pattern_must_be_a_non_empty_string(pattern: object) -> None:
    with pytest.raises(ValueError):
        ChannelRules().add_authorizer(pattern, allow)  # type: ignore[arg-type]


def test_authorizer_must_be_callable() -> None:
    with pytest.raises(TypeError, match="private-"):
        ChannelRules().add_authorizer("private-*", "nope")  # type: ignore[arg-type]


# -- patterns --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "name"),
    [
        ("chat.*", "chat.room.1"),
        ("chat.*", "chat."),  # * matches the empty run
        ("*", ""),
        ("*", "anything.at:all"),
        ("a*b*c", "abc"),
        ("a*b*c", "aXXbYYc"),
        ("*.room", "chat.room"),
        ("user.*.inbox", "user.5.inbox"),
        ("exact", "exact"),
    ],
)
def test_pattern_matches(pattern: str, name: str) -> None:
    assert compile_pattern(pattern).fullmatch(name)


@pytest.mark.parametrize(
    ("pattern", "name"),
    [
        ("chat.*", "xchat.room"),  # whole name, not a substring
        ("chat.*", "chat"),
        ("*.room", "chat.rooms"),
        ("exact", "exactly"),
        ("exact", "in.exact"),
        # regex metacharacters are literal
        ("chat.room", "chatXroom"),
        ("a+b", "aab"),
        ("a?b", "b"),
        ("a?b", "ab"),
        ("(a|b)", "a"),
        ("[ab]", "a"),
        ("a{2}", "aa"),
        ("^a$", "a"),
        ("a\\d", "a1"),
    ],
)
def test_pattern_does_not_match(pattern: str, name: str) -> None:
    assert compile_pattern(pattern).fullmatch(name) is None


@pytest.mark.parametrize(
    "pattern", ["a+b", "a?b", "(a|b)", "[ab]", "a{2}", "^a$", "a\\d", "a.b"]
)
def test_pattern_metacharacters_match_themselves(pattern: str) -> None:
    assert compile_pattern(pattern).fullmatch(pattern)


def test_authorizer_patterns_match_whole_names() -> None:
    rules = ChannelRules()
    rules.add_authorizer("private-chat.*", allow)
    assert rules.authorizer_for("private-chat.1") is not None
    assert rules.authorizer_for("xprivate-chat.1") is None
    assert rules.authorizer_for("private-chatX1") is None


# -- handler table ---------------------------------------------------------------


def test_handler_table_finds_by_event_and_pattern() -> None:
    def on_chat(*args: object) -> None: ...

    def on_any(*args: object) -> None: ...

    table = HandlerTable()
    table.add("msg", "chat.*", on_chat)
    table.add("typing", "*", on_any)
    assert table.find("msg", "chat.room.1") is on_chat
    assert table.find("msg", "news") is None
    assert table.find("msg", "xchat.room") is None
    assert table.find("other", "chat.room.1") is None
    assert table.find("typing", "anything") is on_any
    assert table.find("typing", "chat.room.1") is on_any


def test_handler_table_first_registered_match_wins() -> None:
    def specific(*args: object) -> None: ...

    def general(*args: object) -> None: ...

    table = HandlerTable()
    table.add("msg", "chat.vip", specific)
    table.add("msg", "chat.*", general)
    assert table.find("msg", "chat.vip") is specific
    assert table.find("msg", "chat.1") is general


def test_kind_constants() -> None:
    assert (channels.PUBLIC, channels.PRIVATE, channels.PRESENCE) == (
        "public",
        "private",
        "presence",
    )
