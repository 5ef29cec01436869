"""The Autobahn testsuite's case 6 (UTF-8 handling), as data: see rfc6455_cases."""

from __future__ import annotations

import typing as t

from tests.rfc6455_cases import INVALID_DATA, OP_CONT, OP_TEXT, Case, chop, frame

_HELLO = "Hello-\u00b5@\u00df\u00f6\u00e4\u00fc\u00e0\u00e1-UTF-8!!".encode()
_KOSME = "\u03ba\u1f79\u03c3\u03bc\u03b5".encode()

#: Markus Kuhn's UTF-8 decoder test, as Autobahn's cases 6.5-6.23 use it:
#: (bytes, valid).
UTF8_SEQUENCES: tuple[tuple[bytes, bool], ...] = (
    (_KOSME, True),
    # 6.6: kosme byte by byte as prefixes
    *((_KOSME[:n], n in (0, 2, 5, 7, 9, 11)) for n in range(1, 12)),
    # 6.7: first sequence of each length
    (b"\x00", True),
    (b"\xc2\x80", True),
    (b"\xe0\xa0\x80", True),
    (b"\xf0\x90\x80\x80", True),
    # 6.8: 5- and 6-byte sequences are not UTF-8
    (b"\xf8\x88\x80\x80\x80", False),
    (b"\xfc\x84\x80\x80\x80\x80", False),
    # 6.9: last of each length
    (b"\x7f", True),
    (b"\xdf\xbf", True),
    (b"\xef\xbf\xbf", True),
    (b"\xf4\x8f\xbf\xbf", True),
    # 6.10: other boundaries
    (b"\xed\x9f\xbf", True),
    (b"\xee\x80\x80", True),
    (b"\xef\xbf\xbd", True),
    (b"\xf4\x90\x80\x80", False),
    # 6.12: unexpected continuation bytes
    (b"\x80", False),
    (b"\xbf", False),
    (b"\x80\xbf", False),
    (b"\x80\xbf\x80", False),
    (b"\x80\xbf\x80\xbf", False),
    (b"\x80\xbf\x80\xbf\x80", False),
    (bytes(range(0x80, 0xC0)), False),
    # 6.13: lonely start bytes
    (bytes(b for c in range(0xC0, 0xE0) for b in (c, 0x20)), False),
    (bytes(b for c in range(0xE0, 0xF0) for b in (c, 0x20)), False),
    (bytes(b for c in range(0xF0, 0xF8) for b in (c, 0x20)), False),
    (bytes(b for c in range(0xF8, 0xFC) for b in (c, 0x20)), False),
    (bytes(b for c in (0xFC, 0xFD) for b in (c, 0x20)), False),
    # 6.14: last byte missing
    (b"\xc0", False),
    (b"\xe0\x80", False),
    (b"\xf0\x80\x80", False),
    (b"\xf8\x80\x80\x80", False),
    (b"\xfc\x80\x80\x80\x80", False),
    (b"\xdf", False),
    (b"\xef\xbf", False),
    (b"\xf7\xbf\xbf", False),
    (b"\xfb\xbf\xbf\xbf", False),
    (b"\xfd\xbf\xbf\xbf\xbf", False),
    # 6.15: concatenated incomplete sequences
    (
        b"\xc0\xe0\x80\xf0\x80\x80\xf8\x80\x80\x80\xfc\x80\x80\x80\x80\xdf\xef\xbf\xf7\xbf\xbf",
        False,
    ),
    # 6.16: impossible bytes
    (b"\xfe", False),
    (b"\xff", False),
    (b"\xfe\xfe\xff\xff", False),
    # 6.17-6.19: overlong forms
    (b"\xc0\xaf", False),
    (b"\xe0\x80\xaf", False),
    (b"\xf0\x80\x80\xaf", False),
    (b"\xf8\x80\x80\x80\xaf", False),
    (b"\xfc\x80\x80\x80\x80\xaf", False),
    (b"\xc1\xbf", False),
    (b"\xe0\x9f\xbf", False),
    (b"\xf0\x8f\xbf\xbf", False),
    (b"\xc0\x80", False),
    (b"\xe0\x80\x80", False),
    (b"\xf0\x80\x80\x80", False),
    # 6.20: single surrogates; 6.21: paired surrogates
    *(
        (bytes([0xED, hi, 0x80]), False)
        for hi in (0xA0, 0xAD, 0xAE, 0xAF, 0xB0, 0xBE, 0xBF)
    ),
    (b"\xed\xa0\x80\xed\xb0\x80", False),
    (b"\xed\xad\xbf\xed\xbf\xbf", False),
    (b"\xed\xae\x80\xed\xb0\x80", False),
    (b"\xed\xaf\xbf\xed\xbf\xbf", False),
    # 6.22: noncharacters are valid UTF-8
    (b"\xef\xbf\xbe", True),
    (b"\xef\xbf\xbf", True),
    (b"\xef\xb7\x90", True),
    (b"\xf0\x9f\xbf\xbe", True),
    (b"\xf4\x8f\xbf\xbf", True),
    # 6.23: replacement character and the byte order mark
    (b"\xef\xbf\xbd", True),
    (b"\xef\xbb\xbf", True),
)


def per_byte(data: bytes) -> bytes:
    """``data`` as a text message of one fragment per byte, in one write."""
    return b"".join(
        frame(OP_TEXT if i == 0 else OP_CONT, data[i : i + 1], fin=i == len(data) - 1)
        for i in range(len(data))
    )


def utf8_cases() -> t.Iterator[Case]:
    """Case 6: text in valid and invalid UTF-8, whole and in fragments."""
    yield Case("6.1.1", "empty text", (frame(OP_TEXT),))
    yield Case(
        "6.1.2",
        "empty text in 3 empty fragments",
        (frame(OP_TEXT, fin=False) + frame(OP_CONT, fin=False) + frame(OP_CONT),),
    )
    yield Case(
        "6.1.3",
        "text, empty fragments around",
        (
            frame(OP_TEXT, fin=False)
            + frame(OP_CONT, b"middle", fin=False)
            + frame(OP_CONT),
        ),
    )
    yield Case("6.2.1", "valid UTF-8, one frame", (frame(OP_TEXT, _HELLO),))
    yield Case(
        "6.2.2",
        "valid UTF-8, fragments split in a character",
        (frame(OP_TEXT, _HELLO[:7], fin=False) + frame(OP_CONT, _HELLO[7:]),),
    )
    yield Case("6.2.3", "valid UTF-8, 1-byte writes", chop(frame(OP_TEXT, _HELLO)))
    yield Case(
        "6.2.4",
        "valid UTF-8, a fragment per byte",
        (per_byte(_HELLO),),
    )
    bad = _KOSME + b"\xed\xa0\x80edited"  # a lone surrogate inside
    yield Case(
        "6.3.1", "invalid UTF-8, one frame", (frame(OP_TEXT, bad),), INVALID_DATA
    )
    yield Case(
        "6.3.2",
        "invalid UTF-8, a fragment per byte",
        (per_byte(bad),),
        INVALID_DATA,
    )
    # 6.4: fail fast. Only the fragments up to the invalid one are sent:
    # the rest of the message never comes, and the close must come anyway.
    kosme_bad = _KOSME + b"\xf4\x90\x80\x80" + b"edited"
    yield Case(
        "6.4.1",
        "fail fast: invalid in the second fragment",
        (
            frame(OP_TEXT, _KOSME, fin=False)
            + frame(OP_CONT, b"\xf4\x90\x80\x80", fin=False),
        ),
        INVALID_DATA,
    )
    yield Case(
        "6.4.2",
        "fail fast: invalid 4th byte at a fragment's end",
        (
            frame(OP_TEXT, _KOSME + b"\xf4", fin=False)
            + frame(OP_CONT, b"\x90", fin=False),
        ),
        INVALID_DATA,
    )
    yield Case(
        "6.4.3",
        "fail fast: invalid in the middle, 1-byte writes",
        chop(frame(OP_TEXT, kosme_bad[:13], fin=False)),
        INVALID_DATA,
    )
    yield Case(
        "6.4.4",
        "fail fast: 1-byte fragments",
        (
            b"".join(
                frame(OP_TEXT if i == 0 else OP_CONT, kosme_bad[i : i + 1], fin=False)
                for i in range(13)
            ),
        ),
        INVALID_DATA,
    )
    for n, (data, valid) in enumerate(UTF8_SEQUENCES, 1):
        yield Case(
            f"6.5-23.{n}",
            f"{'valid' if valid else 'invalid'} UTF-8 {data[:12]!r}",
            (frame(OP_TEXT, data),),
            None if valid else INVALID_DATA,
        )
        if len(data) > 1:
            # The same, a fragment per byte (as Autobahn's fragmented variants).
            frags = per_byte(data)
            yield Case(
                f"6.5-23.{n}f",
                "the same, a fragment per byte",
                (frags,),
                None if valid else INVALID_DATA,
            )
