"""_ws_frames.py: the RFC 6455 codec (client frames in, server frames out)."""

from __future__ import annotations

import struct

import pytest

from flask_realtime._ws_frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    FrameParser,
    MessageTooLarge,
    build_frame,
    close_frame,
    parse_close,
    text_frame,
)

MASK = b"\x37\xfa\x21\x3d"
LIMIT = 64 * 1024


def header(opcode: int, length: int, *, fin: bool = True, rsv: int = 0) -> bytes:
    """A client frame header, mask bit set, without the mask key."""
    first = (0x80 if fin else 0) | rsv | opcode
    if length < 126:
        return struct.pack("!BB", first, 0x80 | length)
    if length < 65536:
        return struct.pack("!BBH", first, 0x80 | 126, length)
    return struct.pack("!BBQ", first, 0x80 | 127, length)


def mask(payload: bytes, key: bytes = MASK) -> bytes:
    return bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def client_frame(
    payload: bytes,
    opcode: int = OP_TEXT,
    *,
    fin: bool = True,
    rsv: int = 0,
    key: bytes = MASK,
) -> bytes:
    return header(opcode, len(payload), fin=fin, rsv=rsv) + key + mask(payload, key)


def unmasked_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    return struct.pack("!BB", 0x80 | opcode, len(payload)) + payload


def test_helper_masks_the_payload() -> None:
    frame = client_frame(b"hello")
    assert frame[1] & 0x80
    assert frame[6:] != b"hello"
    assert mask(frame[6:]) == b"hello"


# -- parsing ---------------------------------------------------------------------


def test_single_frame() -> None:
    parser = FrameParser(LIMIT)
    assert parser.feed(client_frame(b"hello")) == [(OP_TEXT, b"hello")]
    assert parser.feed(b"") == []


def test_empty_frame() -> None:
    assert FrameParser(LIMIT).feed(client_frame(b"")) == [(OP_TEXT, b"")]


def test_binary_frame() -> None:
    payload = bytes(range(256)) * 2
    assert FrameParser(LIMIT).feed(client_frame(payload, OP_BINARY)) == [
        (OP_BINARY, payload)
    ]


def test_unmasking_uses_each_key_byte() -> None:
    payload = b"\x00" * 9
    key = b"\x01\x02\x03\x04"
    assert FrameParser(LIMIT).feed(client_frame(payload, key=key)) == [
        (OP_TEXT, payload)
    ]
    # the same wire bytes under another key decode differently
    wire = header(OP_TEXT, 4) + key + b"\x00\x00\x00\x00"
    assert FrameParser(LIMIT).feed(wire) == [(OP_TEXT, key)]


def test_several_frames_in_one_feed() -> None:
    data = client_frame(b"one") + client_frame(b"two") + client_frame(b"", OP_PING)
    assert FrameParser(LIMIT).feed(data) == [
        (OP_TEXT, b"one"),
        (OP_TEXT, b"two"),
        (OP_PING, b""),
    ]


def test_split_byte_by_byte() -> None:
    messages = [b'{"type":"ping"}', b"x" * 300, "héllo".encode()]
    frames = [client_frame(m) for m in messages]
    data = b"".join(frames)
    frame_ends = [sum(len(f) for f in frames[: i + 1]) for i in range(len(frames))]
    parser = FrameParser(LIMIT)
    out = []
    emitted_at = []
    for i in range(len(data)):
        got = parser.feed(data[i : i + 1])
        if got:
            emitted_at.append(i + 1)
        out.extend(got)
    assert out == [(OP_TEXT, m) for m in messages]
    # each message comes out exactly when its last byte arrives
    assert emitted_at == frame_ends


def test_split_at_every_offset() -> None:
    data = client_frame(b"a" * 200) + client_frame(b"b" * 70000)
    for cut in (1, 2, 3, 4, 5, 8, 9, 10, 100, 205, 206, 210, len(data) - 1):
        parser = FrameParser(100_000)
        out = parser.feed(data[:cut]) + parser.feed(data[cut:])
        assert out == [(OP_TEXT, b"a" * 200), (OP_TEXT, b"b" * 70000)], cut


@pytest.mark.parametrize("length", [125, 126, 300, 65535])
def test_16_bit_lengths(length: int) -> None:
    payload = bytes(97 + i % 26 for i in range(length))  # text: UTF-8
    frame = client_frame(payload)
    if length >= 126:
        assert frame[1] & 0x7F == 126
    assert FrameParser(LIMIT * 2).feed(frame) == [(OP_TEXT, payload)]


@pytest.mark.parametrize("length", [65536, 70000])
def test_64_bit_lengths(length: int) -> None:
    payload = bytes(97 + i % 26 for i in range(length))  # text: UTF-8
    frame = client_frame(payload)
    assert frame[1] & 0x7F == 127
    assert FrameParser(100_000).feed(frame) == [(OP_TEXT, payload)]


def test_fragmented_message_is_joined() -> None:
    parser = FrameParser(LIMIT)
    assert parser.feed(client_frame(b"Hel", OP_TEXT, fin=False)) == []
    assert parser.feed(client_frame(b"lo ", OP_CONTINUATION, fin=False)) == []
    assert parser.feed(client_frame(b"world", OP_CONTINUATION)) == [
        (OP_TEXT, b"Hello world")
    ]
    # and the parser is ready for the next message
    assert parser.feed(client_frame(b"next")) == [(OP_TEXT, b"next")]


def test_fragmented_binary_keeps_its_opcode() -> None:
    data = client_frame(b"\x00", OP_BINARY, fin=False) + client_frame(
        b"\x01", OP_CONTINUATION
    )
    assert FrameParser(LIMIT).feed(data) == [(OP_BINARY, b"\x00\x01")]


def test_control_frame_between_fragments() -> None:
    data = (
        client_frame(b"ab", OP_TEXT, fin=False)
        + client_frame(b"are you there", OP_PING)
        + client_frame(b"", OP_PONG)
        + client_frame(b"cd", OP_CONTINUATION)
    )
    assert FrameParser(LIMIT).feed(data) == [
        (OP_PING, b"are you there"),
        (OP_PONG, b""),
        (OP_TEXT, b"abcd"),
    ]


def test_close_frame_from_client() -> None:
    payload = struct.pack("!H", 1000) + b"bye"
    assert FrameParser(LIMIT).feed(client_frame(payload, OP_CLOSE)) == [
        (OP_CLOSE, payload)
    ]


# -- size limit --------------------------------------------------------------------


def test_message_at_the_limit_is_accepted() -> None:
    assert FrameParser(1000).feed(client_frame(b"x" * 1000)) == [(OP_TEXT, b"x" * 1000)]


def test_message_over_the_limit_is_refused() -> None:
    with pytest.raises(MessageTooLarge) as info:
        FrameParser(1000).feed(client_frame(b"x" * 1001))
    assert info.value.code == 1009
    assert info.value.size == 1001
    assert info.value.limit == 1000


def test_size_limit_is_raised_from_the_64_bit_header_alone() -> None:
    ten_mb = 10 * 1024 * 1024
    parser = FrameParser(LIMIT)
    # only the 10 header bytes: no mask key, no payload
    with pytest.raises(MessageTooLarge) as info:
        parser.feed(header(OP_TEXT, ten_mb))
    assert info.value.size == ten_mb
    assert info.value.code == 1009
    assert isinstance(info.value, FrameError)


def test_size_limit_is_raised_from_the_16_bit_header_alone() -> None:
    with pytest.raises(MessageTooLarge):
        FrameParser(1000).feed(header(OP_TEXT, 2000))


def test_size_limit_waits_for_the_whole_extended_length() -> None:
    parser = FrameParser(LIMIT)
    frame_header = header(OP_TEXT, 10 * 1024 * 1024)
    assert parser.feed(frame_header[:5]) == []  # length not known yet
    with pytest.raises(MessageTooLarge):
        parser.feed(frame_header[5:])


def test_fragmented_total_over_the_limit() -> None:
    parser = FrameParser(100)
    assert parser.feed(client_frame(b"a" * 60, OP_TEXT, fin=False)) == []
    assert parser.feed(client_frame(b"b" * 30, OP_CONTINUATION, fin=False)) == []
    # the next fragment's header alone pushes the total over the limit
    with pytest.raises(MessageTooLarge) as info:
        parser.feed(header(OP_CONTINUATION, 20))
    assert info.value.size == 110
    assert info.value.limit == 100


def test_fragmented_total_at_the_limit_is_accepted() -> None:
    parser = FrameParser(100)
    data = client_frame(b"a" * 60, OP_TEXT, fin=False) + client_frame(
        b"b" * 40, OP_CONTINUATION
    )
    assert parser.feed(data) == [(OP_TEXT, b"a" * 60 + b"b" * 40)]


def test_the_limit_applies_per_message_not_per_stream() -> None:
    parser = FrameParser(100)
    for _ in range(5):
        assert parser.feed(client_frame(b"z" * 100)) == [(OP_TEXT, b"z" * 100)]


# -- protocol violations ------------------------------------------------------------


def test_unmasked_frame_is_refused_with_1002() -> None:
    with pytest.raises(FrameError) as info:
        FrameParser(LIMIT).feed(unmasked_frame(b"hello"))
    assert info.value.code == 1002
    assert not isinstance(info.value, MessageTooLarge)


@pytest.mark.parametrize("rsv", [0x40, 0x20, 0x10, 0x70])
def test_reserved_bits_are_refused_with_1002(rsv: int) -> None:
    with pytest.raises(FrameError) as info:
        FrameParser(LIMIT).feed(client_frame(b"x", rsv=rsv))
    assert info.value.code == 1002


@pytest.mark.parametrize("opcode", [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xF])
def test_unknown_opcode_is_refused_with_1002(opcode: int) -> None:
    with pytest.raises(FrameError) as info:
        FrameParser(LIMIT).feed(client_frame(b"x", opcode))
    assert info.value.code == 1002


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
def test_control_frame_over_125_bytes_is_refused(opcode: int) -> None:
    parser = FrameParser(LIMIT)
    with pytest.raises(FrameError) as info:
        parser.feed(header(opcode, 126))  # from the header alone
    assert info.value.code == 1002


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
def test_control_frame_of_125_bytes_is_accepted(opcode: int) -> None:
    payload = b"\x03\xe8" + b"p" * 123  # (a close frame: code 1000, a reason)
    assert FrameParser(LIMIT).feed(client_frame(payload, opcode)) == [(opcode, payload)]


def test_fragmented_control_frame_is_refused() -> None:
    with pytest.raises(FrameError) as info:
        FrameParser(LIMIT).feed(client_frame(b"p", OP_PING, fin=False))
    assert info.value.code == 1002


def test_continuation_without_a_first_fragment() -> None:
    with pytest.raises(FrameError) as info:
        FrameParser(LIMIT).feed(client_frame(b"x", OP_CONTINUATION))
    assert info.value.code == 1002


def test_new_message_before_the_last_one_ended() -> None:
    data = client_frame(b"a", OP_TEXT, fin=False) + client_frame(b"b", OP_TEXT)
    with pytest.raises(FrameError) as info:
        FrameParser(LIMIT).feed(data)
    assert info.value.code == 1002


# -- building --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "header_bytes"),
    [
        (0, b"\x81\x00"),
        (125, b"\x81\x7d"),
        (126, b"\x81\x7e\x00\x7e"),
        (65535, b"\x81\x7e\xff\xff"),
        (65536, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
    ],
)
def test_build_frame_lengths(length: int, header_bytes: bytes) -> None:
    payload = bytes(i % 256 for i in range(length))
    frame = build_frame(OP_TEXT, payload)
    assert frame == header_bytes + payload
    assert not frame[1] & 0x80  # server frames are not masked


def test_text_frame_is_a_final_text_frame() -> None:
    assert text_frame(b'{"type":"pong"}') == b"\x81\x0f" + b'{"type":"pong"}'


@pytest.mark.parametrize("opcode", [OP_BINARY, OP_PING, OP_PONG, OP_CLOSE])
def test_build_frame_opcodes(opcode: int) -> None:
    assert build_frame(opcode, b"")[0] == 0x80 | opcode


@pytest.mark.parametrize("code", [1000, 1009, 4001, 4100, 4129, 4200])
def test_close_frame_puts_the_code_in_the_first_two_payload_bytes(code: int) -> None:
    frame = close_frame(code, "going away")
    assert frame[0] == 0x80 | OP_CLOSE
    length = frame[1]
    payload = frame[2:]
    assert length == len(payload) == 2 + len("going away")
    assert payload[:2] == struct.pack("!H", code)
    assert payload[2:] == b"going away"
    assert parse_close(payload) == code


def test_close_frame_without_reason() -> None:
    assert close_frame(4129) == b"\x88\x02" + struct.pack("!H", 4129)


def test_close_frame_is_a_valid_control_frame_whatever_the_reason() -> None:
    frame = close_frame(1000, "x" * 500)
    assert frame[1] <= 125


def test_parse_close_without_a_code() -> None:
    assert parse_close(b"") == 1005
    assert parse_close(b"\x03") == 1005
