"""History on NATS: a JetStream stream per retention rule, in the loop thread.

Each distinct rule (size, ttl) gets a stream, ``flask_realtime_k_<size>_<ttl
ms>``, on the subjects ``flask_realtime.k.<size>_<ttl ms>.<topic token>``,
apart from the plain ``flask_realtime.t.<topic token>``; it keeps
``size`` messages per subject (``max_msgs_per_subject``) for ``ttl`` +
``POSITION_TTL`` (``max_age``). A read leaves out the events older than
``ttl`` by the server's timestamps; the last message outlives them, and with
it the position.

Live delivery is the publisher's: once JetStream acknowledged a round, the
node publishes what it stored on the topics' plain subjects over core NATS
(``_deliver``), each message with its stream sequence, that of the topic's
message stored before it and its epoch in a head of its payload
(``_nats_link.live_message``), so every node's link puts two nodes' messages
in the stream's order. Subscribers keep their core subscription and get
nothing that was not stored. Before, the stream republished each message
(``republish``): seven or eight headers for every node to parse, and twice
the server's work; those streams (``flask_realtime_h_*``) are left as they
are, since nats-server lets no update take republishing away. A live
message lost (its publisher killed between the acknowledgement and the
send) leaves a hole the node's follower reads from the history when the
next event comes (``node/continuity.py``); one lost with the connection is
sent again on the next.

A message carries its offset in its payload (``_history.stamp``) and its
topic's epoch at the head of its ``Nats-Msg-Id`` (``<epoch>.<node>.<n>``),
which JetStream keeps anyway: one header fewer to write, store, republish
and parse on every node (messages stored before kept the epoch in a header
of its own, still read). Offsets are the channel's own counter: a
publisher caches each topic's last (stream sequence, offset, epoch) and
publishes offset + 1 with ``Nats-Expected-Last-Subject-Sequence``; JetStream
refuses it ("wrong last sequence") when another node published meanwhile,
and the publisher looks the topic's last message up and tries again. In a
batch only a topic's first message can carry that sequence (the next ones'
are not known yet), so every message of a stream after the batch's first
carries ``Nats-Expected-Last-Msg-Id``: the id of the batch's previous
message. Nothing else then lands between the two, and once one fails every
later one of that stream fails too and is sent again in order: a batch is
pipelined, with one round trip, and offsets stay contiguous and in publish
order.

The chain also makes one acknowledgement per stream enough: only a round's
last message of each stream asks for one, and its being stored means every
earlier one of that stream was, just before it (their stream sequences
follow from its). When it is refused or does not come, the stream's
messages of the round are sent again exactly as they were, each asking for
an acknowledgement: JetStream's duplicate window (longer than a batch may
take) answers "duplicate" with its sequence for each one already stored, and
the first one not stored is refused or stored as before.

A topic's new events of a round go as one message, a pack (``_PACK_BYTES``
at most, else several): their stamped payloads joined, their sizes in a
``Flask-Realtime-Pack`` header, the epoch and chain of one message. With
many publishers to one channel JetStream then stores and acknowledges one
message for all of them, and every node parses one live message. A pack
goes where the topic's first event of the batch was, so a topic's events
keep their order but those of two topics in one batch may not (concurrent
publishers have none). ``size`` messages per subject keep at least
``size`` events, more when they are packs; reads give the ``size`` newest.

A topic without a message gets one of offset 0 and a fresh epoch, with an
empty payload that nobody receives: on the first read of its position
(whose epoch the first event must carry) or, failing that, with its first
event. A stream that is gone (a nats-server that lost its data) is created
again, and its topics start anew with new epochs; one that a restart kept
keeps its epochs.
"""

from __future__ import annotations

import asyncio
import functools
import json
import secrets
import time
import typing as t

from nats.js import api
from nats.js import errors as js_errors

from ._history import POSITION_TTL, envelope, new_epoch, offset_of, stamp
from ._nats_link import PACK, Link, Messages, escape, live_message, subject, unpack
from ._support import LinkLost
from .interface import Position, Retention, RetentionLookup

EPOCH = "Flask-Realtime-Epoch"  # where messages stored before kept their epoch
_MSG_ID = "Nats-Msg-Id"
_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
_LAST_MSG_ID = "Nats-Expected-Last-Msg-Id"
_WRONG_SEQUENCE = 10071  # another node published to the topic meanwhile
_WRONG_MSG_ID = 10070  # the batch's previous message did not land just before
_NAME_IN_USE = 10058  # a stream of that name with another configuration
_API_TIMEOUT = 2.0
_READ_WAIT = 2.0  # a read's consumer delivers within this, or the rest is gone
_DUPLICATES = 10.0  # JetStream remembers ids this long: past any batch's resend
_CACHED = 65536  # topics whose last message a node remembers
_KEEP_WINDOW = 2.0  # a fetch serves reads at its position this long after
_WINDOWS = 4096  # fetches kept at most
# Streams made by releases before live delivery was the publisher's
# (``flask_realtime_h_*`` on ``flask_realtime.h.*``) republished each message,
# which nats-server does not let an update take away: new names, so none of
# them delivers an event twice; they expire (``max_age``) untouched.
_PREFIX = "flask_realtime.k."
# A topic's new events of a round go in one message (a pack) of at most this
# many bytes, or in several (an event as large goes alone): well under
# nats-server's max_payload (1 MiB by default), and it bounds what a
# subject's ``size`` messages may keep beyond ``size`` events.
_PACK_BYTES = 4096
_STAMP = 24  # what stamping adds to an event, at most: {"offset":N,
_PLAIN = len("flask_realtime.t.")


@functools.lru_cache(maxsize=64)
def _rule_id(rule: Retention) -> str:
    return f"{rule.size}_{max(1, round(rule.ttl * 1000))}"


def stream_name(rule: Retention) -> str:
    return "flask_realtime_k_" + _rule_id(rule)


@functools.lru_cache(maxsize=65536)
def history_subject(topic: str, rule: Retention) -> str:
    """Where ``topic``'s kept events go: its plain subject's token, under the rule's."""
    return f"{_PREFIX}{_rule_id(rule)}.{subject(topic)[_PLAIN:]}"


def stream_config(rule: Retention) -> api.StreamConfig:
    rule_id = _rule_id(rule)
    source = f"{_PREFIX}{rule_id}.*"
    return api.StreamConfig(
        name=stream_name(rule),
        description=f"flask_realtime history: {rule.size} events, {rule.ttl} s",
        subjects=[source],
        retention=api.RetentionPolicy.LIMITS,
        discard=api.DiscardPolicy.OLD,
        max_msgs_per_subject=max(1, rule.size),  # 0 would be no limit
        max_age=rule.ttl + POSITION_TTL,
        storage=api.StorageType.FILE,
        duplicate_window=_DUPLICATES,  # a resent message is not stored twice
        allow_direct=True,
    )


def _acknowledged(msg: t.Any) -> int | BaseException:
    """A publish's stream sequence from JetStream's answer, or its error."""
    if (msg.headers or {}).get("Status") == "503":
        return js_errors.NoStreamResponseError()
    try:
        answer = json.loads(msg.data)
        if "error" in answer:
            error = answer["error"]
            return js_errors.APIError(
                code=error.get("code"),
                err_code=error.get("err_code"),
                description=error.get("description"),
            )
        return int(answer["seq"])
    except (ValueError, KeyError, TypeError) as exc:
        return js_errors.APIError(description=f"not an acknowledgement: {exc}")


class _Sent(t.NamedTuple):
    """A kept message as a round sent it, resent as is to learn its fate:
    one event, or a pack of one topic's events of the round. ``indices``:
    its events' places in the batch (it went out at the first)."""

    indices: tuple[int, ...]
    topic: str
    offset: int  # its last event's
    epoch: str
    stream: str
    subject: str
    payload: bytes
    headers: dict[str, str]
    # The stream sequence of the topic's message stored before it: the one
    # expected (a topic's first message in its round), or -1: the round's
    # previous message of the topic.
    before: int


class _Last(t.NamedTuple):
    """A topic's last stored message: its stream sequence (0: none), offset, epoch."""

    seq: int
    offset: int
    epoch: str


class NatsHistory:
    """The NATS broker's kept topics, on the loop thread; see the module docstring."""

    def __init__(self) -> None:
        self._node = secrets.token_hex(4)
        self._ids = 0
        self.reset()

    def reset(self) -> None:
        """Forget what a new connection may find changed (a restarted server)."""
        self._last: dict[str, _Last] = {}
        self._streams: set[str] = set()
        # (topic, epoch, offset) -> the first offset and the fetch, shared.
        self._windows: dict[tuple[str, str, int], tuple[int, t.Any]] = {}

    def _next_id(self, epoch: str) -> str:
        """A message id, unique across nodes, that carries the topic's epoch."""
        self._ids += 1
        return f"{epoch}.{self._node}.{self._ids:x}"

    # -- publishing ----------------------------------------------------------------

    async def send(
        self,
        link: Link,
        messages: Messages,
        retention: RetentionLookup,
        timeout: float,
    ) -> list[int | None | Exception]:
        """Publish a batch that holds kept topics, each topic's events in
        order; returns once JetStream stored every kept message and the
        server routed the rest."""
        deadline = time.monotonic() + timeout
        rules = [retention(topic) for topic, _ in messages]
        counts: list[int | None | Exception] = [None] * len(messages)
        settled = [False] * len(messages)  # plain ones: once the first round is
        todo = list(range(len(messages)))  # the first round sends the plain ones
        # Their fate is unknown: sent as they were. By their first index.
        resend: dict[int, _Sent] = {}
        limit = min(_PACK_BYTES, link.nc.max_payload // 2)
        while todo:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or link.dead:
                accepted = settled.index(False)
                raise LinkLost("JetStream did not store the batch", accepted)
            again = {i for entry in resend.values() for i in entry.indices}
            kept = {
                messages[i][0]: rules[i]
                for i in todo
                if rules[i] is not None and i not in again
            }
            if not self._ready(kept):  # asyncio's wait_for costs a task
                await asyncio.wait_for(self._prepare(link, kept), remaining)
            plan = self._plan(messages, rules, todo, resend, again, limit)
            sent, asked = await self._round(link, messages, plan, resend)
            if len(sent) < len(plan):  # the plain ones, routed once the marker is
                await link.send([], remaining, replies=False)
                for i in todo:
                    settled[i] = settled[i] or rules[i] is None
            wait = deadline - time.monotonic()
            outcome = await self._settle(sent, asked, resend, wait)
            await self._deliver(link, sent, outcome)
            resent, todo, resend = resend, [], {}
            for entry in sent:
                first = entry.indices[0]
                result = outcome[first]
                if isinstance(result, int):
                    self._remember(
                        entry.topic, _Last(result, entry.offset, entry.epoch)
                    )
                    for i in entry.indices:
                        settled[i] = True
                elif first not in resent or isinstance(result, asyncio.TimeoutError):
                    resend[first] = entry  # stored or not: unknown, JetStream tells
                    todo.extend(entry.indices)
                elif isinstance(result, js_errors.APIError) and result.err_code in (
                    _WRONG_SEQUENCE,
                    _WRONG_MSG_ID,
                ):
                    if result.err_code == _WRONG_SEQUENCE:
                        self._last.pop(entry.topic, None)  # looked up again
                    todo.extend(entry.indices)
                elif isinstance(result, js_errors.NoStreamResponseError):
                    self._forget_stream(t.cast(Retention, rules[first]))
                    todo.extend(entry.indices)
                else:  # refused (too big, say)
                    for i in entry.indices:
                        counts[i], settled[i] = result, True
            todo.sort()
        return counts

    def _plan(
        self,
        messages: Messages,
        rules: list[Retention | None],
        todo: list[int],
        resend: dict[int, _Sent],
        again: t.Container[int],
        limit: int,
    ) -> list[int | _Sent]:
        """What a round sends, in order: the plain ones (their index), the
        messages of ``resend`` as they were, and each topic's new events
        packed in one message where the first of them was (in several of
        ``limit`` bytes or so when they are more), with the next offsets,
        each chained to the stream's message before it."""
        order: list[int | list[int] | _Sent] = []
        packs: dict[str, list[int]] = {}  # topic -> its pack being filled
        filled: dict[str, int] = {}  # topic -> its pack's bytes
        for i in todo:
            if rules[i] is None:
                order.append(i)
            elif i in again:
                if i in resend:  # a resent message's first event
                    order.append(resend[i])
            else:
                topic, data = messages[i]
                pack = packs.get(topic)
                size = len(data) + _STAMP
                if pack is not None and filled[topic] + size <= limit:
                    pack.append(i)
                    filled[topic] += size
                else:
                    pack = packs[topic] = [i]
                    filled[topic] = size
                    order.append(pack)
        running: dict[str, _Last] = {}  # each topic's state as this round goes
        chain: dict[str, str] = {}  # stream -> the round's previous message id
        plan: list[int | _Sent] = []
        for item in order:
            if isinstance(item, list):
                rule = t.cast(Retention, rules[item[0]])
                item = self._next(messages, item, rule, running, chain.get)
            if isinstance(item, _Sent):
                chain[item.stream] = item.headers[_MSG_ID]
            plan.append(item)
        return plan

    async def _round(
        self,
        link: Link,
        messages: Messages,
        plan: list[int | _Sent],
        resend: dict[int, _Sent],
    ) -> tuple[list[_Sent], dict[int, asyncio.Future[t.Any]]]:
        """Publish ``plan`` in order. Returns the kept messages sent and the
        acknowledgements asked for, by first index: each resent message's,
        and each stream's last new one's."""
        sent = [entry for entry in plan if not isinstance(entry, int)]
        last_new: dict[str, int] = {}  # stream -> its last new message
        for entry in sent:
            if entry.indices[0] not in resend:
                last_new[entry.stream] = entry.indices[0]
        ask = set(resend)
        ask.update(last_new.values())
        asked: dict[int, asyncio.Future[t.Any]] = {}
        for entry in plan:
            if isinstance(entry, int):
                [(topic, data)] = escape([messages[entry]])
                await link.nc.publish(subject(topic), data)
            elif entry.indices[0] in ask:
                asked[entry.indices[0]] = await link.ask(
                    entry.subject, entry.payload, entry.headers
                )
            else:
                await link.nc.publish(
                    entry.subject, entry.payload, headers=entry.headers
                )
        return sent, asked

    def _next(
        self,
        messages: Messages,
        indices: list[int],
        rule: Retention,
        running: dict[str, _Last],
        previous: t.Callable[[str], str | None],
    ) -> _Sent:
        """A topic's next message in a round, of the events at ``indices``:
        the next offsets, chained to the round's ``previous`` message of the
        stream."""
        topic = messages[indices[0]][0]
        last = running.get(topic)
        if last is None:
            last = self._last[topic]
            headers = {_LAST_SUBJECT_SEQ: str(last.seq)}
            stored_before = last.seq
        else:
            headers, stored_before = {}, -1
        name = stream_name(rule)
        before = previous(name)
        if before is not None:
            headers[_LAST_MSG_ID] = before
        headers[_MSG_ID] = self._next_id(last.epoch)
        offset = last.offset + len(indices)
        if len(indices) == 1:
            payload = stamp(messages[indices[0]][1], offset)
        else:
            events = [
                stamp(messages[i][1], n) for n, i in enumerate(indices, last.offset + 1)
            ]
            headers[PACK] = ",".join([str(len(event)) for event in events])
            payload = b"".join(events)
        running[topic] = _Last(0, offset, last.epoch)
        return _Sent(
            tuple(indices),
            topic,
            offset,
            last.epoch,
            name,
            history_subject(topic, rule),
            payload,
            headers,
            stored_before,
        )

    @staticmethod
    async def _settle(
        sent: list[_Sent],
        asked: dict[int, asyncio.Future[t.Any]],
        resent: t.Container[int],
        timeout: float,
    ) -> dict[int, int | BaseException | None]:
        """Wait for the acknowledgements: each message's stream sequence, why
        it failed (a timeout included), or None when no later new message of
        its stream in the round was stored (its fate is then unknown); by
        first index."""
        if asked:
            await asyncio.wait(asked.values(), timeout=max(0.0, timeout))
        answered: dict[int, int | BaseException] = {}
        for i, future in asked.items():
            if not future.done():
                future.cancel()
                answered[i] = asyncio.TimeoutError()
            elif future.exception() is not None:
                raise t.cast(BaseException, future.exception())  # the link is lost
            else:
                answered[i] = _acknowledged(future.result())
        # A stream's new messages in a round: stored one after the other, or
        # the first one refused and every later one with it (the chain).
        outcome: dict[int, int | BaseException | None] = {}
        after: dict[str, int | None] = {}  # stream -> the next one's sequence
        for entry in reversed(sent):
            i, stream = entry.indices[0], entry.stream
            if i in answered:
                result = answered[i]
                outcome[i] = result
                chained = isinstance(result, int) and i not in resent
                after[stream] = t.cast(int, result) - 1 if chained else None
            else:
                seq = after.get(stream)
                outcome[i] = seq
                after[stream] = None if seq is None else seq - 1
        return outcome

    @staticmethod
    async def _deliver(
        link: Link,
        sent: list[_Sent],
        outcome: dict[int, int | BaseException | None],
    ) -> None:
        """Publish live what the round stored, once stored: each message with
        its stream sequence and that of the topic's message stored before it,
        so that every node's link puts two nodes' messages in the stream's
        order (see ``_nats_link.py``)."""
        live: Messages = []
        previous: dict[str, int] = {}  # topic -> the round's last stored
        for entry in sent:
            seq = outcome[entry.indices[0]]
            if not isinstance(seq, int):
                continue
            before = entry.before
            if before < 0:
                before = previous.get(entry.topic, 0)  # 0: not known, goes at once
            previous[entry.topic] = seq
            sizes = entry.headers.get(PACK) or str(len(entry.payload))
            message = live_message(entry.epoch, seq, before, sizes, entry.payload)
            live.append((entry.topic, message))
        if live:
            await link.deliver(live)

    async def floor(
        self, link: Link, topics: list[str], retention: RetentionLookup
    ) -> None:
        """Tell the link each kept topic's last stored message, once its
        subscription is in place (see ``Link.floor``)."""
        kept = [(topic, rule) for topic in topics if (rule := retention(topic))]
        for rule in {rule for _, rule in kept}:
            await self.ensure_stream(link, rule)  # else a lookup waits in vain
        found = await asyncio.gather(
            *(self._lookup(link, topic, rule) for topic, rule in kept)
        )
        for (topic, _), last in zip(kept, found, strict=True):
            if last is not None:
                link.floor(topic, last.epoch, last.seq)

    def _ready(self, kept: dict[str, Retention]) -> bool:
        """Whether the streams are known and each topic's last message too."""
        streams, last = self._streams, self._last
        return all(
            topic in last and stream_name(rule) in streams
            for topic, rule in kept.items()
        )

    async def _prepare(self, link: Link, kept: dict[str, Retention]) -> None:
        """Make sure the streams exist and each topic's last message is known."""
        for rule in set(kept.values()):
            await self.ensure_stream(link, rule)
        missing = [topic for topic in kept if topic not in self._last]
        found = await asyncio.gather(
            *(self._lookup(link, topic, kept[topic]) for topic in missing)
        )
        for topic, last in zip(missing, found, strict=True):
            self._remember(topic, last or _Last(0, 0, new_epoch()))

    def _remember(self, topic: str, last: _Last) -> None:
        if len(self._last) >= _CACHED and topic not in self._last:
            self._last.clear()
        self._last[topic] = last

    def _forget_stream(self, rule: Retention) -> None:
        """The stream is gone, and its topics with it (a server that lost its
        data): every topic is looked up again, the others' cost is a lookup."""
        self._streams.discard(stream_name(rule))
        self._last.clear()

    async def ensure_stream(self, link: Link, rule: Retention) -> None:
        name = stream_name(rule)
        if name in self._streams:
            return
        js = link.jetstream()
        config = stream_config(rule)
        try:
            await js.add_stream(config)  # the same configuration: a no-op
        except js_errors.APIError as exc:
            if exc.err_code != _NAME_IN_USE:
                raise
            await js.update_stream(config)
        self._streams.add(name)

    async def _lookup(self, link: Link, topic: str, rule: Retention) -> _Last | None:
        """The topic's last stored message (None: there is none)."""
        try:
            msg = await link.jetstream().get_last_msg(
                stream_name(rule), history_subject(topic, rule), direct=True
            )
        except js_errors.NotFoundError:
            return None
        headers = msg.headers or {}
        data = msg.data or b""
        offset = offset_of(envelope(unpack(data, headers)[-1])) if data else 0
        epoch = headers.get(EPOCH) or headers.get(_MSG_ID, "").partition(".")[0]
        return _Last(t.cast(int, msg.seq), offset or 0, epoch)

    # -- reading -------------------------------------------------------------------

    async def read(
        self,
        link: Link,
        topic: str,
        rule: Retention | None,
        after: int | None,
        limit: int | None,
    ) -> tuple[Position, list[bytes] | None]:
        """``Broker.history`` (see ``interface.py``)."""
        if rule is None:  # nothing is kept: no event to give back
            return Position(0, new_epoch()), [] if after in (None, 0) else None
        await self.ensure_stream(link, rule)
        last = await self._lookup(link, topic, rule)
        for _ in range(3):
            if last is not None:
                break
            last = await self._mark(link, topic, rule)
        if last is None:
            raise LinkLost(f"no position for {topic!r}: trimmed as soon as written")
        self._remember(topic, last)
        position = Position(last.offset, last.epoch)
        if after is not None:
            if after > last.offset or last.offset - after > rule.size:
                return position, None
            count = last.offset - after
        else:
            count = rule.size if limit is None else min(limit, rule.size)
        if count <= 0:
            return position, []
        events = await self._window(link, topic, rule, last, count)
        if after is not None and len(events) < count:
            return position, None  # some are trimmed or too old
        return position, events

    async def _mark(self, link: Link, topic: str, rule: Retention) -> _Last | None:
        """Give an empty topic its epoch (None: another node did first)."""
        epoch = new_epoch()
        headers = {_LAST_SUBJECT_SEQ: "0", _MSG_ID: self._next_id(epoch)}
        try:
            ack = await link.jetstream().publish(
                history_subject(topic, rule), b"", headers=headers
            )
        except js_errors.APIError as exc:
            if exc.err_code != _WRONG_SEQUENCE:
                raise
            return await self._lookup(link, topic, rule)
        return _Last(ack.seq, 0, epoch)

    async def _window(
        self, link: Link, topic: str, rule: Retention, last: _Last, count: int
    ) -> list[bytes]:
        """The envelopes of offsets ``last - count + 1`` to ``last`` still
        kept and younger than the rule's ttl, oldest first.

        A recovery storm asks the same for many clients at once: reads of a
        topic at one position share a fetch (a JetStream consumer each, the
        costly part) while it runs and for ``_KEEP_WINDOW`` after. What a
        position covers never changes, so a shared fetch is as good as one
        of its own; the ttl is applied to each read at its own time."""
        first = last.offset - count + 1
        key = (topic, last.epoch, last.offset)
        shared = self._windows.get(key)
        if shared is None or shared[0] > first:
            if len(self._windows) >= _WINDOWS:
                self._windows.clear()
            task = asyncio.ensure_future(
                self._fetch(link, topic, rule, last.offset, count)
            )
            shared = self._windows[key] = (first, task)
            task.add_done_callback(functools.partial(self._expire, key, shared))
        found = await asyncio.shield(shared[1])
        oldest = time.time() - rule.ttl  # the server's clock stamped each one
        return [e for offset, at, e in found if offset >= first and at >= oldest]

    def _expire(self, key: tuple[str, str, int], shared: t.Any, _: t.Any) -> None:
        """Forget a shared fetch some time after it ended (failed: at once)."""

        def forget() -> None:
            if self._windows.get(key) is shared:
                del self._windows[key]

        task = shared[1]
        if task.cancelled() or task.exception() is not None:
            forget()
        else:
            asyncio.get_running_loop().call_later(_KEEP_WINDOW, forget)

    async def _fetch(
        self, link: Link, topic: str, rule: Retention, last: int, count: int
    ) -> list[tuple[int, float, bytes]]:
        """(offset, stored at, envelope) of offsets ``last - count + 1`` to
        ``last`` still kept, oldest first."""
        js = link.jetstream()
        sub = await js.subscribe(
            history_subject(topic, rule),
            stream=stream_name(rule),
            deliver_policy=api.DeliverPolicy.ALL,
            config=api.ConsumerConfig(
                ack_policy=api.AckPolicy.NONE,
                inactive_threshold=5.0,
                mem_storage=True,
            ),
        )
        events: list[tuple[int, float, bytes]] = []
        try:
            while True:
                try:
                    msg = await sub.next_msg(_READ_WAIT)
                except asyncio.TimeoutError:
                    break  # expired meanwhile: nothing more is coming
                offset = 0
                if msg.data:  # not the epoch mark
                    stored = msg.metadata.timestamp.timestamp()
                    for event in unpack(msg.data, msg.headers):  # a pack's, in order
                        kept = envelope(event)
                        offset = offset_of(kept) or 0
                        if last - count < offset <= last:
                            events.append((offset, stored, kept))
                if offset >= last or msg.metadata.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
        return events
