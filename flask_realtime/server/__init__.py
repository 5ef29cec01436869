"""The project's own HTTP server parts, on gevent's pywsgi.

* ``limits.py``: the timeouts and size limits, and where they are set;
* ``reader.py``: a socket's bytes read only until a deadline;
* ``handler.py``: the request handler both servers use;
* ``serve.py``: ``flask realtime serve`` (run in a fresh, patched process).

gunicorn's worker class is :mod:`flask_realtime.gunicorn`.
"""
