"""limits.py and deployment.py: counting connections, and telling a
deployment that cannot work, without a server."""

from __future__ import annotations

import time
import typing as t

import pytest

from flask_realtime import config as rt_config
from flask_realtime import deployment, limits
from flask_realtime.limits import Admission
from flask_realtime.ratelimit import RateLimiter, SharedLimiter, UserBuckets


def settings(**overrides: t.Any) -> rt_config.Settings:
    return rt_config.load({**rt_config.DEFAULTS, **overrides})


class Conn:
    def __init__(self, cid: str, user_key: str | None = None) -> None:
        self.id = cid
        self.user_key = user_key
        self.rate: t.Any = None


def environ(address: str = "10.0.0.1", **extra: t.Any) -> dict[str, t.Any]:
    return {"REMOTE_ADDR": address, "wsgi.multithread": True, **extra}


def test_per_address_limit_and_release() -> None:
    admission = Admission(settings(REALTIME_MAX_CONNECTIONS_PER_IP=2))
    conns = []
    for n in range(2):
        assert admission.refusal(environ()) is None
        conns.append(Conn(f"c{n}"))
        admission.opened(conns[-1])
    status, message = t.cast(tuple, admission.refusal(environ()))
    assert status == 429 and "10.0.0.1" in message
    assert admission.refusal(environ("10.0.0.2")) is None  # another address
    admission.closed(conns[0])
    admission.closed(conns[0])  # twice: released once
    assert admission.by_address == {"10.0.0.1": 1}
    assert admission.refusal(environ()) is None


def test_node_limit() -> None:
    admission = Admission(settings(REALTIME_MAX_CONNECTIONS=1))
    assert admission.refusal(environ()) is None
    admission.opened(Conn("a"))
    assert t.cast(tuple, admission.refusal(environ("10.9.9.9")))[0] == 503
    admission.closed(Conn("a"))
    assert admission.open == 0 and admission.by_address == {}


def test_users_share_a_bucket_that_goes_with_their_last_connection() -> None:
    admission = Admission(settings(REALTIME_RATE_LIMIT={"user_messages_per_minute": 3}))
    first, second, anonymous = Conn("a", "5"), Conn("b", "5"), Conn("c")
    for conn in (first, second, anonymous):
        admission.opened(conn)
    assert isinstance(first.rate, SharedLimiter)
    assert first.rate.user is second.rate.user
    assert isinstance(anonymous.rate, RateLimiter)
    now = time.monotonic()
    results = [c.rate.check(now) for c in (first, second, first, second)]
    assert results[:3] == [0.0, 0.0, 0.0] and results[3] > 0
    assert second.rate.strikes == 1 and first.rate.strikes == 0
    admission.closed(first)
    assert len(admission.users) == 1
    admission.closed(second)
    assert len(admission.users) == 0


def test_rate_limit_disabled_gives_no_limiter() -> None:
    admission = Admission(settings(REALTIME_RATE_LIMIT={"enabled": False}))
    conn = Conn("a", "5")
    admission.opened(conn)
    assert conn.rate is None


def test_user_buckets_count_connections() -> None:
    buckets = UserBuckets(10)
    bucket = buckets.take("u")
    assert buckets.take("u") is bucket
    buckets.give_back("u")
    assert len(buckets) == 1
    buckets.give_back("u")
    buckets.give_back("u")  # more than taken: harmless
    assert len(buckets) == 0


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"wsgi.multiprocess": True, "wsgi.multithread": True}, "REALTIME_BROKER"),
        (
            {"wsgi.multithread": False, "gunicorn.socket": object()},
            "flask_realtime.gunicorn.Worker",
        ),
        ({"wsgi.multithread": False}, None),  # a test client, not a server
        ({"wsgi.multiprocess": False, "wsgi.multithread": True}, None),
    ],
)
def test_request_problem(env: dict[str, t.Any], problem: str | None) -> None:
    found = deployment.request_problem(settings(), env)
    assert (found is None) if problem is None else (problem in t.cast(str, found))


def test_several_workers_are_fine_with_a_broker() -> None:
    env = {"wsgi.multiprocess": True, "wsgi.multithread": True}
    assert deployment.request_problem(settings(REALTIME_BROKER="redis"), env) is None


@pytest.mark.parametrize(
    ("argv", "env", "problem"),
    [
        (["-k", "gevent", "-w", "2", "app:app"], {}, "REALTIME_BROKER"),
        (["-k", "gevent", "app:app"], {"WEB_CONCURRENCY": "3"}, "REALTIME_BROKER"),
        (["app:app"], {"GUNICORN_CMD_ARGS": "-k gevent -w 4"}, "REALTIME_BROKER"),
        (["app:app"], {}, "flask_realtime.gunicorn.Worker"),
        (["-k", "gevent", "-w", "1", "app:app"], {}, None),
    ],
)
def test_startup_problem_from_gunicorn_options(
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    env: dict[str, str],
    problem: str | None,
) -> None:
    monkeypatch.setattr("sys.argv", ["gunicorn", *argv])
    environ = {"SERVER_SOFTWARE": "gunicorn/27.0.1", **env}
    found = deployment.startup_problem(settings(), environ)
    assert (found is None) if problem is None else (problem in t.cast(str, found))


def test_no_startup_problem_outside_gunicorn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["flask", "run"])
    assert deployment.startup_problem(settings(), {"WEB_CONCURRENCY": "4"}) is None


def test_handshakes_in_flight_count_until_they_open_or_expire(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(limits.time, "monotonic", lambda: clock[0])
    admission = Admission(settings(REALTIME_MAX_CONNECTIONS_PER_IP=2))
    assert admission.refusal(environ()) is None
    assert admission.refusal(environ()) is None  # both in flight, none open
    assert t.cast(tuple, admission.refusal(environ()))[0] == 429
    admission.opened(Conn("a"))  # one opens: still two held
    assert t.cast(tuple, admission.refusal(environ()))[0] == 429
    clock[0] += limits.PENDING_FOR + 1  # the other was abandoned
    assert admission.refusal(environ("10.0.0.2")) is None  # sweeps the rest
    assert admission.by_address == {"10.0.0.1": 1}
    assert "10.0.0.1" not in admission._pending
    assert admission.refusal(environ()) is None
