"""Greenlets when gevent has patched the process, threads otherwise.

Production servers (gunicorn's gevent workers, ``flask realtime serve``) run
with gevent's monkey patching; ``flask run`` and plain scripts do not. The
node asks this module which world it is in instead of guessing per call.
"""

from __future__ import annotations

import sys
import threading
import typing as t

_patched = False


def gevent_active() -> bool:
    """Asked on every broadcast: once patched, a process stays patched."""
    global _patched
    if _patched:
        return True
    if "gevent.monkey" not in sys.modules:
        return False
    from gevent import monkey

    _patched = bool(monkey.is_module_patched("socket"))
    return _patched


def spawn(func: t.Callable[..., t.Any], *args: t.Any) -> t.Any:
    if gevent_active():
        import gevent

        return gevent.spawn(func, *args)
    thread = threading.Thread(target=func, args=args, daemon=True)
    thread.start()
    return thread


def in_event_loop() -> bool:
    """True in gevent's hub (a watcher's callback), where nothing may block."""
    if not gevent_active():
        return False
    import gevent

    return gevent.getcurrent() is gevent.get_hub()


def sleep(seconds: float) -> None:
    if gevent_active():
        import gevent

        gevent.sleep(seconds)
    else:
        import time

        time.sleep(seconds)


def real_lock() -> t.Any:
    """An OS lock even under monkey patching.

    The hub never yields while holding it, so greenlets cannot deadlock on
    it, and ``flask run``'s threads are still kept apart.
    """
    if "gevent.monkey" in sys.modules:
        from gevent import monkey

        return monkey.get_original("_thread", "allocate_lock")()
    import _thread

    return _thread.allocate_lock()


def event() -> t.Any:
    """An Event for the current world: gevent's or threading's."""
    if gevent_active():
        import gevent.event

        return gevent.event.Event()
    return threading.Event()
