"""The jobs. They run in a Celery worker, inside the Flask app's context, and
publish through the realtime broker: the worker serves no connection itself.
"""

from __future__ import annotations

import math

from celery import Task, shared_task

from flask_realtime import broadcast, realtime

STEPS = 10


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    return all(n % d for d in range(3, math.isqrt(n) + 1, 2))


@shared_task(bind=True)
def count_primes(self: Task, job: str, user: str, limit: int) -> None:
    """Count the primes below ``limit`` in ten steps.

    Everyone watching the ``jobs`` channel sees the progress; only the user
    who asked gets the result, on every tab they have open.
    """
    worker = self.request.hostname
    found = 0
    for step in range(1, STEPS + 1):
        found += sum(
            1
            for n in range((step - 1) * limit // STEPS, step * limit // STEPS)
            if _is_prime(n)
        )
        broadcast(
            "jobs",
            "job.progress",
            {
                "job": job,
                "user": user,
                "percent": step * 100 // STEPS,
                "worker": worker,
            },
        )
    realtime.send_to_user(
        user, "job.result", {"job": job, "limit": limit, "primes": found}
    )
    broadcast("jobs", "job.finished", {"job": job, "user": user})
