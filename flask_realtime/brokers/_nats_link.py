"""nats-py's side of the NATS broker: one connection, in the loop thread
of ``_nats_loop.py``.

Order across subjects: nats-py hands each subscription's messages to a task
of its own, which regroups them by subject. Every message it builds goes
through the pluggable ``msg_class`` in the server's order: there a
:class:`Link` queues a slot, the subscription's callback fills it, and the
reader's inbox gets the slots in their order as they fill. A kept topic's
stored message may hold several events (a pack, see ``_nats_history.py``):
its slot gets them all, and the inbox each in turn.

A kept topic's stored messages come live from the node that stored each,
once JetStream acknowledged it (see ``_nats_history.py``): two nodes' messages
stored one after the other can come the other way round. Each names the one
stored before it on its subject (its stream sequence, in the head of its
payload: ``live_message``), so a slot that comes early waits, outside the
order, until that one is placed, or ``_EARLY_WAIT`` at most (a live message
lost: the node's continuity check then reads the hole from the history).
Where the order starts: a subscription to a kept topic, once in place,
looks up the topic's last stored message (``floor``); the node reads the
history up to there itself, and live messages up to it still on their way
are not placed (the first one to come could be a later one). Those sent
again after a reconnect are not placed twice either.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import secrets
import typing as t
from collections import deque

from nats import errors as nats_errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from ._nats_loop import Signal
from ._support import LinkLost

log = logging.getLogger("flask_realtime")
Messages = list[tuple[str, bytes]]

_TOPICS = "flask_realtime.t."
_CONTROL = "flask_realtime.r."
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-:=@#]+")
_JS_TIMEOUT = 2.0  # a JetStream API request (history) waits this long
LOST = object()  # in the inbox: the connection is gone; in a slot: unsubscribed
# The header of a pack: the sizes of its events, comma-separated, in order.
PACK = "Flask-Realtime-Pack"
# The head of a kept topic's live message (see ``live_message``); a plain
# payload that starts with it is sent with one more (``escape``).
LIVE = b"\x00"
# How long a kept topic's message that came before the one stored ahead of it
# waits for that one, and how many may wait per topic.
_EARLY_WAIT = 0.5
_EARLY_LIMIT = 10_000
# Live batches that nothing published after confirms get a marker this late.
_MARK_AFTER = 0.05


@functools.lru_cache(maxsize=65536)
def subject(topic: str) -> str:
    """The NATS subject of ``topic``: one literal token, distinct per topic;
    all but ``[A-Za-z0-9_-:=@#]`` percent-encoded ('%' too; "%" stands for "")."""
    return _TOPICS + (_UNSAFE.sub(_escape, topic) or "%")


def _escape(match: re.Match[str]) -> str:
    raw = match.group().encode("utf-8", "surrogatepass")
    return "".join(f"%{byte:02X}" for byte in raw)


def unpack(data: bytes, headers: dict[str, str] | None) -> list[bytes]:
    """The events of a kept topic's stored message: itself, or a pack's
    (several events joined, their sizes in the ``PACK`` header)."""
    sizes = headers.get(PACK) if headers else None
    if not sizes:
        return [data]
    return _split(data, 0, sizes.split(","))[0]


def _split(
    data: bytes, start: int, sizes: t.Sequence[bytes | str]
) -> tuple[list[bytes], int]:
    """The events joined in ``data`` from ``start``, of ``sizes``; and
    where the last ends (ValueError for a size that is not a number)."""
    events = []
    for size in sizes:
        end = start + int(size)
        events.append(data[start:end])
        start = end
    return events, start


def live_message(
    epoch: str, seq: int, before: int, sizes: str, payload: bytes
) -> bytes:
    """A kept topic's stored message as its publisher delivers it live:
    ``\\x00<epoch> <stream sequence> <the topic's one stored before>
    <sizes>\\n`` and the stored payload (one event, or a pack's, ``sizes``
    comma-separated). In the payload, not in headers: nats-py parses headers
    at some cost."""
    head = b"%s%s %d %d %s\n" % (LIVE, epoch.encode(), seq, before, sizes.encode())
    return head + payload


def escape(messages: Messages) -> Messages:
    """Plain messages as sent: a payload that starts like a live message
    gets one ``LIVE`` more, which the receiving link takes away."""
    if not any(data[:1] == LIVE for _, data in messages):
        return messages
    return [
        (topic, LIVE + data if data[:1] == LIVE else data) for topic, data in messages
    ]


def _live_order(data: bytes) -> tuple[bytes, int, int]:
    """(epoch, stream sequence, the one before) of a live message;
    ValueError if malformed."""
    head = data[1 : data.index(b"\n")].split(b" ", 3)
    return head[0], int(head[1]), int(head[2])


def _live_events(data: bytes) -> t.Any:
    """The event (bytes) or events (a list) of a live message; ValueError if
    malformed."""
    end = data.index(b"\n")
    sizes = data[1:end].split(b" ", 3)[3].split(b",")
    start = end + 1
    if len(sizes) == 1:
        if len(data) - start != int(sizes[0]):
            raise ValueError("a live message of another size")
        return data[start:]
    events, end = _split(data, start, sizes)
    if end != len(data):
        raise ValueError("a live message of another size")
    return events


class _Slot:
    """One message's place in the server's order; ``data`` None until it
    arrives (a list: a pack's events)."""

    __slots__ = ("topic", "data")

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.data: t.Any = None


class Round:
    """A batch on its way: confirmed when its marker comes back."""

    __slots__ = ("number", "future", "counts", "confirmed")

    def __init__(self, number: int, size: int) -> None:
        self.number = number
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Per message: 0 after a "503" (nobody subscribes), its error, or None.
        self.counts: list[int | None | Exception] = [None] * size
        self.confirmed = False


class Unconfirmed:
    """Batches whose marker never came, resent on the next connection; numbers
    every batch across connections, so a late marker finds its own."""

    def __init__(self) -> None:
        self.last = 0
        self.batches: dict[int, Messages] = {}

    def number(self) -> int:
        self.last += 1
        return self.last


class Link:
    """One nats-py connection and what arrived on it. Lives in the loop
    thread, but for ``inbox``, ``idle`` and ``wake``, shared with the reader
    (which makes the link, so ``wake`` is of its world)."""

    def __init__(self, unconfirmed: Unconfirmed) -> None:
        self.nc = Client()
        self.nc.msg_class = self._stamp  # type: ignore[assignment]
        self.control = _CONTROL + secrets.token_hex(8)
        self.subs: dict[str, t.Any] = {}  # topic -> nats-py Subscription
        self.topic_of: dict[str, str] = {}  # subject -> topic
        self.waiting: dict[str, deque[_Slot]] = {}  # subject -> its slots to fill
        self.order: deque[_Slot] = deque()
        # Kept subjects: the stream sequence of the last message in the order,
        # and the messages that came early, by the sequence they wait for.
        self.placed: dict[str, int] = {}
        self.epochs: dict[str, bytes] = {}  # the epoch of the last placed
        self.early: dict[str, dict[int, tuple[int, _Slot]]] = {}
        self.rounds: dict[int, Round] = {}
        self.unconfirmed = unconfirmed
        self.changing = asyncio.Lock()  # one (un)subscription at a time, in order
        self.inbox: deque[t.Any] = deque()
        self.wake = Signal()
        self.idle = False  # the reader waits for wake
        self.error: BaseException | None = None
        self.dead = False
        self.warned = False  # a batch went unconfirmed on this connection
        self._js: JetStreamContext | None = None
        # Answers to publishes that want one (JetStream's acknowledgements),
        # by the last token of their reply subject.
        self.answers: dict[str, asyncio.Future[Msg]] = {}
        self.answer_prefix = self.control + "_a."
        self._asked = 0
        # Live batches not known to have reached the server: (answers asked
        # before it, the last batch number then, its number).
        self.delivered: deque[tuple[int, int, int]] = deque()
        self._marking: asyncio.TimerHandle | None = None
        self._marker: asyncio.Future[None] | None = None  # referenced while sent

    def jetstream(self) -> JetStreamContext:
        """This connection's JetStream context (history), made on first use."""
        if self._js is None:
            self._js = self.nc.jetstream(timeout=_JS_TIMEOUT)
        return self._js

    def _stamp(self, **fields: t.Any) -> Msg:
        """nats-py's ``msg_class``: called in the server's order."""
        msg = Msg(**fields)
        topic = self.topic_of.get(msg.subject)
        if topic is not None:
            slot = _Slot(topic)
            self.waiting[msg.subject].append(slot)  # filled in arrival order
            if msg.data[:1] == LIVE and msg.data[1:2] != LIVE:
                self._place_stored(msg.subject, slot, msg.data)
            else:
                self.order.append(slot)
        return msg

    def _place_stored(self, name: str, slot: _Slot, data: bytes) -> None:
        """Put a kept topic's live message's slot in the stream's order (see
        the module): after the one stored before it, which may be still to
        come. One stored no later than the last placed is not placed (sent
        again, or read by the node: see ``floor``), and never released."""
        try:
            epoch, sequence, before = _live_order(data)
        except ValueError:
            self.order.append(slot)  # dropped by _on_topic, in its place
            return
        last = self.placed.get(name)
        if last is not None and self.epochs.get(name) != epoch:
            last = None  # the stream lost its data: its numbering starts anew
        if last is not None:
            if sequence <= last:
                return
            if before > last:  # that one has not come yet
                early = self.early.get(name)
                if early is None:
                    early = self.early[name] = {}
                    asyncio.get_running_loop().call_later(
                        _EARLY_WAIT, self._stop_waiting, name, early
                    )
                early[before] = (sequence, slot)
                if len(early) > _EARLY_LIMIT:
                    self._stop_waiting(name, early)
                return
        self.order.append(slot)
        self.placed[name] = sequence
        self.epochs[name] = epoch
        self._place_due(name)

    def _place_due(self, name: str) -> None:
        """Place the early ones that waited for the last placed, in turn."""
        early = self.early.get(name)
        if early is not None:
            while (due := early.pop(self.placed[name], None)) is not None:
                self.placed[name] = due[0]
                self.order.append(due[1])
            if not early:
                del self.early[name]

    def _stop_waiting(self, name: str, early: dict[int, tuple[int, _Slot]]) -> None:
        """The message the early ones wait for is not coming (lost, or too
        many wait): they go in the order of their sequences."""
        if self.early.get(name) is not early:
            return  # placed meanwhile, or unsubscribed
        del self.early[name]
        for sequence, slot in sorted(early.values(), key=lambda due: due[0]):
            self.order.append(slot)
            self.placed[name] = sequence
        self._release()

    def floor(self, topic: str, epoch: str, sequence: int) -> None:
        """The topic's last stored message once its subscription was in place:
        every later one comes, each after the one before it; those up to it
        are the node's to read from the history (it does, after subscribing),
        and their live messages still on their way are not placed: the first
        to come could be a later one, which would go out ahead of them."""
        name = subject(topic)
        if name not in self.topic_of:
            return
        last, mark = self.placed.get(name), epoch.encode()
        if last is not None and last >= sequence and self.epochs.get(name) == mark:
            return
        self.placed[name] = sequence
        self.epochs[name] = mark
        early = self.early.get(name)
        if early is not None:
            for before in [b for b, (seq, _) in early.items() if seq <= sequence]:
                del early[before]  # never released
            self._place_due(name)
            self._release()

    async def _on_topic(self, msg: Msg) -> None:
        slots = self.waiting.get(msg.subject)
        if slots:
            data: t.Any = msg.data or LOST  # empty: not ours, nobody receives it
            if data is not LOST and data[:1] == LIVE:
                if data[1:2] == LIVE:  # a plain one, escaped
                    data = data[1:]
                    slots.popleft().data = data
                    self._release()
                    return
                try:
                    data = _live_events(data)
                except (ValueError, IndexError):  # not ours: dropped, the slots go on
                    log.warning("a malformed live message on %s", msg.subject)
                    data = LOST
            slots.popleft().data = data
            self._release()

    def _release(self) -> None:
        order, inbox, released = self.order, self.inbox, False
        while order and order[0].data is not None:
            slot = order.popleft()
            data = slot.data
            if data is LOST:
                continue
            if data.__class__ is list:
                inbox.extend([(slot.topic, event) for event in data])
            else:
                inbox.append((slot.topic, data))
            released = True
        if released and self.idle:
            self.idle = False
            self.wake.set_threadsafe()

    async def on_control(self, msg: Msg) -> None:
        """A marker, or a "503" for a message of a batch nobody subscribes to."""
        batch, _, index = msg.subject[len(self.control) + 1 :].partition("_")
        if not batch.isdigit():
            return
        if not index:
            self.unconfirmed.batches.pop(int(batch), None)  # late: not resent
            if self.delivered:
                self._confirm(marker=int(batch))
            done = self.rounds.pop(int(batch), None)
            if done is not None and not done.future.done():
                done.future.set_result(None)
        elif (msg.headers or {}).get("Status") == "503" and index.isdigit():
            done = self.rounds.get(int(batch))
            if done is not None and done.counts[int(index)] is None:
                done.counts[int(index)] = 0

    async def deliver(self, messages: Messages) -> None:
        """Publish kept topics' stored messages live (``live_message``). They
        wait among the unconfirmed batches, sent again on the next connection,
        until the server answers anything published after them: it handles a
        connection's commands in order (a marker each would cost a lone
        publisher two more messages a broadcast)."""
        number = self.unconfirmed.number()
        self.unconfirmed.batches[number] = messages
        for topic, data in messages:
            try:
                await self.nc.publish(subject(topic), data)
            except nats_errors.MaxPayloadError:  # stored: read from the history
                log.warning("a live message of %s bytes: too large", len(data))
            except (nats_errors.Error, OSError) as exc:
                # Stored all the same: the batch is not sent again for this,
                # its live messages are, on the next connection.
                log.debug("delivering live on the nats broker: %s", exc)
                return
        self.delivered.append((self._asked, self.unconfirmed.last, number))
        if self._marking is None:
            loop = asyncio.get_running_loop()
            self._marking = loop.call_later(_MARK_AFTER, self._mark_delivered)

    def _mark_delivered(self) -> None:
        """No answer came since the last live batches: a marker asks for one
        (a connection lost later would send them again, twice delivered)."""
        self._marking = None
        if self.delivered and not self.dead:
            self._marker = asyncio.ensure_future(self._send_marker())

    async def _send_marker(self) -> None:
        try:
            await self.nc.publish(f"{self.control}.{self.unconfirmed.number()}")
        except (nats_errors.Error, OSError) as exc:  # lost: they are sent again
            log.debug("marking live messages on the nats broker: %s", exc)

    def _confirm(self, asked: int = -1, marker: int = -1) -> None:
        """The live batches published before answer ``asked`` or marker
        ``marker`` reached the server: not sent again."""
        delivered, batches = self.delivered, self.unconfirmed.batches
        while delivered and (delivered[0][0] < asked or delivered[0][1] < marker):
            batches.pop(delivered.popleft()[2], None)

    async def ask(
        self, name: str, data: bytes, headers: dict[str, str]
    ) -> asyncio.Future[Msg]:
        """Publish with a reply subject of this link's; the answer's future.

        nats-py's ``publish_async`` would do, but its futures never learn of
        an error answer (it raises in its callback instead)."""
        self._asked += 1
        token = str(self._asked)
        future = self.answers[token] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda _: self.answers.pop(token, None))
        await self.nc.publish(
            name, data, reply=self.answer_prefix + token, headers=headers
        )
        return future

    async def on_answer(self, msg: Msg) -> None:
        token = msg.subject[len(self.answer_prefix) :]
        future = self.answers.get(token)
        if future is not None and not future.done():
            future.set_result(msg)
        if self.delivered and token.isdigit():
            self._confirm(asked=int(token))

    async def subscribe(self, topics: list[str]) -> None:
        async with self.changing:
            for topic in topics:
                if topic not in self.subs:
                    name = subject(topic)
                    self.topic_of[name] = topic
                    self.waiting[name] = deque()
                    self.subs[topic] = await self.listen(name, self._on_topic)

    async def listen(self, name: str, cb: t.Callable[[Msg], t.Any]) -> t.Any:
        # No limits: nats-py never drops a message, so no slot stays empty.
        return await self.nc.subscribe(
            name, cb=cb, pending_msgs_limit=0, pending_bytes_limit=0
        )

    async def unsubscribe(self, topics: list[str]) -> None:
        async with self.changing:
            for topic in topics:
                sub = self.subs.pop(topic, None)
                if sub is None:
                    continue
                try:
                    await sub.unsubscribe()  # drops what its queue still holds
                except nats_errors.Error:
                    pass  # the connection is gone, and the subscription with it
                del self.topic_of[subject(topic)]
                self.placed.pop(subject(topic), None)
                self.epochs.pop(subject(topic), None)
                self.early.pop(subject(topic), None)  # their slots are not in the order
                for slot in self.waiting.pop(subject(topic)):
                    slot.data = LOST
            self._release()

    async def send(self, messages: Messages, timeout: float, replies: bool) -> Round:
        """Publish ``messages`` (with ``replies``: each with a reply subject
        where a "503" comes when nobody subscribes), then a marker, and wait
        up to ``timeout`` for it; raises when the connection fails."""
        number = self.unconfirmed.number()
        done = self.rounds[number] = Round(number, len(messages))
        reply = f"{self.control}.{number}_"
        try:
            for index, (topic, data) in enumerate(messages):
                try:
                    await self.nc.publish(
                        subject(topic),
                        data,
                        reply=reply + str(index) if replies else "",
                    )
                except nats_errors.MaxPayloadError:
                    done.counts[index] = ValueError(f"{len(data)} bytes: max_payload")
            await self.nc.publish(f"{self.control}.{number}")
            await asyncio.wait_for(done.future, timeout)
            done.confirmed = True
        except asyncio.TimeoutError:
            pass
        finally:
            self.rounds.pop(number, None)
        return done

    async def lost(self, *_: t.Any) -> None:
        """nats-py's disconnected and closed callback: the reader raises."""
        if self.dead:
            return
        self.dead = True
        for done in self.rounds.values():
            if not done.future.done():
                done.future.set_exception(LinkLost("the connection was lost"))
        for answer in list(self.answers.values()):
            if not answer.done():
                answer.set_exception(LinkLost("the connection was lost"))
        self.inbox.append(LOST)
        self.wake.set_threadsafe()

    async def on_error(self, exc: Exception) -> None:
        self.error = exc
        if self.nc.is_connected:  # a refused permission, say; not a lost link
            log.warning("the nats broker: %s", exc)
