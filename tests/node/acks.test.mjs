// The JavaScript client's acknowledged sends in Node, against the real
// server that tests/test_acks.py starts (tests.apps.acks:app, its URL in
// ACK_SERVER_URL), on each transport: Node's WebSocket (run with
// --experimental-websocket on Node 20), the `eventsource` package for SSE,
// fetch for long-polling. Run by tests/test_acks.py with `node --test`.
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { test } from "node:test";
import { EventSource } from "eventsource";

globalThis.EventSource = EventSource;
const require = createRequire(import.meta.url);
const RealtimeClient = require("../../flask_realtime/static/client.js");
const { SendError } = RealtimeClient;

const URL = process.env.ACK_SERVER_URL;
assert.ok(URL, "ACK_SERVER_URL is the server to test against");
assert.equal(typeof WebSocket, "function", "run with --experimental-websocket");

let users = 0;
const unique = (prefix) => `${prefix}.${process.pid}.${++users}`;

/** A client on `transport` only, for a user of its own. */
function open(transport, options) {
  const user = unique("u");
  const client = new RealtimeClient(URL, {
    transports: [transport],
    params: { user },
    reconnect: false,
    ...options,
  });
  return { client, user };
}

const subscribed = (channel) =>
  new Promise((resolve, reject) => {
    channel.on("subscribed", resolve);
    channel.on("error", reject);
  });

/** A listener's next call, as a promise of its arguments. */
const next = (emitter, event) => new Promise((resolve) => emitter.on(event, (...args) => resolve(args)));

for (const transport of ["websocket", "sse", "longpolling"]) {
  test(`${transport}: send resolves with the handler's value or rejects`, async () => {
    const { client, user } = open(transport);
    // Sent before the connection is up: queued, then answered.
    const room = client.subscribe(unique("ack"));
    const early = room.send("add", [1, 2]);
    await subscribed(room);
    assert.equal(client.transport, transport);
    assert.deepEqual(await early, { sum: 3, user });
    assert.deepEqual(await room.send("add", [40, 2]), { sum: 42, user });

    // None: resolved without a value, once the server has the event.
    const done = next(room, "done");
    assert.equal(await room.send("nothing", "x"), undefined);
    assert.deepEqual((await done)[0], "x");

    // A rejection: the promise and the error listeners both hear it.
    const told = next(room, "error");
    const refused = await room.send("refuse", { message: "room full", code: 409 }).catch((e) => e);
    assert.ok(refused instanceof SendError && refused instanceof Error);
    assert.equal(refused.code, 409);
    assert.equal(refused.message, "room full");
    assert.equal(refused.channel, room.name);
    assert.equal((await told)[0].code, 409);

    for (const what of ["boom", "not-json"]) {
      const failed = await room.send(what).catch((e) => e);
      assert.ok(failed instanceof SendError, `${what}: ${failed}`);
      assert.equal(failed.code, 500);
    }

    // A relayed client- event: resolved once published.
    const presence = client.subscribe(`presence-${unique("room")}`);
    await subscribed(presence);
    assert.equal(await presence.send("client-wave", 1), undefined);

    // A refusal nobody awaits: an error event, no unhandled rejection (which
    // would fail this test run).
    const ignored = next(room, "error");
    room.send("refuse", { message: "ignored", code: 400 });
    assert.equal((await ignored)[0].message, "ignored");
    client.disconnect();
  });

  test(`${transport}: timeouts and lost connections reject`, async () => {
    const { client } = open(transport, { ackTimeout: 5000 });
    const room = client.subscribe(unique("ack"));
    await subscribed(room);
    const late = await room.send("slow", 0.5, { timeout: 100 }).catch((e) => e);
    assert.ok(late instanceof SendError);
    assert.equal(late.reason, "timeout");
    assert.equal(late.code, 0);
    // The late answer is dropped; the next send gets its own.
    assert.equal(await room.send("slow", 0), "late");

    const pending = room.send("slow", 0.5).catch((e) => e);
    await new Promise((resolve) => setTimeout(resolve, 100));
    client.disconnect();
    const lost = await pending;
    assert.equal(lost.reason, "disconnected");
  });
}

test("an event still queued when its timeout comes is never sent", async () => {
  const { client } = open("websocket", { autoConnect: false });
  const room = client.subscribe(unique("ack"));
  const done = [];
  room.on("done", (data) => done.push(data));
  const dropped = await room.send("nothing", "dropped", { timeout: 50 }).catch((e) => e);
  assert.equal(dropped.reason, "timeout");
  assert.match(dropped.message, /not sent/);
  client.connect();
  await subscribed(room);
  assert.equal(await room.send("nothing", "kept"), undefined);
  while (!done.length) await new Promise((resolve) => setTimeout(resolve, 5));
  assert.deepEqual(done, ["kept"]); // in order on one WebSocket: "dropped" never went
  client.disconnect();
});
