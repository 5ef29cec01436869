"""``flask realtime``: commands for running and inspecting the realtime server.

``serve`` runs a server; ``stats``, ``channels``, ``presence``,
``broadcast`` and ``disconnect`` inspect and poke a running cluster through
its broker (see docs/admin.md).
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import typing as t

import click
from flask import current_app
from flask.cli import AppGroup, ScriptInfo

from . import channels as _channels
from . import strict_json
from .brokers import BrokerUnavailable
from .connection import user_key
from .node import admin
from .node.admin import Gathered
from .node.commands import CLOSE_DISCONNECTED, check_close_code

if t.TYPE_CHECKING:
    from .node import Node

realtime_cli = AppGroup("realtime", help="Realtime messaging commands.")

# Run in a fresh interpreter: gevent must patch the standard library before
# Flask, the app or any client library is imported, and by the time a Flask
# command runs the app usually is imported already.
_BOOT = (
    "from gevent import monkey; monkey.patch_all(); "
    "from flask_realtime.server.serve import main; main()"
)


@realtime_cli.command("serve", with_appcontext=False)
@click.option("--host", default=None, help="Interface (REALTIME_HOST, 0.0.0.0).")
@click.option("--port", type=int, default=None, help="Port (REALTIME_PORT, 6001).")
@click.option(
    "--transport",
    default=None,
    help="Transports to enable, comma-separated (REALTIME_TRANSPORTS).",
)
@click.pass_obj
def serve(
    info: ScriptInfo | None, host: str | None, port: int | None, transport: str | None
) -> None:
    """Serve the app and its realtime endpoints with gevent."""
    argv = [sys.executable, "-c", _BOOT]
    app_path = getattr(info, "app_import_path", None) or os.environ.get("FLASK_APP")
    if app_path:
        argv += ["--app", app_path]
    if host:
        argv += ["--host", host]
    if port is not None:
        argv += ["--port", str(port)]
    if transport:
        argv += ["--transport", transport]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


# -- admin commands -------------------------------------------------------------
#
# This process serves no connections: it asks every node over the broker
# (see flask_realtime/node/admin.py for how it knows all of them answered).
# With the null broker there is nobody to ask, and it says so.

_WAIT_HELP = (
    "Seconds to collect the nodes' answers when the broker cannot count them"
    " (RabbitMQ, NATS); the most to wait for a silent node on Redis."
)
_NULL_NOTE = (
    "note: REALTIME_BROKER is 'null': only this command's own process is seen;"
    " a running server is reachable only through a broker (redis, rabbitmq,"
    " nats)"
)


def _node() -> Node:
    """The current app's node, or a click error saying how to get one."""
    realtime = current_app.extensions.get("realtime")
    if realtime is None:
        raise click.ClickException(
            "the app does not use flask_realtime (call Realtime(app))."
        )
    node: Node = realtime.node
    return node


def _note_scope(node: Node) -> None:
    if not node.clustered:
        click.echo(_NULL_NOTE, err=True)


def _emit_json(value: t.Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False))


def _table(headers: list[str], rows: list[list[t.Any]]) -> None:
    """Aligned columns: numbers to the right, the rest to the left."""
    cells = [[str(value) for value in row] for row in rows]
    widths = [
        max([len(header)] + [len(row[i]) for row in cells])
        for i, header in enumerate(headers)
    ]
    numeric = [
        bool(rows) and all(isinstance(row[i], int) for row in rows)
        for i in range(len(headers))
    ]

    def line(values: list[str]) -> str:
        parts = [
            value.rjust(width) if right else value.ljust(width)
            for value, width, right in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    click.echo(line(headers))
    for row in cells:
        click.echo(line(row))


def _n(count: int, noun: str) -> str:
    """``1 node``, ``2 nodes``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _gather(node: Node, wait: float, **request: t.Any) -> Gathered:
    """Every node's report (``request``: see ``Admin.gather``), or a click
    error; a warning for each node the broker counted that stayed silent."""
    try:
        gathered = node.admin.gather(window=wait, **request)
    except BrokerUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    if gathered.missing:
        click.echo(
            f"warning: {_n(gathered.missing, 'node')} counted by the broker did"
            f" not answer within {wait} s (frozen, or cut off)",
            err=True,
        )
    return gathered


def _check_pattern(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> str | None:
    if value is None or value == "*":
        return value
    literal = value.replace("*", "")
    if not literal or not _channels.is_valid_name(literal):
        raise click.BadParameter(
            f"{value!r} is not a channel pattern: channel names use letters,"
            " digits and . _ - : = @ # (up to 200), and * matches any run of them"
        )
    return value


def _check_channel(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not _channels.is_valid_name(value):
        raise click.BadParameter(
            f"{value!r} is not a channel name: letters, digits and"
            " . _ - : = @ # (1 to 200 characters)"
        )
    return value


_json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON, for scripts."
)
_wait_option = click.option(
    "--wait",
    type=click.FloatRange(0.05, 60),
    default=admin.WINDOW,
    show_default=True,
    help=_WAIT_HELP,
)


@realtime_cli.command("stats")
@_json_option
@_wait_option
@click.option(
    "--top",
    type=click.IntRange(0),
    default=10,
    show_default=True,
    help="How many of the busiest channels to list.",
)
def stats(as_json: bool, wait: float, top: int) -> None:
    """The whole cluster: nodes, connections, channels, busiest channels."""
    node = _node()
    _note_scope(node)
    gathered = _gather(node, wait)
    channels = admin.channel_totals(gathered.reports)
    wire_only = ("channel_subscribers", "channels_truncated")
    nodes = [
        {k: v for k, v in report.items() if k not in wire_only}
        for report in gathered.reports
    ]
    summary = {
        "scope": gathered.scope,
        "broker": node.broker.kind,
        "nodes": nodes,
        "counted": gathered.counted,
        "missing": gathered.missing,
        "connections": sum(n["connections"] for n in nodes),
        "subscriptions": sum(n["subscriptions"] for n in nodes),
        "channels": len(channels),
        "channels_truncated": any(r["channels_truncated"] for r in gathered.reports),
        "top_channels": channels[:top],
    }
    if as_json:
        _emit_json(summary)
        return
    where = "Cluster" if gathered.scope == "cluster" else "This process"
    counted = "" if gathered.counted is None else f" of {gathered.counted} counted"
    click.echo(
        f"{where} ({summary['broker']} broker): {_n(len(nodes), 'node')} answered"
        f"{counted}; {_n(summary['connections'], 'connection')},"
        f" {_n(summary['channels'], 'channel')},"
        f" {_n(summary['subscriptions'], 'subscription')}"
    )
    if nodes:
        click.echo()
        _table(
            ["NODE", "HOST", "PID", "CONNECTIONS", "USERS", "CHANNELS", "TRANSPORTS"],
            [
                [
                    n["id"],
                    n["host"],
                    n["pid"],
                    n["connections"],
                    n["users"],
                    n["channels"],
                    ", ".join(f"{k} {v}" for k, v in sorted(n["transports"].items()))
                    or "-",
                ]
                for n in nodes
            ],
        )
    if summary["top_channels"]:
        click.echo()
        _table(
            ["TOP CHANNELS", "SUBSCRIBERS", "NODES"],
            [[c["name"], c["subscribers"], c["nodes"]] for c in channels[:top]],
        )


@realtime_cli.command("channels")
@click.argument("pattern", required=False, callback=_check_pattern)
@_json_option
@_wait_option
def channels_command(pattern: str | None, as_json: bool, wait: float) -> None:
    """Channels with subscribers, across the cluster (PATTERN: * is a wildcard)."""
    node = _node()
    _note_scope(node)
    gathered = _gather(node, wait, pattern=pattern)
    found = [
        {"name": c["name"], "kind": node.rules.kind(c["name"]), **c}
        for c in admin.channel_totals(gathered.reports)
    ]
    if as_json:
        _emit_json(
            {
                "scope": gathered.scope,
                "broker": node.broker.kind,
                "pattern": pattern,
                "answered": len(gathered.reports),
                "missing": gathered.missing,
                "channels": found,
            }
        )
        return
    if not found:
        matching = "" if pattern is None else f" matching {pattern!r}"
        click.echo(
            f"No channel{matching} has subscribers"
            f" ({_n(len(gathered.reports), 'node')} answered)."
        )
        return
    _table(
        ["CHANNEL", "KIND", "SUBSCRIBERS", "NODES"],
        [[c["name"], c["kind"], c["subscribers"], c["nodes"]] for c in found],
    )


@realtime_cli.command("presence")
@click.argument("channel", callback=_check_channel)
@_json_option
def presence(channel: str, as_json: bool) -> None:
    """Who is in a presence channel, across the cluster."""
    node = _node()
    if node.rules.kind(channel) != _channels.PRESENCE:
        raise click.BadParameter(
            f"{channel!r} is not a presence channel (their names start with"
            " 'presence-' or 'presence.')",
            param_hint="'CHANNEL'",
        )
    _note_scope(node)
    try:
        members = node.presence_members(channel)
    except BrokerUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    members.sort(key=lambda m: (m.get("connected_at", 0), str(m["user_id"])))
    if as_json:
        scope = "cluster" if node.clustered else "process"
        _emit_json({"scope": scope, "channel": channel, "members": members})
        return
    if not members:
        click.echo(f"Nobody is present in {channel!r}.")
        return
    _table(
        ["USER", "SINCE (UTC)", "INFO"],
        [
            [
                str(m["user_id"]),
                _utc(m.get("connected_at")),
                json.dumps(m.get("user_info"), ensure_ascii=False),
            ]
            for m in members
        ],
    )


def _utc(timestamp: t.Any) -> str:
    if not isinstance(timestamp, (int, float)):
        return "-"
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _parse_json(text: str) -> t.Any:
    """Strict JSON (what clients can parse), or a click error saying where
    it goes wrong."""
    try:
        json.loads(text)  # its errors say where
        return strict_json.loads(text)  # NaN, Infinity, lone surrogates
    except (ValueError, RecursionError) as exc:
        raise click.BadParameter(
            f'not JSON: {exc} (quote it for the shell: \'{{"text": "hi"}}\')',
            param_hint="'JSON'",
        ) from None


@realtime_cli.command("broadcast")
@click.argument("channel", callback=_check_channel)
@click.argument("event")
@click.argument("data", metavar="JSON")
@_json_option
def broadcast_command(channel: str, event: str, data: str, as_json: bool) -> None:
    """Send EVENT with JSON data to every subscriber of CHANNEL."""
    if not event or len(event) > 200:
        raise click.BadParameter(
            "an event name has 1 to 200 characters", param_hint="'EVENT'"
        )
    value = _parse_json(data)
    node = _node()
    _note_scope(node)
    try:
        node.control.check_connected()  # else it would wait in a buffer, and die
        node.broadcast(channel, event, value)
    except BrokerUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        _emit_json({"channel": channel, "event": event, "sent": True})
    else:
        click.echo(f"Sent {event!r} to {channel!r}.")


def _check_connection_id(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> str | None:
    node_id, dot, rest = (value or "").partition(".")
    if value is not None and not (node_id and dot and rest):
        raise click.BadParameter(
            f"{value!r} is not a connection id (<node id>.<token>, as in the"
            " client's connected message)"
        )
    return value


@realtime_cli.command("disconnect")
@click.option(
    "--user", "user_id", help="Close every connection of this user, on every node."
)
@click.option(
    "--connection",
    "connection_id",
    callback=_check_connection_id,
    help="Close this one connection.",
)
@click.option(
    "--code",
    type=int,
    default=CLOSE_DISCONNECTED,
    show_default=True,
    help="The close code: 4000-4099 tell the clients not to reconnect,"
    " 4200-4299 to reconnect at once.",
)
@_json_option
@_wait_option
def disconnect(
    user_id: str | None,
    connection_id: str | None,
    code: int,
    as_json: bool,
    wait: float,
) -> None:
    """Close a user's connections (every tab, every node), or one connection."""
    if (user_id is None) == (connection_id is None):
        raise click.UsageError("give exactly one of --user ID and --connection ID")
    if user_id == "":
        raise click.BadParameter("a user id is not empty", param_hint="'--user'")
    try:
        check_close_code(code)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--code'") from None
    node = _node()
    _note_scope(node)
    # Asked first, so the output can say what there was to close.
    gathered = _gather(
        node, wait, limit=0, user=user_key(user_id), connection=connection_id
    )
    found = sum(r.get("matched", 0) for r in gathered.reports)
    nodes = sum(1 for r in gathered.reports if r.get("matched"))
    realtime = current_app.extensions["realtime"]
    try:
        node.control.check_connected()
        realtime.disconnect(connection_id=connection_id, user_id=user_id, code=code)
    except BrokerUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        _emit_json(
            {
                "scope": gathered.scope,
                "user_id": user_id,
                "connection_id": connection_id,
                "code": code,
                "connections": found,
                "nodes": nodes,
                "missing": gathered.missing,
            }
        )
    elif user_id is not None and found:
        click.echo(
            f"Closing {_n(found, 'connection')} of user {user_id!r}"
            f" (on {_n(nodes, 'node')}) with code {code}."
        )
    elif found:
        click.echo(f"Closing connection {connection_id!r} with code {code}.")
    else:
        what = (
            f"User {user_id!r} has no open connection"
            if user_id is not None
            else f"Connection {connection_id!r} is not open"
        )
        click.echo(
            f"{what} ({_n(len(gathered.reports), 'node')} answered);"
            " the close was sent all the same."
        )
