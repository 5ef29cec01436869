// Types for client.mjs (TypeScript looks for a .d.mts beside a .mjs file).
import { RealtimeClient } from "./client.js";

export * from "./client.js";
export default RealtimeClient;
