"""Progress of Celery jobs, pushed to browsers by the workers themselves.

The web app serves pages and realtime connections and enqueues jobs; a Celery
worker runs them and publishes their progress and results through the
realtime broker. See README.md next to this file for the commands.

Configuration, from the environment:

- ``REALTIME_BROKER`` (``redis``) and ``REALTIME_BROKER_URL`` (unset: the
  broker's defaults, Redis on 127.0.0.1:6379): the realtime broker, which the
  web workers and the Celery workers must share.
- ``CELERY_BROKER_URL`` (``redis://127.0.0.1:6379/1``): Celery's own queue.
- ``SECRET_KEY``: signs the session cookie that carries the visitor's id.
"""

from __future__ import annotations

import os
import secrets
import typing as t

from celery import Celery, Task
from flask import Flask, jsonify, render_template, request, session

from flask_realtime import Realtime

from . import tasks

realtime = Realtime()

MAX_LIMIT = 5_000_000


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.from_mapping(
        SECRET_KEY=os.environ.get("SECRET_KEY", "dev-only-celery-example-key"),
        REALTIME_BROKER=os.environ.get("REALTIME_BROKER", "redis"),
        REALTIME_BROKER_URL=os.environ.get("REALTIME_BROKER_URL"),
        CELERY={
            "broker_url": os.environ.get(
                "CELERY_BROKER_URL", "redis://127.0.0.1:6379/1"
            ),
            # Results travel to the browsers over the realtime broker.
            "task_ignore_result": True,
        },
    )
    realtime.init_app(app)
    celery_init_app(app)

    @app.get("/")
    def index() -> str:
        # No accounts here: each browser gets an id that send_to_user can use.
        user = session.setdefault("user", f"visitor-{secrets.token_hex(4)}")
        return render_template("index.html", user=user)

    @app.post("/jobs")
    def start_job() -> t.Any:
        user = session.get("user")
        if user is None:
            return jsonify(error="open the page first"), 403
        body = request.get_json(silent=True) or {}
        limit = body.get("limit", 1_000_000)
        if type(limit) is not int or not 2 <= limit <= MAX_LIMIT:
            return jsonify(error=f"'limit' must be an integer, 2 to {MAX_LIMIT}"), 400
        job = secrets.token_hex(6)
        tasks.count_primes.delay(job, user, limit)
        return jsonify(job=job), 202

    return app


def celery_init_app(app: Flask) -> Celery:
    """A Celery app whose tasks run inside ``app``'s application context."""

    class FlaskTask(Task):
        def __call__(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(app.config["CELERY"])
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app


@realtime.authenticate
def identify(req: t.Any) -> t.Any:
    # The WebSocket, SSE and poll requests carry the session cookie.
    return session.get("user")
