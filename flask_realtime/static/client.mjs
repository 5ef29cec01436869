/**
 * The flask_realtime client as an ES module:
 *
 *     import RealtimeClient from "/realtime/client.mjs";
 *     // or: import { RealtimeClient } from "/realtime/client.mjs";
 *
 * client.js is the one implementation; imported as a module it cannot export,
 * so it sets `globalThis.RealtimeClient`, which this file re-exports.
 */
import "./client.js";

const RealtimeClient = globalThis.RealtimeClient;
const SendError = RealtimeClient.SendError;

export { RealtimeClient, SendError };
export default RealtimeClient;
