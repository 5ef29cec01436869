"""Which node sends each webhook event, so that the cluster sends it once.

Every node with webhooks announces its *local* facts on one broker topic
(``w:``): "channel X has a subscriber here" / "no longer", "user U is in
presence channel X here" / "no longer", and, every second, a heartbeat
(with all its facts every few seconds, which repairs anything lost in a
broker outage). Every node keeps every node's facts, so each knows whether
a channel is occupied anywhere and whether a user is present anywhere, and
computes the same cluster-wide transitions from them.

Only the **leader** sends them: the oldest live node (earliest start, then
node id), which every node picks the same way from the same heartbeats. The
oldest node has heard every fact of every younger node (they announced after
it subscribed), so its view is complete; a new node never takes over from
it. A node that stops says ``bye`` and the next oldest takes over at that
point of the stream; a node that dies is dropped after ``EXPIRY`` seconds
of silence, and the new leader then also sends what it computed since the
dead leader's last heartbeat (docs/architecture.md, "Webhooks", weighs this).

``client.event`` needs none of this: one node receives each client event,
and that node sends it.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import threading
import time
import typing as t

from .. import _runtime
from ..brokers import BrokerUnavailable
from ..node import control, topics
from . import events
from .events import Event
from .sender import Sender

if t.TYPE_CHECKING:
    from ..connection import Connection
    from ..node import Node

logger = logging.getLogger("flask_realtime")

TOPIC = topics.WEBHOOKS
HEARTBEAT = 1.0
# Every this many heartbeats carries the node's whole state.
STATE_EVERY = 3
# A node silent this long is gone: its facts are dropped.
EXPIRY = 3.5
# A starting node that finds itself the oldest waits this long (a heartbeat
# of every other node) before it sends: an older node may exist.
WARMUP = HEARTBEAT * 1.5
# Transitions kept while another node leads, to send if it dies.
RECENT = 10_000


class _Peer:
    """What one node (this one included) has announced."""

    __slots__ = ("rank", "seen", "channels", "members")

    def __init__(self, rank: tuple[float, str], now: float) -> None:
        self.rank = rank
        self.seen = now
        self.channels: set[str] = set()
        # channel -> user key -> user id (as the user's connection gave it)
        self.members: dict[str, dict[str, t.Any]] = {}


class Webhooks:
    """One node's part of the cluster's webhooks."""

    def __init__(self, node: Node, sender: Sender) -> None:
        self._node = node
        self.sender = sender
        self._peers: dict[str, _Peer] = {}
        self._gone: collections.deque[str] = collections.deque(maxlen=64)
        # Transitions computed while another node leads: (when, event).
        self._recent: collections.deque[tuple[float, Event]] = collections.deque(
            maxlen=RECENT
        )
        self._local_channels: set[str] = set()
        self._local_members: dict[str, dict[str, t.Any]] = {}
        self._started_pid: int | None = None
        self._started_at = 0.0  # monotonic
        self._warm = False
        self._rank: tuple[float, str] = (0.0, "")
        self._lock: t.Any = threading.RLock()
        self._stopped = False

    # -- start -----------------------------------------------------------------

    def ensure_started(self) -> None:
        """On the node's first connection (again after a fork): subscribe to
        the webhook topic, then announce this node."""
        if self._started_pid is not None and self._started_pid == _pid():
            return
        # Created at run time: gevent's lock once it has patched.
        self._lock = threading.RLock()
        self._started_pid = _pid()
        self._peers.clear()
        self._recent.clear()
        self._local_channels.clear()
        self._local_members.clear()
        node = self._node
        if node.clustered:
            with node.interest.hold(TOPIC):
                pass  # wanted for the process's life (Inbound.wanted)
        # Taken after the subscription is in place: every fact of a node
        # with a later rank reaches this one (see the module docstring).
        self._rank = (time.time(), node.id)
        self._started_at = time.monotonic()
        self._warm = not node.clustered
        self._peers[node.id] = _Peer(self._rank, time.monotonic())
        if node.clustered:
            self._publish({"op": "hb"})
            _runtime.spawn(self._beat, self._started_pid)

    def stop(self) -> None:
        """The node stops: the next oldest node takes over now."""
        if self._started_pid != _pid() or self._stopped:
            return
        self._stopped = True
        if self._node.clustered:
            # Not from the SIGTERM handler itself, which may have interrupted
            # a publish: the process runs on while its connections close.
            _runtime.spawn(self._publish, {"op": "bye"})

    # -- local facts (the node calls these) -----------------------------------

    def channel_changed(self, channel: str) -> None:
        """After a local subscribe or unsubscribe of ``channel``."""
        if self._started_pid != _pid():
            return
        with self._lock:
            here = self._node.hub.subscriber_count(channel) > 0
            if here == (channel in self._local_channels):
                return
            if here:
                self._local_channels.add(channel)
            else:
                self._local_channels.discard(channel)
            self._fact({"op": "occ", "channel": channel, "on": here})

    def member_changed(
        self, channel: str, key: str, user_id: t.Any, present: bool
    ) -> None:
        """A user's first connection here entered presence ``channel``
        (``present``), or its last one here left."""
        if self._started_pid != _pid():
            return
        with self._lock:
            members = self._local_members.setdefault(channel, {})
            if present == (key in members):
                if not members:
                    del self._local_members[channel]
                return
            if present:
                members[key] = user_id
            else:
                del members[key]
                if not members:
                    del self._local_members[channel]
            fact = {"op": "mem", "channel": channel, "key": key, "on": present}
            self._fact({**fact, "user_id": user_id})

    def client_event(
        self, conn: Connection, channel: str, event: str, data: t.Any
    ) -> None:
        """A relayed client event: this node alone saw it, so it sends it."""
        self.sender.send(
            events.client_event(channel, event, data, conn.user_id, conn.id)
        )

    # -- the wire -------------------------------------------------------------

    def _fact(self, fact: dict[str, t.Any]) -> None:
        if self._node.clustered:
            self._publish(fact)
        else:
            self._apply(self._node.id, self._rank, fact)

    def _publish(self, message: dict[str, t.Any]) -> None:
        message["node"] = self._node.id
        message["rank"] = list(self._rank)
        data = control.message(b"", json.dumps(message).encode())
        try:
            self._node.broker.publish(TOPIC, data)
        except BrokerUnavailable:
            # The next full state carries it once the broker is back.
            logger.warning("flask_realtime: webhook fact not announced (broker down)")

    def on_message(self, body: bytes) -> None:
        """A node's announcement (this node's too, back from the broker)."""
        try:
            message = json.loads(body)
            node_id = message["node"]
            started, rank_id = message["rank"]
            rank = (float(started), str(rank_id))
        except (ValueError, KeyError, TypeError):
            logger.warning("flask_realtime: malformed webhook announcement dropped")
            return
        with self._lock:
            if self._started_pid != _pid() or node_id in self._gone:
                return
            self._apply(node_id, rank, message)

    def _apply(self, node_id: str, rank: tuple[float, str], fact: dict) -> None:
        now = time.monotonic()
        op = fact.get("op")
        if op == "bye":
            self._gone.append(node_id)
            self._drop(node_id, replay_since=None)
            return
        peer = self._peers.get(node_id)
        if peer is None:
            peer = self._peers[node_id] = _Peer(rank, now)
        peer.seen = now
        try:
            if op == "occ":
                channel = fact["channel"]
                with self._watch([channel], []):
                    if fact["on"]:
                        peer.channels.add(channel)
                    else:
                        peer.channels.discard(channel)
            elif op == "mem":
                channel = fact["channel"]
                with self._watch([], [channel]):
                    members = peer.members.setdefault(channel, {})
                    if fact["on"]:
                        members[fact["key"]] = fact["user_id"]
                    else:
                        members.pop(fact["key"], None)
                    if not members:
                        del peer.members[channel]
            elif op == "state":
                channels = set(fact["channels"])
                members = {c: dict(m) for c, m in fact["members"].items() if m}
                with self._watch(
                    peer.channels | channels, set(peer.members) | set(members)
                ):
                    peer.channels = channels
                    peer.members = members
        except (KeyError, TypeError, AttributeError, ValueError):
            logger.warning("flask_realtime: malformed webhook announcement dropped")

    # -- cluster-wide transitions --------------------------------------------

    def _occupied(self, channel: str) -> bool:
        return any(channel in p.channels for p in self._peers.values())

    def _present(self, channel: str) -> dict[str, t.Any]:
        present: dict[str, t.Any] = {}
        for peer in self._peers.values():
            for key, user_id in peer.members.get(channel, {}).items():
                present.setdefault(key, user_id)
        return present

    @contextlib.contextmanager
    def _watch(
        self, channels: t.Iterable[str], presence: t.Iterable[str]
    ) -> t.Iterator[None]:
        """Emit the cluster-wide transitions that the block causes."""
        channels, presence = sorted(channels), sorted(presence)
        occupied = {c: self._occupied(c) for c in channels}
        present = {c: self._present(c) for c in presence}
        yield
        found = [
            events.occupied(c)
            for c in channels
            if self._occupied(c) and not occupied[c]
        ]
        for channel in presence:
            before, after = present[channel], self._present(channel)
            found.extend(
                events.member_added(channel, after[key])
                for key in after
                if key not in before
            )
            found.extend(
                events.member_removed(channel, before[key])
                for key in before
                if key not in after
            )
        # Vacated last: a channel's members leave before it empties.
        found.extend(
            events.vacated(c) for c in channels if occupied[c] and not self._occupied(c)
        )
        for event in found:
            self._emit(event)

    def leader(self) -> str | None:
        """The node that sends, as this node sees it."""
        if not self._peers:
            return None
        return min(self._peers.items(), key=lambda item: item[1].rank)[0]

    def _emit(self, event: Event) -> None:
        if self._stopped:
            return  # after its bye, another node sends
        if self._warm and self.leader() == self._node.id:
            self.sender.send(event)
        else:
            self._recent.append((time.monotonic(), event))

    def _drop(self, node_id: str, replay_since: float | None) -> None:
        """Forget a node; when it led and died, send what it may not have."""
        peer = self._peers.get(node_id)
        if peer is None or node_id == self._node.id:
            return
        led = self.leader() == node_id
        with self._watch(peer.channels, peer.members):
            del self._peers[node_id]
        if led and self._warm and self.leader() == self._node.id:
            for when, event in list(self._recent):
                if replay_since is not None and when > replay_since:
                    self.sender.send(event)
            self._recent.clear()

    # -- the heartbeat ------------------------------------------------------------

    def _beat(self, pid: int) -> None:
        count = 0
        while self._started_pid == pid and not self._stopped:
            _runtime.sleep(HEARTBEAT)
            count += 1
            try:
                self._heartbeat(count)
            except Exception:  # pragma: no cover - the heartbeat must survive
                logger.exception("flask_realtime: webhook heartbeat failed")

    def _heartbeat(self, count: int) -> None:
        if count % STATE_EVERY == 0:
            with self._lock:
                state = {
                    "op": "state",
                    "channels": sorted(self._local_channels),
                    "members": {c: dict(m) for c, m in self._local_members.items()},
                }
            self._publish(state)
        else:
            self._publish({"op": "hb"})
        now = time.monotonic()
        with self._lock:
            if not self._node.broker.connected:
                # Deaf, not alone: silence while the link is down is ours,
                # and must not make every node drop (and "vacate") the others.
                for peer in self._peers.values():
                    peer.seen = now
            if not self._warm and now - self._started_at >= WARMUP:
                self._warm = True
                if self.leader() == self._node.id:
                    # No older node: this one heard every fact since it began.
                    for _, event in self._recent:
                        self.sender.send(event)
                    self._recent.clear()
            for node_id, peer in list(self._peers.items()):
                if node_id != self._node.id and now - peer.seen > EXPIRY:
                    self._drop(node_id, replay_since=peer.seen - HEARTBEAT)
            horizon = now - EXPIRY - 2 * HEARTBEAT
            while self._recent and self._recent[0][0] < horizon:
                self._recent.popleft()


def _pid() -> int:
    return os.getpid()
