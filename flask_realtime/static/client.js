/**
 * flask_realtime JavaScript client, wire protocol version 1.
 *
 * One dependency-free file: load it with `<script src="/realtime/client.js">`
 * (it defines the global `RealtimeClient`), `require()` it, or import the
 * ES module wrapper `client.mjs` next to it. Types are in `client.d.ts`.
 *
 *     const client = new RealtimeClient();            // the page's own server
 *     const room = client.subscribe("presence-room.1");
 *     room.on("message.sent", (data) => console.log(data));
 *     room.send("client-typing", { typing: true });
 *     const answer = await room.send("message.send", { text: "hi" }); // the handler's value
 *
 * It connects with the first transport that works (WebSocket, then
 * Server-Sent Events, then long-polling), reconnects with backoff, and
 * resubscribes every channel after a reconnect. On channels that keep a
 * history it remembers the last offset and epoch, resubscribes with `since`
 * so that the server replays what was missed, and drops any event it has
 * already delivered.
 */
(function (root, factory) {
  "use strict";
  const RealtimeClient = factory();
  if (typeof module === "object" && module && module.exports) {
    module.exports = RealtimeClient;
  } else {
    // Also the path taken when client.mjs imports this file as a module.
    root.RealtimeClient = RealtimeClient;
  }
})(typeof globalThis !== "undefined" ? globalThis : this, function () {
  "use strict";

  const TRANSPORTS = ["websocket", "sse", "longpolling"];

  const DEFAULTS = {
    prefix: "/realtime",
    paths: { websocket: "/ws", sse: "/sse", longpolling: "/poll", send: "/send", close: "/close" },
    transports: TRANSPORTS,
    params: {},
    headers: {},
    withCredentials: false,
    autoConnect: true,
    reconnect: true,
    minDelay: 1000,
    maxDelay: 30000,
    connectTimeout: 10000,
    pongTimeout: 10000,
    queueLimit: 1000,
    ackTimeout: 10000,
  };

  /** A connection that lasts this long (ms) resets the backoff. */
  const STABLE_AFTER = 5000;

  /** Connections closed with these codes must not come back (auth, origin, policy). */
  const isFinal = (code) => code >= 4000 && code <= 4099;
  /** The server is restarting: a new connection can be made at once. */
  const isImmediate = (code) => code >= 4200 && code <= 4299;
  /** A close code chosen by the server, as opposed to a network failure. */
  const isServerCode = (code) => code >= 4000 && code <= 4299;

  const isObject = (value) => value !== null && typeof value === "object" && !Array.isArray(value);
  /** `params` and `headers` may be functions, so a token can be fresh on each connection. */
  const resolve = (value) => (typeof value === "function" ? value() : value) || {};
  /** User ids compare by value on the server: 5 and "5" are one user. */
  const sameUser = (a, b) => String(a) === String(b);

  function parse(text) {
    try {
      const value = JSON.parse(text);
      return isObject(value) ? value : null;
    } catch (err) {
      return null;
    }
  }

  /** A listener that throws must not stop the others nor the client: rethrow it later. */
  function call(fn, args) {
    try {
      fn(...args);
    } catch (err) {
      setTimeout(() => {
        throw err;
      });
    }
  }

  /**
   * Why a `send()` promise was rejected: the server's error (`code` 400-599
   * and its `message`, e.g. a handler's rejection), or the client's own with
   * `code` 0 and a `reason`: "timeout", "disconnected" (the connection was
   * lost after the event went out: the server may have handled it),
   * "unsubscribed" or "queue full" (the event never went out).
   */
  class SendError extends Error {
    constructor(data) {
      super(data.message || `error ${data.code}`);
      this.name = "SendError";
      Object.assign(this, data);
    }
  }

  class Emitter {
    constructor() {
      this._listeners = new Map();
    }

    /** Call `fn` on each `event`; returns `this` so calls chain. */
    on(event, fn) {
      if (typeof fn !== "function") throw new TypeError("listener must be a function");
      if (!this._listeners.has(event)) this._listeners.set(event, new Set());
      this._listeners.get(event).add(fn);
      return this;
    }

    /** Remove one listener, every listener of `event`, or (no argument) all. */
    off(event, fn) {
      if (event === undefined) this._listeners.clear();
      else if (fn === undefined) this._listeners.delete(event);
      else if (this._listeners.has(event)) this._listeners.get(event).delete(fn);
      return this;
    }

    _emit(event, ...args) {
      const listeners = this._listeners.get(event);
      // A copy: a listener may add or remove listeners while we iterate.
      if (listeners) for (const fn of [...listeners]) call(fn, args);
    }
  }

  class Channel extends Emitter {
    constructor(client, name) {
      super();
      this.name = name;
      this.client = client;
      /** pending (waiting for a connection), subscribing, subscribed, unsubscribed or failed */
      this.state = "pending";
      /** Presence channels only: the members, kept current from the server's messages. */
      this.members = /^presence[-.]/.test(name) ? [] : null;
      /**
       * Channels with history: `{offset, epoch}` of the last event delivered
       * (or the position the server gave when there was none yet); null until
       * the server has said. Sent as `since` when resubscribing.
       */
      this.position = null;
      /** Subscribe replies so far: the next one is a resubscription once this is > 0. */
      this._replies = 0;
      /**
       * Events that came before the reply to a subscribe (SSE and long-poll
       * answer the subscribe in the POST while the stream goes on): held
       * until the reply says which position they follow.
       */
      this._held = null;
    }

    /**
     * Send a client event; queued while the client is connecting. Returns a
     * promise of the server's answer: the value the application's handler
     * returned (undefined for none, and for a relayed `client-` event), or a
     * rejection with a `SendError` (refused, failed, or no answer within
     * `options.timeout` ms, the client's `ackTimeout` by default). A promise
     * nobody awaits is harmless: a refusal is also an `error` event.
     */
    send(event, data, options) {
      if (this.state === "unsubscribed" || this.state === "failed") {
        throw new Error(`channel ${this.name} is ${this.state}`);
      }
      const message = { type: "event", channel: this.name, event };
      if (data !== undefined) message.data = data;
      return this.client._sendEvent(message, options && options.timeout);
    }

    unsubscribe() {
      this.client._unsubscribe(this);
    }

    /** What a subscribe carries: `since` when there is a position to recover from. */
    _since() {
      const p = this.position;
      return p && typeof p.epoch === "string" ? { offset: p.offset, epoch: p.epoch } : undefined;
    }

    _subscribed(data, sentSince) {
      const reply = isObject(data) ? data : {};
      const recovered = Boolean(sentSince) && reply.recovered === true;
      const server = reply.position;
      if (isObject(server) && Number.isInteger(server.offset)) {
        const mine = this.position;
        // Recovered: the missed events follow, so keep our own offset (the
        // server's is the newest, past them). Otherwise the server's position
        // is where this stream starts for us; events held meanwhile that are
        // newer still count.
        if (recovered && mine) this.position = { offset: mine.offset, epoch: server.epoch };
        else this.position = { offset: server.offset, epoch: server.epoch };
      } else if (sentSince) {
        this.position = null; // the channel keeps no history (any more)
      }
      this.state = "subscribed";
      if (this.members) {
        this.members = Array.isArray(reply.members) ? reply.members.slice() : [];
      }
      const resubscribed = this._replies++ > 0;
      const held = this._held || [];
      this._held = null;
      this._emit("subscribed", Object.assign({}, reply, { recovered, resubscribed }));
      for (const message of held) this._event(message);
    }

    /** A reconnect or a refusal: events held for a subscribe that got no reply are void. */
    _reset() {
      this._held = null;
    }

    _event(message) {
      if (this.state === "subscribing" && Number.isInteger(message.offset)) {
        (this._held = this._held || []).push(message);
        return;
      }
      const offset = message.offset;
      if (Number.isInteger(offset)) {
        const p = this.position;
        if (p && offset <= p.offset) return; // delivered already: a replay's overlap
        this.position = { offset, epoch: p ? p.epoch : undefined };
      }
      const data = message.data;
      if (this.members && isObject(data) && "user_id" in data) {
        // One entry per user: a join replaces, a leave removes.
        const others = this.members.filter((m) => !sameUser(m.user_id, data.user_id));
        if (message.event === "presence.join") this.members = others.concat([data]);
        else if (message.event === "presence.leave") this.members = others;
      }
      this._emit(message.event, data, message);
    }
  }

  /** The transports share the POST /send path, which must keep the messages in order. */
  class HttpSender {
    constructor(transport) {
      this.transport = transport;
      this.chain = Promise.resolve();
    }

    send(message) {
      // Never rejects: a rejected link would skip every later message.
      this.chain = this.chain.then(() => this._post(message)).catch(() => {});
    }

    async _post(message) {
      const transport = this.transport;
      const client = transport.client;
      if (transport.closed) return;
      let response;
      let body = null;
      try {
        response = await fetch(client._url("send"), {
          method: "POST",
          headers: Object.assign({}, resolve(client.options.headers), {
            "Content-Type": "application/json",
          }),
          credentials: client._credentials(),
          body: JSON.stringify({
            connection_id: transport.connectionId,
            token: transport.token,
            message,
          }),
        });
        body = await response.json().catch(() => null);
      } catch (err) {
        if (!transport.closed)
          client._reportSendFailure(transport, message, 0, `send failed: ${err}`);
        return;
      }
      if (transport.closed) return;
      // The reply envelope(s): usually a list, possibly one object, whatever the status.
      const replies = Array.isArray(body) ? body : isObject(body) && body.type ? [body] : [];
      for (const reply of replies) {
        if (isObject(reply) && !transport.closed) client._receive(transport, reply);
      }
      if (response.ok || replies.length || transport.closed) return;
      if (response.status === 404 || response.status === 401 || response.status === 403) {
        // The server no longer knows this connection (or its token): start afresh.
        transport._fail(1006, `connection expired (HTTP ${response.status})`, true);
        return;
      }
      const error = isObject(body) && isObject(body.error) ? body.error : {};
      const code = error.code || response.status;
      client._reportSendFailure(
        transport,
        message,
        code,
        error.message || `HTTP ${response.status}`,
      );
    }
  }

  const SUBPROTOCOL = "realtime.v1";

  class WebSocketTransport {
    constructor(client) {
      this.client = client;
      this.name = "websocket";
    }

    static available() {
      return typeof WebSocket !== "undefined";
    }

    open() {
      // Offering the protocol's subprotocol: the server selects it (a server
      // that ignored it would fail the connection in the browser).
      const ws = new WebSocket(this.client._url("websocket"), [SUBPROTOCOL]);
      this.ws = ws;
      ws.onmessage = (event) => this.client._receiveText(this, event.data);
      ws.onclose = (event) => this.client._closed(this, event.code, event.reason);
    }

    send(message) {
      this.ws.send(JSON.stringify(message));
    }

    close() {
      const ws = this.ws;
      if (!ws) return; // new WebSocket() threw
      ws.onmessage = ws.onclose = null;
      ws.close(1000);
    }
  }

  /** What SSE and long-polling share: POST /send, failing, and saying goodbye. */
  class HttpTransport {
    constructor(client, name) {
      this.client = client;
      this.name = name;
      this.sender = new HttpSender(this);
      this.closed = false;
    }

    send(message) {
      this.sender.send(message);
    }

    close() {
      this.closed = true;
      this._goodbye();
    }

    _fail(code, reason, immediate) {
      if (this.closed) return;
      this.close();
      this.client._closed(this, code, reason, immediate);
    }

    /**
     * Over HTTP nothing tells the server that we left (the other members of a
     * presence channel would wait for a timeout): POST /close says it. A
     * beacon, because it still goes out while the page unloads.
     */
    _goodbye() {
      if (this.token === undefined) return;
      const url = this.client._url("close");
      const body = JSON.stringify({ connection_id: this.connectionId, token: this.token });
      this.token = undefined; // once
      if (typeof navigator !== "undefined" && navigator.sendBeacon) {
        if (navigator.sendBeacon(url, body)) return;
      }
      fetch(url, {
        method: "POST",
        body,
        keepalive: true,
        credentials: this.client._credentials(),
      }).catch(() => {}); // best effort: the server times the connection out anyway
    }
  }

  class SSETransport extends HttpTransport {
    constructor(client) {
      super(client, "sse");
    }

    static available() {
      return typeof EventSource !== "undefined" && typeof fetch !== "undefined";
    }

    open() {
      const client = this.client;
      this.source = new EventSource(client._url("sse"), {
        withCredentials: Boolean(client.options.withCredentials),
      });
      this.source.onmessage = (event) => client._receiveText(this, event.data);
      // EventSource would reconnect by itself, but to a new connection the
      // client knows nothing of: close it and let the client reconnect.
      this.source.onerror = () => this._fail(1006, "event stream failed");
    }

    close() {
      super.close();
      if (!this.source) return; // new EventSource() threw
      this.source.onmessage = this.source.onerror = null;
      this.source.close();
    }
  }

  class LongPollTransport extends HttpTransport {
    constructor(client) {
      super(client, "longpolling");
      this.cursor = null;
    }

    static available() {
      return typeof fetch !== "undefined" && typeof AbortController !== "undefined";
    }

    open() {
      this.abort = new AbortController();
      this._loop();
    }

    close() {
      super.close();
      this.abort.abort();
    }

    async _loop() {
      const client = this.client;
      while (!this.closed) {
        const opening = this.connectionId === undefined;
        const query = opening
          ? {}
          : { connection_id: this.connectionId, token: this.token, cursor: this.cursor };
        let response;
        let body;
        try {
          response = await fetch(client._url("longpolling", query), {
            headers: resolve(client.options.headers),
            credentials: client._credentials(),
            cache: "no-store",
            signal: this.abort.signal,
          });
          body = response.ok ? await response.json() : null;
        } catch (err) {
          this._fail(1006, `poll failed: ${err}`);
          return;
        }
        if (this.closed) return;
        if (opening && (response.status === 401 || response.status === 403)) {
          // Refused authentication or origin: WebSocket's close codes 4001 and 4003.
          const code = response.status === 401 ? 4001 : 4003;
          this._fail(code, `connection refused (HTTP ${response.status})`);
          return;
        }
        if (!response.ok || !isObject(body)) {
          // 404 or 403 on a known connection: it expired, or the server lost
          // it; open a new one at once. 404 when opening: long-polling is
          // disabled, and the client falls back to the next transport.
          const expired = !opening && (response.status === 404 || response.status === 403);
          this._fail(1006, `poll answered HTTP ${response.status}`, expired);
          return;
        }
        if (body.cursor !== undefined) this.cursor = body.cursor;
        for (const message of Array.isArray(body.messages) ? body.messages : []) {
          if (this.closed) return;
          if (isObject(message)) client._receive(this, message);
        }
        if (opening && this.connectionId === undefined && !this.closed) {
          this._fail(1006, "poll opened no connection");
        }
      }
    }
  }

  const TRANSPORT_CLASSES = {
    websocket: WebSocketTransport,
    sse: SSETransport,
    longpolling: LongPollTransport,
  };

  /**
   * The server's base addresses for WebSocket and HTTP requests, from `url`
   * (ws, wss, http, https, relative, or empty for the page's origin) and the prefix.
   */
  function baseAddresses(url, prefix) {
    const page = typeof location !== "undefined" ? location : null;
    if (!url && !page) throw new TypeError("RealtimeClient needs a url outside a web page");
    const parsed = new URL(url || page.origin, page ? page.href : undefined);
    const secure = parsed.protocol === "https:" || parsed.protocol === "wss:";
    const path = `${parsed.pathname}/${prefix || ""}`.replace(/\/{2,}/g, "/").replace(/\/$/, "");
    return {
      websocket: `${secure ? "wss" : "ws"}://${parsed.host}${path}`,
      http: `${secure ? "https" : "http"}://${parsed.host}${path}`,
      query: parsed.searchParams,
    };
  }

  class RealtimeClient extends Emitter {
    /**
     * @param {string} [url] the server, e.g. "ws://localhost:6001"; empty: the page's origin
     * @param {object} [options] see client.d.ts
     */
    constructor(url, options) {
      super();
      if (isObject(url)) {
        options = url;
        url = "";
      }
      this.options = Object.assign({}, DEFAULTS, options);
      this.options.paths = Object.assign({}, DEFAULTS.paths, this.options.paths);
      for (const name of this.options.transports) {
        if (!TRANSPORT_CLASSES[name]) throw new TypeError(`unknown transport ${name}`);
      }
      this._base = baseAddresses(url, this.options.prefix);
      /** connecting, connected, reconnecting or disconnected */
      this.state = "disconnected";
      /** The server's id for the current connection; null while not connected. */
      this.connectionId = null;
      /** The name of the transport in use; null while not connected. */
      this.transport = null;
      this._conn = null;
      this._channels = new Map();
      this._pending = new Map();
      /** Events sent with an id, by id: `{resolve, reject, timer, sent}` until answered. */
      this._acks = new Map();
      this._queue = [];
      this._nextId = 1;
      this._attempts = 0;
      this._preferred = this.options.transports[0];
      this._timers = {};
      if (typeof addEventListener === "function") {
        // Back online: no point waiting out the backoff.
        addEventListener("online", () => {
          if (this._timers.reconnect) this._startAttempt();
        });
        // The page is going: an HTTP connection says goodbye while it still
        // can (a WebSocket is closed by the browser). Should the page come
        // back from the back-forward cache, the next poll or stream error
        // finds the connection gone and reconnects.
        addEventListener("pagehide", () => {
          if (this._conn && this._conn._goodbye) this._conn._goodbye();
        });
      }
      if (this.options.autoConnect) {
        // Deferred, so that listeners added right after `new` see the first state.
        this._autoConnect = true;
        Promise.resolve().then(() => this._autoConnect && this.connect());
      }
    }

    /** Start connecting; does nothing unless disconnected. */
    connect() {
      this._autoConnect = false;
      if (this.state === "disconnected") {
        this._attempts = 0;
        this._setState("connecting");
        this._startAttempt();
      }
      return this;
    }

    /** Close the connection and stop reconnecting. Channels are kept for `connect()`. */
    disconnect() {
      this._autoConnect = false;
      if (this.state !== "disconnected") {
        const conn = this._conn;
        this._teardown();
        if (conn) conn.close();
        this._stop(1000, "client disconnected", false);
      }
      return this;
    }

    /** The channel called `name`, subscribing to it unless already subscribed. */
    subscribe(name) {
      if (typeof name !== "string" || !name) throw new TypeError("channel name must be a string");
      let channel = this._channels.get(name);
      if (!channel) {
        channel = new Channel(this, name);
        this._channels.set(name, channel);
        if (this.state === "connected") this._subscribeOnWire(channel);
      }
      return channel;
    }

    /** The subscribed channel called `name`, or undefined. */
    channel(name) {
      return this._channels.get(name);
    }

    /**
     * `{"X-Socket-ID": connectionId}` while connected, else `{}`: send it
     * with a request whose view broadcasts with `exclude=socket_id()`, and
     * this connection does not get its own broadcast back.
     */
    socketIdHeaders() {
      return this.connectionId ? { "X-Socket-ID": this.connectionId } : {};
    }

    // -- internals ----------------------------------------------------------

    _setState(state) {
      if (state === this.state) return;
      const previous = this.state;
      this.state = state;
      this._emit("state", state, previous);
    }

    /** An endpoint's URL; `params` go to those that open connections, not to POST /send or /close. */
    _url(kind, extra) {
      const base = kind === "websocket" ? this._base.websocket : this._base.http;
      const url = new URL(base + this.options.paths[kind]);
      const params =
        kind === "send" || kind === "close"
          ? {}
          : { ...Object.fromEntries(this._base.query), ...resolve(this.options.params) };
      const query = { ...params, ...extra };
      for (const [key, value] of Object.entries(query)) {
        if (value !== undefined && value !== null) url.searchParams.set(key, String(value));
      }
      return url.toString();
    }

    _credentials() {
      return this.options.withCredentials ? "include" : "same-origin";
    }

    /** One connection attempt: each transport in turn, the last one that worked first. */
    _startAttempt() {
      clearTimeout(this._timers.reconnect);
      this._timers.reconnect = null;
      const usable = this.options.transports.filter((name) => TRANSPORT_CLASSES[name].available());
      this._candidates = usable.includes(this._preferred)
        ? [this._preferred].concat(usable.filter((name) => name !== this._preferred))
        : usable;
      this._failures = [];
      this._tryNextTransport();
    }

    _tryNextTransport() {
      const name = this._candidates.shift();
      if (!name) {
        const tried = this._failures.join("; ") || "no transport available";
        this._emit("error", { code: 0, message: `could not connect: ${tried}` });
        if (this.options.reconnect) this._scheduleReconnect(this._backoff());
        else this._stop(1006, "could not connect", false);
        return;
      }
      const conn = new TRANSPORT_CLASSES[name](this);
      this._conn = conn;
      this._timers.connect = setTimeout(() => {
        conn.close();
        this._closed(conn, 1006, "connect timeout");
      }, this.options.connectTimeout);
      try {
        conn.open();
      } catch (err) {
        // new WebSocket() throws for a bad URL or a blocked port.
        this._closed(conn, 1006, String(err));
      }
    }

    _backoff() {
      const { minDelay, maxDelay } = this.options;
      const ceiling = Math.min(maxDelay, minDelay * 2 ** this._attempts++);
      // Jitter, so that clients dropped together do not all come back together.
      return ceiling / 2 + (Math.random() * ceiling) / 2;
    }

    _scheduleReconnect(delay) {
      this._setState("reconnecting");
      this._timers.reconnect = setTimeout(() => this._startAttempt(), delay);
    }

    _teardown() {
      for (const timer of Object.values(this._timers)) {
        clearTimeout(timer);
        clearInterval(timer);
      }
      this._timers = {};
      this._conn = null;
      this._pending.clear();
      for (const [id, ack] of this._acks) {
        if (ack.sent) {
          this._settle(id, {
            code: 0,
            reason: "disconnected",
            message: "the connection was lost before the server answered",
          });
        }
      }
      this.connectionId = null;
      this.transport = null;
      for (const channel of this._channels.values()) {
        channel.state = "pending";
        channel._reset();
      }
    }

    _stop(code, reason, alreadyReported) {
      this._setState("disconnected");
      if (!alreadyReported) this._emit("disconnected", code, reason);
    }

    /** A transport closed or failed; `immediate` asks for a reconnect without backoff. */
    _closed(conn, code, reason, immediate) {
      if (conn !== this._conn) return; // an old connection's late news
      const wasConnected = this.state === "connected";
      this._teardown();
      if (!wasConnected && !isServerCode(code)) {
        // This transport cannot connect: fall back to the next one.
        this._failures.push(`${conn.name}: ${reason || code}`);
        this._tryNextTransport();
        return;
      }
      if (wasConnected) this._emit("disconnected", code, reason);
      if (isFinal(code) || !this.options.reconnect) {
        this._stop(code, reason, wasConnected);
      } else if ((isImmediate(code) || immediate) && this._attempts === 0) {
        // At once, but only once until a connection proves stable: a server
        // that keeps dropping new connections must not get a tight loop.
        this._attempts = 1;
        this._scheduleReconnect(0);
      } else {
        this._scheduleReconnect(this._backoff());
      }
    }

    _receiveText(conn, text) {
      const message = parse(text);
      if (message) this._receive(conn, message);
      else if (conn === this._conn)
        this._emit("error", { code: 0, message: "unreadable message from the server" });
    }

    _receive(conn, message) {
      if (conn !== this._conn) return;
      switch (message.type) {
        case "connected":
          this._connected(conn, isObject(message.data) ? message.data : {});
          break;
        case "event":
          if (message.channel === undefined) {
            this._emit(message.event, message.data, message); // a direct message
          } else {
            const channel = this._channels.get(message.channel);
            if (channel) channel._event(message);
          }
          break;
        case "subscribed": {
          const request = this._takeRequest(message.id);
          let channel = request ? request.channel : this._channels.get(message.channel);
          if (!channel && message.id === undefined && typeof message.channel === "string") {
            // realtime.subscribe() on the server: as if subscribed here. The
            // client's "subscribed" listeners get the channel first, so that
            // they can listen to it before its own "subscribed" and events.
            channel = new Channel(this, message.channel);
            channel.state = "subscribing";
            this._channels.set(channel.name, channel);
            this._emit("subscribed", channel);
          }
          if (channel && this._channels.get(channel.name) === channel)
            channel._subscribed(message.data, request && request.since);
          break;
        }
        case "unsubscribed": {
          if (this._takeRequest(message.id) || message.id !== undefined) break;
          // realtime.unsubscribe() on the server: as if unsubscribed here.
          const channel = this._channels.get(message.channel);
          if (channel) {
            this._channels.delete(channel.name);
            channel.state = "unsubscribed";
            channel._reset();
            channel._emit("unsubscribed");
            this._emit("unsubscribed", channel);
          }
          break;
        }
        case "ack":
          this._settle(message.id, null, message.data);
          break;
        case "pong":
          if (this._takeRequest(message.id)) this._alive();
          break;
        case "error":
          this._serverError(message);
          break;
        default:
          break; // a later protocol's message: ignore it
      }
    }

    _connected(conn, data) {
      clearTimeout(this._timers.connect);
      conn.connectionId = data.connection_id;
      if (data.token !== undefined) conn.token = data.token;
      this.connectionId = data.connection_id;
      this.transport = conn.name;
      this._preferred = conn.name;
      // Back to short delays once the connection has lasted a while.
      this._timers.stable = setTimeout(() => (this._attempts = 0), STABLE_AFTER);
      // Resubscribe and flush before telling anyone, so that a listener that
      // subscribes from "connected" does not subscribe twice.
      for (const channel of this._channels.values()) this._subscribeOnWire(channel);
      const queued = this._queue;
      this._queue = [];
      for (const message of queued) this._toWire(conn, message);
      const every = (Number(data.heartbeat) > 0 ? Number(data.heartbeat) : 25) * 1000;
      this._timers.heartbeat = setInterval(() => this._ping(), every);
      this._setState("connected");
      this._emit("connected", this.connectionId);
    }

    _request(message, info) {
      message.id = this._nextId++;
      this._pending.set(message.id, info);
      this._conn.send(message);
    }

    _takeRequest(id) {
      const info = this._pending.get(id);
      this._pending.delete(id);
      return info;
    }

    _subscribeOnWire(channel) {
      channel.state = "subscribing";
      const message = { type: "subscribe", channel: channel.name };
      const since = channel._since();
      if (since) message.since = since;
      this._request(message, { type: "subscribe", channel, since });
    }

    _unsubscribe(channel) {
      if (this._channels.get(channel.name) !== channel) return;
      this._channels.delete(channel.name);
      channel.state = "unsubscribed";
      const dropped = this._queue.filter((message) => message.channel === channel.name);
      this._queue = this._queue.filter((message) => message.channel !== channel.name);
      for (const message of dropped) {
        const error = { code: 0, reason: "unsubscribed", message: "not sent: unsubscribed" };
        this._settle(message.id, error);
      }
      if (this.state === "connected") {
        this._request(
          { type: "unsubscribe", channel: channel.name },
          { type: "unsubscribe", channel },
        );
      }
    }

    _send(message) {
      if (this.state === "connected") {
        this._toWire(this._conn, message);
      } else if (this._queue.length < this.options.queueLimit) {
        this._queue.push(message);
      } else {
        const error = {
          code: 0,
          message: "send queue full: message dropped",
          channel: message.channel,
        };
        this._settle(message.id, Object.assign({ reason: "queue full" }, error));
        this._emit("error", error);
      }
    }

    _toWire(conn, message) {
      const ack = message.id !== undefined && this._acks.get(message.id);
      if (ack) ack.sent = true;
      conn.send(message);
    }

    /** A client event with an id, whose answer (`ack` or `error`) settles the promise. */
    _sendEvent(message, timeout) {
      const limit = timeout === undefined ? this.options.ackTimeout : timeout;
      message.id = this._nextId++;
      const id = message.id;
      const answer = new Promise((resolve, reject) => {
        const ack = { resolve, reject, sent: false, timer: null };
        this._acks.set(id, ack);
        if (limit > 0 && Number.isFinite(limit)) {
          ack.timer = setTimeout(() => {
            // Still queued: it never goes out, so the rejection means "not sent".
            const queued = !ack.sent;
            if (queued) this._queue = this._queue.filter((m) => m !== message);
            const text = queued
              ? `not sent: no connection within ${limit} ms`
              : `no answer within ${limit} ms`;
            const channel = message.channel;
            this._settle(id, { code: 0, reason: "timeout", message: text, channel });
          }, limit);
        }
      });
      answer.catch(() => {}); // not awaited: no "unhandled rejection"
      this._send(message);
      return answer;
    }

    /** Settle the promise of the event `id`: with `error`'s data, or resolved with `data`. */
    _settle(id, error, data) {
      const ack = this._acks.get(id);
      if (!ack) return false; // an answer after the timeout, or not ours
      this._acks.delete(id);
      clearTimeout(ack.timer);
      if (error) ack.reject(new SendError(Object.assign({ id }, error)));
      else ack.resolve(data);
      return true;
    }

    /** No pong within `pongTimeout`: the connection is dead even if the socket says otherwise. */
    _ping() {
      if (this._timers.pong) return; // one ping at a time
      const conn = this._conn;
      this._timers.pong = setTimeout(() => {
        conn.close();
        this._closed(conn, 1006, "no pong: connection dead");
      }, this.options.pongTimeout);
      this._request({ type: "ping" }, { type: "ping" });
    }

    _alive() {
      clearTimeout(this._timers.pong);
      this._timers.pong = null;
    }

    _serverError(message) {
      const request = this._takeRequest(message.id);
      const error = Object.assign(
        { code: 0, message: "" },
        isObject(message.data) ? message.data : {},
      );
      if (message.channel !== undefined) error.channel = message.channel;
      if (message.id !== undefined) error.id = message.id;
      // A refused event rejects its promise, and is still told to the error
      // listeners as before promises.
      if (message.id !== undefined) this._settle(message.id, Object.assign({}, error));
      if (request && request.type === "ping") this._alive(); // refused (429) but answered
      const channel =
        request && request.channel ? request.channel : this._channels.get(message.channel);
      if (request && request.type === "subscribe" && this._channels.get(channel.name) === channel) {
        if (error.code === 429 && error.retry_after !== undefined) {
          // Rate limited: try again when the server says we may.
          channel.state = "pending";
          channel._reset();
          this._timers[`retry ${channel.name}`] = setTimeout(
            () => {
              if (this.state === "connected" && this._channels.get(channel.name) === channel) {
                this._subscribeOnWire(channel);
              }
            },
            Number(error.retry_after) * 1000,
          );
        } else {
          this._channels.delete(channel.name);
          channel.state = "failed";
        }
      }
      if (channel) channel._emit("error", error);
      this._emit("error", error);
    }

    /** A POST /send that got no reply envelope: surface it like a server error. */
    _reportSendFailure(conn, message, code, text) {
      if (message.type === "ping") return; // the pong timeout will tell
      const data = { code, message: text };
      this._receive(conn, { type: "error", id: message.id, channel: message.channel, data });
    }
  }

  RealtimeClient.Channel = Channel;
  RealtimeClient.SendError = SendError;
  RealtimeClient.PROTOCOL = 1;
  RealtimeClient.SUBPROTOCOL = SUBPROTOCOL;
  return RealtimeClient;
});
