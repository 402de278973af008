"""Benchmark of the aws provider at scale, against moto behind EC2's request throttling.

For each size N (64, 1000, 5000): ``up --no-configure`` and ``down`` of a head and N static
Spot nodes, in-process, on a fresh moto server behind ``tests/aws/throttle.py``
(``Ec2Throttle(scale)``; 1.0 is EC2's documented bucket sizes and refill rates). Then one
resume of 1000 dynamic nodes through the head's ResumeProgram code
(``nodetools.power.resume`` over ``AwsCloud``; only ``scontrol`` is a recording stand-in),
and one suspend of them all through its SuspendProgram's (``power.suspend``).

Time is simulated unless ``--real-time``: ``SimClock`` stands in for ``time.sleep`` and
``time.monotonic`` in this process (and for botocore's retry clock and its adaptive rate
limiter's waits), and the throttle's buckets refill on it. A sleep returns at once and moves
the clock on, so a phase's simulated seconds are its real seconds plus its virtual sleeps.
moto's tag lookups are made by id (``moto_tags_by_id``): its own are quadratic.

Per phase: API calls (botocore ``before-call``) by operation, HTTP requests (``before-send``;
retries make requests exceed calls), calls the throttle refused, calls whose final answer was
an error, real and simulated seconds, virtual sleeps, seconds inside HTTP round trips to
moto, and whether it succeeded. Every phase starts with full token buckets.

    .venv/bin/python bench/scale.py [--sizes 64,1000,5000] [--scale 1.0] [--skip-resume]
                                    [--real-time]

It prints a table against the targets, writes ``bench/results/scale.json``, exits 0 when it
ran (missed targets are printed, not an exit code) and 2 when it cannot run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, CapacityNotAvailableError, ClientError
from botocore.retries import bucket as botocore_bucket
from common import table  # bench/ is on sys.path when run; it puts the repository's root there
from moto.ec2.models.core import TaggedEC2Resource
from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, get_prefix

from clusterkit import cluster
from clusterkit.headfiles import power_config
from clusterkit.nodetools import events, power
from clusterkit.nodetools.cloud import Instance
from clusterkit.nodetools.cloud_aws import THROTTLING_CODES, aws_cloud_from_config
from clusterkit.plan import plan_nodes
from clusterkit.providers.aws import session
from clusterkit.providers.aws.provider import AwsProvider
from clusterkit.spec import ClusterSpec, parse_spec
from tests.aws.conftest import Aws as AccountView
from tests.aws.throttle import INSTANCE_TOKENS, Ec2Throttle, ThrottledMotoServer

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "scale.json"
REGION = "eu-west-1"
ADMIN_CIDR = "203.0.113.0/24"
RESUME_NODES = 1000
# The targets: calls grow at most twofold from 64 to 5000 nodes; 1000 nodes up in a minute.
CALLS_RATIO_TARGET = 2.0
UP_SECONDS_TARGET = 60.0
SMALL, LARGE, TIMED = 64, 5000, 1000


class Clock:
    """Real time (``--real-time``): ``now`` is ``time.monotonic``, sleeps are real."""

    simulated = False

    def __init__(self) -> None:
        # The real clocks, kept before anything stands in for them.
        self.real: Callable[[], float] = time.monotonic
        self._real_time: Callable[[], float] = time.time
        self._real_sleep: Callable[[float], None] = time.sleep
        self._lock = threading.Lock()
        self.offset = 0.0  # virtual seconds slept so far
        self.slept: defaultdict[str, float] = defaultdict(float)  # thread -> virtual seconds
        self.sleeps: Counter[str] = Counter()  # thread -> number of sleeps

    def now(self) -> float:
        return self.real() + self.offset

    def sleep(self, seconds: float) -> None:
        self._real_sleep(seconds)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        yield


class SimClock(Clock):
    """Simulated time: a sleep returns at once and moves ``now`` on by its length.

    Installed, it is ``time.sleep`` and ``time.monotonic`` for the whole process, the clock
    of botocore's retry token buckets (``time.time`` plus the offset), and those buckets wait
    on it rather than on a condition variable. The offset is one for all threads: exact while
    one thread sleeps at a time, which ``sleeps_by_thread`` in each phase lets one check.
    Sleeps of ``subprocess`` waiting for a child are real.
    """

    simulated = True

    def sleep(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("sleep length must be non-negative")
        if sys._getframe(1).f_globals.get("__name__") == "subprocess":
            # A wait for a child process (ssh-keygen, ...), which runs in real time: virtual
            # sleeps would make it a busy loop that adds its polls to the clock.
            self._real_sleep(seconds)
            return
        name = re.sub(r"\d+", "N", threading.current_thread().name)
        with self._lock:
            self.offset += seconds
            self.slept[name] += seconds
            self.sleeps[name] += 1
        self._real_sleep(0)  # let other threads run, as a sleep would

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        clock = self

        def current_time(_: Any) -> float:
            return clock._real_time() + clock.offset

        def acquire(bucket: Any, amount: float, block: bool) -> bool:
            # botocore's TokenBucket._acquire, waiting on this clock (it holds the lock).
            bucket._refill()
            if amount > bucket._current_capacity:
                if not block:
                    raise CapacityNotAvailableError()
                while (wait := bucket._sleep_amount(amount)) > 0:
                    clock.sleep(wait)
                    bucket._refill()
            bucket._current_capacity -= amount
            return True

        with contextlib.ExitStack() as stack:
            stack.enter_context(mock.patch("time.sleep", self.sleep))
            stack.enter_context(mock.patch("time.monotonic", self.now))
            clock_class, bucket_class = botocore_bucket.Clock, botocore_bucket.TokenBucket
            stack.enter_context(mock.patch.object(clock_class, "current_time", current_time))
            stack.enter_context(mock.patch.object(bucket_class, "_acquire", acquire))
            yield


@contextlib.contextmanager
def moto_tags_by_id() -> Iterator[None]:
    """moto finds a resource's tags by matching its id against every tag in the account, so
    a DescribeInstances filtered by tag scans instances x tags (minutes for 5,000 instances,
    all real time): here they are looked up by id, the same answer."""

    def get_tags(resource: Any) -> list[dict[str, str]]:
        rid = getattr(resource, "id", None)
        if not rid:
            return []
        kind = EC2_PREFIX_TO_RESOURCE.get(get_prefix(rid), "")
        tags = resource.ec2_backend.tags.get(rid, {})
        return [
            {"resource_id": rid, "key": k, "value": v, "resource_type": kind}
            for k, v in tags.items()
        ]

    with mock.patch.object(TaggedEC2Resource, "get_tags", get_tags):
        yield


class StepTimes:
    """A ``Progress`` that keeps each step's duration, failed steps included."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.failed_step: str | None = None

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        except BaseException:
            self.failed_step = self.failed_step or title
            raise
        finally:
            self.seconds[title] = round(time.monotonic() - start, 3)

    def warn(self, text: str) -> None:
        print(f"  warning: {text}", file=sys.stderr)


class Meter:
    """API calls, HTTP requests, their time and their errors, through botocore's events.

    ``before-call`` fires once per API call whatever the retries, ``before-send`` once per
    HTTP request (after the adaptive retry mode's own rate limiter has waited), and
    ``response-received`` when its answer is in; ``after-call`` carries a call's final
    answer (an error when its status is 300 or more), ``after-call-error`` a call that got no
    answer at all.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()
        self.calls: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()  # "service:Operation code" -> final errors
        self.http_seconds: Counter[str] = Counter()

    @staticmethod
    def _key(model: Any) -> str:
        return f"{model.service_model.service_name}:{model.name}"

    def before_call(self, model: Any, **_: Any) -> None:
        key = self._key(model)
        self._local.key = key  # for this call's requests, made in this thread
        with self._lock:
            self.calls[key] += 1

    def before_send(self, **_: Any) -> None:
        self._local.start = time.monotonic()

    def response_received(self, **_: Any) -> None:
        start = getattr(self._local, "start", None)
        if start is None:
            return
        self._local.start = None
        key = getattr(self._local, "key", "?")
        with self._lock:
            self.requests[key] += 1
            self.http_seconds[key] += time.monotonic() - start

    def after_call(self, http_response: Any, parsed: Any, model: Any, **_: Any) -> None:
        if http_response.status_code >= 300:
            code = parsed.get("Error", {}).get("Code") or str(http_response.status_code)
            with self._lock:
                self.errors[f"{self._key(model)} {code}"] += 1

    def after_call_error(self, exception: Exception, **_: Any) -> None:
        key = getattr(self._local, "key", "?")
        with self._lock:
            self.errors[f"{key} {type(exception).__name__}"] += 1

    def hooks(self) -> list[tuple[str, Callable[..., Any]]]:
        return [
            ("before-call", self.before_call),
            ("before-send", self.before_send),
            ("response-received", self.response_received),
            ("after-call", self.after_call),
            ("after-call-error", self.after_call_error),
        ]


@dataclass
class PhaseResult:
    """One measured phase. ``failed`` counts the API calls whose error made the phase raise
    (``failed_call`` names it); ``error_answers`` every final error answer other than a
    throttling refusal, those clusterkit handles included; ``throttled_errors`` the
    refusals that reached clusterkit's code after botocore's retries (retried by its own
    loop, or fatal, then also in ``failed``); ``refused`` what the throttle refused in all,
    ``ec2_passed`` what it let through. ``simulated_seconds`` is ``real_seconds`` plus
    ``virtual_sleep_seconds`` (equal to ``real_seconds`` with ``--real-time``); ``steps``
    and ``http_seconds`` are on the simulated clock."""

    phase: str
    nodes: int
    ok: bool
    error: str | None
    failed_step: str | None
    real_seconds: float
    simulated_seconds: float
    virtual_sleep_seconds: float
    virtual_sleeps: int
    sleeps_by_thread: dict[str, float]
    http_seconds: float
    steps: dict[str, float]
    calls: int
    requests: int
    refused: int
    ec2_passed: int
    failed: int
    failed_call: str | None
    error_answers: int
    throttled_errors: int
    by_operation: dict[str, int]
    by_service: dict[str, int]
    refused_by_action: dict[str, int]
    errors: dict[str, int]
    http_seconds_by_operation: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= 300 else text[:297] + "..."


def failed_call(exc: BaseException) -> str | None:
    """The API call behind a phase's exception, if an API call is behind it: a botocore error
    in its chain (clusterkit raises ``from None``, which still keeps the context), or an
    AWS error code on the exception (``AwsError``, ``CloudError``)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ClientError):
            code = seen.response.get("Error", {}).get("Code", "?")
            return f"{seen.operation_name} {code}"
        if isinstance(seen, BotoCoreError) or type(seen).__module__.startswith("botocore."):
            return type(seen).__name__  # ResponseParserError, say, is no BotoCoreError
        seen = seen.__cause__ or seen.__context__
    code = getattr(exc, "code", None)
    return f"{type(exc).__name__} {code}" if isinstance(code, str) and code else None


def measure(
    phase: str,
    nodes: int,
    account: Account,
    work: Callable[[StepTimes, Meter], dict[str, Any] | None],
) -> PhaseResult:
    """Run ``work`` with every client clusterkit makes watched; a failure is recorded."""
    throttle, clock = account.throttle, account.clock
    meter, steps = Meter(), StepTimes()
    session.EVENT_HOOKS[:] = meter.hooks()
    throttle.reset()  # full buckets, empty counts
    error: str | None = None
    cause: str | None = None
    extra: dict[str, Any] | None = None
    slept, sleeps = dict(clock.slept), sum(clock.sleeps.values())
    start, real_start = clock.now(), clock.real()
    try:
        extra = work(steps, meter)
    except Exception as exc:  # noqa: BLE001 - a failed phase is a result, not the end
        error = one_line(exc)
        cause = failed_call(exc)
    finally:
        session.EVENT_HOOKS[:] = []
    # A phase that records its failures rather than raising (resume) says so in ``extra``.
    short = (extra or {}).pop("failure", None)
    if short is not None:
        error, cause = short
    simulated, real = clock.now() - start, clock.real() - real_start
    by_thread = {k: v - slept.get(k, 0.0) for k, v in clock.slept.items()}
    by_thread = dict(sorted(by_thread.items(), key=lambda kv: -kv[1]))
    stats = throttle.stats()
    refused = stats["refused"]
    errors = dict(meter.errors.most_common())
    throttled = sum(n for k, n in errors.items() if k.rsplit(" ", 1)[-1] in THROTTLING_CODES)
    by_service: Counter[str] = Counter()
    for key, n in meter.calls.items():
        by_service[key.split(":")[0]] += n
    result = PhaseResult(
        phase=phase,
        nodes=nodes,
        ok=error is None,
        error=error,
        failed_step=steps.failed_step,
        real_seconds=round(real, 3),
        simulated_seconds=round(simulated, 3),
        virtual_sleep_seconds=round(sum(by_thread.values()), 3),
        virtual_sleeps=sum(clock.sleeps.values()) - sleeps,
        sleeps_by_thread={k: round(v, 3) for k, v in by_thread.items() if v},
        http_seconds=round(sum(meter.http_seconds.values()), 3),
        steps=steps.seconds,
        calls=sum(meter.calls.values()),
        requests=sum(meter.requests.values()),
        refused=sum(refused.values()),
        ec2_passed=sum(stats["passed"].values()),
        failed=int((extra or {}).pop("failed_calls", 0 if cause is None else 1)),
        failed_call=cause,
        error_answers=sum(errors.values()) - throttled,
        throttled_errors=throttled,
        by_operation=dict(meter.calls.most_common()),
        by_service=dict(by_service.most_common()),
        refused_by_action=dict(Counter(refused).most_common()),
        errors=errors,
        http_seconds_by_operation={k: round(v, 3) for k, v in meter.http_seconds.most_common()},
        extra=extra or {},
    )
    state = "ok" if result.ok else f"FAILED ({result.error})"
    print(
        f"  {phase} {nodes}: {state}; {result.real_seconds:.1f}s real, "
        f"{result.simulated_seconds:.1f}s simulated (HTTP {result.http_seconds:.1f}s), "
        f"{result.calls} calls, {result.requests} requests, {result.refused} refused",
        file=sys.stderr,
        flush=True,
    )
    return result


# ---------------------------------------------------------------------------------------------
# The account: a fresh moto server per size


@dataclass
class Account:
    clock: Clock
    throttle: Ec2Throttle
    endpoint: str
    home: Path
    image: str


@contextlib.contextmanager
def fresh_account(scale: float, clock: Clock) -> Iterator[Account]:
    """A moto server behind the throttle (its buckets on ``clock``), its state emptied (moto's
    backends live in this process, shared by every server), boto3 pointed at it and a
    CLUSTERKIT_HOME of its own."""
    throttle = Ec2Throttle(scale=scale, clock=clock.now)
    server = ThrottledMotoServer("127.0.0.1", throttle).start()
    home = Path(tempfile.mkdtemp(prefix="ck-bench-scale-"))
    try:
        url = f"{server.endpoint}/moto-api/reset"
        reset = urllib.request.Request(url, method="POST")  # noqa: S310 - http://127.0.0.1
        urllib.request.urlopen(reset, timeout=30).close()  # noqa: S310 - http://127.0.0.1
        os.environ["AWS_ENDPOINT_URL"] = server.endpoint
        os.environ["CLUSTERKIT_HOME"] = str(home / "home")
        images = bench_client("ec2").describe_images(Owners=["amazon"])["Images"]
        image = sorted(i["ImageId"] for i in images)[0]
        yield Account(clock, throttle, server.endpoint, home, image)
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


def bench_client(service: str) -> Any:
    """The benchmark's own client (never counted): patient with the throttle."""
    config = Config(retries={"mode": "adaptive", "max_attempts": 10})
    return boto3.client(service, region_name=REGION, config=config)


def leftovers(account: Account, name: str) -> dict[str, list[str]]:
    """What is still tagged for ``name``, found with the tests' own calls."""
    account.throttle.reset()
    return AccountView(account.home, account.endpoint).tagged(name)


def make_spec(name: str, static: int, dynamic: int, image: str) -> ClusterSpec:
    return parse_spec(
        {
            "name": name,
            "provider": "aws",
            "groups": [
                {
                    "name": "compute",
                    "instance_types": ["c7i.2xlarge", "c6i.2xlarge"],
                    "capacity": "spot",
                    "min": static,
                    "max": static + dynamic,
                }
            ],
            "aws": {"admin_cidr": ADMIN_CIDR, "image_id": image},
        }
    )


# ---------------------------------------------------------------------------------------------
# Phases


def up_work(spec: ClusterSpec, keep: list[Any]) -> Callable[[StepTimes, Meter], dict[str, Any]]:
    def work(steps: StepTimes, _: Meter) -> dict[str, Any]:
        state = cluster.up(spec, steps, configure=False)
        keep.append(state)
        return {"launched": len(state.nodes)}

    return work


def down_work(name: str) -> Callable[[StepTimes, Meter], dict[str, Any]]:
    def work(steps: StepTimes, _: Meter) -> dict[str, Any]:
        return {"removed": len(cluster.down(name, steps))}

    return work


def static_size(account: Account, nodes: int) -> dict[str, Any]:
    name = f"scale{nodes}"
    spec = make_spec(name, nodes, 0, account.image)
    up = measure("up", nodes, account, up_work(spec, []))
    down = measure("down", nodes, account, down_work(name))
    left = leftovers(account, name)
    return {"up": asdict(up), "down": asdict(down), "left_after_down": left}


class RecordingScontrol(power.Scontrol):
    """Stands in for ``scontrol`` (there is no Slurm here): records what resume asks of it."""

    def __init__(self) -> None:
        self.addresses: dict[str, str] = {}
        self.updates: list[tuple[list[str], dict[str, str]]] = []
        self.failed: dict[str, str] = {}
        self.retried: list[int] = []

    def update(self, nodes: Sequence[str], **settings: str) -> None:
        self.updates.append((list(nodes), settings))

    def resume(self, nodes: Sequence[str]) -> None:
        self.updates.append((list(nodes), {"state": "RESUME"}))

    def undrain(self, nodes: Sequence[str]) -> None:
        self.updates.append((list(nodes), {"state": "UNDRAIN"}))

    def reasons(self, nodes: Sequence[str]) -> dict[str, str]:
        return dict.fromkeys(nodes, "")

    def set_addresses(self, instances: Sequence[Instance]) -> None:
        self.addresses.update({i.node: i.address for i in instances})

    def jobs_on(self, nodes: Sequence[str]) -> list[int]:
        return []

    def retry_jobs(self, jobs: Sequence[int], seconds: int) -> None:
        self.retried += list(jobs)

    def fail(self, nodes: Sequence[str], reason: str) -> None:
        self.failed.update(dict.fromkeys(nodes, reason))


@contextlib.contextmanager
def head_program(meter: Meter, log: Path) -> Iterator[None]:
    """Run as one of the head's programs: its event log goes to ``log`` (not the host's
    /var/log/clusterkit), and the clients it makes are counted. The head's backend makes
    them with boto3's default session, not clusterkit's: a fresh one is watched for the
    phase, then replaced, so the benchmark's own clients are not counted."""
    defaults = events.record.__defaults__
    events.record.__defaults__ = (log,)
    boto3.setup_default_session()
    for name, handler in meter.hooks():
        boto3.DEFAULT_SESSION.events.register(name, handler)
    try:
        yield
    finally:
        events.record.__defaults__ = defaults
        boto3.setup_default_session()


def resume_work(
    spec: ClusterSpec, state: Any, log: Path
) -> Callable[[StepTimes, Meter], dict[str, Any]]:
    """One ``ck-resume`` of every dynamic node, as ``power._work`` does it, from the
    cloud.json and power.json ``up`` renders; the event log goes to ``log``."""

    def work(steps: StepTimes, meter: Meter) -> dict[str, Any]:
        config = power.PowerConfig.from_dict(power_config(spec))
        nodes = [n.name for n in plan_nodes(spec) if n.role == "compute" and not n.static]
        slurm = RecordingScontrol()
        with head_program(meter, log):
            cloud = aws_cloud_from_config(AwsProvider.cloud_config(spec, state.network))
            with steps.step("resume"):
                power.resume(nodes, config, cloud, slurm)
        launches = [e for e in events.read(log) if e.get("action") == "launch"]
        errors = [e["error"] for e in launches if e.get("error")]
        failure = None
        if slurm.failed:
            reasons = ", ".join(f"{r} x{n}" for r, n in Counter(slurm.failed.values()).items())
            failure = (
                f"{len(slurm.failed)} of {len(nodes)} nodes not resumed: {reasons}",
                ", ".join(f"launch {c}" for c in errors) or None,
            )
        return {
            "failure": failure,
            "failed_calls": len(errors),
            "asked": len(nodes),
            "launched": len(slurm.addresses),
            "failed_nodes": len(slurm.failed),
            "failure_reasons": dict(Counter(slurm.failed.values())),
            "cloud_calls": cloud.calls,  # AwsCloud's own count, its retries included
            "launches": [
                {k: e.get(k) for k in ("instance_type", "lifecycle", "error", "seconds")}
                | {"nodes": len(e.get("nodes", [])), "made": len(e.get("instances", {}))}
                for e in launches
            ],
        }

    return work


def suspend_work(
    spec: ClusterSpec, state: Any, log: Path
) -> Callable[[StepTimes, Meter], dict[str, Any]]:
    """One ``ck-suspend`` of every dynamic node, from a fresh backend (a program of its own:
    it reads each batch's names once)."""

    def work(steps: StepTimes, meter: Meter) -> dict[str, Any]:
        nodes = [n.name for n in plan_nodes(spec) if n.role == "compute" and not n.static]
        slurm = RecordingScontrol()
        with head_program(meter, log):
            cloud = aws_cloud_from_config(AwsProvider.cloud_config(spec, state.network))
            with steps.step("suspend"):
                power.suspend(nodes, cloud, slurm)
        ended = [e for e in events.read(log) if e.get("action") == "terminated"]
        return {"failure": None, "failed_calls": 0, "asked": len(nodes),
                "terminated": sum(len(e.get("instances", {})) for e in ended),
                "cloud_calls": cloud.calls}  # fmt: skip

    return work


def resume_size(account: Account, nodes: int) -> dict[str, Any]:
    name = "scaleresume"
    spec = make_spec(name, 0, nodes, account.image)
    kept: list[Any] = []
    up = measure("resume-up", nodes, account, up_work(spec, kept))
    out: dict[str, Any] = {"up": asdict(up)}
    if kept:
        log = account.home / "events.jsonl"
        out["resume"] = asdict(measure("resume", nodes, account, resume_work(spec, kept[0], log)))
        work = suspend_work(spec, kept[0], log)
        out["suspend"] = asdict(measure("suspend", nodes, account, work))
    else:
        out["resume"] = out["suspend"] = None  # nothing to resume into: no launch template
    out["down"] = asdict(measure("resume-down", nodes, account, down_work(name)))
    out["left_after_down"] = leftovers(account, name)
    return out


# ---------------------------------------------------------------------------------------------
# Report


def phase_row(p: dict[str, Any]) -> list[str]:
    launched = p["extra"].get("launched")
    return [
        p["phase"],
        str(p["nodes"]),
        "ok" if p["ok"] else f"FAILED in {p['failed_step'] or 'setup'}",
        f"{p['real_seconds']:.1f}",
        f"{p['simulated_seconds']:.1f}",
        f"{p['virtual_sleep_seconds']:.1f}",
        f"{p['http_seconds']:.1f}",
        str(p["calls"]),
        str(p["requests"]),
        str(p["refused"]),
        str(p["failed"]),
        str(p["error_answers"]),
        str(p["throttled_errors"]),
        "" if launched is None else str(launched),
    ]


def launch_bound(scale: float, nodes: int) -> float:
    """Simulated seconds ``up`` of ``nodes`` (and the head) cannot beat if their instances
    take RunInstances' resource tokens: those beyond a full bucket wait for its refill."""
    size, refill = INSTANCE_TOKENS["launch"]
    return max(0.0, (nodes + 1 - max(1.0, size * scale)) / refill)


def targets(
    sizes: dict[int, dict[str, Any]], resume: dict[str, Any] | None, scale: float
) -> list[list[str]]:
    rows = [["target", "value", "goal", "verdict"]]
    for phase in ("up", "down"):
        small, large = sizes.get(SMALL), sizes.get(LARGE)
        label = f"{phase}: calls({LARGE})/calls({SMALL})"
        if small is None or large is None:
            biggest = max(sizes)
            value, verdict = "-", f"n/a (needs sizes {SMALL} and {LARGE})"
            if small is not None and biggest != SMALL and sizes[biggest][phase]["ok"]:
                ratio = sizes[biggest][phase]["calls"] / max(small[phase]["calls"], 1)
                value = f"{biggest}/{SMALL}: {ratio:.1f}"
        else:
            # The calls clusterkit makes; each retry of a call the throttle refused is waiting
            # for tokens, shown apart (with every retry counted as a call of its own).
            ratio = large[phase]["calls"] / max(small[phase]["calls"], 1)
            net = (large[phase]["calls"] - large[phase]["refused"]) / max(small[phase]["calls"], 1)
            value = f"{net:.2f} ({ratio:.2f} with each refused call's retry)"
            verdict = "PASS" if net <= CALLS_RATIO_TARGET else "FAIL"
            if not (small[phase]["ok"] and large[phase]["ok"]):
                verdict = "FAIL (a phase failed)"
        rows.append([label, value, f"<= {CALLS_RATIO_TARGET:g}", verdict])
    timed = sizes.get(TIMED)
    label = f"up {TIMED}: simulated seconds"
    if timed is None:
        rows.append([label, "-", f"<= {UP_SECONDS_TARGET:g}", "n/a"])
    else:
        up = timed["up"]
        good = up["ok"] and up["simulated_seconds"] <= UP_SECONDS_TARGET
        verdict = "PASS" if good else ("FAIL" if up["ok"] else "FAIL (up failed)")
        value = f"{up['simulated_seconds']:.1f}"
        rows.append([label, value, f"<= {UP_SECONDS_TARGET:g}", verdict])
    phases = [p for s in sizes.values() for p in (s["up"], s["down"])]
    if resume is not None:
        phases += [p for p in (resume["up"], resume["resume"], resume.get("suspend"),
                               resume["down"]) if p]  # fmt: skip
    failed = sum(p["failed"] for p in phases)
    broken = [f"{p['phase']} {p['nodes']}" for p in phases if not p["ok"]]
    rows.append(["failed calls, all phases", str(failed), "0", "PASS" if not failed else "FAIL"])
    rows.append(
        [
            "phases that raised",
            ", ".join(broken) if broken else "none",
            "none",
            "PASS" if not broken else "FAIL",
        ]
    )
    large = sizes.get(LARGE)
    if large is not None:
        up = large["up"]
        value = f"{up['simulated_seconds']:.1f}" + ("" if up["ok"] else " (failed)")
        goal = f"informative; >= {launch_bound(scale, LARGE):.0f} (see note)"
        rows.append([f"up {LARGE}: simulated seconds", value, goal, "-"])
    return rows


def report(
    scale: float,
    clock: Clock,
    sizes: dict[int, dict[str, Any]],
    resume: dict[str, Any] | None,
) -> None:
    header = [
        "phase", "nodes", "result", "real s", "simulated s", "virtual sleep s", "HTTP s", "calls",
        "requests", "refused", "failed", "error answers", "throttled errors", "launched",
    ]  # fmt: skip
    rows = [header]
    phases: list[dict[str, Any]] = []
    for result in sizes.values():
        phases += [result["up"], result["down"]]
    if resume is not None:
        phases += [p for p in (resume["up"], resume["resume"], resume.get("suspend"),
                               resume["down"]) if p]  # fmt: skip
    rows += [phase_row(p) for p in phases]
    kind = "simulated time" if clock.simulated else "real time"
    print(f"aws provider against moto behind EC2's throttling (scale {scale:g}, {kind})")
    print(table(rows))
    print(
        "simulated s = real s + virtual sleep s (every time.sleep, botocore's retry and rate "
        "limiter waits included, returns at once and moves the clock the throttle refills on); "
        "HTTP s: seconds inside HTTP round trips to moto (summed over threads)"
    )
    print()
    print(table(targets(sizes, resume, scale)))
    size, refill = INSTANCE_TOKENS["launch"]
    print(
        f"note: the throttle's CreateFleet takes one RunInstances instance token per instance "
        f"({max(1.0, size * scale):g} tokens, {refill:g}/s), an assumption: EC2's guide gives "
        f"no figure for CreateFleet. If it holds, {LARGE} nodes and the head cannot be up in "
        f"less than {launch_bound(scale, LARGE):.0f} s, whatever the client does."
    )
    print()
    for p in phases:
        steps = ", ".join(f"{k} {v:.1f}s" for k, v in p["steps"].items())
        top = ", ".join(f"{k} {n}" for k, n in list(p["by_operation"].items())[:6])
        slow = ", ".join(
            f"{k} {v:.1f}s" for k, v in list(p["http_seconds_by_operation"].items())[:3]
        )
        print(f"{p['phase']} {p['nodes']}:")
        if not p["ok"]:
            print(f"  error: {p['error']}")
            print(f"  failed call: {p['failed_call'] or 'none (the error is not an API call)'}")
        print(f"  steps: {steps or '-'}")
        services = ", ".join(f"{k} {n}" for k, n in p["by_service"].items())
        print(f"  calls by service: {services or '-'}")
        print(f"  top calls: {top or '-'}")
        print(f"  most HTTP time: {slow or '-'}")
        print(f"  EC2 requests the throttle let through: {p['ec2_passed']}")
        if p["refused_by_action"]:
            refused = ", ".join(f"{k} {n}" for k, n in p["refused_by_action"].items())
            print(f"  refused by the throttle: {refused}")
        if p["errors"]:
            print(f"  error answers: {', '.join(f'{k} x{n}' for k, n in p['errors'].items())}")
        if p["sleeps_by_thread"]:
            slept = ", ".join(f"{k} {v:.1f}s" for k, v in p["sleeps_by_thread"].items())
            print(f"  virtual sleeps: {p['virtual_sleeps']} ({slept})")
        extra = {k: v for k, v in p["extra"].items() if k != "launches"}
        if extra:
            print(f"  {', '.join(f'{k}: {v}' for k, v in extra.items())}")
    left = {f"{n} static": r["left_after_down"] for n, r in sizes.items()}
    if resume is not None:
        left["resume"] = resume["left_after_down"]
    for n, found in left.items():
        count = sum(len(v) for v in found.values())
        kinds = ", ".join(f"{k} {len(v)}" for k, v in found.items())
        print(f"tagged resources left after down ({n}): {count}{f' ({kinds})' if kinds else ''}")


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: sizes are numbers, e.g. 64,1000") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: at least one size, each 1 or more")
    return sizes


def head_commit() -> str:
    """The checked-out commit, short, read from ``.git`` (empty when it cannot be read)."""
    git = REPO / ".git"
    try:
        head = (git / "HEAD").read_text(encoding="utf-8").strip()
        if head.startswith("ref: "):
            ref = head.removeprefix("ref: ")
            loose = git / ref
            if loose.exists():
                head = loose.read_text(encoding="utf-8").strip()
            else:
                packed = (git / "packed-refs").read_text(encoding="utf-8").splitlines()
                head = next(line.split()[0] for line in packed if line.endswith(f" {ref}"))
    except (OSError, StopIteration):
        return ""
    return head[:7]


def run(
    args: argparse.Namespace, clock: Clock
) -> tuple[dict[int, dict[str, Any]], dict[str, Any] | None]:
    sizes: dict[int, dict[str, Any]] = {}
    resume: dict[str, Any] | None = None
    for nodes in args.sizes:
        print(f"size {nodes}:", file=sys.stderr, flush=True)
        with fresh_account(args.scale, clock) as account:
            sizes[nodes] = static_size(account, nodes)
    if not args.skip_resume:
        print(f"resume of {RESUME_NODES}:", file=sys.stderr, flush=True)
        with fresh_account(args.scale, clock) as account:
            resume = resume_size(account, RESUME_NODES)
    return sizes, resume


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", type=parse_sizes, default=[SMALL, TIMED, LARGE])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--skip-resume", action="store_true")
    parser.add_argument(
        "--real-time", action="store_true", help="wait in real time (no simulated clock)"
    )
    args = parser.parse_args()
    if not 0 < args.scale <= 1:
        parser.error(f"--scale {args.scale}: must be in (0, 1]")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": REGION,
        }
    )
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_CONFIG_FILE"):
        os.environ.pop(var, None)
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    clock = Clock() if args.real_time else SimClock()
    started = clock.real()
    try:
        with clock.installed(), moto_tags_by_id():
            sizes, resume = run(args, clock)
    except Exception as exc:  # noqa: BLE001 - a benchmark that cannot run says why
        print(f"cannot run: {one_line(exc)}", file=sys.stderr)
        return 2
    report(args.scale, clock, sizes, resume)
    commit = head_commit()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "commit": commit,
        "machine": platform.node(),
        "python": platform.python_version(),
        "scale": args.scale,
        "clock": "simulated" if clock.simulated else "real",
        "real_seconds": round(clock.real() - started, 1),
        "virtual_sleep_seconds": round(clock.offset, 1),
        "sizes": {str(n): r for n, r in sizes.items()},
        "resume": resume,
        "targets": targets(sizes, resume, args.scale)[1:],
    }
    RESULTS.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
