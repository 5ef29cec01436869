// Prints the data of every message of an event stream, one line each, as it
// arrives: `node sse_client.mjs URL`. Run by tests/test_sse_clients.py with
// Node's `eventsource` package (installed from tests/node/package.json).
import { EventSource } from "eventsource";

const source = new EventSource(process.argv[2]);
source.onmessage = (event) => {
  process.stdout.write(event.data.replace(/\n/g, " ") + "\n");
};
source.onerror = (error) => {
  process.stderr.write(`error: ${error.message ?? error}\n`);
};
