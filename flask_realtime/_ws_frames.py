"""RFC 6455 framing, written here on purpose.

gevent-websocket reads a whole frame before the application sees it and has
no size limit; simple-websocket's limit closes with 1009 without the
protocol's 413 error. Neither can send one pre-built frame to a thousand
sockets. This small codec checks the declared length in each frame header
before buffering the payload, and builds each broadcast's frame once.
"""

from __future__ import annotations

import struct

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_CONTROL = frozenset({OP_CLOSE, OP_PING, OP_PONG})
_DATA = frozenset({OP_CONTINUATION, OP_TEXT, OP_BINARY})


class FrameError(Exception):
    """The peer broke the framing rules; the connection must close with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class MessageTooLarge(FrameError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            1009, f"message of {size} bytes exceeds the {limit} byte limit"
        )
        self.size = size
        self.limit = limit


def build_frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked, final server frame."""
    length = len(payload)
    first = 0x80 | opcode
    if length < 126:
        header = struct.pack("!BB", first, length)
    elif length < 65536:
        header = struct.pack("!BBH", first, 126, length)
    else:
        header = struct.pack("!BBQ", first, 127, length)
    return header + payload


def text_frame(payload: bytes) -> bytes:
    return build_frame(OP_TEXT, payload)


def close_frame(code: int, reason: str = "") -> bytes:
    # The code goes on the wire as two bytes: gevent-websocket's close()
    # never does this, which is why every close is framed here.
    # 123 bytes at most, cut on a character boundary.
    encoded = reason.encode()[:123].decode("utf-8", "ignore").encode()
    return build_frame(OP_CLOSE, struct.pack("!H", code) + encoded)


PING_FRAME = build_frame(OP_PING, b"")


def _unmask(payload: bytes, mask: bytes) -> bytes:
    if not payload:
        return payload
    # XOR with the 4-byte key repeated: one big-integer operation instead of
    # a Python loop over every byte.
    length = len(payload)
    key = (mask * (length // 4 + 1))[:length]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
        length, "little"
    )


class FrameParser:
    """Incremental parser for client frames: feed bytes, get whole messages.

    ``feed`` returns ``(opcode, payload)`` pairs: text and binary messages with
    fragments joined, and control frames as they come.
    """

    __slots__ = (
        "max_size",
        "_buffer",
        "_fragments",
        "_fragment_opcode",
        "_fragment_size",
    )

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buffer = bytearray()
        self._fragments: list[bytes] = []
        self._fragment_opcode: int | None = None
        self._fragment_size = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buffer = self._buffer
        buffer += data
        out: list[tuple[int, bytes]] = []
        pos = 0
        end = len(buffer)
        while end - pos >= 2:
            first, second = buffer[pos], buffer[pos + 1]
            if first & 0x70:
                raise FrameError(1002, "reserved bits set without an extension")
            fin = first & 0x80
            opcode = first & 0x0F
            if not second & 0x80:
                raise FrameError(1002, "client frames must be masked")
            length = second & 0x7F
            header = 2
            if length == 126:
                if end - pos < 4:
                    break
                (length,) = struct.unpack_from("!H", buffer, pos + 2)
                header = 4
            elif length == 127:
                if end - pos < 10:
                    break
                (length,) = struct.unpack_from("!Q", buffer, pos + 2)
                header = 10
            if opcode in _CONTROL:
                if length > 125 or not fin:
                    raise FrameError(1002, "invalid control frame")
            elif opcode in _DATA:
                # The limit is checked from the declared length, before the
                # payload is read into memory.
                total = length + (
                    self._fragment_size if opcode == OP_CONTINUATION else 0
                )
                if total > self.max_size:
                    raise MessageTooLarge(total, self.max_size)
            else:
                raise FrameError(1002, f"unknown opcode {opcode}")
            frame_end = pos + header + 4 + length
            if end < frame_end:
                break
            mask = bytes(buffer[pos + header : pos + header + 4])
            payload = _unmask(bytes(buffer[pos + header + 4 : frame_end]), mask)
            pos = frame_end
            if opcode in _CONTROL:
                out.append((opcode, payload))
            elif opcode == OP_CONTINUATION:
                if self._fragment_opcode is None:
                    raise FrameError(1002, "continuation without a first fragment")
                self._fragments.append(payload)
                self._fragment_size += len(payload)
                if fin:
                    out.append((self._fragment_opcode, b"".join(self._fragments)))
                    self._reset_fragments()
            else:
                if self._fragment_opcode is not None:
                    raise FrameError(1002, "new message before the last one ended")
                if fin:
                    out.append((opcode, payload))
                else:
                    self._fragment_opcode = opcode
                    self._fragments = [payload]
                    self._fragment_size = len(payload)
        if pos:
            del buffer[:pos]
        return out

    def _reset_fragments(self) -> None:
        self._fragments = []
        self._fragment_opcode = None
        self._fragment_size = 0


def parse_close(payload: bytes) -> int:
    if len(payload) >= 2:
        return struct.unpack("!H", payload[:2])[0]
    return 1005
