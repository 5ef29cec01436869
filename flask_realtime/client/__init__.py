"""A Python client for flask_realtime servers: protocol v1 over WebSocket,
Server-Sent Events or long-polling, falling back from one to the next.

The same shape as the JavaScript client, for services, scripts and tests
(docs/python-client.md shows it at work, in samples the test suite runs).
It is synchronous: one background reader thread per client receives messages,
answers the server's liveness checks, pings the server and reconnects. Under
gevent's monkey patching that thread is a greenlet, so the client works with
and without gevent. Callbacks run on the reader thread, one at a time, in
arrival order: keep them short, and do not make blocking calls from them (the
reader would wait for itself).

It needs websocket-client, and httpx with httpx-sse for SSE and
long-polling: ``pip install flask_realtime[client]``.

The parts: :mod:`.realtime_client` (options, connecting), :mod:`.messages`
(requests and replies), :mod:`.channel`, :mod:`.events` (callbacks and the
``wait_for`` mailbox), :mod:`.reader` (the reader thread and liveness),
:mod:`.reconnect` (backoff), :mod:`.transports` (which one, falling back),
:mod:`.websocket` (the socket, through websocket-client), :mod:`.http`,
:mod:`.sse` and :mod:`.longpoll` (the HTTP transports, through httpx) and
:mod:`.errors`.
"""

from __future__ import annotations

from ..protocol import CLOSE_ABNORMAL as CLOSE_ABNORMAL
from ..protocol import CLOSE_NO_STATUS as CLOSE_NO_STATUS
from ..protocol import CLOSE_NORMAL as CLOSE_NORMAL
from .channel import Channel as Channel
from .errors import ConnectError as ConnectError
from .errors import ConnectionClosed as ConnectionClosed
from .errors import NotConnected as NotConnected
from .errors import RealtimeError as RealtimeError
from .errors import RealtimeTimeout as RealtimeTimeout
from .errors import ServerError as ServerError
from .errors import SubscriptionError as SubscriptionError
from .events import Handler as Handler
from .events import logger as logger
from .realtime_client import Params as Params
from .realtime_client import RealtimeClient as RealtimeClient
from .reconnect import NO_RECONNECT as NO_RECONNECT
from .reconnect import RECONNECT_AT_ONCE as RECONNECT_AT_ONCE
from .reconnect import RECONNECT_WITH_BACKOFF as RECONNECT_WITH_BACKOFF

__all__ = [
    "Channel",
    "ConnectError",
    "ConnectionClosed",
    "NotConnected",
    "RealtimeClient",
    "RealtimeError",
    "RealtimeTimeout",
    "ServerError",
    "SubscriptionError",
]
