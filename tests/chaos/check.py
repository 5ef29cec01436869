"""The chaos test's judge: did every client get every event exactly once?

Reads what ``swarm.py`` recorded. For each client and channel, every event
must carry the offset after the one before it (no gap, no duplicate, never
out of order), from the position of the client's first subscribe up to the
channel's final offset; each resubscribe must be ``recovered: true`` unless
that was impossible (the stream's epoch changed where the plan allows it,
or more events were missed than the channel keeps). Every offset means the
same event at every client, and every event a publisher was told was sent
has an offset.
"""

from __future__ import annotations

import collections
import typing as t


class Verdict:
    """Failures by kind (counted, with the first few examples) and figures."""

    def __init__(self) -> None:
        self.failures: dict[str, list[str]] = collections.defaultdict(list)
        self.counts: collections.Counter[str] = collections.Counter()

    def fail(self, kind: str, example: str) -> None:
        self.counts["failure." + kind] += 1
        if len(self.failures[kind]) < 5:
            self.failures[kind].append(example)

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        lines = [f"{key}: {value}" for key, value in sorted(self.counts.items())]
        for kind, examples in self.failures.items():
            lines.append(f"FAILED {kind}:")
            lines.extend("  " + example for example in examples)
        return "\n".join(lines)


def judge(
    results: list[dict[str, t.Any]], size: int, epoch_may_change: bool
) -> Verdict:
    verdict = Verdict()
    finals: dict[str, int] = results[0]["finals"]
    meaning: dict[tuple[str, str, int], tuple[int, int]] = {}
    for result in results:
        for number in result["unfinished"]:
            verdict.fail("unfinished", f"client {number} never caught up")
        for follower in result["followers"]:
            verdict.counts["clients." + follower["transport"]] += 1
            verdict.counts["sessions"] += follower["sessions"]
            for channel, log in follower["log"].items():
                where = (
                    f"client {follower['number']} ({follower['transport']}) {channel}"
                )
                _walk(
                    verdict,
                    where,
                    log,
                    finals[channel],
                    size,
                    epoch_may_change,
                    meaning,
                    channel,
                )
    _published(verdict, results, meaning)
    return verdict


def _walk(
    verdict: Verdict,
    where: str,
    log: list[list[t.Any]],
    final: int,
    size: int,
    epoch_may_change: bool,
    meaning: dict[tuple[str, str, int], tuple[int, int]],
    channel: str,
) -> None:
    expected: int | None = None  # the next offset due
    epoch = ""
    early: list[list[t.Any]] = []  # a session's events before its reply
    replied = False

    def take(entry: list[t.Any]) -> None:
        nonlocal expected
        offset, publisher, n = entry
        verdict.counts["events"] += 1
        if expected is None or offset != expected:
            kind = "duplicate" if expected and offset < expected else "gap"
            verdict.fail(kind, f"{where}: offset {offset}, expected {expected}")
            if expected is not None and offset < expected:
                return
        expected = offset + 1
        seen = meaning.setdefault((channel, epoch, offset), (publisher, n))
        if seen != (publisher, n):
            verdict.fail(
                "meaning", f"{where}: offset {offset} is {seen} and {(publisher, n)}"
            )

    def session_end() -> None:
        nonlocal early
        # Cut before the reply came: the events continue the stream (unless
        # the client never had a position: it starts afresh, as it should).
        if not replied and expected is not None:
            for entry in early:
                take(entry)
        early = []

    for entry in log:
        if entry[0] == "c":
            session_end()
            replied = False
            continue
        if entry[0] == "s":
            _, since, recovered, offset, new_epoch = entry
            replied = True
            verdict.counts[f"subscribed.recovered={recovered}"] += 1
            if since is None:
                if expected is not None:
                    verdict.fail("since", f"{where}: resubscribed without since")
            elif since["offset"] != (expected or 1) - 1:
                verdict.fail("since", f"{where}: since {since}, expected {expected}")
            if recovered is False:
                unavoidable = (epoch_may_change and new_epoch != epoch) or (
                    expected is not None and offset - (expected - 1) > size
                )
                if not unavoidable:
                    verdict.fail(
                        "needless recovered:false",
                        f"{where}: since {since}, position {offset} epoch "
                        f"{new_epoch!r} (was {epoch!r})",
                    )
            if recovered is not True:
                expected, epoch = offset + 1, new_epoch
            for early_entry in early:
                take(early_entry)
            early = []
            continue
        if replied:
            take(entry)
        else:
            early.append(entry)
    session_end()
    ended = None if expected is None else expected - 1
    if ended != final:
        verdict.fail("final", f"{where}: ended at {ended}, final {final}")


def _published(
    verdict: Verdict,
    results: list[dict[str, t.Any]],
    meaning: dict[tuple[str, str, int], tuple[int, int]],
) -> None:
    delivered = collections.Counter(
        (channel, value) for (channel, _, _), value in meaning.items()
    )
    for (channel, value), count in delivered.items():
        if count > 1:
            verdict.fail(
                "stored twice", f"{channel}: event {value} has {count} offsets"
            )
    for result in results:
        for publisher in result["publishers"] or ():
            if publisher is None:
                continue
            verdict.counts["publish.failed"] += publisher["failed"]
            for channel, numbers in publisher["sent"].items():
                for n in numbers:
                    verdict.counts["published"] += 1
                    if (channel, (publisher["publisher"], n)) not in delivered:
                        verdict.fail(
                            "lost", f"{channel}: event {(publisher['publisher'], n)}"
                        )
