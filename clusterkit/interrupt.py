"""Stopping long work at once when the user asks: Ctrl-C (SIGINT) or SIGTERM.

The CLI runs inside ``installed()``; from then on either signal raises ``Interrupted`` in the main
thread wherever it is (a subprocess wait, a sleep, a wait on worker threads), so ``up`` saves
its state and returns within a moment, whatever step it is in. Code that runs a child which
must be stopped its own way (ansible-runner's playbook run, in a session of its own) runs it
``deferred()``: the signal is only recorded there, and that code polls ``requested()``, ends
its child, then calls ``check()``. Worker threads are never interrupted; ``parallel`` gives
them an event to stop on.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import TypeVar

SIGNALS = (signal.SIGINT, signal.SIGTERM)

T = TypeVar("T")
R = TypeVar("R")


class Interrupted(BaseException):
    """A signal asked clusterkit to stop. Like ``KeyboardInterrupt`` it is no error: nothing
    catches it but cleanup code (which re-raises) and the CLI, which exits 128 + signum."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.step: str | None = None  # the step of ``up`` it stopped, set by the library
        super().__init__(signal.Signals(signum).name)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _State:
    signum: int | None = None
    deferred = 0


_state = _State()


def _handler(signum: int, frame: FrameType | None) -> None:
    first = _state.signum is None
    _state.signum = signum
    # Inside deferred() the first signal is only recorded; a second one stops at once.
    if _state.deferred and first:
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """Inside, SIGINT and SIGTERM raise ``Interrupted`` (main thread only, as Python
    requires); the previous handlers come back after."""
    _state.signum = None
    previous = {sig: signal.signal(sig, _handler) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def requested() -> bool:
    """True once a signal asked to stop."""
    return _state.signum is not None


def check() -> None:
    """Raise ``Interrupted`` if a signal asked to stop."""
    if _state.signum is not None:
        raise Interrupted(_state.signum)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Inside, a signal is recorded, not raised: the code polls ``requested()`` and stops its
    own way; ``check()`` after the block raises what was recorded."""
    _state.deferred += 1
    try:
        yield
    finally:
        _state.deferred -= 1


@contextlib.contextmanager
def pool(workers: int) -> Iterator[ThreadPoolExecutor]:
    """A thread pool that, when the block raises (an interrupt, an error), drops its pending
    work and lets the caller go at once instead of waiting for running workers."""
    executor = ThreadPoolExecutor(max_workers=workers)
    try:
        yield executor
    except BaseException:
        executor.shutdown(wait=False, cancel_futures=True)
        raise
    executor.shutdown(wait=True)


def parallel(
    fn: Callable[[T, threading.Event], R], items: Iterable[T], workers: int = 16
) -> list[R]:
    """``fn(item, stop)`` for every item on worker threads, results in order.

    When the caller is interrupted (or ``fn`` raises), ``stop`` is set and this returns at
    once: ``fn`` waits with ``stop.wait(seconds)`` and leaves when it is set.
    """
    stop = threading.Event()
    try:
        with pool(workers) as executor:
            futures = [executor.submit(fn, item, stop) for item in items]
            return [f.result() for f in futures]
    except BaseException:
        stop.set()
        raise
