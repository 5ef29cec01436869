"""A process that publishes and asks, serving nothing: ``python -m
tests.cluster.publisher '<json list of calls>'``.

Each call is ``["broadcast", channel, event, data]``,
``["send_to_user", user, event, data]``, ``["send", connection_id, event,
data]`` or ``["presence", channel]``; the last output line is the JSON list
of what each returned. The broker comes from the TESTAPP_ environment, as
for the servers.
"""

from __future__ import annotations

import json
import sys

from tests.apps.basic import app, realtime


def main() -> None:
    results = []
    with app.app_context():
        for name, *args in json.loads(sys.argv[1]):
            if name == "presence":
                results.append(realtime.channel(args[0]).get_presence_data())
            else:
                getattr(realtime, name)(*args)
                results.append(None)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
