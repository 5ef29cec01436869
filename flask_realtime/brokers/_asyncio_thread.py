"""An asyncio loop in a native thread, for a client library that is asyncio only.

The loop gets an OS thread of its own even under gevent (started through
gevent's ``monkey.get_original``), so it never runs "inside" a greenlet:
the process's other asyncio code keeps working, and the hub never waits on
the loop. Callers, greenlets or threads, hand it coroutines and wait on an
event of their own world, which the loop thread sets through
:class:`Signal`.
"""

from __future__ import annotations

import asyncio
import selectors
import threading
import typing as t

from .._runtime import event, gevent_active

T = t.TypeVar("T")


class Signal:
    """An event of the caller's world (gevent's or threading's) that the
    loop thread may set. Wait with a timeout: under gevent a wait for
    another thread alone would end the hub's loop (LoopExit)."""

    def __init__(self) -> None:
        self._event = event()
        self._hub: t.Any = None
        if gevent_active():
            import gevent

            self._hub = gevent.get_hub()

    def set_threadsafe(self) -> None:
        """Set it from any thread."""
        if self._hub is None:
            self._event.set()
        else:
            self._hub.loop.run_callback_threadsafe(self._event.set)

    def clear(self) -> None:
        self._event.clear()

    def wait(self, timeout: float | None = None) -> bool:
        return bool(self._event.wait(timeout))


class _Loop(asyncio.SelectorEventLoop):
    """Under gevent, resolves names with the OS's blocking resolver: asyncio's
    default executor would start greenlets in a thread whose hub never runs."""

    async def getaddrinfo(  # type: ignore[override]
        self,
        host: t.Any,
        port: t.Any,
        *,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> t.Any:
        from gevent import monkey

        resolve = monkey.get_original("socket", "getaddrinfo")
        return resolve(host, port, family, type, proto, flags)


class LoopThread:
    """One asyncio loop, running in a thread of its own until :meth:`stop`."""

    def __init__(self) -> None:
        self.finished = False
        self._tasks: set[asyncio.Task[t.Any]] = set()
        if gevent_active():
            from gevent import monkey

            selector = monkey.get_original("selectors", "DefaultSelector")()
            self.loop: asyncio.AbstractEventLoop = _Loop(selector)
            start = monkey.get_original("_thread", "start_new_thread")
            start(self._run, ())
        else:
            self.loop = asyncio.SelectorEventLoop(selectors.DefaultSelector())
            threading.Thread(target=self._run, name="nats-loop", daemon=True).start()

    def submit(self, coro: t.Coroutine[t.Any, t.Any, T]) -> asyncio.Future[T]:
        """Run ``coro`` on the loop; from the loop thread only."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)  # asyncio keeps only a weak reference
        task.add_done_callback(self._tasks.discard)
        return task

    def soon(self, coro: t.Coroutine[t.Any, t.Any, t.Any]) -> None:
        """Run ``coro`` on the loop, from any thread; started in call order."""
        try:
            self.loop.call_soon_threadsafe(self.submit, coro)
        except RuntimeError:  # the loop is closed
            coro.close()

    def run(self, coro: t.Coroutine[t.Any, t.Any, T], timeout: float) -> T:
        """Run ``coro`` on the loop and wait for its result (not from the loop)."""
        done = Signal()
        outcome: list[asyncio.Future[T]] = []

        def start() -> None:
            task = self.submit(coro)
            task.add_done_callback(lambda _: done.set_threadsafe())
            outcome.append(task)

        try:
            self.loop.call_soon_threadsafe(start)
        except RuntimeError:
            coro.close()
            raise ConnectionError("the loop is closed") from None
        if not done.wait(timeout):
            raise ConnectionError(f"the loop did not answer within {timeout} s")
        if outcome[0].cancelled():
            raise ConnectionError("the loop stopped")
        return outcome[0].result()

    def _run(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
            self.finished = True
