"""The floor under NATS history's cost: nats-py and nats-server alone.

Issue 10 asks history to keep at least 0.7x the broadcast rate without it.
With every event on a channel of its own (50 publishers, 50 channels), each
event must be a JetStream message of its own: the issue's layout keeps
``size`` messages per subject and replays by subject. This script measures
what that costs with no flask_realtime code at all, in one asyncio loop:

* ``plain``: batches of B core NATS messages to B subjects, then a flush (a
  PING answered), what a node does without history;
* ``stored``: the same B messages published to a JetStream stream (one
  subject each, ``max_msgs_per_subject``), the batch's last one asking for
  an acknowledgement, then the B messages sent live over core NATS once it
  came, what any design that stores each event before delivering it must do
  at least; with ``--headers N`` each stored message carries N of the
  headers flask_realtime's offsets need (0 to 3: the message id, the
  expected last subject sequence, the expected last message id).

A second connection subscribes to the live subjects and counts; the rate is
messages over the time until the last arrived. Runs alternate plain and
stored ``--rounds`` times; ratios are of the same round.

Usage::

    .venv/bin/python benchmarks/nats_floor.py [--count 50000] [--batch 50]
        [--rounds 5] [--headers 0,3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import nats
from nats.js import api

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]

from benchmarks.loadgen import read_cpu_s, self_cpu_s  # noqa: E402
from tests.brokerservers import BrokerServer  # noqa: E402

_PAYLOAD = b'{"offset":50,"type":"event","channel":"chat.room.1",' + b"x" * 47 + b"}"


async def one_run(
    url: str, count: int, batch: int, stored: bool, headers: int
) -> float:
    """Messages per second, first publish to last arrival."""
    publisher = await nats.connect(url)
    receiver = await nats.connect(url)
    stamp = time.monotonic_ns()
    live = [f"floor.live.{stamp}.{n}" for n in range(batch)]
    kept = [f"floor.kept.{stamp}.{n}" for n in range(batch)]
    got = 0
    done = asyncio.Event()

    async def on_message(msg: object) -> None:
        nonlocal got
        got += 1
        if got == count:
            done.set()

    await receiver.subscribe(f"floor.live.{stamp}.*", cb=on_message)
    await receiver.flush()
    js = publisher.jetstream()
    await js.add_stream(
        api.StreamConfig(
            name=f"floor_{stamp}",
            subjects=[f"floor.kept.{stamp}.*"],
            max_msgs_per_subject=100,
            storage=api.StorageType.FILE,
            duplicate_window=10.0,
        )
    )
    last_seq = [0] * batch
    ids = 0
    inbox = publisher.new_inbox()
    acks: asyncio.Queue[object] = asyncio.Queue()

    async def on_ack(msg: object) -> None:
        acks.put_nowait(msg)

    await publisher.subscribe(inbox, cb=on_ack)
    started = time.perf_counter()
    for _ in range(count // batch):
        if stored:
            previous = ""
            for n, name in enumerate(kept):
                ids += 1
                head: dict[str, str] = {}
                if headers >= 1:
                    head["Nats-Msg-Id"] = f"e.{ids}"
                if headers >= 2:
                    head["Nats-Expected-Last-Subject-Sequence"] = str(last_seq[n])
                if headers >= 3 and previous:
                    head["Nats-Expected-Last-Msg-Id"] = previous
                previous = f"e.{ids}"
                last = n == batch - 1
                await publisher.publish(
                    name, _PAYLOAD, reply=inbox if last else "", headers=head or None
                )
            answer = await acks.get()
            seq = json.loads(answer.data)["seq"]  # the batch's last one's
            last_seq = list(range(seq - batch + 1, seq + 1))
            for name in live:
                await publisher.publish(name, _PAYLOAD)
        else:
            for name in live:
                await publisher.publish(name, _PAYLOAD)
            await publisher.flush()
    await asyncio.wait_for(done.wait(), 60)
    elapsed = time.perf_counter() - started
    await publisher.close()
    await receiver.close()
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=50000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--headers", default="0,3")
    args = parser.parse_args()
    server = BrokerServer("nats", Path(tempfile.mkdtemp(prefix="nats-floor-")))
    server.start()
    assert server.process is not None
    try:
        for _ in range(args.rounds):
            rates = {}
            for kind in ["plain"] + [f"stored,{h}" for h in args.headers.split(",")]:
                headers = int(kind.split(",")[1]) if "," in kind else 0
                cpu = (self_cpu_s(), read_cpu_s(server.process.pid))
                rate = asyncio.run(
                    one_run(
                        server.url, args.count, args.batch, kind != "plain", headers
                    )
                )
                ours = (self_cpu_s() - cpu[0]) / args.count * 1e6
                theirs = (read_cpu_s(server.process.pid) - cpu[1]) / args.count * 1e6
                rates[kind] = rate
                label = "plain" if kind == "plain" else f"stored, {headers} header(s)"
                ratio = rate / rates["plain"]
                print(
                    f"{label:22} {rate:8.0f} messages/s (x{ratio:.2f});"
                    f" CPU per message: Python {ours:.1f} µs,"
                    f" nats-server {theirs:.1f} µs",
                    flush=True,
                )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
