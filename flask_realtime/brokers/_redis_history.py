"""History on Redis: a list of events and a position hash per kept topic.

Keys, in the broker's database, under its prefix, the topic in braces so
that a cluster would hash both keys of one stream to one slot (the
publishing script, one call a batch, would then need a call per slot):

* ``flask_realtime:<db>:{<topic>}:position``: a hash, ``epoch`` and
  ``offset`` (the latest event's); it expires ``ttl`` + ``POSITION_TTL``
  after the last event, so a quiet channel's clients still recover.
* ``flask_realtime:<db>:{<topic>}:events``: a list of stamped envelopes,
  oldest first, each behind the publishing node's clock (13 digits of
  milliseconds); trimmed to about ``size`` (a read takes at most ``size``)
  and expiring ``ttl`` after the last one. A read leaves out events older
  than ``ttl`` by that prefix, on the server. (A stream, with Redis's clock
  in its ids, took 1.4 times the memory and more CPU: docs/architecture.md.)
* ``flask_realtime:<db>:publisher:<process id>``: the highest serial the
  process has stored (resends are skipped), a day after its last batch.

One Lua script (``_PUBLISH``), one call per batch, takes each kept topic's
next offsets, stamps, appends and PUBLISHes the stamped payloads on the
topic's channel, and PUBLISHes the batch's plain messages: Redis runs a script
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

from ._history import POSITION_TTL, grouped, new_epoch
from ._support import BrokerUnavailable
from .interface import Position, Retention, RetentionLookup

# One call per batch of the group commit (what used to be one per topic: 16
# against 12 us of Redis's time per event with a batch over 50 channels,
# most of a call's cost being the script's own, not its commands').
# KEYS: the publishing process's key, then the position and events keys of
# each kept run. ARGV: a fresh epoch, the time (ms, 13 digits), the process
# key's ttl (ms), 1 if a message of the batch was sent before (0: none can
# have been stored, no need to look), then the batch's runs (consecutive
# messages to one topic) in order, each its channel, its message count and
# its size (-1: a plain run, its payloads follow: PUBLISHed), and for a kept
# run its events' ttl (ms), its position's ttl (ms), the length that trims,
# then a serial and a payload per message. Offsets come from one HINCRBY a
# run. The expiries are set ttl/8 longer than asked and only once that much
# has passed (a PTTL), so both keys outlive the last event by ttl at least,
# by ttl/8 more at most. Answers a receiver count per message, in order: 0
# for a skipped one, an error for a run whose keys hold another type.
#
# A resend: each kept message carries its process's serial, given at its
# first send, and batches go one at a time in the order of publishing, so
# serials ascend; Redis runs a script whole, so a batch whose answer was
# lost (a dropped link) was stored whole or not at all. The process's key
# holds the highest serial stored; a message at or below it is skipped,
# never stored twice. Everything else that can fail runs before the first
# write: Redis does not undo a script's writes when it fails halfway.
_PUBLISH = b"""
local a = 5
while a <= #ARGV do
  local count, size = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  if size < 0 then
    a = a + 3 + count
  else
    for n = 1, count do
      local payload = ARGV[a + 5 + 2 * n]
      local newline = string.find(payload, '\\n', 1, true)
      if not newline or string.byte(payload, newline + 1) ~= 123 then
        return redis.error_reply('ERR a kept payload is <header>\\\\n{...}')
      end
    end
    a = a + 6 + 2 * count
  end
end
local seen = 0
if ARGV[4] == '1' then
  seen = tonumber(redis.call('GET', KEYS[1]) or '0')
end
local top, answer, k = seen, {}, 2
a = 5
while a <= #ARGV do
  local channel, count, size = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local base = #answer
  if size < 0 then
    for n = 1, count do
      answer[base + n] = redis.call('PUBLISH', channel, ARGV[a + 2 + n])
    end
    a = a + 3 + count
  else
    local position, events = KEYS[k], KEYS[k + 1]
    local ttl, trim_at = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 5])
    local heads, bodies, fresh = {}, {}, 0
    for n = 1, count do
      answer[base + n] = 0
      local serial = tonumber(ARGV[a + 4 + 2 * n])  -- 0: not numbered, new
      if serial == 0 or serial > seen then
        if serial > top then top = serial end
        local payload = ARGV[a + 5 + 2 * n]
        local newline = string.find(payload, '\\n', 1, true)
        fresh = fresh + 1
        heads[fresh] = base + n
        bodies[fresh] = string.sub(payload, newline + 2)
        answer[base + n] = string.sub(payload, 1, newline)
      end
    end
    local last = 0
    if fresh > 0 then
      last = redis.pcall('HINCRBY', position, 'offset', fresh)
    end
    if type(last) == 'table' then  -- not a hash of ours: the run fails
      for n = 1, fresh do answer[heads[n]] = last end
    elseif fresh > 0 then
      local first = last - fresh + 1
      if first == 1 then  -- a new stream, or one whose position was lost
        redis.call('DEL', events)
        redis.call('HSETNX', position, 'epoch', ARGV[1])
      end
      local stored, length = {}, 0
      for n = 1, fresh do
        bodies[n] = string.format('{"offset":%d,', first + n - 1) .. bodies[n]
        stored[#stored + 1] = ARGV[2] .. bodies[n]
        if #stored == 500 or n == fresh then
          length = redis.pcall('RPUSH', events, unpack(stored))
          if type(length) == 'table' then break end
          stored = {}
        end
      end
      if type(length) == 'table' then  -- not a list: give the offsets back
        redis.call('HINCRBY', position, 'offset', -fresh)
        for n = 1, fresh do answer[heads[n]] = length end
      else
        if length > trim_at then
          redis.call('LTRIM', events, length - size, -1)
        end
        if redis.call('PTTL', events) < ttl then
          local slack = math.floor(ttl / 8)
          redis.call('PEXPIRE', events, ttl + slack)
          redis.call('PEXPIRE', position, tonumber(ARGV[a + 4]) + slack)
        end
        for n = 1, fresh do
          local at = heads[n]
          answer[at] = redis.call('PUBLISH', channel, answer[at] .. bodies[n])
        end
      end
    end
    k = k + 2
    a = a + 6 + 2 * count
  end
end
if top > seen then
  redis.call('SET', KEYS[1], top, 'PX', ARGV[3])
end
return answer
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


# How long Redis keeps a process's highest stored serial after its last
# batch: longer than any resend can come (the outage buffer's wait included).
_PUBLISHER_TTL = _ms(POSITION_TTL)


@functools.lru_cache(maxsize=64)
def _run_head(rule: Retention) -> tuple[bytes, bytes, bytes, bytes]:
    """A kept run's rule in the publishing script's arguments (size, ttl,
    the position's ttl, the length that trims), encoded once."""
    trim_at = rule.size + rule.size // _SLACK + 1
    ttl, position_ttl = _ms(rule.ttl), _ms(rule.ttl + POSITION_TTL)
    return b"%d" % rule.size, ttl, position_ttl, b"%d" % trim_at


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
        self._publisher_key = f"{self._prefix}publisher:{self._publisher}"
        self._serials = itertools.count(1)
        # A fresh epoch per batch, for a stream the batch may start: 48
        # random bits of this process's and a count (no system call a batch).
        self._epochs = itertools.count(1)
        # Held across a round trip: a gevent lock once gevent patched threading.
        self._lock = threading.Lock()

    def keys(self, topic: str) -> tuple[str, str]:
        """The position hash's and the events list's names."""
        return _names(self._prefix, topic)[:2]

    @staticmethod
    def load(connection: Connection) -> None:
        """Load both scripts on a new connection (a restarted Redis has none)."""
        for script, sha in _SHAS.items():
            connection.send_command("SCRIPT", "LOAD", script, check_health=False)
            if connection.read_response() not in (sha, sha.encode()):
                raise RedisError("SCRIPT LOAD answered another digest")

    def command(
        self, messages: list[tuple[str, bytes]], retention: RetentionLookup
    ) -> tuple[tuple[t.Any, ...], list[int]] | None:
        """The batch as one script call that carries all of its messages,
        kept or not, so that a NOSCRIPT fails the whole batch; and the
        message each item of its answer (a receiver count) is for, a kept
        topic's together (``_history.grouped``). None: nothing kept, PUBLISH."""
        rules = [retention(topic) for topic, _ in messages]
        if not any(rules):
            return None
        order = grouped(
            [topic if rules[n] else None for n, (topic, _) in enumerate(messages)]
        )
        keys = [self._publisher_key]
        runs: list[t.Any] = []
        resending = False  # whether a kept message was sent before
        run_topic, count_at = None, 0  # the run's topic, where its count is
        for n in order:
            topic, data = messages[n]
            rule = rules[n]
            if topic != run_topic:
                run_topic, count_at = topic, len(runs) + 1
                position, events, channel = _names(self._prefix, topic)
                if rule is None:
                    runs += [channel, 0, b"-1"]
                else:
                    keys += [position, events]
                    runs += [channel, 0, *_run_head(rule)]
            runs[count_at] += 1
            if rule is None:
                runs.append(data)
            elif isinstance(data, Numbered):
                # Its serial is given when first sent; a resend carries the
                # one it had (batches go one at a time: serials ascend).
                if data.serial:
                    resending = True
                else:
                    data.serial = next(self._serials)
                runs += [data.serial, data]
            else:
                runs += [0, data]  # not numbered: always stored
        epoch = f"{self._publisher[:12]}{next(self._epochs):x}"
        head = (epoch, _now(), _PUBLISHER_TTL, b"1" if resending else b"0")
        return ("EVALSHA", _SHAS[_PUBLISH], len(keys), *keys, *head, *runs), order

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
