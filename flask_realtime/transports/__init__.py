"""Transports move bytes between a connection's queue and the wire.

Each one turns requests into :class:`~flask_realtime.connection.Connection`
objects registered with the node, and a :class:`~flask_realtime.connection.Sink`
(its adapter: ``write``, ``close``, ``tick``) that carries them. No transport
knows about brokers, presence or channels.

Endpoints:

* ``websocket.py``: the WebSocket view; ``install`` adds the fast path;
* ``sse.py``: Server-Sent Events; ``longpoll.py``: long polls;
* ``send.py``: ``POST /send`` and ``/close`` for SSE and long-poll clients;
* ``http.py``: origins, CORS, identity (the app's ``authenticate``) and JSON
  errors, for all of them.

Queues read over HTTP: ``mailbox.py`` (numbered messages, a cursor) and
``pollbox.py`` (a long-poll connection's mailbox, expiry, the answer).

Server adapters, each documented at its top with the server it is for:

* ``handoff.py``: taking the socket out of the server's hands (pywsgi,
  gunicorn, Werkzeug);
* ``socket_session.py`` and ``flusher.py``: a detached socket under gevent,
  written by the node-wide flusher;
* ``longpoll_parked.py``: long polls parked on a socket of their own;
* ``ws_fastpath.py``: the handshake ahead of Flask's dispatch;
* ``ws_accept.py``: the upgrade's checks, the 101 and the session that follows;
* ``ws_session.py``: the WebSocket protocol, and its gevent session;
* ``ws_runner.py``: the greenlets that run WebSocket client messages;
* ``ws_threaded.py``: two threads per WebSocket, for ``flask run``;
* ``ws_geventwebsocket.py``: the hook on gevent-websocket's handler;
* ``ws_simple.py``: simple-websocket, for any other server.
"""
