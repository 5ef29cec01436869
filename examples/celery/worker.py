"""The Celery worker's entry point: ``celery -A examples.celery.worker worker``.

It creates the Flask app, so ``Realtime`` is initialised in the worker too:
tasks publish through the realtime broker without serving anything.
"""

from __future__ import annotations

from .app import create_app

flask_app = create_app()
celery_app = flask_app.extensions["celery"]
