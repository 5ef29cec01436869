"""The Autobahn testsuite's cases 1-7, replayed as data for tests/test_rfc6455.py.

autobahntestsuite is Python 2 only; these are its cases re-stated: what the
client sends (each item of ``writes`` is one TCP write, so a "chopped" case
is many), and what RFC 6455 requires of a server that is not an echo server.
Where Autobahn sends a text message and expects it echoed, we send the
protocol's JSON ``ping`` with an ``id`` (padded to the case's length) and
expect its ``pong``: the message arrived whole. Pings must be answered with
pongs of the same payload, in order. A case either leaves the connection
open (it must then still answer a probe) or fails it with one of ``close``.
"""

from __future__ import annotations

import json
import os
import struct
import typing as t
from dataclasses import dataclass, field

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


def frame(opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0) -> bytes:
    """A masked client frame."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", first, 0x80 | length)
    elif length < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, length)
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


def ping_json(case_id: str, size: int | None = None) -> bytes:
    """A JSON ping whose pong has the id ``case_id``; ``size`` bytes long."""
    body = json.dumps({"type": "ping", "id": case_id, "pad": ""}).encode()
    if size is not None:
        body = body[:-2] + b"*" * (size - len(body)) + b'"}'
        assert len(body) == size
    return body


def chop(data: bytes, size: int = 1) -> tuple[bytes, ...]:
    return tuple(data[i : i + size] for i in range(0, len(data), size))


def written(frames: t.Sequence[bytes], how: str) -> tuple[bytes, ...]:
    """``frames`` as TCP writes: ``one`` write, ``chop``ped, or ``each`` a write."""
    if how == "one":
        return (b"".join(frames),)
    if how == "chop":
        return chop(b"".join(frames))
    assert how == "each", how
    return tuple(frames)


@dataclass(frozen=True)
class Case:
    id: str
    what: str
    writes: tuple[bytes, ...]
    #: None: the connection stays open; else the close codes allowed.
    close: frozenset[int] | None = None
    #: Payloads of the pongs due, in order.
    pongs: tuple[bytes, ...] = ()
    #: Ids of the JSON pongs due (messages the server must have handled).
    handled: tuple[str, ...] = field(default=())


PROTOCOL_ERROR = frozenset({1002})
INVALID_DATA = frozenset({1007})


def _text_cases() -> t.Iterator[Case]:
    for n, size in enumerate([60, 125, 126, 127, 128, 65535, 65536], 1):
        cid = f"1.1.{n}"
        yield Case(
            cid,
            f"text of {size} bytes",
            (frame(OP_TEXT, ping_json(cid, size)),),
            handled=(cid,),
        )
    cid = "1.1.8"
    yield Case(
        cid,
        "text of 65536 bytes in writes of 997",
        chop(frame(OP_TEXT, ping_json(cid, 65536)), 997),
        handled=(cid,),
    )
    for n, size in enumerate([0, 125, 126, 127, 128, 65535, 65536], 1):
        # Binary messages get the protocol's error; the connection lives on.
        yield Case(
            f"1.2.{n}", f"binary of {size} bytes", (frame(OP_BINARY, b"\xfe" * size),)
        )
    yield Case(
        "1.2.8", "binary in writes of 997", chop(frame(OP_BINARY, b"\xfe" * 65536), 997)
    )


def _ping_cases() -> t.Iterator[Case]:
    yield Case("2.1", "ping, no payload", (frame(OP_PING),), pongs=(b"",))
    yield Case(
        "2.2",
        "ping, text payload",
        (frame(OP_PING, b"Hello, world!"),),
        pongs=(b"Hello, world!",),
    )
    binary = bytes([0, 255, 254, 253, 252, 251, 0, 255])
    yield Case(
        "2.3", "ping, binary payload", (frame(OP_PING, binary),), pongs=(binary,)
    )
    yield Case(
        "2.4",
        "ping of 125 bytes",
        (frame(OP_PING, b"\xfe" * 125),),
        pongs=(b"\xfe" * 125,),
    )
    yield Case(
        "2.5", "ping of 126 bytes", (frame(OP_PING, b"\xfe" * 126),), PROTOCOL_ERROR
    )
    yield Case(
        "2.6",
        "ping of 125 bytes, 1-byte writes",
        chop(frame(OP_PING, b"\xfe" * 125)),
        pongs=(b"\xfe" * 125,),
    )
    yield Case("2.7", "unsolicited pong", (frame(OP_PONG),))
    yield Case(
        "2.8", "unsolicited pong with payload", (frame(OP_PONG, b"unsolicited"),)
    )
    yield Case(
        "2.9",
        "unsolicited pong, then ping",
        (frame(OP_PONG, b"unsolicited") + frame(OP_PING, b"ping"),),
        pongs=(b"ping",),
    )
    tens = tuple(f"payload-{i}".encode() for i in range(10))
    yield Case("2.10", "10 pings", tuple(frame(OP_PING, p) for p in tens), pongs=tens)
    yield Case(
        "2.11",
        "10 pings, 1-byte writes",
        tuple(b for p in tens for b in chop(frame(OP_PING, p))),
        pongs=tens,
    )


def _reserved_bit_cases() -> t.Iterator[Case]:
    yield Case(
        "3.1",
        "text with RSV=1",
        (frame(OP_TEXT, ping_json("3.1"), rsv=1),),
        PROTOCOL_ERROR,
    )
    for cid, rsv, split in (("3.2", 2, False), ("3.3", 3, True), ("3.4", 4, True)):
        frames = [
            frame(OP_TEXT, ping_json(cid)),
            frame(OP_TEXT, ping_json("x"), rsv=rsv),
            frame(OP_PING),
        ]
        writes = tuple(frames) if split else (b"".join(frames),)
        if cid == "3.4":
            writes = chop(b"".join(frames))
        # The message before the bad frame is handled; the ping after it is not.
        yield Case(
            cid,
            f"text, text with RSV={rsv}, ping",
            writes,
            PROTOCOL_ERROR,
            handled=(cid,),
        )
    yield Case(
        "3.5", "binary with RSV=5", (frame(OP_BINARY, b"\xff", rsv=5),), PROTOCOL_ERROR
    )
    yield Case("3.6", "ping with RSV=6", (frame(OP_PING, b"x", rsv=6),), PROTOCOL_ERROR)
    yield Case(
        "3.7",
        "close with RSV=7",
        (frame(OP_CLOSE, struct.pack("!H", 1000), rsv=7),),
        PROTOCOL_ERROR,
    )


def _opcode_cases() -> t.Iterator[Case]:
    for group, opcodes in (("4.1", (3, 4, 5, 6, 7)), ("4.2", (11, 12, 13, 14, 15))):
        for n, opcode in enumerate(opcodes, 1):
            cid = f"{group}.{n}"
            payload = b"reserved" if n in (2, 4, 5) else b""
            if n <= 2:
                yield Case(
                    cid, f"opcode {opcode}", (frame(opcode, payload),), PROTOCOL_ERROR
                )
            else:
                wire = (
                    frame(OP_TEXT, ping_json(cid))
                    + frame(opcode, payload)
                    + frame(OP_PING)
                )
                yield Case(
                    cid,
                    f"text, opcode {opcode}, ping",
                    (wire,),
                    PROTOCOL_ERROR,
                    handled=(cid,),
                )
    # Ours: what came before the bad frame in the same read is answered first.
    wire = frame(OP_PING, b"first") + frame(3, b"")
    yield Case(
        "4.x.1",
        "ping then opcode 3, one read",
        (wire,),
        PROTOCOL_ERROR,
        pongs=(b"first",),
    )


def _fragment_cases() -> t.Iterator[Case]:
    yield Case(
        "5.1",
        "ping in 2 fragments",
        (frame(OP_PING, b"frag", fin=False) + frame(OP_CONT, b"ment"),),
        PROTOCOL_ERROR,
    )
    yield Case(
        "5.2",
        "pong in 2 fragments",
        (frame(OP_PONG, b"frag", fin=False) + frame(OP_CONT, b"ment"),),
        PROTOCOL_ERROR,
    )

    def two(cid: str) -> list[bytes]:
        body = ping_json(cid)
        return [frame(OP_TEXT, body[:10], fin=False), frame(OP_CONT, body[10:])]

    yield Case("5.3", "text in 2 fragments", (b"".join(two("5.3")),), handled=("5.3",))
    yield Case(
        "5.4",
        "text in 2 fragments, 1-byte writes",
        chop(b"".join(two("5.4"))),
        handled=("5.4",),
    )
    yield Case(
        "5.5", "text in 2 fragments, a write each", tuple(two("5.5")), handled=("5.5",)
    )
    for cid, how in (("5.6", "one"), ("5.7", "chop"), ("5.8", "each")):
        a, b = two(cid)
        frames = [a, frame(OP_PING, b"between"), b]
        writes = written(frames, how)
        yield Case(
            cid,
            f"text in 2 fragments, ping between ({how})",
            writes,
            pongs=(b"between",),
            handled=(cid,),
        )
    for cid, fin, how in (
        ("5.9", True, "one"),
        ("5.10", True, "each"),
        ("5.11", True, "chop"),
        ("5.12", False, "one"),
        ("5.13", False, "each"),
        ("5.14", False, "chop"),
    ):
        frames = [frame(OP_CONT, b"fragment", fin=fin), frame(OP_TEXT, ping_json(cid))]
        writes = written(frames, how)
        yield Case(
            cid,
            f"continuation (fin={fin}) with nothing to continue ({how})",
            writes,
            PROTOCOL_ERROR,
        )
    a, b = two("5.15")
    yield Case(
        "5.15",
        "text in 2 fragments, then a message starting with a continuation",
        (a + b + frame(OP_CONT, b"x", fin=False) + frame(OP_TEXT, b"x"),),
        PROTOCOL_ERROR,
        handled=("5.15",),
    )
    for cid, fin in (("5.16", False), ("5.17", True)):
        bad = (
            frame(OP_CONT, b"x", fin=fin)
            + frame(OP_TEXT, b"x", fin=False)
            + frame(OP_CONT, b"x")
        )
        yield Case(
            cid,
            f"starts with a continuation (fin={fin}), twice",
            (bad * 2,),
            PROTOCOL_ERROR,
        )
    yield Case(
        "5.18",
        "text fragment, then a new text message",
        (frame(OP_TEXT, b"x", fin=False) + frame(OP_TEXT, ping_json("5.18")),),
        PROTOCOL_ERROR,
    )
    for cid, each in (("5.19", False), ("5.20", True)):
        body = ping_json(cid)
        parts = [body[i : i + 8] for i in range(0, len(body), 8)]
        frames = []
        for i, part in enumerate(parts):
            opcode = OP_TEXT if i == 0 else OP_CONT
            frames.append(frame(opcode, part, fin=i == len(parts) - 1))
            if i in (1, 3):
                frames.append(frame(OP_PING, f"pongme {i}".encode()))
        writes = tuple(frames) if each else (b"".join(frames),)
        yield Case(
            cid,
            "text in fragments, pings between",
            writes,
            pongs=(b"pongme 1", b"pongme 3"),
            handled=(cid,),
        )


def _close(code: int | None = None, reason: bytes = b"") -> bytes:
    return frame(OP_CLOSE, b"" if code is None else struct.pack("!H", code) + reason)


NORMAL = frozenset({1000})


def _close_cases() -> t.Iterator[Case]:
    yield Case(
        "7.1.1",
        "text, then close",
        (frame(OP_TEXT, ping_json("7.1.1")) + _close(1000),),
        NORMAL,
        handled=("7.1.1",),
    )
    yield Case("7.1.2", "close, close", (_close(1000) + _close(1000),), NORMAL)
    yield Case(
        "7.1.3",
        "close, then ping (no pong)",
        (_close(1000) + frame(OP_PING, b"late"),),
        NORMAL,
    )
    yield Case(
        "7.1.4",
        "close, then text (not handled)",
        (_close(1000) + frame(OP_TEXT, ping_json("late")),),
        NORMAL,
    )
    yield Case(
        "7.1.5",
        "fragment, close, continuation",
        (frame(OP_TEXT, b"frag", fin=False) + _close(1000) + frame(OP_CONT, b"ment"),),
        NORMAL,
    )
    yield Case(
        "7.1.6",
        "large text, ping, close",
        (
            frame(OP_TEXT, ping_json("7.1.6", 60000))
            + frame(OP_PING, b"before close")
            + _close(1000),
        ),
        NORMAL,
        pongs=(b"before close",),
        handled=("7.1.6",),
    )
    yield Case("7.3.1", "close, no payload", (_close(),), NORMAL)
    yield Case(
        "7.3.2", "close, 1-byte payload", (frame(OP_CLOSE, b"\x03"),), PROTOCOL_ERROR
    )
    yield Case("7.3.3", "close 1000", (_close(1000),), NORMAL)
    yield Case(
        "7.3.4", "close 1000 with a reason", (_close(1000, b"Hello World!"),), NORMAL
    )
    yield Case(
        "7.3.5", "close with a 123-byte reason", (_close(1000, b"*" * 123),), NORMAL
    )
    yield Case(
        "7.3.6",
        "close with a 124-byte reason (payload 126)",
        (_close(1000, b"*" * 124),),
        PROTOCOL_ERROR,
    )
    yield Case(
        "7.5.1",
        "close reason not UTF-8",
        (
            _close(
                1000,
                b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64",
            ),
        ),
        INVALID_DATA,
    )
    valid = (
        1000,
        1001,
        1002,
        1003,
        1007,
        1008,
        1009,
        1010,
        1011,
        3000,
        3999,
        4000,
        4999,
    )
    for n, code in enumerate(valid, 1):
        # The server answers with the client's code (or 1000).
        yield Case(
            f"7.7.{n}", f"close {code}", (_close(code),), frozenset({code, 1000})
        )
    invalid = (0, 999, 1004, 1005, 1006, 1016, 1100, 2000, 2999)
    for n, code in enumerate(invalid, 1):
        yield Case(f"7.9.{n}", f"close {code}", (_close(code),), PROTOCOL_ERROR)
    for n, code in enumerate((5000, 65535), 1):
        yield Case(f"7.13.{n}", f"close {code}", (_close(code),), PROTOCOL_ERROR)


#: Cases 1-5 and 7 (case 6, UTF-8, is in rfc6455_utf8).
CASES: tuple[Case, ...] = (
    *_text_cases(),
    *_ping_cases(),
    *_reserved_bit_cases(),
    *_opcode_cases(),
    *_fragment_cases(),
    *_close_cases(),
)
