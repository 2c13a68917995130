"""The turn runner's life as Dramatiq middleware: it starts when Dramatiq's worker boots, stops
taking conversations when the worker begins to shut down, and hands its conversations back once
the worker's threads are gone.

The runner serves on a Dramatiq ``EventLoopThread`` (``dramatiq.asyncio``) that this middleware
owns. It does not use Dramatiq's ``AsyncIO`` middleware nor ``async def`` actors: those run every
coroutine on one event-loop thread per *process* (``dramatiq.asyncio.set_event_loop_thread``),
so a second worker in the same process would send its actors' coroutines to the other's loop,
where its runner does not live, and the first worker's shutdown would stop the loop of the second
(the suite runs competing workers in one process, tests/HARNESS.md). An ``async def`` actor would
not spare a thread either: Dramatiq blocks a worker thread until its coroutine returns, as
``TurnRunner.offer`` does, for the microseconds a hand-over takes or, when the runner is full,
for the backpressure.

One thing ``asyncio.run`` does that ``EventLoopThread.run`` does not is kept (``_RunnerLoop``):
finish the loop's tasks before closing it. When a ``BaseException`` (a ``SystemExit`` in a
callback) ends the loop, the runner's stop then still hands its conversations back, and no
coroutine is left for the garbage collector to finalise later on another thread's loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from dramatiq import Broker, Middleware, Worker
from dramatiq.asyncio import EventLoopThread
from dramatiq.middleware import MiddlewareError

from gateway.core.config import WorkerTuning
from gateway.core.logs import conversation_label
from workers.context import WorkerServices
from workers.runner import TurnRunner

__all__ = ["RunnerMiddleware", "RunnerNotStarted"]

log = logging.getLogger("ocsgw.worker")

#: How long a loop that ended gives its cancelled tasks to finish (the runner's hand-back).
_FINISH_S = 10.0
#: How long a hand-over waits for room in a full runner before it leaves the conversation to
#: the sweepers (its Dramatiq thread is blocked meanwhile: the backpressure).
HAND_OVER_TIMEOUT_S = 30.0


class _RunnerLoop(EventLoopThread):
    """Dramatiq's event-loop thread, finishing its tasks before it closes its loop, as
    ``asyncio.run`` does, however the loop ended (stopped, or a fatal error)."""

    def run(self) -> None:
        try:
            self.loop.run_forever()
        except BaseException:
            log.exception("the turn runner's loop ended")
        finally:
            try:
                tasks = asyncio.all_tasks(self.loop)
                for task in tasks:
                    task.cancel()
                if tasks:
                    self.loop.run_until_complete(asyncio.wait(tasks, timeout=_FINISH_S))
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            finally:
                self.loop.close()


class RunnerNotStarted(MiddlewareError):
    """The turn runner could not start: the worker must not boot (a ``MiddlewareError``, the one
    kind Dramatiq lets out of ``before_worker_boot``)."""


class RunnerMiddleware(Middleware):
    """Parameters:
    open_services: opens the process's services on the runner's loop (the assembly passes
        ``Services.open_checked``).
    tuning: the worker settings.
    start_timeout_s: how long the boot waits for the runner to serve.
    stop_timeout_s: how long the shutdown waits for the runner to hand its conversations back.
    """

    def __init__(
        self, open_services: Callable[[], Awaitable[WorkerServices]], tuning: WorkerTuning,
        *, start_timeout_s: float = 30.0, stop_timeout_s: float = 10.0,
    ) -> None:
        self._open_services = open_services
        self._tuning = tuning
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._thread: _RunnerLoop | None = None
        self._serving: concurrent.futures.Future[None] | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._stop_requested = False
        #: The running runner, None before the boot.
        self.runner: TurnRunner | None = None

    # -- Dramatiq's hooks ------------------------------------------------------------------

    def before_worker_boot(self, broker: Broker, worker: Worker) -> None:
        """Start the runner's loop and the runner on it; return once it serves.

        Raises:
            RunnerNotStarted: it did not (its cause is the reason).
        """
        thread = _RunnerLoop(log)
        # Daemon, as Dramatiq's own threads: a main thread that dies without stopping the worker exits.
        thread.daemon = True
        thread.name = "ocsgw-runner"
        self._thread = thread
        try:
            thread.start(timeout=self._start_timeout_s)
            self._serving = asyncio.run_coroutine_threadsafe(self._serve(), thread.loop)
            self._serving.add_done_callback(lambda _: self._ready.set())
            if not self._ready.wait(self._start_timeout_s):
                raise RuntimeError(f"not serving after {self._start_timeout_s:g} s")
            if self._serving.done():
                self._serving.result()  # raises why it ended
                raise RuntimeError("ended at once")
        except Exception as exc:
            self._stop_loop()
            raise RunnerNotStarted(f"the turn runner did not start: {exc}") from exc

    def before_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        """No new conversations from here on, and hand-overs waiting for room are refused, so
        Dramatiq's threads finish their messages at once and the worker can stop them."""
        self._stop_requested = True
        runner, thread = self.runner, self._thread
        if runner is not None and thread is not None:
            self._call_soon(thread, runner.close)

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        """Dramatiq's threads are gone: hand the conversations back and end the loop."""
        self.stop()

    # -- the runner's life -----------------------------------------------------------------

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        services = await self._open_services()
        try:
            runner = TurnRunner(services, self._tuning)
            self.runner = runner
            serving = asyncio.create_task(runner.serve(self._stop), name="ocsgw-serve")
            while not runner.serving and not serving.done():  # noqa: ASYNC110 - no event to wait on
                await asyncio.sleep(0.01)  # serve's first steps: the clock's sync, the housekeeping loops
            self._ready.set()
            await serving
        finally:
            await services.aclose()

    def hand_over(self, conv: str, *, watch: bool = False) -> bool:
        """A Dramatiq thread's hand-over of ``conv`` (``TurnRunner.offer``); False, logged, when
        refused: the conversation stays in ``active`` for a sweeper to adopt."""
        runner = self.runner
        taken = runner is not None and runner.offer(conv, watch=watch, timeout=HAND_OVER_TIMEOUT_S)
        if not taken:
            log.warning(
                "hand-over of %s refused (the turn runner is full, stopping or gone); a sweeper adopts it",
                conversation_label(conv),
            )
        return taken

    @property
    def failure(self) -> str | None:
        """Why the runner ended without being asked to, else None: the process must then exit,
        and its ``/livez`` fails."""
        if self._stop_requested or not self._ready.is_set():
            return None
        runner, serving, thread = self.runner, self._serving, self._thread
        if runner is not None and runner.failure is not None:
            return runner.failure
        if serving is not None and serving.done():
            error = None if serving.cancelled() else serving.exception()
            return f"turn runner failed: {error!r}" if error is not None else "turn runner ended"
        if thread is not None and not thread.is_alive():
            return "turn runner's loop ended"
        return None

    @property
    def running(self) -> bool:
        """Whether the runner still serves (and its loop still runs)."""
        serving, thread = self._serving, self._thread
        return serving is not None and not serving.done() and thread is not None and thread.is_alive()

    def stop(self) -> None:
        """Hand the conversations back (``TurnRunner.serve``'s stop), close the services and end
        the loop thread; a runner that overruns ``stop_timeout_s`` is abandoned with its loop (its
        leases lapse, as a killed process's). Idempotent."""
        self._stop_requested = True
        thread, serving, stop = self._thread, self._serving, self._stop
        if thread is None:
            return
        if serving is not None and stop is not None and self._call_soon(thread, stop.set):
            try:
                serving.result(self._stop_timeout_s)
            except concurrent.futures.TimeoutError:
                log.warning("the turn runner did not stop within %g s; its leases lapse", self._stop_timeout_s)
            except BaseException:
                log.debug("the turn runner had ended with an error", exc_info=True)
        self._stop_loop()

    def _stop_loop(self) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.stop()  # type: ignore[no-untyped-call]  # Dramatiq's: stops the loop, joins the thread, closes the loop

    @staticmethod
    def _call_soon(thread: _RunnerLoop, callback: Callable[[], Any]) -> bool:
        try:
            thread.loop.call_soon_threadsafe(callback)
        except RuntimeError:  # the loop is closed: the runner is gone already
            return False
        return True
