// pusher-js (npm) against two Flask nodes on one broker: public, private and
// presence channels, client events, sign-in and server-to-user, with native
// clients on the same channels (connected by tests/cluster/test_pusher_js.py,
// which starts this script and plays the native side). Each step prints one
// JSON line `{"step": ...}` once it is checked; the Python side waits for the
// lines it has to act on. Usage: node pusher_js.mjs PORT_A PORT_B KEY SECRET
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { createInterface } from "node:readline";
import Pusher from "pusher-js";

const [portA, portB, key, secret] = process.argv.slice(2);
const sign = (text) => `${key}:${createHmac("sha256", secret).update(text).digest("hex")}`;

const lines = createInterface({ input: process.stdin });
const fromPython = [];
let wake = null;
lines.on("line", (line) => {
  fromPython.push(line.trim());
  if (wake) wake();
});
/** The next line Python writes (it acted on our last step). */
async function python() {
  while (!fromPython.length) await new Promise((resolve) => (wake = resolve));
  return fromPython.shift();
}

const step = (name, extra = {}) => console.log(JSON.stringify({ step: name, ...extra }));

function client(port, user) {
  return new Pusher(key, {
    wsHost: "127.0.0.1",
    wsPort: Number(port),
    forceTLS: false,
    enabledTransports: ["ws"],
    disableStats: true,
    cluster: "",
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) => {
        if (channelName.startsWith("presence-")) {
          const channelData = JSON.stringify({ user_id: user, user_info: { name: user } });
          callback(null, {
            auth: sign(`${socketId}:${channelName}:${channelData}`),
            channel_data: channelData,
          });
        } else {
          callback(null, { auth: sign(`${socketId}:${channelName}`) });
        }
      },
    },
    userAuthentication: {
      customHandler: ({ socketId }, callback) => {
        const userData = JSON.stringify({ id: user, user_info: { name: user } });
        callback(null, { auth: sign(`${socketId}::user::${userData}`), user_data: userData });
      },
    },
  });
}

/** Resolves with the first `event` on `target`, within 5 s. */
function next(target, event) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} in 5 s`)), 5000);
    const handler = (data, metadata) => {
      clearTimeout(timer);
      target.unbind(event, handler);
      resolve([data, metadata]);
    };
    target.bind(event, handler);
  });
}

const a = client(portA, "pa");
const b = client(portB, "pb");
await Promise.all([next(a.connection, "connected"), next(b.connection, "connected")]);
assert.match(a.connection.socket_id, /^\d+\.\d+$/);

// Public: a broadcast from Flask (Python) reaches both, across nodes.
const newsA = a.subscribe("pjs-news");
const newsB = b.subscribe("pjs-news");
await Promise.all([
  next(newsA, "pusher:subscription_succeeded"),
  next(newsB, "pusher:subscription_succeeded"),
]);
let heard = Promise.all([next(newsA, "story"), next(newsB, "story")]);
step("public-subscribed");
for (const [data] of await heard) assert.deepEqual(data, { n: 1 });
step("public-received");

// Private: client events between pusher-js clients on two nodes and the
// native client u3; not echoed to the sender.
const roomA = a.subscribe("private-pjs.u3");
const roomB = b.subscribe("private-pjs.u3");
await Promise.all([
  next(roomA, "pusher:subscription_succeeded"),
  next(roomB, "pusher:subscription_succeeded"),
]);
let echoed = false;
roomA.bind("client-ping", () => (echoed = true));
heard = next(roomB, "client-ping");
assert.ok(roomA.trigger("client-ping", { from: "a" }));
assert.deepEqual((await heard)[0], { from: "a" });
heard = next(roomA, "client-native");
step("private-subscribed");
assert.deepEqual((await heard)[0], { from: "u3" });
assert.equal(echoed, false);
step("private-received");

// Presence: members and their changes, cluster-wide, with the native u3.
await python(); // u3 is in presence-pjs
const teamA = a.subscribe("presence-pjs");
const [members] = await next(teamA, "pusher:subscription_succeeded");
assert.equal(members.count, 2);
assert.deepEqual(members.me, { id: "pa", info: { name: "pa" } });
assert.deepEqual(members.get("u3"), { id: "u3", info: { name: "Nat" } });
heard = next(teamA, "pusher:member_added");
const teamB = b.subscribe("presence-pjs");
const succeededB = next(teamB, "pusher:subscription_succeeded");
const [added] = await heard;
assert.deepEqual(added, { id: "pb", info: { name: "pb" } });
const [membersB] = await succeededB;
assert.equal(membersB.count, 3);
heard = next(teamA, "client-wave");
teamB.trigger("client-wave", 1);
const [, metadata] = await heard;
assert.equal(metadata.user_id, "pb");
heard = next(teamA, "pusher:member_removed");
b.unsubscribe("presence-pjs");
assert.deepEqual((await heard)[0], { id: "pb", info: { name: "pb" } });
step("presence-done");

// Sign-in, then server-to-user from the other node.
a.signin();
await a.user.signinDonePromise;
assert.equal(a.user.user_data.id, "pa");
await next(a.user.serverToUserChannel, "pusher:subscription_succeeded");
heard = next(a.user, "note");
step("signed-in");
assert.deepEqual((await heard)[0], { hi: "pa" });
step("user-received");

a.disconnect();
b.disconnect();
step("done");
process.exit(0);
