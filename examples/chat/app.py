"""A small chat: rooms, presence, typing indicators, direct messages, notifications.

Run it with the embedded defaults (one process, null broker)::

    flask --app examples/chat/app.py realtime serve --port 6001

then open http://127.0.0.1:6001/ in two browsers (or a normal and a private
window) and sign in with two names. See docs/chat-example.md.

A room's messages are its channel's history (``REALTIME_HISTORY``): kept
in the process on the null broker (a restart loses them), in Redis with
``REALTIME_BROKER=redis`` (they outlive a restart of the app). A page that
reconnects gets what it missed replayed, and reloads the room when the
history could not fill the gap. Conversations and the user directory are
kept in memory.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
import typing as t
from collections import deque
from functools import wraps

from flask import (
    Flask,
    abort,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from flask_realtime import Connection, Realtime, Rejected, broadcast, socket_id

app = Flask(__name__)
app.config["SECRET_KEY"] = os.environ.get("SECRET_KEY", "dev-only-chat-example-key")
# A demo listens on this machine only, unless told otherwise.
app.config["REALTIME_HOST"] = os.environ.get("REALTIME_HOST", "127.0.0.1")
HISTORY = 50  # messages kept per room and per conversation
# The rooms keep their last messages for a day: what a page shows when it
# opens a room, and what a reconnecting page is replayed (docs/history.md).
app.config["REALTIME_HISTORY"] = {"chat.room.*": {"size": HISTORY, "ttl": 86400}}
realtime = Realtime(app)

ROOMS: dict[int, str] = {1: "general", 2: "random", 3: "show-and-tell"}
TOPICS: dict[int, str] = {
    1: "Say hello; everyone is here",
    2: "Anything goes",
    3: "Share what you built this week",
}
MAX_TEXT = 500
MAX_NAME = 24

_dm_history: dict[str, deque[dict[str, t.Any]]] = {}
_directory: dict[str, str] = {}  # user id -> display name, everyone seen since start
_id_lock = threading.Lock()
_last_id = 0


# -- users ------------------------------------------------------------------


def user_id_for(name: str) -> str:
    """The user id a name stands for: ``"Ann Lee"`` -> ``"ann_lee"``.

    Only ``a-z 0-9 _``, so that two ids joined by ``-`` stay readable in a
    channel name. A name with no such letter gets a short hash instead.
    """
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:MAX_NAME]
    if not slug:
        slug = "u" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return slug


def clean_name(raw: t.Any) -> str:
    return " ".join(str(raw or "").split())[:MAX_NAME]


def current_user() -> tuple[str, str] | None:
    if "user_id" not in session:
        return None
    user_id, name = session["user_id"], session["name"]
    _directory.setdefault(user_id, name)  # after a restart, sessions outlive memory
    return user_id, name


def signed_in(view: t.Callable[..., t.Any]) -> t.Callable[..., t.Any]:
    @wraps(view)
    def wrapper(*args: t.Any, **kwargs: t.Any) -> t.Any:
        if current_user() is None:
            if request.method == "GET" and not request.path.startswith(
                ("/rooms/", "/dm/")
            ):
                return redirect(url_for("login"))
            return jsonify(error="sign in first"), 401
        return view(*args, **kwargs)

    return wrapper


# -- channels ---------------------------------------------------------------


def room_number(channel: str) -> int | None:
    """``chat.room.2`` or ``presence-room.2`` -> 2; None for an unknown room."""
    number = channel.rsplit(".", 1)[-1]
    if not number.isdigit() or int(number) not in ROOMS:
        return None
    return int(number)


def dm_channel(a: str, b: str) -> str:
    """The private channel of two users' conversation: ids sorted, joined by ``-``."""
    first, second = sorted((a, b))
    return f"private-chat.{first}-{second}"


def dm_users(channel: str) -> tuple[str, str] | None:
    match = re.fullmatch(r"private-chat\.([a-z0-9_]+)-([a-z0-9_]+)", channel)
    if match is None or match[1] >= match[2]:  # not sorted, or a user with themself
        return None
    return match[1], match[2]


@realtime.authenticate
def identify(handshake: t.Any) -> t.Any:
    """Each connection's user comes from the Flask session of its handshake."""
    user = current_user()
    if user is None:
        return None  # anonymous: public rooms only
    user_id, name = user
    return user_id, {"name": name}


@realtime.authorizer("presence-room.*")
def join_room(connection: Connection, channel: str) -> t.Any:
    if connection.user_id is None or room_number(channel) is None:
        return False
    return {"name": connection.user_info["name"]}  # the member's user_info


@realtime.authorizer("private-chat.*")
def join_conversation(connection: Connection, channel: str) -> bool:
    users = dm_users(channel)
    return users is not None and str(connection.user_id) in users


# -- messages ---------------------------------------------------------------


def clean_text(data: t.Any) -> str:
    text = data.get("text") if isinstance(data, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise Rejected("a message needs some text", code=400)
    return text.strip()[:MAX_TEXT]


def next_id() -> int:
    """Message ids: increasing, also across restarts (microseconds since 1970).

    Pages merge live and fetched messages by id, and sort by it.
    """
    global _last_id
    with _id_lock:
        _last_id = max(_last_id + 1, time.time_ns() // 1000)
        return _last_id


def new_message(user_id: str, name: str, text: str, **extra: t.Any) -> dict[str, t.Any]:
    return {
        "id": next_id(),
        "user_id": user_id,
        "name": name,
        "text": text,
        "time": time.time(),
        **extra,
    }


def post_to_room(
    room: int, user_id: str, name: str, text: str, exclude: str | None = None
) -> dict[str, t.Any]:
    """Store, broadcast (to all but the ``exclude`` connection), and notify
    whoever is mentioned with ``@user_id``."""
    message = new_message(user_id, name, text, room=room)
    broadcast(f"chat.room.{room}", "message.sent", message, exclude=exclude)
    mentioned = {m.lower() for m in re.findall(r"@([A-Za-z0-9_]+)", text)}
    for other in sorted(mentioned & _directory.keys() - {user_id}):
        realtime.send_to_user(
            other,
            "notification.new",
            {
                "kind": "mention",
                "title": f"{name} mentioned you in #{ROOMS[room]}",
                "text": text[:140],
                "room": room,
                "from": {"user_id": user_id, "name": name},
            },
        )
    return message


def post_to_conversation(
    channel: str, user_id: str, name: str, text: str
) -> dict[str, t.Any]:
    users = dm_users(channel)
    assert users is not None and user_id in users
    message = new_message(user_id, name, text, channel=channel)
    _dm_history.setdefault(channel, deque(maxlen=HISTORY)).append(message)
    broadcast(channel, "message.sent", message)
    other = users[1] if users[0] == user_id else users[0]
    realtime.send_to_user(
        other,
        "notification.new",
        {
            "kind": "dm",
            "title": f"New message from {name}",
            "text": text[:140],
            "channel": channel,
            "from": {"user_id": user_id, "name": name},
        },
    )
    return message


@realtime.on("message.send", channel="chat.room.*")
def send_to_room(connection: Connection, channel: str, data: t.Any) -> dict[str, t.Any]:
    """The page's way of posting: a client event on the room's channel.

    The stored message is the answer (the ack the page's ``send()`` resolves
    with): the page then shows it as sent.
    """
    room = room_number(channel)
    if connection.user_id is None or room is None:
        raise Rejected("sign in, in a room that exists")
    return post_to_room(
        room, connection.user_id, connection.user_info["name"], clean_text(data)
    )


@realtime.on("message.send", channel="private-chat.*")
def send_direct(connection: Connection, channel: str, data: t.Any) -> dict[str, t.Any]:
    # Only the two users could subscribe (join_conversation), and only
    # subscribers may send client events on a channel.
    return post_to_conversation(
        channel, connection.user_id, connection.user_info["name"], clean_text(data)
    )


# -- pages and HTTP API -----------------------------------------------------


@app.route("/login", methods=["GET", "POST"])
def login() -> t.Any:
    error = None
    if request.method == "POST":
        name = clean_name(request.form.get("name"))
        if name:
            user_id = user_id_for(name)
            session.clear()
            session.update(user_id=user_id, name=name)
            _directory[user_id] = name
            return redirect(url_for("index"))
        error = "Please enter a name."
    return render_template("login.html", error=error), 400 if error else 200


@app.post("/logout")
def logout() -> t.Any:
    session.clear()
    return redirect(url_for("login"))


@app.get("/")
@signed_in
def index() -> t.Any:
    user_id, name = t.cast("tuple[str, str]", current_user())
    return render_template(
        "chat.html",
        page={
            "me": {"user_id": user_id, "name": name},
            "rooms": [
                {"number": n, "name": label, "topic": TOPICS[n]}
                for n, label in ROOMS.items()
            ],
        },
    )


@app.get("/rooms/<int:room>/messages")
@signed_in
def room_messages(room: int) -> t.Any:
    if room not in ROOMS:
        abort(404)
    kept = realtime.channel(f"chat.room.{room}").history(limit=HISTORY)
    messages = [entry["data"] for entry in kept if entry["event"] == "message.sent"]
    return jsonify(room=room, name=ROOMS[room], messages=messages)


@app.post("/rooms/<int:room>/messages")
@signed_in
def create_room_message(room: int) -> t.Any:
    """Post without a realtime connection: a script, a bot, ``curl``.

    JSON only (``{"text": "..."}``): a cross-site form cannot send it. A page
    that posts here with its ``X-Socket-ID`` header (``client.socketIdHeaders()``)
    has the message in the response, and not again from the broadcast.
    """
    if room not in ROOMS:
        abort(404)
    data = request.get_json(silent=True)
    try:
        text = clean_text(data)
    except Rejected as exc:
        return jsonify(error=str(exc)), 400
    user_id, name = t.cast("tuple[str, str]", current_user())
    message = post_to_room(room, user_id, name, text, exclude=socket_id())
    return jsonify(message=message), 201


@app.get("/dm/<other>/messages")
@signed_in
def conversation_messages(other: str) -> t.Any:
    user_id, _ = t.cast("tuple[str, str]", current_user())
    if other == user_id or not re.fullmatch(r"[a-z0-9_]+", other):
        abort(404)
    channel = dm_channel(user_id, other)
    return jsonify(
        channel=channel,
        user={"user_id": other, "name": _directory.get(other, other)},
        messages=list(_dm_history.get(channel, ())),
    )


@app.get("/rooms/<int:room>/members")
@signed_in
def room_members(room: int) -> t.Any:
    """Who is in a room now, from the server's side (the page gets it live)."""
    if room not in ROOMS:
        abort(404)
    return jsonify(
        members=realtime.channel(f"presence-room.{room}").get_presence_data()
    )
