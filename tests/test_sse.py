"""The Server-Sent Events transport against real servers, one of each kind.

The client here is ``requests`` with a streamed response; a reader thread
parses the SSE wire format itself (``id:``, ``data:``, ``retry:``, ``event:``
fields and ``:`` comment lines, blank-line dispatch) and timestamps every
block as it arrives, so the tests can check both what was sent and when.
Client messages go through ``POST /realtime/send``.

The module's servers run with ``REALTIME_HEARTBEAT=1``: the keepalive
comment then comes every 0.5 s, and a client that went away is noticed
within one heartbeat.
"""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
import typing as t
import uuid

import requests

from tests.conftest import PROTOCOL_SERVERS, LiveServerFactory, module_server
from tests.http_helpers import SEND_PATH, HttpClientMessages
from tests.http_helpers import assert_json_error as _assert_json_error
from tests.http_helpers import broadcast as _broadcast
from tests.http_helpers import unique as _unique
from tests.servers import Server
from tests.wsclient import connect as ws_connect

SSE_PATH = "/realtime/sse"
HEARTBEAT = 1
KEEPALIVE = HEARTBEAT / 2
ENV = {"TESTAPP_REALTIME_HEARTBEAT": str(HEARTBEAT)}


server = module_server(PROTOCOL_SERVERS, env=ENV)


# -- an SSE client -------------------------------------------------------------


class Block:
    """One SSE block: the lines between two blank lines, as the spec reads them."""

    def __init__(self, arrived: float) -> None:
        self.arrived = arrived
        self.id: str | None = None
        self.event: str | None = None
        self.retry: int | None = None
        self.data_lines: list[str] = []
        self.comments: list[str] = []
        self.fields: list[str] = []

    @property
    def data(self) -> str | None:
        return "\n".join(self.data_lines) if self.data_lines else None

    def message(self) -> t.Any:
        assert self.data is not None, f"not a message: {self!r}"
        try:
            return json.loads(self.data)
        except ValueError:
            raise AssertionError(f"data is not JSON: {self.data!r}") from None

    def __repr__(self) -> str:
        return (
            f"<Block id={self.id} event={self.event} retry={self.retry}"
            f" data={self.data!r} comments={self.comments}>"
        )


class StreamEnded(AssertionError):
    """The server ended the stream while something was expected."""


class SSEClient(HttpClientMessages):
    """One SSE connection, read by a background thread into a queue of blocks."""

    def __init__(
        self,
        server: Server,
        channels: t.Sequence[str] = (),
        headers: t.Mapping[str, str] | None = None,
        **query: str,
    ) -> None:
        self.server = server
        params = dict(query)
        if channels:
            params["channels"] = ",".join(channels)
        self.response = requests.get(
            server.url + SSE_PATH,
            params=params,
            headers={"Accept": "text/event-stream", **(headers or {})},
            stream=True,
            timeout=(5, 30),
        )
        self.status = self.response.status_code
        self.blocks: queue.Queue[Block | None] = queue.Queue()
        #: Every block read so far, in order (comments included).
        self.seen: list[Block] = []
        #: Messages :meth:`wait_for` read past.
        self.skipped: list[t.Any] = []
        self.welcome: dict[str, t.Any] | None = None
        self.connection_id: str | None = None
        self.token: str | None = None
        self._ended = False
        self._thread: threading.Thread | None = None
        if self.status == 200:
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
            self.welcome = self.next_message()
            assert self.welcome["type"] == "connected", self.welcome
            self.connection_id = self.welcome["data"]["connection_id"]
            self.token = self.welcome["data"]["token"]

    def __enter__(self) -> SSEClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------

    def _read(self) -> None:
        raw = self.response.raw
        pending = b""
        block: Block | None = None
        try:
            while True:
                chunk = raw.read1(65536)
                if not chunk:
                    break
                now = time.monotonic()
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw_line in lines:
                    line = raw_line.rstrip(b"\r").decode("utf-8")
                    if not line:
                        if block is not None:
                            self.blocks.put(block)
                        block = None
                        continue
                    if block is None:
                        block = Block(now)
                    _parse_line(block, line)
        except Exception:
            pass  # closed by close() or by the server
        finally:
            self.blocks.put(None)

    def next_block(self, timeout: float = 5) -> Block:
        if self._ended:
            raise StreamEnded("the stream has ended")
        try:
            block = self.blocks.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"no SSE block within {timeout} s; read so far: {self.seen[-5:]!r}"
            ) from None
        if block is None:
            self._ended = True
            raise StreamEnded("the server ended the stream")
        self.seen.append(block)
        return block

    def next_message(self, timeout: float = 5) -> t.Any:
        """The next block that carries data, decoded (comments are passed by)."""
        deadline = time.monotonic() + timeout
        while True:
            block = self.next_block(max(0.0, deadline - time.monotonic()))
            if block.data is not None:
                return block.message()

    def wait_for(
        self, predicate: t.Callable[[t.Any], bool], timeout: float = 5
    ) -> t.Any:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"timed out waiting for {predicate.__name__};"
                    f" read past meanwhile: {self.skipped[-10:]!r}"
                )
            message = self.next_message(remaining)
            if predicate(message):
                return message
            self.skipped.append(message)

    def drain(self, quiet: float = 0.3) -> list[t.Any]:
        """Every message that arrives until nothing comes for ``quiet`` s."""
        found = []
        while True:
            try:
                block = self.next_block(quiet)
            except AssertionError:
                return found
            if block.data is not None:
                found.append(block.message())

    # -- closing ---------------------------------------------------------

    def _socket(self) -> socket.socket | None:
        raw = self.response.raw
        sock = getattr(raw.connection, "sock", None)
        if sock is None:
            # http.client hands the socket to the response when the server
            # will close the connection (a stream): it sits under the reader.
            try:
                sock = raw._fp.fp.raw._sock
            except AttributeError:
                return None
        return t.cast(socket.socket, sock)

    def _shutdown(self) -> None:
        """End the TCP connection. Also wakes the reader thread blocked in
        recv; close() alone would not, and the socket would stay open under it."""
        sock = self._socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def drop(self) -> None:
        """Go away without a goodbye: the TCP connection just ends."""
        self._shutdown()
        self.close()

    def close(self) -> None:
        if self._thread is not None:
            self._shutdown()
        self.response.close()
        if self._thread is not None:
            self._thread.join(5)


def _parse_line(block: Block, line: str) -> None:
    if line.startswith(":"):
        block.comments.append(line[1:].strip())
        return
    name, sep, value = line.partition(":")
    if sep and value.startswith(" "):
        value = value[1:]
    block.fields.append(name)
    if name == "data":
        block.data_lines.append(value)
    elif name == "id":
        block.id = value
    elif name == "event":
        block.event = value
    elif name == "retry":
        block.retry = int(value)


# -- helpers -------------------------------------------------------------------


def _assert_still_working(server: Server, client: SSEClient) -> None:
    """The stream answers pings and gets broadcasts; so does a new one."""
    assert client.request({"type": "ping", "id": "alive"}) == [
        {"type": "pong", "id": "alive"}
    ]
    channel = _unique("check")
    assert client.subscribe(channel)["type"] == "subscribed"
    with SSEClient(server, channels=[channel]) as other:
        assert other.next_message()["type"] == "subscribed"
        _broadcast(server, channel, "still.here", {"ok": True})
        for c in (client, other):
            assert c.wait_event("still.here", channel)["data"] == {"ok": True}


# -- the stream ------------------------------------------------------------------


def test_headers_and_retry_hint(server: Server) -> None:
    with SSEClient(server) as client:
        headers = client.response.headers
        assert headers["Content-Type"].split(";")[0].strip() == "text/event-stream"
        assert headers["Cache-Control"] == "no-cache"
        assert headers["X-Accel-Buffering"] == "no"
        retries = [b.retry for b in client.seen if b.retry is not None]
        assert retries and all(r > 0 for r in retries), client.seen
        # The hint comes before anything else.
        assert client.seen[0].retry is not None


def test_connected_is_the_first_event(server: Server) -> None:
    with SSEClient(server) as a, SSEClient(server) as b:
        first = [blk for blk in a.seen if blk.data is not None][0]
        assert first.message() == a.welcome
        welcome = a.welcome
        assert welcome is not None and welcome["type"] == "connected"
        data = welcome["data"]
        assert set(data) >= {"connection_id", "token", "heartbeat", "protocol"}
        assert data["protocol"] == 1
        assert data["heartbeat"] == HEARTBEAT
        assert isinstance(data["token"], str) and len(data["token"]) >= 32
        assert a.connection_id != b.connection_id
        assert a.token != b.token
        assert a.token not in (a.connection_id or "")


def test_every_message_is_one_event_without_an_event_line(server: Server) -> None:
    channel = _unique("plain")
    with SSEClient(server, channels=[channel]) as client:
        assert client.next_message() == {"type": "subscribed", "channel": channel}
        _broadcast(server, channel, "multi", {"text": "line one\nline two"})
        message = client.wait_event("multi", channel)
        assert message["data"] == {"text": "line one\nline two"}
        for block in client.seen:
            assert block.event is None, block
            if block.data is not None:
                assert block.id is not None, block
                assert len(block.data_lines) == 1, block


def test_event_ids_increase(server: Server) -> None:
    channel = _unique("ids")
    with SSEClient(server, channels=[channel]) as client:
        client.next_message()
        for n in range(5):
            _broadcast(server, channel, "n", n)
        for n in range(5):
            assert client.wait_event("n", channel)["data"] == n
        ids = [int(b.id) for b in client.seen if b.id is not None]
        assert len(ids) == 7  # connected, subscribed, five events
        assert ids == sorted(ids) and len(set(ids)) == len(ids), ids


def test_query_channels_subscribe_each_and_refusals_are_error_events(
    server: Server,
) -> None:
    first, second = _unique("first"), _unique("second")
    channels = [first, "private-room.9", second, "private-room.5"]
    with SSEClient(server, channels=channels, user="5") as client:
        replies = [client.next_message() for _ in channels]
        assert replies[0] == {"type": "subscribed", "channel": first}
        assert replies[1]["type"] == "error"
        assert replies[1]["channel"] == "private-room.9"
        assert replies[1]["data"]["code"] == 403
        assert replies[2] == {"type": "subscribed", "channel": second}
        assert replies[3] == {"type": "subscribed", "channel": "private-room.5"}
        for channel in (first, second, "private-room.5"):
            _broadcast(server, channel, "hello", {"to": channel})
            assert client.wait_event("hello", channel)["data"] == {"to": channel}
        _broadcast(server, "private-room.9", "secret", None)
        _broadcast(server, first, "marker", None)
        client.wait_event("marker", first)
        assert not [m for m in client.skipped if m.get("event") == "secret"]


def test_query_channels_invalid_name_is_a_400_error_event(server: Server) -> None:
    good = _unique("good")
    with SSEClient(server, channels=["bad name!", good]) as client:
        error = client.next_message()
        assert error["type"] == "error" and error["data"]["code"] == 400
        assert client.next_message() == {"type": "subscribed", "channel": good}


def test_broadcast_arrives_as_the_envelope(server: Server) -> None:
    news, sport = _unique("news"), _unique("sport")
    with (
        SSEClient(server, channels=[news]) as a,
        SSEClient(server, channels=[news]) as b,
        SSEClient(server, channels=[sport]) as outsider,
    ):
        for c in (a, b, outsider):
            assert c.next_message()["type"] == "subscribed"
        _broadcast(server, news, "headline", {"title": "Hi", "n": [1, 2]})
        for c in (a, b):
            assert c.next_message() == {
                "type": "event",
                "channel": news,
                "event": "headline",
                "data": {"title": "Hi", "n": [1, 2]},
            }
        _broadcast(server, sport, "score", 1)
        assert outsider.next_message()["channel"] == sport
        assert not [m for m in outsider.skipped if m.get("event") == "headline"]


def test_direct_messages_have_no_channel(server: Server) -> None:
    with SSEClient(server, user="41") as mine, SSEClient(server, user="42") as other:
        requests.get(
            f"{server.url}/send_to_user",
            params={"user": "41", "event": "note", "data": '{"n": 1}'},
            timeout=5,
        ).raise_for_status()
        assert mine.next_message() == {
            "type": "event",
            "event": "note",
            "data": {"n": 1},
        }
        requests.get(
            f"{server.url}/send",
            params={"connection_id": other.connection_id, "event": "hi"},
            timeout=5,
        ).raise_for_status()
        assert other.next_message() == {"type": "event", "event": "hi", "data": None}
        assert mine.drain() == []


def test_keepalive_comment_within_the_interval(server: Server) -> None:
    with SSEClient(server) as client:
        start = client.seen[-1].arrived
        comments = []
        while len(comments) < 3:
            block = client.next_block(timeout=KEEPALIVE * 3)
            assert block.data is None, block
            assert block.comments, block
            comments.append(block)
        arrivals = [start] + [b.arrived for b in comments]
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
        # Every 0.5 s, checked by a timer that ticks every quarter heartbeat
        # (0.25 s): at most 0.75 s apart, plus slack for a busy host.
        assert max(gaps) <= KEEPALIVE * 2, gaps


# -- POST /send ----------------------------------------------------------------


def test_post_replies_come_in_the_post_only(server: Server) -> None:
    channel = _unique("chat")
    with SSEClient(server, user="3") as client:
        assert client.request({"type": "subscribe", "channel": channel, "id": 1}) == [
            {"type": "subscribed", "channel": channel, "id": 1}
        ]
        assert client.request({"type": "ping", "id": "p"}) == [
            {"type": "pong", "id": "p"}
        ]
        refused = client.request(
            {"type": "subscribe", "channel": "private-room.9", "id": 2}
        )
        assert [r["type"] for r in refused] == ["error"]
        assert refused[0]["id"] == 2 and refused[0]["data"]["code"] == 403
        # An accepted client event gets no reply; its handler's broadcast
        # comes on the stream, as every broadcast does.
        assert (
            client.request(
                {"type": "event", "channel": channel, "event": "echo", "data": "x"}
            )
            == []
        )
        assert client.wait_event("echo", channel)["data"] == {
            "from": "3",
            "data": "x",
        }
        assert client.request({"type": "unsubscribe", "channel": channel, "id": 3}) == [
            {"type": "unsubscribed", "channel": channel, "id": 3}
        ]
        # A marker through a second channel ends the stream's share of this.
        marker = _unique("marker")
        client.subscribe(marker, id=4)
        _broadcast(server, marker, "end", None)
        client.wait_event("end", marker)
        replies = [m for m in client.skipped if m.get("type") != "event"]
        assert replies == [], "replies to POSTs also came on the stream"


def test_unsubscribe_over_post_stops_delivery(server: Server) -> None:
    channel, marker = _unique("weather"), _unique("marker")
    with SSEClient(server, channels=[channel, marker]) as client:
        client.next_message()
        client.next_message()
        client.request({"type": "unsubscribe", "channel": channel})
        _broadcast(server, channel, "rain", None)
        _broadcast(server, marker, "done", None)
        client.wait_event("done", marker)
        assert not [m for m in client.skipped if m.get("event") == "rain"]


def test_client_event_relay_reaches_the_others_only(server: Server) -> None:
    channel = "presence-typing." + uuid.uuid4().hex[:8]
    with (
        SSEClient(server, channels=[channel], user="1", name="A") as a,
        SSEClient(server, channels=[channel], user="2", name="B") as b,
    ):
        assert a.next_message()["type"] == "subscribed"
        assert b.next_message()["type"] == "subscribed"
        assert a.wait_event("presence.join", channel)["data"]["user_id"] == "2"
        assert (
            a.request({"type": "event", "channel": channel, "event": "client-typing"})
            == []
        )
        assert b.wait_event("client-typing", channel)["data"] is None
        assert not [m for m in a.drain() if m.get("event") == "client-typing"]


def test_post_with_the_token_of_another_stream_is_refused(server: Server) -> None:
    with SSEClient(server) as a, SSEClient(server) as b:
        response = a.post({"type": "ping", "id": 1}, token=b.token)
        _assert_json_error(response, 403)
        _assert_still_working(server, a)
        _assert_still_working(server, b)


def test_post_after_the_stream_ended_gets_404(server: Server) -> None:
    client = SSEClient(server)
    client.drop()
    deadline = time.monotonic() + 5
    while True:
        response = client.post({"type": "ping", "id": 1})
        if response.status_code != 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    _assert_json_error(response, 404)


def test_stream_id_is_not_a_poll_connection(server: Server) -> None:
    with SSEClient(server) as client:
        response = requests.get(
            server.url + "/realtime/poll",
            params={
                "connection_id": client.connection_id,
                "token": client.token,
                "cursor": "0",
            },
            timeout=5,
        )
        _assert_json_error(response, 404)
        _assert_still_working(server, client)


# -- going away --------------------------------------------------------------------


def test_a_client_that_goes_away_is_cleaned_up_within_a_heartbeat(
    server: Server,
) -> None:
    channel = "presence-room." + uuid.uuid4().hex[:8]
    with SSEClient(server, channels=[channel], user="8", name="Obs") as observer:
        assert observer.next_message()["type"] == "subscribed"
        leaver = SSEClient(server, channels=[channel], user="7", name="Gone")
        members = leaver.next_message()["data"]["members"]
        assert sorted(m["user_id"] for m in members) == ["7", "8"]
        assert observer.wait_event("presence.join", channel)["data"]["user_id"] == "7"
        gone_at = time.monotonic()
        leaver.drop()
        leave = observer.wait_event("presence.leave", channel, timeout=5)
        took = observer.seen[-1].arrived - gone_at
        assert leave["data"] == {"user_id": "7"}
        # One heartbeat, plus slack for a busy host.
        assert took <= HEARTBEAT + 0.5, f"presence.leave after {took:.2f} s"
        presence = requests.get(
            f"{server.url}/presence", params={"channel": channel}, timeout=5
        ).json()
        assert [m["user_id"] for m in presence["members"]] == ["8"]
        # Subscriber counts are per node: with several workers, the one that
        # answered may not hold the observer.
        expected = {1} if server.workers == 1 else {0, 1}
        assert presence["subscriber_count"] in expected
        response = leaver.post({"type": "ping"})
        _assert_json_error(response, 404)
        _assert_still_working(server, observer)


def test_two_streams_of_one_user_leave_once(server: Server) -> None:
    channel = "presence-twice." + uuid.uuid4().hex[:8]
    with SSEClient(server, channels=[channel], user="8") as observer:
        observer.next_message()
        first = SSEClient(server, channels=[channel], user="9")
        first.next_message()
        second = SSEClient(server, channels=[channel], user="9")
        second.next_message()
        observer.wait_event("presence.join", channel)
        first.drop()
        time.sleep(HEARTBEAT + 0.5)
        assert not [m for m in observer.drain() if m.get("event") == "presence.leave"]
        second.drop()
        assert observer.wait_event("presence.leave", channel)["data"] == {
            "user_id": "9"
        }
        assert not [m for m in observer.skipped if m.get("event") == "presence.join"], (
            "the second stream of the same user joined again"
        )


# -- refusals ----------------------------------------------------------------------


def test_foreign_origin_gets_403_json(server: Server) -> None:
    client = SSEClient(server, headers={"Origin": "http://evil.example"})
    try:
        assert client.status == 403
        _assert_json_error(client.response, 403)
    finally:
        client.close()
    with SSEClient(server, headers={"Origin": server.url}) as same_origin:
        assert same_origin.status == 200
        _assert_still_working(server, same_origin)


def test_refused_authentication_gets_401_json(server: Server) -> None:
    client = SSEClient(server, deny="1")
    try:
        _assert_json_error(client.response, 401)
    finally:
        client.close()


def test_presence_in_the_query_needs_a_user(server: Server) -> None:
    channel = "presence-anon." + uuid.uuid4().hex[:8]
    with SSEClient(server, channels=[channel]) as anonymous:
        error = anonymous.next_message()
        assert error["type"] == "error" and error["data"]["code"] == 401
        _assert_still_working(server, anonymous)


def test_websocket_connection_id_is_not_an_sse_connection(server: Server) -> None:
    with ws_connect(server.ws_url) as ws:
        response = requests.post(
            server.url + SEND_PATH,
            json={
                "connection_id": ws.connection_id,
                "token": "",
                "message": {"type": "ping"},
            },
            timeout=5,
        )
        _assert_json_error(response, 404)
        assert ws.ping()["type"] == "pong"


# -- special configuration -----------------------------------------------------------


def test_disabled_transport_gets_404_json(
    live_server: LiveServerFactory, server_kind: str
) -> None:
    started = live_server(
        server_kind, env={"TESTAPP_REALTIME_TRANSPORTS": '["websocket", "longpolling"]'}
    )
    client = SSEClient(started)
    try:
        _assert_json_error(client.response, 404)
    finally:
        client.close()
    assert requests.get(started.url + "/realtime/poll", timeout=5).status_code == 200
