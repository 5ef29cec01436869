// The JavaScript client's recovery bookkeeping, against a scripted fake
// WebSocket: `since` on resubscribes, duplicates dropped by offset, events
// that come before the subscribe reply held until it. Run by
// tests/test_js_client_recovery.py with `node --test`.
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { test } from "node:test";

const require = createRequire(import.meta.url);
const RealtimeClient = require("../../flask_realtime/static/client.js");

/** The sockets the client opened, newest last; the test plays the server. */
const sockets = [];

class FakeWebSocket {
  constructor(url) {
    this.url = url;
    this.sent = [];
    sockets.push(this);
  }
  send(text) {
    this.sent.push(JSON.parse(text));
  }
  close() {}
  /** The server says `message`. */
  deliver(message) {
    this.onmessage({ data: JSON.stringify(message) });
  }
  /** The network drops the connection. */
  cut() {
    this.onclose({ code: 1006, reason: "cut" });
  }
  /** The last subscribe this socket carried. */
  subscribe() {
    return this.sent.filter((m) => m.type === "subscribe").at(-1);
  }
}
globalThis.WebSocket = FakeWebSocket;

const until = async (check) => {
  const deadline = Date.now() + 2000;
  while (!check()) {
    assert.ok(Date.now() < deadline, `still false: ${check}`);
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
};

/** A connected client subscribed to `name`, recording what its listeners hear. */
async function setUp(name, position) {
  sockets.length = 0;
  const client = new RealtimeClient("ws://test", { minDelay: 1, maxDelay: 2 });
  const heard = [];
  const channel = client.subscribe(name);
  channel.on("subscribed", (data) => heard.push(["subscribed", data]));
  channel.on("m", (data, message) => heard.push([message.offset, data]));
  await until(() => sockets.length === 1 && sockets[0].onmessage);
  const ws = sockets[0];
  ws.deliver({ type: "connected", data: { connection_id: "c1", heartbeat: 60 } });
  const first = ws.subscribe();
  assert.equal(first.since, undefined); // nothing to recover from yet
  const data = position ? { position } : {};
  ws.deliver({ type: "subscribed", channel: name, id: first.id, data });
  return { client, channel, heard };
}

/** Cut the connection; the reconnected socket, past its `connected`. */
async function reconnect(ws) {
  const count = sockets.length;
  ws.cut();
  await until(() => sockets.length === count + 1 && sockets.at(-1).onmessage);
  const next = sockets.at(-1);
  next.deliver({ type: "connected", data: { connection_id: "c2", heartbeat: 60 } });
  return next;
}

const event = (name, offset, data) => ({ type: "event", channel: name, event: "m", data, offset });

test("resubscribes with since and drops duplicates", async () => {
  const { client, channel, heard } = await setUp("h", { offset: 3, epoch: "e" });
  assert.deepEqual(channel.position, { offset: 3, epoch: "e" });
  let ws = sockets[0];
  ws.deliver(event("h", 4, "four"));
  ws.deliver(event("h", 5, "five"));
  assert.deepEqual(channel.position, { offset: 5, epoch: "e" });

  ws = await reconnect(ws);
  const again = ws.subscribe();
  assert.deepEqual(again.since, { offset: 5, epoch: "e" });
  const reply = { position: { offset: 7, epoch: "e" }, recovered: true };
  ws.deliver({ type: "subscribed", channel: "h", id: again.id, data: reply });
  // The replay overlaps what was delivered; each offset once.
  for (const [n, d] of [[5, "five"], [6, "six"], [7, "seven"], [7, "seven"], [4, "four"]])
    ws.deliver(event("h", n, d));
  assert.deepEqual(heard, [
    ["subscribed", { position: { offset: 3, epoch: "e" }, recovered: false, resubscribed: false }],
    [4, "four"],
    [5, "five"],
    ["subscribed", { position: { offset: 7, epoch: "e" }, recovered: true, resubscribed: true }],
    [6, "six"],
    [7, "seven"],
  ]);
  assert.deepEqual(channel.position, { offset: 7, epoch: "e" });
  client.disconnect();
});

test("events before the reply wait for it, then count once", async () => {
  const { client, channel, heard } = await setUp("h", { offset: 0, epoch: "e" });
  let ws = sockets[0];
  ws.deliver(event("h", 1, 1));
  ws = await reconnect(ws);
  const again = ws.subscribe();
  assert.deepEqual(again.since, { offset: 1, epoch: "e" });
  // SSE and long-poll: replayed events on the stream before the POST's answer.
  ws.deliver(event("h", 2, 2));
  ws.deliver(event("h", 3, 3));
  assert.equal(heard.length, 2);
  const reply = { position: { offset: 3, epoch: "e" }, recovered: true };
  ws.deliver({ type: "subscribed", channel: "h", id: again.id, data: reply });
  ws.deliver(event("h", 3, 3));
  ws.deliver(event("h", 4, 4));
  assert.deepEqual(
    heard.slice(2).map(([what, data]) => (what === "subscribed" ? data.recovered : what)),
    [true, 2, 3, 4],
  );
  assert.deepEqual(channel.position, { offset: 4, epoch: "e" });
  client.disconnect();
});

test("a new epoch starts over at the server's position", async () => {
  const { client, channel, heard } = await setUp("h", { offset: 40, epoch: "old" });
  let ws = sockets[0];
  ws.deliver(event("h", 41, "a"));
  ws = await reconnect(ws);
  const again = ws.subscribe();
  assert.deepEqual(again.since, { offset: 41, epoch: "old" });
  ws.deliver(event("h", 3, "c")); // the new stream's, before the reply
  const reply = { position: { offset: 2, epoch: "new" }, recovered: false };
  ws.deliver({ type: "subscribed", channel: "h", id: again.id, data: reply });
  ws.deliver(event("h", 4, "d"));
  assert.deepEqual(heard.slice(2), [
    ["subscribed", { position: { offset: 2, epoch: "new" }, recovered: false, resubscribed: true }],
    [3, "c"],
    [4, "d"],
  ]);
  assert.deepEqual(channel.position, { offset: 4, epoch: "new" });
  client.disconnect();
});

test("a channel without history resubscribes without since", async () => {
  const { client, channel, heard } = await setUp("plain", null);
  let ws = sockets[0];
  ws.deliver({ type: "event", channel: "plain", event: "m", data: 1 });
  assert.equal(channel.position, null);
  ws = await reconnect(ws);
  const again = ws.subscribe();
  assert.equal(again.since, undefined);
  ws.deliver({ type: "subscribed", channel: "plain", id: again.id });
  ws.deliver({ type: "event", channel: "plain", event: "m", data: 1 }); // no offset: no dedup
  assert.deepEqual(heard, [
    ["subscribed", { recovered: false, resubscribed: false }],
    [undefined, 1],
    ["subscribed", { recovered: false, resubscribed: true }],
    [undefined, 1],
  ]);
  client.disconnect();
});
