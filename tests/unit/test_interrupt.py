"""Ctrl-C and SIGTERM stop clusterkit at once: the signal becomes ``Interrupted`` in the main
thread, deferred code polls for it, and waits across worker threads return without them."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from clusterkit import interrupt


def _signal_soon(sig: signal.Signals, after: float = 0.2) -> None:
    threading.Timer(after, os.kill, (os.getpid(), sig)).start()


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_raises_interrupted_with_its_exit_code(sig: signal.Signals, code: int) -> None:
    with interrupt.installed(), pytest.raises(interrupt.Interrupted) as caught:
        _signal_soon(sig)
        time.sleep(5)
    assert caught.value.exit_code == code
    assert caught.value.signal_name == sig.name


def test_the_previous_handlers_come_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with interrupt.installed():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before


def test_inside_deferred_a_signal_is_recorded_then_raised_by_check() -> None:
    with interrupt.installed():
        with interrupt.deferred():
            _signal_soon(signal.SIGTERM, 0.05)
            deadline = time.monotonic() + 5
            while not interrupt.requested() and time.monotonic() < deadline:
                time.sleep(0.01)  # the deferred code polls, as ansible-runner does
            assert interrupt.requested()
        with pytest.raises(interrupt.Interrupted):
            interrupt.check()


def test_an_interrupted_parallel_wait_returns_without_its_workers() -> None:
    left: list[str] = []

    def wait(node: str, stop: threading.Event) -> str:
        stop.wait(30)  # a node that never answers
        left.append(node)
        return node

    start = time.monotonic()
    with interrupt.installed(), pytest.raises(interrupt.Interrupted):
        _signal_soon(signal.SIGINT)
        interrupt.parallel(wait, ["a", "b", "c"], workers=2)
    assert time.monotonic() - start < 1.5
    deadline = time.monotonic() + 2
    while len(left) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(left) == ["a", "b"]  # the running workers were told to stop; "c" never ran


def test_parallel_gives_results_in_order() -> None:
    assert interrupt.parallel(lambda n, _: n * 2, [3, 1, 2], workers=3) == [6, 2, 4]
