"""History on Redis: a list of events and a position hash per kept topic.

Keys, in the broker's database, under its prefix, the topic in braces so
that a cluster would hash both keys of one stream to one slot:

* ``flask_realtime:<db>:{<topic>}:position``: a hash, ``epoch`` and
  ``offset`` (the latest event's); it expires ``ttl`` + ``POSITION_TTL``
  after the last event, so a quiet channel's clients still recover.
* ``flask_realtime:<db>:{<topic>}:events``: a list of stamped envelopes,
  oldest first, each behind the publishing node's clock (13 digits of
  milliseconds); trimmed to about ``size`` (a read takes at most ``size``)
  and expiring ``ttl`` after the last one. A read leaves out events older
  than ``ttl`` by that prefix, on the server. (A stream, with Redis's clock
  in its ids, took 1.4 times the memory and more CPU: docs/architecture.md.)

One Lua script (``_PUBLISH``) takes the next offset, stamps, appends and
PUBLISHes the stamped payload on the topic's channel: Redis runs a script
alone, so offsets are contiguous across every publisher and live delivery
never overtakes what is stored. Another (``_READ``) reads the position and
the events in one step. Whoever creates a position hash gives it the
caller's fresh epoch; it lives as long as Redis keeps its data (an AOF or
RDB restart keeps it), and a lost hash means a new epoch and a new list.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import threading
import time
import typing as t

from redis.connection import Connection
from redis.exceptions import NoScriptError, RedisError

from ._history import POSITION_TTL, new_epoch
from ._support import BrokerUnavailable
from .interface import Position, Retention, RetentionLookup

# KEYS: position, events; ARGV: channel, size, events' ttl (ms), position's
# ttl (ms), a fresh epoch, the time (ms, 13 digits), the length that trims,
# the publishing process's id, then a serial and a payload for each of a run
# of consecutive messages to the topic (one call for a group commit's run:
# the counter, the trim and the expiries once). A lone publisher pays the
# script for every event, so it makes few calls: one HMGET and one HSET for
# the counter and the serial, and the expiries set ttl/8 longer than asked
# and only once that much has passed (a PTTL), so both keys always outlive
# the last event by ttl at least, and by ttl/8 more at most. A payload
# whose serial is not above the last one stored from this process was
# stored already (sent again after a link dropped before Redis's answer
# came): skipped, so a resend never stores an event twice. Answers each
# payload's receiver count (0 for a skipped one). Without KEYS: ARGV
# channel, payload, a plain PUBLISH (for a batch that mixes both).
# Everything that can fail runs before the first write: Redis does not undo
# a script's writes when it fails halfway.
_PUBLISH = b"""
if #KEYS == 0 then
  return redis.call('PUBLISH', ARGV[1], ARGV[2])
end
local sent = (#ARGV - 8) / 2
local field = 'p:' .. ARGV[8]
local state = redis.call('HMGET', KEYS[1], 'offset', field)
local seen = tonumber(state[2] or '0')
local heads, bodies, receivers = {}, {}, {}
local count, top = 0, seen
for n = 1, sent do
  receivers[n] = 0
  local serial = tonumber(ARGV[7 + 2 * n])  -- 0: not numbered, always new
  local payload = ARGV[8 + 2 * n]
  local newline = string.find(payload, '\\n', 1, true)
  if not newline or string.byte(payload, newline + 1) ~= 123 then
    return redis.error_reply('ERR a kept payload is <header>\\\\n{...}')
  end
  if serial == 0 or serial > seen then
    top = math.max(top, serial)
    count = count + 1
    heads[count] = n
    bodies[count] = string.sub(payload, newline + 2)
    receivers[n] = string.sub(payload, 1, newline)
  end
end
if count == 0 then
  return receivers
end
local first = tonumber(state[1] or '0') + 1
local last = first + count - 1
if top > seen then
  redis.call('HSET', KEYS[1], 'offset', last, field, top)
else
  redis.call('HSET', KEYS[1], 'offset', last)
end
if first == 1 then  -- a new stream, or one whose position was lost
  redis.call('DEL', KEYS[2])
  redis.call('HSETNX', KEYS[1], 'epoch', ARGV[5])
end
local stored, length = {}, 0
for n = 1, count do
  bodies[n] = string.format('{"offset":%d,', first + n - 1) .. bodies[n]
  stored[#stored + 1] = ARGV[6] .. bodies[n]
  if #stored == 500 or n == count then
    length = redis.call('RPUSH', KEYS[2], unpack(stored))
    stored = {}
  end
end
if length > tonumber(ARGV[7]) then
  redis.call('LTRIM', KEYS[2], length - tonumber(ARGV[2]), -1)
end
local ttl = tonumber(ARGV[3])
if redis.call('PTTL', KEYS[2]) < ttl then
  local slack = math.floor(ttl / 8)
  redis.call('PEXPIRE', KEYS[2], ttl + slack)
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]) + slack)
end
for n = 1, count do
  local index = heads[n]
  receivers[index] = redis.call('PUBLISH', ARGV[1], receivers[index] .. bodies[n])
end
return receivers
"""

# KEYS: position, events; ARGV: a fresh epoch, after (-1: none), how many
# (the limit, at most size), size, events' ttl (ms), position's ttl (ms),
# whether to create a missing position (1) or only report one (0), the
# time (ms). Timestamps ascend: the newest events younger than ttl are kept.
# Answers {offset, epoch, 1, events oldest first...} or {offset, epoch, 0}.
_READ = b"""
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local offset = 0
if epoch then
  offset = tonumber(redis.call('HGET', KEYS[1], 'offset') or '0')
else
  epoch = ARGV[1]
  if ARGV[7] == '1' then
    redis.call('DEL', KEYS[2])
    redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
    redis.call('PEXPIRE', KEYS[1], ARGV[6])
  end
end
local after = tonumber(ARGV[2])
local count = tonumber(ARGV[3])
if after >= 0 then
  if after > offset or offset - after > tonumber(ARGV[4]) then
    return {offset, epoch, 0}
  end
  count = offset - after
end
if count <= 0 then
  return {offset, epoch, 1}
end
local oldest = tonumber(ARGV[8]) - tonumber(ARGV[5])
local found = redis.call('LRANGE', KEYS[2], -count, -1)
local first = #found + 1
while first > 1 and tonumber(string.sub(found[first - 1], 1, 13)) >= oldest do
  first = first - 1
end
if after >= 0 and #found - first + 1 < count then
  return {offset, epoch, 0}
end
local answer = {offset, epoch, 1}
for n = first, #found do
  answer[#answer + 1] = string.sub(found[n], 14)
end
return answer
"""

# A list is trimmed once it holds size + size/_SLACK + 1 events: one LTRIM
# per size/_SLACK appends, not one each. Reads never look past ``size``.
_SLACK = 8

_SHAS = {script: hashlib.sha1(script).hexdigest() for script in (_PUBLISH, _READ)}


def _ms(seconds: float) -> bytes:
    return b"%d" % max(1, round(seconds * 1000))


@functools.lru_cache(maxsize=64)
def _arguments(rule: Retention) -> tuple[bytes, bytes, bytes, bytes]:
    """A rule's part of the publishing script's arguments, encoded once."""
    trim_at = rule.size + rule.size // _SLACK + 1
    ttl, position_ttl = _ms(rule.ttl), _ms(rule.ttl + POSITION_TTL)
    return b"%d" % rule.size, ttl, position_ttl, b"%d" % trim_at


@functools.lru_cache(maxsize=4096)
def _head(prefix: str, topic: str, rule: Retention) -> tuple[t.Any, ...]:
    """The publishing script's call for a kept topic, up to the epoch."""
    size, ttl, position_ttl, _ = _arguments(rule)
    position, events, channel = _names(prefix, topic)
    return (
        "EVALSHA",
        _SHAS[_PUBLISH],
        b"2",
        position,
        events,
        channel,
        size,
        ttl,
        position_ttl,
    )


@functools.lru_cache(maxsize=4096)
def _names(prefix: str, topic: str) -> tuple[str, str, str]:
    """A kept topic's position and events keys, and its channel."""
    base = f"{prefix}{{{topic}}}:"
    return base + "position", base + "events", prefix + topic


def _now() -> bytes:
    """This node's clock, in ms, 13 digits (until the year 2286)."""
    return b"%013d" % (time.time() * 1000)


class Numbered(bytes):
    """A kept payload and its serial: what tells a resend from a new event."""

    serial = 0  # not sent yet


class RedisHistory:
    """The Redis broker's kept topics: the commands that publish them, and
    reads on a connection of their own (a read never waits behind a batch)."""

    def __init__(self, prefix: str, connect: t.Callable[[str], Connection]) -> None:
        self._prefix = prefix
        self._connect = connect
        self.reset()

    def reset(self) -> None:
        """Fresh per-process state: at start, and in a forked child."""
        self._reader: Connection | None = None
        # Who publishes, and each kept message's serial (see _PUBLISH).
        self._publisher = new_epoch()
        self._serials = itertools.count(1)
        # A fresh epoch per batch, for a stream the batch may start: 48
        # random bits of this process's and a count (no system call a batch).
        self._epochs = itertools.count(1)
        # Held across a round trip: a gevent lock once gevent patched threading.
        self._lock = threading.Lock()

    def keys(self, topic: str) -> tuple[str, str]:
        """The position hash's and the events list's names."""
        return _names(self._prefix, topic)[:2]

    def _serial(self, data: bytes) -> int:
        """A kept message's serial, given when it is first sent: sends go
        one batch at a time, in the order of publishing, so serials ascend
        in that order, and a resend carries the one it had."""
        if not isinstance(data, Numbered):
            return 0  # not numbered: always stored
        if not data.serial:
            data.serial = next(self._serials)
        return data.serial

    @staticmethod
    def load(connection: Connection) -> None:
        """Load both scripts on a new connection (a restarted Redis has none)."""
        for script, sha in _SHAS.items():
            connection.send_command("SCRIPT", "LOAD", script, check_health=False)
            if connection.read_response() not in (sha, sha.encode()):
                raise RedisError("SCRIPT LOAD answered another digest")

    def commands(
        self, messages: list[tuple[str, bytes]], retention: RetentionLookup
    ) -> list[tuple[tuple[t.Any, ...], int]] | None:
        """The batch's commands, each with how many messages it carries (its
        answer is their receiver counts), all through the script so that a
        NOSCRIPT fails the batch from one message on (None: nothing kept,
        PUBLISH). Consecutive messages to one kept topic share one call."""
        rules = [retention(topic) for topic, _ in messages]
        if not any(rules):
            return None
        sha = _SHAS[_PUBLISH]
        epoch = f"{self._publisher[:12]}{next(self._epochs):x}"
        now = _now()
        commands: list[tuple[tuple[t.Any, ...], int]] = []
        run: list[t.Any] = []  # the current run's command, payloads appended
        run_topic = None
        for (topic, data), rule in zip(messages, rules, strict=True):
            if topic == run_topic:
                run += [self._serial(data), data]
                continue
            if run_topic is not None:  # the run ends
                commands.append((tuple(run), (len(run) - 13) // 2))
                run_topic = None
            if rule is None:
                commands.append((("EVALSHA", sha, b"0", self._prefix + topic, data), 1))
                continue
            run = [*_head(self._prefix, topic, rule), epoch, now]
            run += [_arguments(rule)[3], self._publisher, self._serial(data), data]
            run_topic = topic
        if run_topic is not None:
            commands.append((tuple(run), (len(run) - 13) // 2))
        return commands

    def read(
        self,
        topic: str,
        rule: Retention | None,
        after: int | None,
        limit: int | None,
    ) -> tuple[Position, list[bytes] | None]:
        """``Broker.history`` in one round trip (see ``interface.py``)."""
        size = 0 if rule is None else rule.size
        count = size if limit is None else min(limit, size)
        arguments = (
            new_epoch(),
            b"-1" if after is None else b"%d" % after,
            b"%d" % count,
            b"%d" % size,
            _ms(rule.ttl if rule else 0),
            _ms((rule.ttl if rule else 0) + POSITION_TTL),
            b"0" if rule is None else b"1",
            _now(),
        )
        command = ("EVALSHA", _SHAS[_READ], 2, *self.keys(topic), *arguments)
        with self._lock:
            reply = self._call(command)
        offset, epoch, found = int(reply[0]), reply[1].decode(), reply[2]
        events: list[bytes] | None = list(reply[3:]) if found else None
        if rule is None:  # nothing is kept: no event to give back
            events = [] if after in (None, 0) else None
        return Position(offset, epoch), events

    def _call(self, command: tuple[t.Any, ...]) -> t.Any:
        # A connection that sat idle may have been closed by Redis (timeout,
        # CLIENT KILL): one more try on a new one. A read is safe to repeat.
        for fresh in (self._reader is None, True):
            reader = self._reader
            try:
                if reader is None:
                    reader = self._reader = self._connect("history")
                    self.load(reader)
                try:
                    return self._ask(reader, command)
                except NoScriptError:  # an operator's SCRIPT FLUSH
                    self.load(reader)
                    return self._ask(reader, command)
            except (RedisError, OSError) as exc:
                self.close()
                if fresh:
                    raise BrokerUnavailable(
                        f"reading Redis history failed: {exc}"
                    ) from exc

    @staticmethod
    def _ask(connection: Connection, command: tuple[t.Any, ...]) -> t.Any:
        connection.send_command(*command, check_health=False)
        return connection.read_response()

    def close(self) -> None:
        """Close the reading connection (any greenlet; a read then fails)."""
        reader, self._reader = self._reader, None
        if reader is not None:
            try:
                reader.disconnect()
            except Exception:  # closing a broken socket may fail; it is gone
                pass
