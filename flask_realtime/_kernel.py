"""What the kernel knows of a socket that the queue does not: its send queue.

A client that reads slowly shows it late in user space: the kernel keeps up
to 4 MiB per socket (``net.ipv4.tcp_wmem``), and reports a full socket
writable again only once half of that drained. The send queue itself is
known at once: on Linux ``ioctl(fd, TIOCOUTQ)`` (``SIOCOUTQ`` for a socket)
gives the bytes the peer has not acknowledged yet, so the bytes handed to
the kernel minus that figure is how much the client took, whenever it is
asked. The pressure gauge asks it every few milliseconds for the sockets
that are full, never per message.

Where the ioctl does not exist (any other system) or fails, :func:`unsent`
returns None and the gauge judges a socket by its queue alone, as it did
before the figure was used (:data:`AVAILABLE` says which).
"""

from __future__ import annotations

import array
import sys

try:
    import fcntl
    import termios
except ImportError:  # pragma: no cover - not a POSIX system
    _OUTQ = None
else:
    # Other systems name a terminal's ioctl TIOCOUTQ too; only Linux answers
    # it for a TCP socket.
    _OUTQ = getattr(termios, "TIOCOUTQ", None) if sys.platform == "linux" else None

#: Whether this system tells how many bytes a socket's peer has not taken.
AVAILABLE = _OUTQ is not None


def unsent(fd: int) -> int | None:
    """Bytes in the socket's send queue not yet acknowledged by its peer
    (sent or not), or None where the kernel does not say."""
    if _OUTQ is None:
        return None
    buf = array.array("i", [0])
    try:
        fcntl.ioctl(fd, _OUTQ, buf, True)
    except (OSError, ValueError):  # closed (-1), or not a stream socket
        return None
    return buf[0]
