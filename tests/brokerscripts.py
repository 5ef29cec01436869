"""Broker scripts for the broker tests: Python processes of their own (to run
under gevent's monkey patching, or to fork), and how the tests run them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import typing as t

from tests.brokerclients import ROOT

if t.TYPE_CHECKING:
    from tests.brokerservers import BrokerServer


def script_env() -> dict[str, str]:
    """The environment of a script: this process's, as a test has it now."""
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def script_argv(code: str, *args: str) -> list[str]:
    """The command line that runs ``code`` (dedented) with ``args``."""
    return [sys.executable, "-c", textwrap.dedent(code), *args]


def run_script(code: str, *args: str, timeout: float = 120) -> str:
    """Run ``code`` (dedented) in a Python process of its own; its output."""
    done = subprocess.run(
        script_argv(code, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=script_env(),
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


#: The script's side of :func:`run_restarting_script`: ask for the restart,
#: then publish on ``c:room`` until ``got`` has a message again (the script
#: has ``got``, ``publisher`` and gevent).
AWAIT_RESTART = """
    print("restart please", flush=True)
    assert sys.stdin.readline().strip() == "restarted"
    n = 0
    while not any(d.startswith(b"after") for t, d in got):
        n += 1
        assert n < 300, "no message after the restart"
        publisher.publish("c:room", b"after %d" % n)
        gevent.sleep(0.1)
"""


def run_restarting_script(code: str, server: BrokerServer) -> list[str]:
    """Run ``code`` against ``server``, restarting the server when the script
    prints ``restart please`` (and answering ``restarted``); its lines."""
    process = subprocess.Popen(
        script_argv(code, server.url),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=script_env(),
        cwd=ROOT,
    )
    watchdog = threading.Timer(120, process.kill)
    watchdog.start()
    try:
        assert process.stdout is not None and process.stdin is not None
        lines = []
        for line in process.stdout:
            lines.append(line.strip())
            if line.strip() == "restart please":
                server.restart()
                process.stdin.write("restarted\n")
                process.stdin.flush()
        assert process.wait(timeout=60) == 0, process.stderr.read()  # type: ignore[union-attr]
        return lines
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()


def script_head(kind: str) -> str:
    """The start of a broker script run by :func:`run_script`.

    ``{patch}`` is left for the caller (gevent's monkey patching, or nothing);
    the script gets ``settings()`` for the broker at ``sys.argv[1]`` and
    ``wait_for(predicate)``.
    """
    return _SCRIPT_HEAD.replace("KIND", kind)


_SCRIPT_HEAD = """
    import copy, os, sys, threading, time
    {patch}
    from flask_realtime import config as _config
    from flask_realtime.brokers import create_broker

    def settings():
        values = copy.deepcopy(_config.DEFAULTS)
        values.update(REALTIME_BROKER="KIND", REALTIME_BROKER_URL=sys.argv[1])
        return _config.load(values)

    def wait_for(predicate, timeout=10):
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.01)
"""

# A broker used before a fork: the child connects anew, keeping its topics,
# and the parent keeps every message.
FORK_SCRIPT = """
    got = []
    def on_message(topic, data):
        got.append((topic, data))

    broker = create_broker(settings(), on_message)
    broker.subscribe("c:shared")
    publisher = create_broker(settings(), lambda *a: None)
    publisher.publish("c:shared", b"before the fork")
    wait_for(lambda: len(got) == 1)

    pid = os.fork()
    if pid == 0:
        # Idle first: under gevent the parent's reader greenlet lives on in
        # the child, and must not take the parent's messages meanwhile.
        time.sleep(1.0)
        # Then the child connects anew, keeping the topics its node
        # subscribed, and adds its own.
        got.clear()
        broker.subscribe("c:child")
        assert broker.publish("c:child", b"to the child") in (1, None)
        broker.publish("c:shared", b"child says hello")
        wait_for(lambda: (b"child says hello" in [d for _, d in got]))
        assert (b"to the child" in [d for _, d in got])
        print("child: has its own messages", flush=True)
        os._exit(0)
    # Meanwhile the parent keeps every message: its connection is untouched.
    for n in range(200):
        publisher.publish("c:shared", b"parent %d" % n)
        time.sleep(0.002)
    _, status = os.waitpid(pid, 0)
    assert status == 0, status
    publisher.publish("c:shared", b"after the child")
    wait_for(lambda: (b"after the child" in [d for _, d in got]))
    mine = [d for t, d in got if d.startswith(b"parent ")]
    assert mine == [b"parent %d" % n for n in range(200)], mine
    assert (b"child says hello" in [d for _, d in got])
    print("parent: all", len(mine), flush=True)
"""
