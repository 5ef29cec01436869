"""config.py: defaults, validation and the seed's environment fallbacks."""

from __future__ import annotations

import copy
import os
import re
import typing as t
import weakref

import pytest
from flask import Flask

from flask_realtime import ConfigError, Realtime, extension
from flask_realtime import config as rt_config


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """init_app reads these as fallbacks; these tests set exactly the ones they need."""
    for key in list(os.environ):
        if key.startswith(("REALTIME_", "REDIS_", "RABBITMQ_")) or key in (
            "NATS_URL",
            "AMQP_URL",
        ):
            monkeypatch.delenv(key)


@pytest.fixture(autouse=True)
def _own_initialised_apps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep this module's apps out of the process-wide set the accessors read."""
    monkeypatch.setattr(extension, "_initialised", weakref.WeakSet())


def load(**overrides: t.Any) -> rt_config.Settings:
    return rt_config.load({**rt_config.DEFAULTS, **overrides})


def allow(connection: object, channel: str) -> bool:
    return True


# -- defaults --------------------------------------------------------------------


def test_defaults_load() -> None:
    settings = load()
    assert settings.transports == ("websocket", "sse", "longpolling")
    assert settings.broker == "null"
    assert settings.broker_url is None
    assert settings.redis == {
        "host": "127.0.0.1",
        "port": 6379,
        "password": None,
        "db": 0,
    }
    assert settings.rabbitmq["exchange"] == "realtime"
    assert settings.rabbitmq["port"] == 5672
    assert settings.rabbitmq["queue_durable"] is False
    assert settings.nats_url == "nats://127.0.0.1:4222"
    assert settings.url_prefix == "/realtime"
    assert settings.websocket_path == "/ws"
    assert settings.sse_path == "/sse"
    assert settings.longpoll_path == "/poll"
    assert settings.host == "0.0.0.0"
    assert settings.port == 6001
    assert settings.heartbeat == 25
    assert settings.longpoll_timeout == 30
    assert settings.max_message_size == 64 * 1024
    assert settings.max_subscriptions == 100
    assert settings.rate_limit_enabled is True
    assert settings.messages_per_minute == 60
    assert settings.rate_limit_close_after >= 1
    assert settings.allowed_origins == ()
    assert settings.shutdown_timeout == 10
    assert settings.forward_timeout == 10
    assert settings.presence_query_timeout == 2


def test_cluster_request_timeouts_may_be_fractions() -> None:
    settings = load(REALTIME_FORWARD_TIMEOUT=2.5, REALTIME_PRESENCE_QUERY_TIMEOUT=0.5)
    assert settings.forward_timeout == 2.5
    assert settings.presence_query_timeout == 0.5


def test_shutdown_timeout_may_be_a_fraction_or_zero() -> None:
    assert load(REALTIME_SHUTDOWN_TIMEOUT=2.5).shutdown_timeout == 2.5
    assert load(REALTIME_SHUTDOWN_TIMEOUT=0).shutdown_timeout == 0


def test_defaults_are_set_on_the_app_config() -> None:
    app = Flask(__name__)
    Realtime(app)
    for key, value in rt_config.DEFAULTS.items():
        assert app.config[key] == value, key


# -- valid values ----------------------------------------------------------------


def test_transports_as_a_comma_separated_string() -> None:
    settings = load(REALTIME_TRANSPORTS="memory, websocket,,websocket")
    assert settings.transports == ("memory", "websocket")


def test_every_transport_is_accepted() -> None:
    settings = load(REALTIME_TRANSPORTS=list(rt_config.TRANSPORTS))
    assert settings.transports == rt_config.TRANSPORTS


@pytest.mark.parametrize("broker", rt_config.BROKERS)
def test_every_broker_is_accepted(broker: str) -> None:
    assert load(REALTIME_BROKER=broker).broker == broker


def test_numbers_may_be_floats_where_seconds_are_meant() -> None:
    settings = load(REALTIME_HEARTBEAT=0.5, REALTIME_LONGPOLL_TIMEOUT=2.5)
    assert settings.heartbeat == 0.5
    assert settings.longpoll_timeout == 2.5


def test_paths_lose_a_trailing_slash_and_the_prefix_may_be_empty() -> None:
    settings = load(REALTIME_URL_PREFIX="", REALTIME_WEBSOCKET_PATH="/socket/")
    assert settings.url_prefix == ""
    assert settings.websocket_path == "/socket"


def test_partial_rate_limit_is_completed_with_defaults() -> None:
    settings = load(REALTIME_RATE_LIMIT={"messages_per_minute": 5})
    assert settings.rate_limit_enabled is True
    assert settings.messages_per_minute == 5
    settings = load(REALTIME_RATE_LIMIT={"enabled": False})
    assert settings.rate_limit_enabled is False
    assert settings.messages_per_minute == 60
    settings = load(REALTIME_RATE_LIMIT={"close_after": 3})
    assert settings.rate_limit_close_after == 3
    assert settings.user_messages_per_minute == 120
    settings = load(REALTIME_RATE_LIMIT={"user_messages_per_minute": 7})
    assert settings.user_messages_per_minute == 7


def test_connection_limits_default_and_none() -> None:
    settings = load()
    assert settings.max_connections == 20_000
    assert settings.max_connections_per_ip == 1000
    settings = load(REALTIME_MAX_CONNECTIONS=None, REALTIME_MAX_CONNECTIONS_PER_IP=None)
    assert settings.max_connections is None
    assert settings.max_connections_per_ip is None


def test_partial_rabbitmq_is_completed_with_defaults() -> None:
    settings = load(REALTIME_RABBITMQ={"host": "mq", "queue_durable": True})
    assert settings.rabbitmq["host"] == "mq"
    assert settings.rabbitmq["queue_durable"] is True
    assert settings.rabbitmq["exchange"] == "realtime"


def test_partial_redis_is_completed_with_defaults() -> None:
    settings = load(REALTIME_REDIS={"host": "cache", "db": 3})
    assert settings.redis == {
        "host": "cache",
        "port": 6379,
        "password": None,
        "db": 3,
    }


def test_allowed_origins_as_a_string_lose_trailing_slashes() -> None:
    settings = load(REALTIME_ALLOWED_ORIGINS="https://a.example/, https://b.example")
    assert settings.allowed_origins == ("https://a.example", "https://b.example")


def test_port_bounds() -> None:
    assert load(REALTIME_PORT=65535).port == 65535
    assert load(REALTIME_PORT=1).port == 1


# -- invalid values: every key, each error naming it ------------------------------

BAD_VALUES = [
    ("REALTIME_TRANSPORTS", []),
    ("REALTIME_TRANSPORTS", ""),
    ("REALTIME_TRANSPORTS", None),
    ("REALTIME_TRANSPORTS", 5),
    ("REALTIME_TRANSPORTS", {"websocket": True}),
    ("REALTIME_TRANSPORTS", ["ws"]),
    ("REALTIME_TRANSPORTS", ["websocket", "carrier-pigeon"]),
    ("REALTIME_TRANSPORTS", "websocket,smoke-signals"),
    ("REALTIME_BROKER", "kafka"),
    ("REALTIME_BROKER", "Redis"),
    ("REALTIME_BROKER", None),
    ("REALTIME_BROKER", 5),
    ("REALTIME_BROKER_URL", 5),
    ("REALTIME_BROKER_URL", ["redis://"]),
    ("REALTIME_REDIS", "redis://localhost"),
    ("REALTIME_REDIS", {"hots": "localhost"}),
    ("REALTIME_RABBITMQ", "amqp://"),
    ("REALTIME_RABBITMQ", {"exchnage": "x"}),
    ("REALTIME_RABBITMQ", {"port": "5672"}),
    ("REALTIME_RABBITMQ", {"port": True}),
    ("REALTIME_RABBITMQ", {"prefetch_count": 1.5}),
    ("REALTIME_RABBITMQ", {"queue_durable": "yes"}),
    ("REALTIME_RABBITMQ", {"host": 5}),
    ("REALTIME_NATS_URL", ""),
    ("REALTIME_NATS_URL", 5),
    ("REALTIME_URL_PREFIX", "realtime"),
    ("REALTIME_URL_PREFIX", 5),
    ("REALTIME_WEBSOCKET_PATH", "ws"),
    ("REALTIME_WEBSOCKET_PATH", ""),
    ("REALTIME_WEBSOCKET_PATH", None),
    ("REALTIME_SSE_PATH", "sse"),
    ("REALTIME_SSE_PATH", ""),
    ("REALTIME_LONGPOLL_PATH", "poll"),
    ("REALTIME_LONGPOLL_PATH", ""),
    ("REALTIME_HOST", ""),
    ("REALTIME_HOST", 5),
    ("REALTIME_PORT", -1),
    ("REALTIME_PORT", 65536),
    ("REALTIME_PORT", True),
    ("REALTIME_PORT", "6001"),
    ("REALTIME_PORT", 6001.0),
    ("REALTIME_HEARTBEAT", 0),
    ("REALTIME_HEARTBEAT", -1),
    ("REALTIME_HEARTBEAT", True),
    ("REALTIME_HEARTBEAT", "25"),
    ("REALTIME_HEARTBEAT", None),
    ("REALTIME_LONGPOLL_TIMEOUT", -1),
    ("REALTIME_LONGPOLL_TIMEOUT", True),
    ("REALTIME_LONGPOLL_TIMEOUT", "30"),
    ("REALTIME_MAX_MESSAGE_SIZE", 0),
    ("REALTIME_MAX_MESSAGE_SIZE", -1),
    ("REALTIME_MAX_MESSAGE_SIZE", True),
    ("REALTIME_MAX_MESSAGE_SIZE", 1024.5),
    ("REALTIME_MAX_MESSAGE_SIZE", "64k"),
    ("REALTIME_MAX_SUBSCRIPTIONS", 0),
    ("REALTIME_MAX_SUBSCRIPTIONS", -5),
    ("REALTIME_MAX_SUBSCRIPTIONS", False),
    ("REALTIME_MAX_SUBSCRIPTIONS", True),
    ("REALTIME_MAX_QUEUE_MESSAGES", 0),
    ("REALTIME_MAX_QUEUE_MESSAGES", True),
    ("REALTIME_MAX_QUEUE_BYTES", 0),
    ("REALTIME_MAX_QUEUE_BYTES", -1),
    ("REALTIME_BACKPRESSURE_BYTES", 0),
    ("REALTIME_BACKPRESSURE_BYTES", True),
    ("REALTIME_RATE_LIMIT", []),
    ("REALTIME_RATE_LIMIT", 60),
    ("REALTIME_RATE_LIMIT", {"per_minute": 5}),
    ("REALTIME_RATE_LIMIT", {"enabled": "yes"}),
    ("REALTIME_RATE_LIMIT", {"enabled": 1}),
    ("REALTIME_RATE_LIMIT", {"messages_per_minute": 0}),
    ("REALTIME_RATE_LIMIT", {"messages_per_minute": -1}),
    ("REALTIME_RATE_LIMIT", {"messages_per_minute": True}),
    ("REALTIME_RATE_LIMIT", {"messages_per_minute": 1.5}),
    ("REALTIME_RATE_LIMIT", {"messages_per_minute": "60"}),
    ("REALTIME_RATE_LIMIT", {"close_after": 0}),
    ("REALTIME_RATE_LIMIT", {"close_after": -3}),
    ("REALTIME_RATE_LIMIT", {"user_messages_per_minute": 0}),
    ("REALTIME_RATE_LIMIT", {"user_messages_per_minute": "120"}),
    ("REALTIME_MAX_CONNECTIONS", 0),
    ("REALTIME_MAX_CONNECTIONS", -1),
    ("REALTIME_MAX_CONNECTIONS", True),
    ("REALTIME_MAX_CONNECTIONS", 1.5),
    ("REALTIME_MAX_CONNECTIONS", "100"),
    ("REALTIME_MAX_CONNECTIONS_PER_IP", 0),
    ("REALTIME_MAX_CONNECTIONS_PER_IP", False),
    ("REALTIME_MAX_CONNECTIONS_PER_IP", "10"),
    ("REALTIME_ALLOWED_ORIGINS", 5),
    ("REALTIME_ALLOWED_ORIGINS", [5]),
    ("REALTIME_AUTHORIZERS", []),
    ("REALTIME_AUTHORIZERS", {"private-*": "not callable"}),
    ("REALTIME_AUTHORIZERS", {5: allow}),
    ("REALTIME_SHUTDOWN_TIMEOUT", -1),
    ("REALTIME_SHUTDOWN_TIMEOUT", "10"),
    ("REALTIME_SHUTDOWN_TIMEOUT", True),
    ("REALTIME_SHUTDOWN_TIMEOUT", None),
    ("REALTIME_FORWARD_TIMEOUT", 0),
    ("REALTIME_FORWARD_TIMEOUT", "10"),
    ("REALTIME_PRESENCE_QUERY_TIMEOUT", 0),
    ("REALTIME_PRESENCE_QUERY_TIMEOUT", None),
]


@pytest.mark.parametrize(
    ("key", "value"),
    BAD_VALUES,
    ids=[f"{key}={value!r}" for key, value in BAD_VALUES],
)
def test_bad_value_raises_config_error_naming_the_key(key: str, value: t.Any) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        load(**{key: value})


def test_unknown_rate_limit_option_is_named() -> None:
    with pytest.raises(ConfigError, match="per_minute"):
        load(REALTIME_RATE_LIMIT={"enabled": True, "per_minute": 5})


def test_unknown_rabbitmq_option_is_named() -> None:
    with pytest.raises(ConfigError, match="exchnage"):
        load(REALTIME_RABBITMQ={"exchnage": "x"})


def test_unknown_transport_is_named() -> None:
    with pytest.raises(ConfigError, match="carrier-pigeon"):
        load(REALTIME_TRANSPORTS=["websocket", "carrier-pigeon"])


@pytest.mark.parametrize(
    "redis", [{"port": "6379"}, {"port": True}, {"db": "0"}, {"host": 5}]
)
def test_redis_option_of_the_wrong_type(redis: dict[str, t.Any]) -> None:
    # REALTIME_RABBITMQ options are type-checked at init_app; REALTIME_REDIS
    # options deserve the same, rather than failing at the first connection.
    with pytest.raises(ConfigError, match="REALTIME_REDIS"):
        load(REALTIME_REDIS=redis)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# -- environment fallbacks ---------------------------------------------------------


def test_empty_environment_gives_nothing() -> None:
    assert rt_config.environment_defaults(environ={}) == {}


def test_unrelated_environment_is_ignored() -> None:
    assert rt_config.environment_defaults(environ={"PATH": "/bin", "HOME": "/"}) == {}


def test_realtime_transport_memory() -> None:
    found = rt_config.environment_defaults(environ={"REALTIME_TRANSPORT": "memory"})
    assert found == {"REALTIME_TRANSPORTS": ["memory"]}


def test_realtime_transport_list() -> None:
    found = rt_config.environment_defaults(
        environ={"REALTIME_TRANSPORT": "websocket, sse"}
    )
    assert found == {"REALTIME_TRANSPORTS": ["websocket", "sse"]}


def test_realtime_transport_with_a_trailing_comma() -> None:
    found = rt_config.environment_defaults(
        environ={"REALTIME_TRANSPORT": "websocket, sse, "}
    )
    assert found == {"REALTIME_TRANSPORTS": ["websocket", "sse"]}


def test_realtime_broker_and_url() -> None:
    found = rt_config.environment_defaults(
        environ={
            "REALTIME_BROKER": " redis ",
            "REALTIME_BROKER_URL": "redis://h:1/2",
        }
    )
    assert found == {
        "REALTIME_BROKER": "redis",
        "REALTIME_BROKER_URL": "redis://h:1/2",
    }


def test_redis_variables() -> None:
    found = rt_config.environment_defaults(
        environ={
            "REDIS_HOST": "cache.local",
            "REDIS_PORT": "6380",
            "REDIS_PASSWORD": "pw",
            "REDIS_DB": "2",
        }
    )
    assert found == {
        "REALTIME_REDIS": {
            "host": "cache.local",
            "port": 6380,
            "password": "pw",
            "db": 2,
        }
    }


@pytest.mark.parametrize("name", ["REDIS_PORT", "REDIS_DB"])
def test_redis_integer_variables_must_be_integers(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        rt_config.environment_defaults(environ={name: "six"})


def test_rabbitmq_variables_are_typed() -> None:
    found = rt_config.environment_defaults(
        environ={
            "RABBITMQ_HOST": "mq.local",
            "RABBITMQ_PORT": "5673",
            "RABBITMQ_USER": "u",
            "RABBITMQ_PASSWORD": "p",
            "RABBITMQ_VHOST": "/v",
            "RABBITMQ_EXCHANGE": "ex",
            "RABBITMQ_EXCHANGE_TYPE": "fanout",
            "RABBITMQ_PREFETCH_COUNT": "10",
            "RABBITMQ_QUEUE_PREFIX": "q",
            "RABBITMQ_QUEUE_DURABLE": "true",
            "RABBITMQ_QUEUE_EXCLUSIVE": "False",
            "RABBITMQ_QUEUE_AUTO_DELETE": "0",
            "RABBITMQ_PERSISTENT_MESSAGES": "yes",
        }
    )
    assert found == {
        "REALTIME_RABBITMQ": {
            "host": "mq.local",
            "port": 5673,
            "user": "u",
            "password": "p",
            "vhost": "/v",
            "exchange": "ex",
            "exchange_type": "fanout",
            "prefetch_count": 10,
            "queue_prefix": "q",
            "queue_durable": True,
            "queue_exclusive": False,
            "queue_auto_delete": False,
            "persistent_messages": True,
        }
    }


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("on", True),
        ("false", False),
        ("0", False),
        ("no", False),
        ("off", False),
    ],
)
def test_rabbitmq_booleans(raw: str, expected: bool) -> None:
    found = rt_config.environment_defaults(environ={"RABBITMQ_QUEUE_DURABLE": raw})
    assert found == {"REALTIME_RABBITMQ": {"queue_durable": expected}}


def test_rabbitmq_boolean_that_is_not_one_fails_loudly() -> None:
    # "treu" silently meaning False would be a typo that surfaces much later.
    with pytest.raises(ConfigError, match="RABBITMQ_QUEUE_DURABLE"):
        rt_config.environment_defaults(environ={"RABBITMQ_QUEUE_DURABLE": "treu"})


def test_rabbitmq_port_must_be_an_integer() -> None:
    with pytest.raises(ConfigError, match="RABBITMQ_PORT"):
        rt_config.environment_defaults(environ={"RABBITMQ_PORT": "amqp"})


def test_nats_url() -> None:
    found = rt_config.environment_defaults(environ={"NATS_URL": "nats://n:4223"})
    assert found == {"REALTIME_NATS_URL": "nats://n:4223"}


@pytest.mark.parametrize(
    ("broker", "environ", "url"),
    [
        ("redis", {"REDIS_URL": "redis://r:6380/2"}, "redis://r:6380/2"),
        ("rabbitmq", {"RABBITMQ_URL": "amqp://q:5673/%2F"}, "amqp://q:5673/%2F"),
        ("rabbitmq", {"AMQP_URL": "amqp://a:5674/%2F"}, "amqp://a:5674/%2F"),
        # The chosen broker's variable only: a Redis URL is no RabbitMQ URL.
        ("rabbitmq", {"REDIS_URL": "redis://r:6380/2"}, None),
        # REALTIME_BROKER_URL says it for every broker, and wins.
        (
            "redis",
            {"REDIS_URL": "redis://r:6380/2", "REALTIME_BROKER_URL": "redis://b/1"},
            "redis://b/1",
        ),
    ],
)
def test_the_url_variables_people_set_choose_the_broker_url(
    broker: str, environ: dict[str, str], url: str | None
) -> None:
    found = rt_config.environment_defaults(environ=environ)
    settings = rt_config.load(
        {**rt_config.DEFAULTS, **found, "REALTIME_BROKER": broker}
    )
    assert settings.broker_url == url


def test_a_url_key_must_be_a_string() -> None:
    with pytest.raises(ConfigError, match="REALTIME_REDIS_URL"):
        rt_config.load({**rt_config.DEFAULTS, "REALTIME_REDIS_URL": 6379})


def test_environment_values_pass_validation() -> None:
    env = {
        "REALTIME_TRANSPORT": "memory,websocket",
        "REALTIME_BROKER": "nats",
        "REDIS_HOST": "r",
        "REDIS_PORT": "1",
        "RABBITMQ_QUEUE_DURABLE": "true",
        "RABBITMQ_PORT": "5673",
        "NATS_URL": "nats://n:4223",
    }
    settings = rt_config.load(
        {**rt_config.DEFAULTS, **rt_config.environment_defaults(environ=env)}
    )
    assert settings.transports == ("memory", "websocket")
    assert settings.broker == "nats"
    assert settings.redis["host"] == "r" and settings.redis["port"] == 1
    assert settings.rabbitmq["queue_durable"] is True
    assert settings.rabbitmq["port"] == 5673
    assert settings.nats_url == "nats://n:4223"


# -- through init_app ----------------------------------------------------------------


def test_environment_is_used_when_flask_config_is_silent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REALTIME_TRANSPORT", "memory")
    monkeypatch.setenv("NATS_URL", "nats://env:4222")
    monkeypatch.setenv("REDIS_HOST", "env-redis")
    app = Flask(__name__)
    realtime = Realtime(app)
    assert app.config["REALTIME_TRANSPORTS"] == ["memory"]
    assert app.config["REALTIME_NATS_URL"] == "nats://env:4222"
    settings = realtime.node.settings
    assert settings.transports == ("memory",)
    assert settings.redis["host"] == "env-redis"
    realtime.recorder.clear()  # available: the memory transport is on


def test_flask_config_wins_over_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REALTIME_TRANSPORT", "memory")
    monkeypatch.setenv("NATS_URL", "nats://env:4222")
    monkeypatch.setenv("REDIS_HOST", "env-redis")
    app = Flask(__name__)
    app.config.update(
        REALTIME_TRANSPORTS=["websocket"],
        REALTIME_NATS_URL="nats://config:4222",
        REALTIME_REDIS={"host": "config-redis"},
    )
    realtime = Realtime(app)
    settings = realtime.node.settings
    assert settings.transports == ("websocket",)
    assert settings.nats_url == "nats://config:4222"
    assert settings.redis["host"] == "config-redis"
    with pytest.raises(RuntimeError):
        realtime.recorder  # noqa: B018 - memory is not enabled


def test_wrong_value_fails_at_init_app() -> None:
    app = Flask(__name__)
    app.config["REALTIME_HEARTBEAT"] = "fast"
    with pytest.raises(ConfigError, match="REALTIME_HEARTBEAT"):
        Realtime(app)
    assert "realtime" not in app.extensions


def test_wrong_environment_value_fails_at_init_app(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REALTIME_TRANSPORT", "pigeon")
    with pytest.raises(ConfigError, match="REALTIME_TRANSPORTS"):
        Realtime(Flask(__name__))


def test_wrong_value_fails_at_init_app_in_the_factory_pattern() -> None:
    realtime = Realtime()
    app = Flask(__name__)
    app.config["REALTIME_RATE_LIMIT"] = {"enabled": True, "per_minute": 5}
    with pytest.raises(ConfigError, match="REALTIME_RATE_LIMIT"):
        realtime.init_app(app)


def test_apps_do_not_share_mutable_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    # A private copy, so that a failure here cannot leak into other tests.
    monkeypatch.setattr(rt_config, "DEFAULTS", copy.deepcopy(rt_config.DEFAULTS))
    first = Flask(__name__)
    Realtime(first)
    # An app (or a test) adjusting its own settings in place...
    first.config["REALTIME_TRANSPORTS"].append("memory")
    first.config["REALTIME_RATE_LIMIT"]["messages_per_minute"] = 1
    first.config["REALTIME_AUTHORIZERS"]["user.*"] = allow
    # ...must not change the defaults of the next app.
    second = Flask(__name__)
    realtime = Realtime(second)
    assert second.config["REALTIME_TRANSPORTS"] == ["websocket", "sse", "longpolling"]
    assert second.config["REALTIME_RATE_LIMIT"] == {
        "enabled": True,
        "messages_per_minute": 60,
    }
    assert second.config["REALTIME_AUTHORIZERS"] == {}
    assert realtime.node.settings.messages_per_minute == 60
