"""The memory transport's recorder: every broadcast and direct message of an app.

``REALTIME_TRANSPORTS = ["memory"]`` (or ``REALTIME_TRANSPORT=memory``) gives
the app a :class:`Recorder` that observes its node (``Node.observe``), for
assertions in tests: ``realtime.recorder.assert_broadcast(channel, event)``.
"""

from __future__ import annotations

import typing as t


class _Any:
    def __eq__(self, other: object) -> bool:
        return True

    def __repr__(self) -> str:
        return "ANY"


ANY: t.Any = _Any()


class Record(t.NamedTuple):
    """One message the app sent: ``kind`` is ``"broadcast"``, ``"user"`` or
    ``"connection"``, ``target`` the channel, user id or connection id."""

    kind: str  # "broadcast", "user" or "connection"
    target: t.Any  # channel name, user id or connection id
    event: str
    data: t.Any


class Recorder:
    """Every broadcast and direct message of the app, for assertions in tests.

    :meth:`record` has the signature of a node observer.
    """

    def __init__(self) -> None:
        self.records: list[Record] = []

    def record(self, kind: str, target: t.Any, event: str, data: t.Any) -> None:
        self.records.append(Record(kind, target, event, data))

    def clear(self) -> None:
        """Forget what was recorded (between tests)."""
        self.records.clear()

    def broadcasts(self, channel: str | None = None) -> list[Record]:
        """The broadcasts, all or to ``channel``, oldest first."""
        return [
            r
            for r in self.records
            if r.kind == "broadcast" and channel in (None, r.target)
        ]

    def _assert(self, kind: str, target: t.Any, event: str, data: t.Any) -> Record:
        key = str(target) if kind == "user" else target
        for record in self.records:
            record_key = str(record.target) if kind == "user" else record.target
            if (
                record.kind == kind
                and record_key == key
                and record.event == event
                and data == record.data
            ):
                return record
        seen = "\n  ".join(repr(r) for r in self.records) or "(nothing)"
        raise AssertionError(
            f"no {kind} message {event!r} to {target!r} with data {data!r}; "
            f"recorded:\n  {seen}"
        )

    def assert_broadcast(self, channel: str, event: str, data: t.Any = ANY) -> Record:
        """The broadcast of ``event`` to ``channel`` (with ``data``, when given);
        AssertionError listing what was recorded when there is none."""
        return self._assert("broadcast", channel, event, data)

    def assert_sent_to_user(
        self, user_id: t.Any, event: str, data: t.Any = ANY
    ) -> Record:
        """The same for :meth:`Realtime.send_to_user` (``5`` and ``"5"`` match)."""
        return self._assert("user", user_id, event, data)

    def assert_sent(self, connection_id: str, event: str, data: t.Any = ANY) -> Record:
        """The same for :meth:`Realtime.send` to one connection."""
        return self._assert("connection", connection_id, event, data)

    def assert_nothing_broadcast(self) -> None:
        """AssertionError if anything was broadcast."""
        found = self.broadcasts()
        if found:
            raise AssertionError(f"expected no broadcast, got {found!r}")
