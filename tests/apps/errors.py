"""An app whose realtime endpoints meet every kind of HTTP error:
``tests/test_json_errors.py``.

``MAX_CONTENT_LENGTH`` is small (413 from Werkzeug before the view reads the
body), and the ``authenticate`` callback breaks its contract on ``?broken=1``
(a 3-tuple: a TypeError, so a 500). The app's own pages keep Flask's HTML.
"""

from __future__ import annotations

import typing as t

from flask import Flask

from flask_realtime import Realtime

app = Flask(__name__)
app.config["MAX_CONTENT_LENGTH"] = 2000
realtime = Realtime(app)


@realtime.authenticate
def identify(req: t.Any) -> t.Any:
    if req.args.get("broken"):
        return 1, {"name": "x"}, "one too many"
    return None


@app.get("/page")
def page() -> str:
    return "the app's own page"
