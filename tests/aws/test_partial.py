"""``down`` after ``up`` stopped right after each AWS call that changes something: whatever
``up`` had made by then, ``down`` finds by tag and removes; nothing tagged remains. (What every
provider promises, `up` again and `down` after a killed `up`, is in tests/contract.)"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from clusterkit import cluster
from clusterkit.providers.aws import session
from clusterkit.providers.aws.provider import AwsProvider
from clusterkit.spec import load_spec
from tests.aws.conftest import Aws

MUTATING = re.compile(r"^(Create|Put|Run|Import|Attach|Authorize|Modify|Add|Associate)")


class Stop(Exception):
    """Raised right after the n-th changing call succeeded: ``up`` dies there."""


def _watch(calls: list[str], stop_at: int | None = None) -> Callable[..., None]:
    def after_call(model: Any, **_: Any) -> None:
        if MUTATING.match(model.name):
            calls.append(model.name)
            if stop_at is not None and len(calls) == stop_at:
                raise Stop(f"after call {stop_at}: {model.name}")

    return after_call


def test_down_after_up_stopped_after_each_call(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_spec(aws.spec("awp", static=1, dynamic=1))
    calls: list[str] = []
    monkeypatch.setattr(session, "EVENT_HOOKS", [("after-call", _watch(calls))])
    cluster.up(spec, configure=False)
    assert aws.tagged("awp")["instance"]
    cluster.down("awp")
    assert aws.tagged("awp") == {}
    total = list(calls)
    assert {"CreateVpc", "CreateFleet", "RunInstances", "PutParameter"} <= set(total)

    # Stop after the first call of each kind (later ones repeat a step: another subnet,
    # another parameter), and after the very last call.
    stops = [i + 1 for i, op in enumerate(total) if op not in total[:i]]
    for stop_at in sorted({*stops, len(total)}):
        seen: list[str] = []
        monkeypatch.setattr(session, "EVENT_HOOKS", [("after-call", _watch(seen, stop_at))])
        with pytest.raises(Stop):
            cluster.up(spec, configure=False)
        monkeypatch.setattr(session, "EVENT_HOOKS", [])
        cluster.down("awp")
        left = aws.tagged("awp")
        assert left == {}, f"up stopped after {seen[-1]} (call {stop_at}): down left {left}"

    # Idempotent: nothing left, nothing to do, no error.
    assert AwsProvider.destroy("awp", None) == []


def test_down_looks_in_the_region_up_used(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = aws.spec("awr", static=1, dynamic=0)
    aws.run("up", "-f", str(spec), "--no-configure")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")  # the default moved on since
    aws.run("down", "awr")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert aws.tagged("awr") == {}
