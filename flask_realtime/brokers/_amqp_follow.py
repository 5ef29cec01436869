"""Following kept topics' streams on the RabbitMQ consumer connection.

A node delivers a kept topic's events from its stream queue: one stream
consumer per followed topic on the node's consumer connection, started
where delivery stopped before a reconnect (new ones from the end), once
RabbitMQ has finished making the stream (``_amqp_ready.py``: a consume too
early would close the connection). Each message is delivered stamped with
its offset, at most once and in order.

A consumer no longer followed is parked, not cancelled: pika rejects what a
consumer receives between its cancel and RabbitMQ's answer, and a stream
takes a reject for a connection error (NOT_IMPLEMENTED), so cancelling a
consumer of a busy stream would close the connection. A parked consumer's
messages are acknowledged and dropped; it is followed again if its topic
is (a client coming back), and cancelled once that is safe (``sweep``).
Those of streams other nodes write never are: a channel holding
``PARKED_MAX`` of them is closed instead, its followed topics consumed
again on another channel first (``_retire``), so they stay bounded.

The consumers go on channels of their own (``CHANNELS`` of them, the
topics dealt out in turn), not on the connection's first one: RabbitMQ
answers one channel's methods one after another, and a stream consume
takes it some milliseconds (3.4 to 5.9 ms here, more from an offset than
from the end), so a storm's 1,000 follows took 4 to 6 s on one channel
and 1.2 s on 8. Each channel's deliveries are acknowledged on it.

Everything here runs in the broker's reader (the consumer connection's one
driver), except :meth:`StreamFollows.stop_delivering`.
"""

from __future__ import annotations

import time
import typing as t

from ._amqp import CALL_TIMEOUT, Link
from ._amqp_history import stream_declaration
from ._amqp_ready import StreamChecks
from ._history import stamp
from ._support import LinkLost
from .interface import Retention

# A stream consumer no longer followed is kept this long at least, for its
# channel's clients to come back (``unfollow``, ``sweep``).
_PARKED_QUIET = 5.0
CHANNELS = 8  # for stream consumers, on the consumer connection
# A channel holding this many parked consumers is retired (``sweep``).
PARKED_MAX = 32


class _Token:
    """A follow waiting for its stream, and the channel it will go on."""

    __slots__ = ("channel",)

    def __init__(self, channel: t.Any) -> None:
        self.channel = channel


class StreamFollows:
    """The stream consumers of one node's consumer connection.

    ``name(topic)`` is a kept topic's stream, ``retention(topic)`` its rule,
    ``deliver(topic, data)`` hands an event to the node, ``written(topic)``
    is the last offset this node appended to the topic's stream as its
    writer (None when it is not the writer), ``soon(link, callback)`` runs
    a callback in the link's driver from the stream checker."""

    def __init__(
        self,
        checks: StreamChecks,
        name: t.Callable[[str], str],
        retention: t.Callable[[str], Retention | None],
        deliver: t.Callable[[str, bytes], None],
        written: t.Callable[[str], int | None],
        soon: t.Callable[[Link, t.Callable[[], None]], None],
    ) -> None:
        self._checks = checks
        self._name = name
        self._retention = retention
        self._deliver = deliver
        self._written = written
        self._soon = soon
        # Consumer tag -> topic and back, the stream offset each resumes
        # from after a reconnect, the last offset delivered.
        self.following: dict[str, str] = {}
        self._tag_of: dict[str, str] = {}
        self._resume: dict[str, int] = {}
        self._delivered_up_to: dict[str, int] = {}
        # Follows waiting for their stream to be ready (``_amqp_ready.py``):
        # topic -> the follow's token (an unfollow meanwhile drops it).
        self.to_follow: dict[str, _Token] = {}
        # Stream consumers no longer followed (``unfollow``): topic -> tag,
        # and tag -> (when it last received, the last offset it received).
        self.parked: dict[str, str] = {}
        self._parked_seen: dict[str, tuple[float, int]] = {}
        # The consumer connection's channels for them, the channel of each
        # consumer, and per channel: deliveries not yet acknowledged, the
        # last one's tag.
        self._channels: list[t.Any] = []
        self._channel_of: dict[str, t.Any] = {}
        self._unacked: dict[t.Any, tuple[int, int]] = {}
        self._turn = 0
        # Consumers cancelled at the last sweep: what they received before
        # the answer is still acknowledged on their channel.
        self._cancelled: set[str] = set()
        # Channels dealt no new consumer (too many parked: ``sweep``), and
        # those closed (what reached their consumers is dropped).
        self._retiring: set[t.Any] = set()
        self._closed: set[t.Any] = set()
        self._prefetch = 1
        self.parked_max = PARKED_MAX
        self.retired = 0  # channels retired (for tests)

    def parked_on(self, channel: t.Any) -> list[str]:
        """The topics whose parked consumers are on ``channel``."""
        return [
            topic
            for topic, tag in self.parked.items()
            if self._channel_of.get(tag) is channel
        ]

    def connected(self, channels: list[t.Any], prefetch: int = 1) -> None:
        """A new consumer connection, its ``channels`` for stream consumers
        (``prefetch`` per consumer): no consumer yet (where each topic's
        delivery stopped is kept, to resume from)."""
        self.following, self._tag_of, self.to_follow = {}, {}, {}
        self.parked, self._parked_seen = {}, {}
        self._channels, self._channel_of, self._unacked = channels, {}, {}
        self._cancelled, self._retiring, self._closed = set(), set(), set()
        self._prefetch = prefetch

    def _next_channel(self) -> t.Any:
        """The channel the next consumer or declare goes on, in turn (not
        a retiring one: ``sweep`` keeps some open)."""
        for _ in range(len(self._channels)):
            self._turn += 1
            channel = self._channels[self._turn % len(self._channels)]
            if channel not in self._retiring:
                return channel
        return channel

    def declare(
        self,
        name: str,
        rule: Retention,
        channel: t.Any = None,
        declared: t.Callable[[t.Any], None] | None = None,
    ) -> None:
        """Declare stream ``name`` on ``channel`` (by default the next one in
        turn) without waiting for the answer (``declared(frame)`` gets it)."""
        if channel is None:
            channel = self._next_channel()
        channel.queue_declare(**stream_declaration(name, rule), callback=declared)

    def follow(self, link: Link, topics: list[str], done: t.Callable[[], None]) -> None:
        """Consume each of ``topics``' streams from where its delivery
        stopped (new ones from the end), once the stream is ready;
        ``done()`` once all are (then the link is woken)."""
        if not topics or link.error is not None:
            done()
            link.wake()
            return
        left = [len(topics)]

        def consumed(_tag: str | None = None) -> None:
            left[0] -= 1
            if not left[0]:
                done()
                link.wake()

        for topic in topics:
            parked = self.parked.pop(topic, None)
            if parked is not None:  # followed again: where it is, it goes on
                del self._parked_seen[parked]
                self.to_follow.pop(topic, None)
                self.following[parked] = topic
                self._tag_of[topic] = parked
                consumed(None)
                continue
            name = self._name(topic)
            rule = self._retention(topic)
            assert rule is not None
            channel = self._next_channel()
            token = self.to_follow[topic] = _Token(channel)
            if name in self._checks.ready:
                # Known to run: the declare (which makes it again if it was
                # deleted) without waiting for its answer, and the consume
                # right behind it, as a reconnecting storm's follows need.
                self.declare(name, rule, channel)
                self._consume(link, channel, topic, name, token, consumed)
                continue

            def declared(
                _frame: object,
                channel: t.Any = channel,
                topic: str = topic,
                name: str = name,
                token: _Token = token,
            ) -> None:
                self._checks.when_ready(
                    name,
                    lambda _ok: self._soon(
                        link,
                        lambda: self._consume(
                            link, channel, topic, name, token, consumed
                        ),
                    ),
                )

            # pika sends a channel's synchronous methods one after another.
            self.declare(name, rule, channel, declared)

    def _consume(
        self,
        link: Link,
        channel: t.Any,
        topic: str,
        name: str,
        token: _Token,
        consumed: t.Callable[[str | None], None],
    ) -> None:
        """Follow ``topic``'s stream ``name`` now that it is ready, unless
        it was unfollowed meanwhile (``token``)."""
        if link.error is not None:
            return  # its subscribe is released by the disconnect
        if self.to_follow.get(topic) is not token:
            consumed(None)
            return
        del self.to_follow[topic]
        start: int | str = self._resume.get(topic, "next")
        tag = link.consume_soon(name, {"x-stream-offset": start}, consumed, channel)
        self.following[tag] = topic
        self._tag_of[topic] = tag
        self._channel_of[tag] = channel

    def stop_delivering(self, topics: list[str]) -> None:
        """From any greenlet: nothing of ``topics`` is delivered from now on
        (their consumers are parked later, by :meth:`unfollow`)."""
        for topic in topics:
            self.following.pop(self._tag_of.get(topic, ""), None)

    def received(
        self,
        tag: str,
        delivery_tag: int,
        body: bytes,
        headers: dict[str, t.Any] | None,
        ack_every: int,
    ) -> bool:
        """One delivery: whether it was a stream consumer's (followed:
        delivered; parked: dropped; acknowledged on its channel, every
        ``ack_every`` and by :meth:`acknowledge`), else it is none of these."""
        channel = self._channel_of.get(tag)
        if channel is None:
            return False
        if channel in self._closed:
            return True  # its topics, if followed, resume on another channel
        if tag in self.following:
            if headers:
                self._follow_one(self.following[tag], body, headers)
        elif tag in self._parked_seen:  # no longer followed: dropped
            offset = headers.get("o", -1) if headers else -1
            highest = max(self._parked_seen[tag][1], offset)
            self._parked_seen[tag] = (time.monotonic(), highest)
        count = self._unacked.get(channel, (0, 0))[0] + 1
        if count >= ack_every:
            channel.basic_ack(delivery_tag, multiple=True)
            self._unacked.pop(channel, None)
        else:
            self._unacked[channel] = (count, delivery_tag)
        return True

    def owns(self, tag: str) -> bool:
        """Whether consumer ``tag`` is one of these (on their channels)."""
        return tag in self._channel_of

    def acknowledge(self, link: Link) -> None:
        """Acknowledge what the stream consumers received, on each channel."""
        unacked, self._unacked = self._unacked, {}
        if link.error is None:
            for channel, (_, delivery_tag) in unacked.items():
                channel.basic_ack(delivery_tag, multiple=True)

    def _follow_one(self, topic: str, body: bytes, headers: dict[str, t.Any]) -> None:
        """One message of a followed stream: delivered stamped with its
        offset, unless it is the marker or was delivered already."""
        self._resume[topic] = headers["x-stream-offset"] + 1
        offset = headers.get("o")
        if offset is None or "m" in headers:
            return
        if offset <= self._delivered_up_to.get(topic, 0):
            return  # appended twice (a writer's hand-over raced a write)
        self._delivered_up_to[topic] = offset
        self._deliver(topic, stamp(body, offset))

    def unfollow(self, topics: list[str]) -> None:
        """Stop delivering ``topics``' streams: their consumers are parked
        (see the module docstring)."""
        now = time.monotonic()
        for topic in topics:
            self.to_follow.pop(topic, None)
            tag = self._tag_of.pop(topic, None)
            self._resume.pop(topic, None)
            delivered = self._delivered_up_to.pop(topic, 0)
            if tag is not None:
                self.following.pop(tag, None)
                self.parked[topic] = tag
                self._parked_seen[tag] = (now, delivered)

    def sweep(self, link: Link, now: float, busy: bool) -> None:
        """Cancel the parked consumers that nothing can reach before the
        cancel does (not while ``busy``: subscribes wait for answers).

        That is a stream this node writes (every append goes out on this
        connection, from this reader, so after the cancel) whose consumer
        has received the last event appended, quiet ``_PARKED_QUIET`` s
        (a client may come back meanwhile). "Quiet for a while" alone is no
        such promise: the recovery storm broadcast to a channel right as
        its consumer was cancelled, and the reject closed the connection.
        Those of streams other nodes write go with their channel
        (:meth:`_retire`)."""
        for tag in self._cancelled:  # anything of theirs came before
            self._channel_of.pop(tag, None)
        self._cancelled = set()
        if self._closed:  # anything of theirs came before too
            self._channel_of = {
                tag: channel
                for tag, channel in self._channel_of.items()
                if channel not in self._closed
            }
            self._closed = set()
        if link.error is not None:
            return
        if self._parked_seen or self._retiring:
            self._retire(link)  # closing a channel rejects nothing: even if busy
        if not self._parked_seen or busy or self.to_follow:
            return  # not while follows wait for answers (a storm): later
        self._cancel_parked(link, now)

    def _cancel_parked(self, link: Link, now: float) -> None:
        """Cancel the parked consumers of streams this node writes that
        have received the last event appended (see :meth:`sweep`)."""
        tags: set[str] = set()
        for topic, tag in list(self.parked.items()):
            seen, last = self._parked_seen[tag]
            written = self._written(topic)
            if now - seen >= _PARKED_QUIET and written is not None and last >= written:
                del self.parked[topic]
                del self._parked_seen[tag]
                # With a callback: pika forgets it at the answer (a nowait
                # cancel's tag stays, and anything later is rejected).
                self._channel_of[tag].basic_cancel(tag, callback=lambda _frame: None)
                tags.add(tag)
        if tags:
            # Nothing is appended before RabbitMQ has taken the cancels: pika
            # holds a cancel back behind the channel's calls still waiting
            # for their answers (a storm's follows), but sends a publish at
            # once, which would then reach the consumer and be rejected.
            # (pika calls every cancel's callback at the first answer: the
            # consumers it still has tell, looked at every few ms.)
            ends = time.monotonic() + CALL_TIMEOUT

            def cancelled() -> bool:
                return all(
                    tags.isdisjoint(channel.consumer_tags) for channel in self._channels
                )

            while not cancelled():
                if time.monotonic() > ends:
                    raise LinkLost("cancelling parked stream consumers timed out")
                link.wait(cancelled, 0.005, expire=False)
            self._cancelled = tags

    def _retire(self, link: Link) -> None:
        """Close the channels holding ``parked_max`` parked consumers or
        more, the parked consumers of other nodes' streams with them.

        A cancel cannot end those (see the module docstring), but closing
        their channel can: pika rejects nothing on a channel that is
        closing, and RabbitMQ ends the channel's consumers. Such a channel
        is dealt no new consumer from then on; each topic still followed
        on it is consumed again on another channel from its resume offset
        (what the old consumer delivered meanwhile is dropped as delivered
        already), then the channel is closed. A followed topic that has
        delivered nothing yet has no resume offset ("next" on the new
        channel could miss an event on its way to the old one): the channel
        waits until each such topic delivers something or is unfollowed."""
        full = [
            channel
            for channel in self._channels
            if channel not in self._retiring
            and len(self.parked_on(channel)) >= self.parked_max
        ]
        if len(self._retiring) + len(full) >= len(self._channels):
            # New consumers always have a channel that is not retiring.
            self._channels += link.open_channels(1, self._prefetch)
        self._retiring.update(full)
        for channel in list(self._retiring):
            if any(token.channel is channel for token in self.to_follow.values()):
                continue  # a follow will consume on it: later
            # Its consumers of topics followed, or about to be unfollowed
            # (``stop_delivering`` came, ``unfollow`` not yet).
            on_it = [
                (topic, tag)
                for topic, tag in list(self._tag_of.items())
                if self._channel_of.get(tag) is channel
            ]
            if any(topic not in self._resume for topic, _ in on_it):
                continue  # later (see above)
            for topic, tag in on_it:
                if self.following.pop(tag, None) is None:
                    del self._tag_of[topic]  # its unfollow finds nothing to park
                    continue
                moved = self._next_channel()
                tag = link.consume_soon(
                    self._name(topic),
                    {"x-stream-offset": self._resume[topic]},
                    lambda _tag: None,
                    moved,
                )
                self._tag_of[topic] = tag
                self._channel_of[tag] = moved
                self.following[tag] = topic
            for topic in self.parked_on(channel):
                del self._parked_seen[self.parked.pop(topic)]
            self._unacked.pop(channel, None)
            self._retiring.discard(channel)
            self._channels.remove(channel)
            self._closed.add(channel)
            link.close_channel(channel)
            self.retired += 1
            if len(self._channels) - len(self._retiring) < CHANNELS:
                self._channels += link.open_channels(1, self._prefetch)
