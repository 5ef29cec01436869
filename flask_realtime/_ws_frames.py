"""RFC 6455 framing, written here on purpose.

gevent-websocket reads a whole frame before the application sees it and has
no size limit; simple-websocket's limit closes with 1009 without the
protocol's 413 error. Neither can send one pre-built frame to a thousand
sockets. This small codec checks the declared length in each frame header
before buffering the payload, and builds each broadcast's frame once.

It also does what RFC 6455 asks of a receiver that those libraries leave
out or get wrong: text is checked as UTF-8 fragment by fragment (1007 at
the first invalid one), close frames are checked (1002/1007), a message in
assembly is bounded in fragments and in time as well as in bytes, and the
frames that arrived before an invalid one are handed over first.
"""

from __future__ import annotations

import codecs
import struct
import time
import typing as t

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_CONTROL = frozenset({OP_CLOSE, OP_PING, OP_PONG})
_DATA = frozenset({OP_CONTINUATION, OP_TEXT, OP_BINARY})


#: Close codes a peer may send (RFC 6455 7.4 and the IANA registry):
#: 1004, 1005, 1006 and 1015 are reserved, never on the wire.
_VALID_CLOSE = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
)
#: Never sent: they mean "no code" / "no close frame" to the application.
_NEVER_SENT = frozenset({1004, 1005, 1006, 1015})


def valid_close_code(code: int) -> bool:
    """Whether a close frame may carry ``code`` (RFC 6455 7.4)."""
    return code in _VALID_CLOSE or 3000 <= code <= 4999


class FrameError(Exception):
    """The peer broke the framing rules; the connection must close with ``code``.

    ``frames`` holds what was parsed in the same ``feed`` before the bad
    frame: the caller handles those first.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.frames: list[tuple[int, bytes]] = []


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
    if code in _NEVER_SENT:  # they only ever describe a close to the app
        code = 1000
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
    fragments joined, and control frames as they come; close frames are
    checked here. A message in fragments may have at most ``max_fragments``
    of them and must be complete ``fragment_timeout`` seconds after its first
    (also checked by :meth:`check_deadline`, from the node's timer).
    """

    __slots__ = (
        "max_size",
        "max_fragments",
        "fragment_timeout",
        "_buffer",
        "_fragments",
        "_fragment_opcode",
        "_fragment_count",
        "_fragment_deadline",
        "_utf8",
    )

    def __init__(
        self,
        max_size: int,
        max_fragments: int = 1024,
        fragment_timeout: float = 30.0,
    ) -> None:
        self.max_size = max_size
        self.max_fragments = max_fragments
        self.fragment_timeout = fragment_timeout
        self._buffer = bytearray()
        self._fragments = bytearray()
        self._fragment_opcode: int | None = None
        self._fragment_count = 0
        self._fragment_deadline = 0.0
        self._utf8: codecs.IncrementalDecoder | None = None

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        try:
            self._parse(data, out)
        except FrameError as exc:
            exc.frames = out
            raise
        return out

    def check_deadline(self, now: float) -> None:
        """Raise if a fragmented message is still incomplete past its deadline."""
        if self._fragment_opcode is not None and now > self._fragment_deadline:
            raise FrameError(
                1008,
                f"fragmented message not completed within {self.fragment_timeout:g} s",
            )

    def _parse(self, data: bytes, out: list[tuple[int, bytes]]) -> None:
        buffer = self._buffer
        buffer += data
        pos = 0
        end = len(buffer)
        try:
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
                    self._check_data_header(opcode, length)
                else:
                    raise FrameError(1002, f"unknown opcode {opcode}")
                frame_end = pos + header + 4 + length
                if end < frame_end:
                    break
                mask = bytes(buffer[pos + header : pos + header + 4])
                payload = _unmask(bytes(buffer[pos + header + 4 : frame_end]), mask)
                pos = frame_end
                if opcode in _CONTROL:
                    if opcode == OP_CLOSE:
                        check_close(payload)
                    out.append((opcode, payload))
                else:
                    self._data_frame(opcode, bool(fin), payload, out)
        finally:
            if pos:
                del buffer[:pos]

    def _check_data_header(self, opcode: int, length: int) -> None:
        if opcode == OP_CONTINUATION:
            if self._fragment_opcode is None:
                raise FrameError(1002, "continuation without a first fragment")
            # Endless tiny (even empty) fragments cost time and memory that
            # the byte limit alone does not bound.
            if self._fragment_count >= self.max_fragments:
                raise FrameError(
                    1009, f"message in more than {self.max_fragments} fragments"
                )
            self.check_deadline(time.monotonic())
            total = length + len(self._fragments)
        else:
            if self._fragment_opcode is not None:
                raise FrameError(1002, "new message before the last one ended")
            total = length
        # The limit is checked from the declared length, before the payload
        # is read into memory.
        if total > self.max_size:
            raise MessageTooLarge(total, self.max_size)

    def _data_frame(
        self, opcode: int, fin: bool, payload: bytes, out: list[tuple[int, bytes]]
    ) -> None:
        if opcode != OP_CONTINUATION:
            if fin:
                if opcode == OP_TEXT:
                    _check_utf8(payload)
                out.append((opcode, payload))
                return
            self._fragment_opcode = opcode
            self._fragment_count = 0
            self._fragment_deadline = time.monotonic() + self.fragment_timeout
            if opcode == OP_TEXT:
                self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._fragment_count += 1
        self._fragments += payload
        if self._utf8 is not None:
            # Fail fast: at the first fragment that cannot be UTF-8.
            try:
                self._utf8.decode(payload, final=fin)
            except UnicodeDecodeError:
                raise FrameError(1007, "text message is not valid UTF-8") from None
        if fin:
            out.append((t.cast(int, self._fragment_opcode), bytes(self._fragments)))
            self._fragments = bytearray()
            self._fragment_opcode = None
            self._utf8 = None


def _check_utf8(payload: bytes) -> None:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(1007, "text message is not valid UTF-8") from None


def check_close(payload: bytes) -> None:
    """A client's close frame: no payload, or a valid code and a UTF-8 reason."""
    if not payload:
        return
    if len(payload) == 1:
        raise FrameError(1002, "close frame with a 1-byte payload")
    code = struct.unpack("!H", payload[:2])[0]
    if not valid_close_code(code):
        raise FrameError(1002, f"invalid close code {code}")
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(1007, "close reason is not valid UTF-8") from None


def parse_close(payload: bytes) -> int:
    if len(payload) >= 2:
        return struct.unpack("!H", payload[:2])[0]
    return 1005
