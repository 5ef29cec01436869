"""A byte stream for pika that writes a batch of frames with one send().

pika's own transport sends each frame with a send() of its own: three per
message (method, header, body), each a TCP segment under TCP_NODELAY, which
cost the publisher a third of its time per message. :class:`Services` is
pika's I/O services for its IOLoop with this plaintext transport plugged in
through pika's public adapter interface (``AbstractIOServices.
create_streaming_connection`` and ``AbstractStreamTransport``): what pika
writes while a batch is published waits in a list and goes out joined once
the socket is writable. TLS connections keep pika's own transport.
"""

from __future__ import annotations

import socket
import typing as t

from pika.adapters.utils import nbio_interface
from pika.adapters.utils.selector_ioloop_adapter import SelectorIOServicesAdapter

_READ_SIZE, _READS = 65536, 16  # per readable event: 1 MiB at most, then the loop


class Services(SelectorIOServicesAdapter):
    """pika's I/O services for an IOLoop, with :class:`Stream` for plaintext."""

    stream: Stream | None = None

    def abort(self) -> None:
        """Close the socket at once (the loop is about to be closed)."""
        if self.stream is not None:
            self.stream.abort()

    def create_streaming_connection(  # type: ignore[override]
        self,
        protocol_factory: t.Callable[[], t.Any],
        sock: socket.socket,
        on_done: t.Callable[[t.Any], None],
        ssl_context: t.Any = None,
        server_hostname: str | None = None,
    ) -> nbio_interface.AbstractIOReference:
        if ssl_context is not None:
            return super().create_streaming_connection(
                protocol_factory, sock, on_done, ssl_context, server_hostname
            )
        protocol = protocol_factory()
        stream = self.stream = Stream(sock, protocol, self)
        protocol.connection_made(stream)
        # The interface asks for on_done from the loop, not from this call.
        self.add_callback_threadsafe(lambda: on_done((stream, protocol)))
        return _Started()


class _Started(nbio_interface.AbstractIOReference):
    def cancel(self) -> bool:
        return False  # linked up already


class Stream(nbio_interface.AbstractStreamTransport):
    """pika's connection over a connected non-blocking socket."""

    def __init__(self, sock: socket.socket, protocol: t.Any, nbio: t.Any) -> None:
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._nbio = nbio
        self._out: list[bytes] = []
        self._size = 0
        nbio.set_reader(self._fd, self._readable)

    def get_protocol(self) -> t.Any:
        return self._protocol

    def get_write_buffer_size(self) -> int:
        return self._size

    def write(self, data: bytes) -> None:
        if self._sock is None:
            return
        if not self._out:
            self._nbio.set_writer(self._fd, self._writable)
        self._out.append(data)
        self._size += len(data)

    def abort(self) -> None:
        self._lost(None)

    def _writable(self) -> None:
        if self._sock is None:
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            return
        except OSError as exc:
            self._lost(exc)
            return
        self._out = [data[sent:]] if sent < len(data) else []
        self._size = len(data) - sent
        if not self._out:
            self._nbio.remove_writer(self._fd)

    def _readable(self) -> None:
        for _ in range(_READS):
            if self._sock is None:
                return
            try:
                data = self._sock.recv(_READ_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                self._lost(exc)
                return
            if data:
                self._protocol.data_received(data)
            elif self._protocol.eof_received():
                self._nbio.remove_reader(self._fd)  # the protocol closes it
                return
            else:
                self._lost(None)

    def _lost(self, error: BaseException | None) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        self._nbio.remove_reader(self._fd)
        self._nbio.remove_writer(self._fd)
        self._out, self._size = [], 0
        sock.close()
        # Never from inside the call that ended the stream, per the interface.
        self._nbio.add_callback_threadsafe(
            lambda: self._protocol.connection_lost(error)
        )
