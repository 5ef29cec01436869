/**
 * Types of the flask_realtime JavaScript client (wire protocol version 1).
 *
 * `client.js` defines the global `RealtimeClient` when loaded by a `<script>`
 * tag; `client.mjs` exports it as the default and as `RealtimeClient`.
 */

/** The client's connection state, as reported by the `state` event. */
export type ConnectionState =
  /** The first connection is being made (each transport in turn). */
  | "connecting"
  /** A connection is open and has received the server's `connected` message. */
  | "connected"
  /** A connection was lost or could not be made; the next attempt is scheduled or running. */
  | "reconnecting"
  /**
   * Not connected and not trying: before `connect()`, after `disconnect()`, or after a close code
   * 4000–4099.
   */
  | "disconnected";

/** The transports, in the order the client tries them by default. */
export type TransportName = "websocket" | "sse" | "longpolling";

/** A channel's subscription state. */
export type ChannelState =
  /** Waiting for a connection: the subscribe goes out when connected. */
  | "pending"
  /** Subscribe sent, reply awaited. */
  | "subscribing"
  | "subscribed"
  /**
   * `unsubscribe()` was called, or the server unsubscribed it: the object is
   * dead, `subscribe()` again for a new one.
   */
  | "unsubscribed"
  /** The server refused the subscription (the `error` event said why); the channel was dropped. */
  | "failed";

/** Query parameters or headers: a plain object, or a function called on each use (fresh tokens). */
export type Values = Record<string, string | number | boolean | null | undefined>;

export interface RealtimeOptions {
  /** The server's path prefix, `REALTIME_URL_PREFIX`. Default `"/realtime"`. */
  prefix?: string;
  /**
   * Endpoint paths under the prefix (`REALTIME_WEBSOCKET_PATH` …). Default `{websocket: "/ws",
   * sse: "/sse", longpolling: "/poll", send: "/send", close: "/close"}`. SSE and long-poll
   * connections say goodbye by `POST /close` (a beacon, also on `pagehide`), so that presence
   * channels see them leave at once.
   */
  paths?: Partial<Record<TransportName | "send" | "close", string>>;
  /** Transports to try, in order. Default `["websocket", "sse", "longpolling"]`. */
  transports?: TransportName[];
  /**
   * Added to the query string of the WebSocket, SSE and poll URLs (not of
   * `POST /send`, whose requests are bound to their connection by its token).
   * This is the way to pass a token that every transport can carry.
   */
  params?: Values | (() => Values);
  /**
   * Headers of the fetch requests: long-polls and `POST /send`. WebSocket and
   * EventSource cannot send headers: for a token they all see, use `params`
   * (or cookies).
   */
  headers?: Record<string, string> | (() => Record<string, string>);
  /**
   * Send cookies to a server of another origin (EventSource `withCredentials`, fetch `credentials:
   * "include"`). Same-origin cookies are always sent. Default false.
   */
  withCredentials?: boolean;
  /**
   * Connect on construction (in a microtask, so listeners added right after `new` hear
   * everything). Default true.
   */
  autoConnect?: boolean;
  /** Reconnect after a lost connection. Default true. */
  reconnect?: boolean;
  /**
   * First reconnect delay in ms; it doubles per failed attempt, with jitter (a random 50–100 %).
   * Default 1000.
   */
  minDelay?: number;
  /** Longest reconnect delay in ms. Default 30000. */
  maxDelay?: number;
  /**
   * A transport that has not received `connected` after this many ms counts as failed. Default
   * 10000.
   */
  connectTimeout?: number;
  /** A ping unanswered for this many ms means the connection is dead. Default 10000. */
  pongTimeout?: number;
  /**
   * Most messages kept while not connected; beyond it sends are dropped with an `error` event.
   * Default 1000.
   */
  queueLimit?: number;
  /**
   * How long a `channel.send()` promise waits for the server's answer, in ms, counted from the
   * call (time spent queued while connecting included); 0 or Infinity: no limit. Default 10000.
   */
  ackTimeout?: number;
}

/** Options of one `channel.send()`. */
export interface SendOptions {
  /** This send's `ackTimeout`, in ms. */
  timeout?: number;
}

/**
 * What `error` listeners receive.
 *
 * From the server: its error envelope's `data` (`code` 400, 401, 403, 404,
 * 413, 429 with `retry_after`, 500), plus the refused request's `channel`
 * and `id`. From the client itself: `code` 0 for a network failure (all
 * transports failed, a send failed, a full queue) or an HTTP status from
 * `POST /send`.
 */
export interface RealtimeError {
  code: number;
  message: string;
  channel?: string;
  id?: number | string;
  /** Seconds to wait, with code 429. */
  retry_after?: number;
  [key: string]: unknown;
}

/**
 * What a `channel.send()` promise is rejected with. From the server: its
 * error's `code` (403 or a handler's `Rejected` code, 404 not subscribed,
 * 429 rate limited, 500 the handler failed, …) and `message`. From the
 * client: `code` 0 and a `reason`.
 */
export declare class SendError extends Error implements RealtimeError {
  constructor(data: RealtimeError);
  readonly name: "SendError";
  code: number;
  channel?: string;
  id?: number | string;
  /**
   * The client's own reasons (`code` 0): `"timeout"` (no answer within the timeout: if the event
   * had gone out, the server may still have handled it; if it was still queued, it is dropped and
   * never sent), `"disconnected"` (the connection was lost after the event went out: it may have
   * been handled), `"unsubscribed"` and `"queue full"` (never sent).
   */
  reason?: "timeout" | "disconnected" | "unsubscribed" | "queue full";
  [key: string]: unknown;
}

/** A member of a presence channel, one per user. */
export interface Member {
  user_id: string | number;
  user_info?: unknown;
  /** Unix time of the user's first connection; present in the subscribe reply's list. */
  connected_at?: number;
}

/** Where a channel's stream stands: the offset of an event and the stream's epoch. */
export interface StreamPosition {
  /** 1 for the stream's first event, +1 per event; 0 before any. */
  offset: number;
  /** Changes whenever the stream's history may have been lost. */
  epoch: string;
}

/** What `subscribed` listeners receive: the reply's `data`, plus the client's two flags. */
export interface SubscribedData {
  /**
   * True when this subscription was a resubscription with `since` and the server
   * replayed every event missed meanwhile (they follow, each once, in order).
   * False otherwise: the first subscription, a channel without history, or a gap
   * the history could not fill (another epoch, events trimmed by `size` or `ttl`):
   * load the state again from the server.
   */
  recovered: boolean;
  /** False for the channel's first subscription, true after each reconnect. */
  resubscribed: boolean;
  /** Channels with history: the newest offset when the server answered. */
  position?: StreamPosition;
  /** Presence channels: the members. */
  members?: Member[];
  [key: string]: unknown;
}

/** A server → client message, as the protocol defines it. */
export interface Envelope {
  type: "connected" | "event" | "subscribed" | "unsubscribed" | "pong" | "error" | "ack";
  channel?: string;
  event?: string;
  data?: any;
  id?: number | string;
  /** An event on a channel with history: its place in the channel's stream. */
  offset?: number;
  /** A relayed client event: the sender's user id as the server knows it (null: anonymous). */
  user_id?: string | number | null;
}

export declare class Channel {
  /** The channel's name. */
  readonly name: string;
  readonly client: RealtimeClient;
  readonly state: ChannelState;
  /**
   * Presence channels: the members, replaced by each subscribe reply (so also
   * after a reconnect) and updated by `presence.join` / `presence.leave`
   * before their listeners run. Other channels: null.
   */
  readonly members: Member[] | null;
  /**
   * Channels with history: the offset of the last event delivered (or the
   * server's position when none has been yet) and the stream's epoch; null on
   * other channels and before the first reply. The client resubscribes from
   * it with `since` after a reconnect, and drops any event at or below it (a
   * duplicate).
   */
  readonly position: StreamPosition | null;

  /**
   * Each (re)subscription: the reply's `data` (`{members}` on presence
   * channels, `{position}` on channels with history) with `recovered` and
   * `resubscribed`. `recovered` false means events may have been missed:
   * reload the state, e.g. `room.on("subscribed", ({recovered}) => { if
   * (!recovered) reload(); })` (which also does the first load).
   */
  on(event: "subscribed", fn: (data: SubscribedData) => void): this;
  /** The server refused the subscription or a client event on this channel. */
  on(event: "error", fn: (error: RealtimeError) => void): this;
  /** The server unsubscribed this connection (`realtime.unsubscribe()`): the channel is dead. */
  on(event: "unsubscribed", fn: () => void): this;
  /** Another user joined or left (presence channels); `members` is already updated. */
  on(
    event: "presence.join" | "presence.leave",
    fn: (member: Member, message: Envelope) => void,
  ): this;
  /** An event on this channel: broadcasts and other clients' `client-` events. */
  on(event: string, fn: (data: any, message: Envelope) => void): this;
  /** Remove `fn`, every listener of `event`, or (no argument) every listener. */
  off(event?: string, fn?: (...args: any[]) => void): this;
  /**
   * Send a client event, queued while connecting. The server passes it to the
   * application's handler, or relays `client-`-prefixed events on private and
   * presence channels. The promise resolves with the server's `ack`: the
   * value the handler returned (`undefined` when it returned None, and for a
   * relayed event). It rejects with a {@link SendError}: the server refused
   * (also told to `error` listeners, as before), or the client gave up
   * (timeout, connection lost, unsubscribed). Nothing needs to await it: an
   * ignored rejection is not reported as unhandled. Throws at once on an
   * unsubscribed or failed channel.
   *
   * Changed in the release that added acknowledgements: `send()` returned the
   * channel (`this`) before; calls can no longer be chained.
   */
  send<T = any>(event: string, data?: unknown, options?: SendOptions): Promise<T>;
  /** Leave the channel; its listeners get nothing more. */
  unsubscribe(): void;
}

/**
 * A connection to a flask_realtime server that survives network trouble:
 * transport fallback, reconnects with backoff, resubscription, heartbeats.
 *
 * Close codes (`disconnected` event) follow the protocol: 4000–4099 stop the
 * client (4001 authentication failed, 4003 origin not allowed, 4008 policy),
 * 4200–4299 reconnect at once (once: a new connection dropped again within
 * 5 s backs off), anything else reconnects with exponential backoff and
 * jitter. SSE and long-polling have no close codes: a lost connection reports
 * 1006 (a poll or send answered 404, "connection expired", reconnects at
 * once), and a long-poll refused with HTTP 401/403 reports 4001/4003. An SSE
 * stream refused by the server cannot be told from a network failure
 * (EventSource hides the status), so the client moves on to the next
 * transport: keep "longpolling" after "sse" for refusals to be final.
 */
export declare class RealtimeClient {
  /**
   * @param url the server's base address: `ws://host:6001`, `wss://…`,
   *   `http(s)://…`, a path, or `""`/omitted for the page's origin. Endpoints
   *   are derived from it and `options.prefix`, e.g. `ws://host/realtime/ws`.
   */
  constructor(url?: string, options?: RealtimeOptions);
  constructor(options: RealtimeOptions);

  /** The protocol version this client speaks. */
  static readonly PROTOCOL: 1;
  /** The WebSocket subprotocol the client offers and the server selects. */
  static readonly SUBPROTOCOL: "realtime.v1";
  static readonly Channel: typeof Channel;
  static readonly SendError: typeof SendError;

  readonly options: Required<RealtimeOptions>;
  readonly state: ConnectionState;
  /** The server's id of the current connection; null while not connected. */
  readonly connectionId: string | null;
  /** The transport of the current connection; null while not connected. */
  readonly transport: TransportName | null;

  /** Start connecting (only needed with `autoConnect: false` or after `disconnect()`). */
  connect(): this;
  /** Close the connection and stop reconnecting; channels are kept for a later `connect()`. */
  disconnect(): this;
  /** The channel `name`: the existing object if already subscribed, else a new subscription. */
  subscribe(name: string): Channel;
  /** The subscribed channel `name`, if any. */
  channel(name: string): Channel | undefined;
  /**
   * `{"X-Socket-ID": connectionId}` while connected, else `{}`: for a request
   * whose view broadcasts with `exclude=socket_id()` ("to others"), e.g.
   * `fetch(url, {method: "POST", headers: {...client.socketIdHeaders()}})`.
   */
  socketIdHeaders(): { "X-Socket-ID"?: string };

  /** A connection is ready (also after each reconnect); channels are being resubscribed. */
  on(event: "connected", fn: (connectionId: string) => void): this;
  /**
   * A connection was lost, or the client stopped (`disconnect()`: code 1000;
   * a close code 4000–4099; reconnect disabled). `state` tells whether it
   * goes on trying.
   */
  on(event: "disconnected", fn: (code: number, reason: string) => void): this;
  /** Server errors (also those of channels) and transport failures. */
  on(event: "error", fn: (error: RealtimeError) => void): this;
  /**
   * The server subscribed this connection (`realtime.subscribe()`): the new
   * channel, before its own `subscribed` event and its events, so that
   * listeners added here miss nothing. Also on reconnects the client then
   * subscribes to it itself, as to its own channels.
   */
  on(event: "subscribed" | "unsubscribed", fn: (channel: Channel) => void): this;
  on(event: "state", fn: (state: ConnectionState, previous: ConnectionState) => void): this;
  /**
   * A direct message (`send(connection_id, …)`, `send_to_user(…)`: an event
   * without a channel). The names above are the client's own: do not use
   * them for direct messages.
   */
  on(event: string, fn: (data: any, message: Envelope) => void): this;
  /** Remove `fn`, every listener of `event`, or (no argument) every listener. */
  off(event?: string, fn?: (...args: any[]) => void): this;
}

export default RealtimeClient;

declare global {
  /** Set by `client.js` loaded with a `<script>` tag (or imported for its side effect). */
  var RealtimeClient: typeof import("./client").RealtimeClient;
}
