"""The NATS broker's asyncio loop, in an OS thread of its own.

nats-py is asyncio only. Its loop gets an OS thread of its own, even under
gevent (started through gevent's ``monkey.get_original``), so the process's
other asyncio code keeps working and the hub never waits on the loop.
Callers hand it coroutines and wait on an event of their own world, which
the loop thread sets through :class:`Signal`.
"""

from __future__ import annotations

import asyncio
import selectors
import threading
import typing as t

from .._runtime import event, gevent_active

T = t.TypeVar("T")


class Signal:
    """An event of the caller's world (gevent's or threading's) that the loop
    thread may set. Wait with a timeout: under gevent, a wait on another
    thread alone would end the hub's loop (LoopExit)."""

    def __init__(self) -> None:
        self._event = event()
        self._hub: t.Any = None
        if gevent_active():
            import gevent

            self._hub = gevent.get_hub()

    def set_threadsafe(self) -> None:
        if self._hub is None:
            self._event.set()
        else:
            self._hub.loop.run_callback_threadsafe(self._event.set)

    def clear(self) -> None:
        self._event.clear()

    def wait(self, timeout: float | None = None) -> bool:
        return bool(self._event.wait(timeout))


class _GeventSafeLoop(asyncio.SelectorEventLoop):
    """Resolves names with the OS's blocking resolver: asyncio's default
    executor would start greenlets in a thread whose hub never runs."""

    async def getaddrinfo(self, *args: t.Any, **kwargs: t.Any) -> t.Any:  # type: ignore[override]
        from gevent import monkey

        return monkey.get_original("socket", "getaddrinfo")(*args, **kwargs)


class LoopThread:
    """One asyncio loop in a thread of its own, until a coroutine stops it."""

    def __init__(self) -> None:
        self.finished = False
        self._tasks: set[asyncio.Future[t.Any]] = set()
        if gevent_active():
            from gevent import monkey

            selector = monkey.get_original("selectors", "DefaultSelector")()
            self.loop: asyncio.AbstractEventLoop = _GeventSafeLoop(selector)
            monkey.get_original("_thread", "start_new_thread")(self._run, ())
        else:
            self.loop = asyncio.SelectorEventLoop(selectors.DefaultSelector())
            threading.Thread(target=self._run, name="nats-loop", daemon=True).start()

    def _submit(self, coro: t.Coroutine[t.Any, t.Any, T]) -> asyncio.Future[T]:
        task = self.loop.create_task(coro)
        self._tasks.add(task)  # asyncio keeps only a weak reference
        task.add_done_callback(self._tasks.discard)
        return task

    def soon(self, coro: t.Coroutine[t.Any, t.Any, t.Any]) -> None:
        """Run ``coro`` on the loop; started in call order, not waited for."""
        try:
            self.loop.call_soon_threadsafe(self._submit, coro)
        except RuntimeError:  # the loop is closed
            coro.close()

    def run(self, coro: t.Coroutine[t.Any, t.Any, T], timeout: float) -> T:
        """Run ``coro`` on the loop and wait for its result."""
        done, outcome = Signal(), []

        def start() -> None:
            outcome.append(self._submit(coro))
            outcome[0].add_done_callback(lambda _: done.set_threadsafe())

        try:
            self.loop.call_soon_threadsafe(start)
        except RuntimeError:
            coro.close()
            raise ConnectionError("the loop is closed") from None
        if not done.wait(timeout):
            raise ConnectionError(f"the loop did not answer within {timeout} s")
        if outcome[0].cancelled():
            raise ConnectionError("the loop stopped")
        return outcome[0].result()  # type: ignore[no-any-return]

    def _run(self) -> None:
        loop = self.loop
        try:
            loop.run_forever()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        finally:
            loop.close()
            self.finished = True
