// The JavaScript client and the server-side API, against a scripted fake
// WebSocket: a `subscribed` without an `id` (realtime.subscribe() on the
// server) makes a channel, an `unsubscribed` without one drops it, and
// socketIdHeaders() names the connection for `exclude=`. Run by
// tests/test_js_client_server_api.py with `node --test`.
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { test } from "node:test";

const require = createRequire(import.meta.url);
const RealtimeClient = require("../../flask_realtime/static/client.js");

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
  deliver(message) {
    this.onmessage({ data: JSON.stringify(message) });
  }
  cut() {
    this.onclose({ code: 1006, reason: "cut" });
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

/** The client's `count`-th socket, once open, says `connected`. */
async function connected(client, id, count = 1) {
  await until(() => sockets.length === count && sockets.at(-1).onmessage);
  const ws = sockets.at(-1);
  ws.deliver({ type: "connected", data: { connection_id: id, heartbeat: 60 } });
  return ws;
}

test("socketIdHeaders names the connection while connected", async () => {
  sockets.length = 0;
  const client = new RealtimeClient("ws://test", { minDelay: 1, maxDelay: 2 });
  assert.deepEqual(client.socketIdHeaders(), {});
  await connected(client, "n1.abc");
  assert.deepEqual(client.socketIdHeaders(), { "X-Socket-ID": "n1.abc" });
  client.disconnect();
  assert.deepEqual(client.socketIdHeaders(), {});
});

test("a server-side subscribe makes a channel; unsubscribe drops it", async () => {
  sockets.length = 0;
  const client = new RealtimeClient("ws://test", { minDelay: 1, maxDelay: 2 });
  const heard = [];
  client.on("subscribed", (channel) => {
    heard.push(["client subscribed", channel.name]);
    channel.on("subscribed", (data) => heard.push(["subscribed", data.members]));
    channel.on("said", (data) => heard.push(["said", data]));
    channel.on("unsubscribed", () => heard.push(["channel unsubscribed"]));
  });
  client.on("unsubscribed", (channel) => heard.push(["client unsubscribed", channel.name]));
  const ws = await connected(client, "n1.a");
  const members = [{ user_id: 1, user_info: null, connected_at: 1 }];
  ws.deliver({ type: "subscribed", channel: "presence-team", data: { members } });
  ws.deliver({ type: "event", channel: "presence-team", event: "said", data: 1 });
  assert.equal(client.channel("presence-team").state, "subscribed");
  assert.deepEqual(client.channel("presence-team").members, members);
  assert.deepEqual(heard, [
    ["client subscribed", "presence-team"],
    ["subscribed", members],
    ["said", 1],
  ]);
  // The client sent nothing for it: the server did the subscribing.
  assert.deepEqual(ws.sent.filter((m) => m.type === "subscribe"), []);

  // After a reconnect, the client subscribes to it itself.
  ws.cut();
  const again = await connected(client, "n1.b", 2);
  const resubscribe = again.sent.find((m) => m.type === "subscribe");
  assert.equal(resubscribe.channel, "presence-team");
  again.deliver({ type: "subscribed", channel: "presence-team", id: resubscribe.id });

  heard.length = 0;
  const channel = client.channel("presence-team");
  again.deliver({ type: "unsubscribed", channel: "presence-team" });
  again.deliver({ type: "event", channel: "presence-team", event: "said", data: 2 });
  assert.equal(client.channel("presence-team"), undefined);
  assert.equal(channel.state, "unsubscribed");
  assert.deepEqual(heard, [["channel unsubscribed"], ["client unsubscribed", "presence-team"]]);
  client.disconnect();
});

test("an unsubscribed reply to the client's own request is not a server one", async () => {
  sockets.length = 0;
  const client = new RealtimeClient("ws://test", { minDelay: 1, maxDelay: 2 });
  const ws = await connected(client, "n1.c");
  const news = client.subscribe("news");
  const sub = ws.sent.find((m) => m.type === "subscribe");
  ws.deliver({ type: "subscribed", channel: "news", id: sub.id });
  const dropped = [];
  client.on("unsubscribed", (channel) => dropped.push(channel.name));
  news.unsubscribe();
  const unsub = ws.sent.find((m) => m.type === "unsubscribe");
  ws.deliver({ type: "unsubscribed", channel: "news", id: unsub.id });
  assert.deepEqual(dropped, []);
  client.disconnect();
});
