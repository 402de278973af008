"""clusterkit.slurm, slurmreader and hostlist against output captured from Slurm 22.05.8 (see
tests/unit/data/README.md).

No Slurm runs here: the reader gets a plain function as its runner that returns the captured
text, and records the argv it was asked to run.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clusterkit.errors import CommandError, SlurmError
from clusterkit.hostlist import MAX_HOSTS, compress_hostlist, hostname_sort_key, hostnames
from clusterkit.slurm import (
    NO_VAL,
    SINFO_ARGV,
    SQUEUE_ARGV,
    SlurmJob,
    SlurmNode,
    decode_exit_code,
    parse_sinfo,
    parse_squeue,
    wait_past_revocation,
)
from clusterkit.slurmreader import SlurmReader

DATA = Path(__file__).parent / "data"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _text(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


SINFO = _text("sinfo-22.05.json")
SQUEUE = _text("squeue-22.05.json")
SINFO_DERIVED = _text("sinfo-22.05-derived-cloud-drain.json")
SQUEUE_DERIVED = _text("squeue-22.05-derived-array-requeue.json")
SINFO_ERRORS = _text("sinfo-22.05-errors.json")
SQUEUE_ERRORS = _text("squeue-22.05-errors.json")


def _by_name(nodes: list[SlurmNode]) -> dict[str, SlurmNode]:
    return {n.name: n for n in nodes}


def _by_id(jobs: list[SlurmJob]) -> dict[int, SlurmJob]:
    return {j.job_id: j for j in jobs}


# --- sinfo ----------------------------------------------------------------------------------


def test_sinfo_captured_nodes_are_read_field_by_field() -> None:
    nodes = parse_sinfo(SINFO)
    assert [n.name for n in nodes] == ["compute-st-1", "compute-st-2"]
    st1, st2 = nodes
    assert st1 == SlurmNode(
        name="compute-st-1",
        state="IDLE",
        flags=("COMPLETING", "NOT_RESPONDING"),
        cpus=4,
        alloc_cpus=0,
        memory_mb=1024,
        alloc_memory_mb=0,
        partitions=("compute",),
        reason="",
        address="10.250.0.3",
        hostname="compute-st-1",
    )
    assert (st2.state, st2.flags, st2.alloc_cpus, st2.alloc_memory_mb) == ("MIXED", (), 1, 100)
    assert st2.address == "10.250.0.4"
    assert st1.display_state == "IDLE+COMPLETING+NOT_RESPONDING"
    assert st2.display_state == "MIXED"
    assert not any(n.is_drained or n.is_draining or n.is_powered_down for n in nodes)


def test_derived_fixture_keeps_the_captured_structure() -> None:
    real = json.loads(SINFO)
    derived = json.loads(SINFO_DERIVED)
    assert derived.keys() == real.keys()
    assert derived["meta"] == real["meta"]
    keys = set(real["nodes"][0])
    assert all(set(node) == keys for node in derived["nodes"])


def test_drained_cloud_node_powered_down_with_its_reason() -> None:
    nodes = _by_name(parse_sinfo(SINFO_DERIVED))
    dy1 = nodes["compute-dy-1"]
    assert dy1.state == "IDLE"
    assert dy1.flags == ("CLOUD", "DRAIN", "POWERED_DOWN")
    assert dy1.display_state == "IDLE+CLOUD+DRAIN+POWERED_DOWN"
    assert dy1.is_drained and not dy1.is_draining and dy1.is_powered_down
    assert dy1.reason == "spot:terminate at 2026-11-22T19:50:00Z"
    assert dy1.address == dy1.hostname == "compute-dy-1"


def test_drain_of_a_busy_node_is_draining_not_drained() -> None:
    nodes = _by_name(parse_sinfo(SINFO_DERIVED))
    st2 = nodes["compute-st-2"]
    assert st2.display_state == "MIXED+DRAIN"
    assert st2.is_draining and not st2.is_drained
    assert st2.reason.startswith("spot:terminate")
    dy2 = nodes["compute-dy-2"]  # being resumed: powering up is not powered down
    assert dy2.display_state == "IDLE+CLOUD+POWERING_UP"
    assert not dy2.is_powered_down and not dy2.is_drained


def test_completing_idle_node_with_drain_is_still_draining() -> None:
    doc = json.loads(SINFO)
    doc["nodes"][0]["state_flags"] = ["COMPLETING", "DRAIN"]
    (st1, _) = parse_sinfo(json.dumps(doc))
    assert st1.state == "IDLE" and st1.is_draining and not st1.is_drained


def test_missing_optional_node_keys_take_defaults() -> None:
    (node,) = parse_sinfo(json.dumps({"nodes": [{"name": "x1"}]}))
    assert node == SlurmNode(
        name="x1",
        state="UNKNOWN",
        flags=(),
        cpus=0,
        alloc_cpus=0,
        memory_mb=0,
        alloc_memory_mb=0,
        partitions=(),
        reason="",
        address="",
        hostname="",
    )


def test_lower_case_flags_are_upper_cased() -> None:
    (node,) = parse_sinfo(
        json.dumps({"nodes": [{"name": "x", "state": "down", "state_flags": ["drain"]}]})
    )
    assert node.display_state == "DOWN+DRAIN"


# --- squeue ---------------------------------------------------------------------------------


def test_squeue_captured_jobs_states_and_ids() -> None:
    jobs = parse_squeue(SQUEUE)
    assert [(j.job_id, j.state) for j in jobs] == [
        (1, "COMPLETING"),
        (2, "COMPLETED"),
        (3, "COMPLETED"),
        (4, "OUT_OF_MEMORY"),
        (5, "RUNNING"),
        (6, "PENDING"),
    ]
    assert {j.user for j in jobs} == {"root"}
    assert {j.partition for j in jobs} == {"compute"}
    assert [j.restart_count for j in jobs] == [0] * 6
    assert [j.display_id for j in jobs] == ["1", "2", "3", "4", "5", "6_[0-3]"]


def test_captured_oom_job_decodes_to_slurms_0_125() -> None:
    oom = _by_id(parse_squeue(SQUEUE))[4]
    assert (oom.state, oom.reason, oom.name, oom.nodes) == (
        "OUT_OF_MEMORY",
        "OutOfMemory",
        "python3",
        "compute-st-2",
    )
    assert (oom.raw_exit_code, oom.exit_code, oom.signal) == (253, None, 125)
    assert oom.is_finished
    assert (oom.start_time, oom.end_time) == (1795376437, 1795376437)


def test_captured_launch_failure_keeps_the_slurm_error_code_raw() -> None:
    job = _by_id(parse_squeue(SQUEUE))[1]
    assert (job.state, job.reason, job.nodes) == ("COMPLETING", "JobLaunchFailure", "compute-st-1")
    assert (job.raw_exit_code, job.exit_code, job.signal) == (1001, None, None)
    assert (job.submit_time, job.start_time, job.end_time) == (1795376394, 1795376394, 1795376405)


def test_captured_completed_jobs_exit_zero() -> None:
    jobs = _by_id(parse_squeue(SQUEUE))
    for job_id in (2, 3):
        assert (jobs[job_id].exit_code, jobs[job_id].signal) == (0, None)
        assert jobs[job_id].reason == ""  # Slurm's "None"
        assert jobs[job_id].is_finished


def test_captured_running_job_has_no_end_and_no_exit_code_yet() -> None:
    job = _by_id(parse_squeue(SQUEUE))[5]
    raw = next(j for j in json.loads(SQUEUE)["jobs"] if j["job_id"] == 5)
    assert raw["end_time"] == 1826912440  # start + a year: the time limit, not an end
    assert (job.start_time, job.end_time) == (1795376440, None)
    assert (job.exit_code, job.signal, job.raw_exit_code) == (None, None, 0)
    assert not job.is_finished


def test_captured_pending_array_rest() -> None:
    rest = _by_id(parse_squeue(SQUEUE))[6]
    assert (rest.array_job_id, rest.array_task_id, rest.array_task_string) == (6, None, "0-3")
    assert (rest.state, rest.reason, rest.nodes) == ("PENDING", "Resources", "")
    assert (rest.submit_time, rest.start_time, rest.end_time) == (1795376438, None, None)
    assert rest.display_id == "6_[0-3]"
    plain = _by_id(parse_squeue(SQUEUE))[5]
    assert (plain.array_job_id, plain.array_task_id) == (None, None)


def test_derived_array_task_requeue_and_exit_statuses() -> None:
    jobs = parse_squeue(SQUEUE_DERIVED)
    assert [j.display_id for j in jobs] == ["6_[1-3]", "6_0", "8", "9", "10"]
    by_id = _by_id(jobs)
    task = by_id[7]
    assert (task.array_job_id, task.array_task_id, task.state) == (6, 0, "RUNNING")
    requeued = by_id[8]
    assert (requeued.restart_count, requeued.state, requeued.reason) == (2, "PENDING", "BeginTime")
    assert requeued.start_time is None  # the raw 1795376600 is the scheduler's estimate
    assert (by_id[9].state, by_id[9].exit_code, by_id[9].signal) == ("FAILED", 2, None)
    assert (by_id[10].state, by_id[10].exit_code, by_id[10].signal) == ("CANCELLED", None, 15)
    assert hostnames(by_id[10].nodes) == ["compute-st-1", "compute-st-2"]


def test_missing_optional_job_keys_take_defaults() -> None:
    (job,) = parse_squeue(json.dumps({"jobs": [{"job_id": 3, "user_id": 2001}]}))
    assert job.display_id == "3"
    assert (job.state, job.user, job.name, job.restart_count) == ("UNKNOWN", "2001", "", 0)
    assert (job.exit_code, job.signal, job.raw_exit_code) == (None, None, None)
    assert (job.submit_time, job.start_time, job.end_time) == (None, None, None)


def test_unset_times_are_none_even_for_an_ended_job() -> None:
    doc = {"jobs": [{"job_id": 3, "job_state": "CANCELLED", "submit_time": 0, "start_time": 0}]}
    (job,) = parse_squeue(json.dumps({"jobs": [{**doc["jobs"][0], "end_time": 0}]}))
    assert job.is_finished
    assert (job.submit_time, job.start_time, job.end_time) == (None, None, None)


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        (0, (0, None)),
        (1 << 8, (1, None)),
        (2 << 8, (2, None)),
        (255 << 8, (255, None)),
        (9, (None, 9)),  # SIGKILL
        (0x80 | 11, (None, 11)),  # SIGSEGV with a core dump
        (253, (None, 125)),  # SIG_OOM
        (1001, (None, None)),  # srun's SLURM_COMMUNICATIONS_CONNECTION_ERROR
        (0x7F, (None, None)),  # "stopped", never an end
        (0x80, (None, None)),  # a core bit without a signal
        (0x10000, (None, None)),
        (NO_VAL, (None, None)),
        (-1, (None, None)),
        (None, (None, None)),
    ],
)
def test_decode_exit_code(raw: int | None, decoded: tuple[int | None, int | None]) -> None:
    assert decode_exit_code(raw) == decoded


# --- errors ---------------------------------------------------------------------------------


def test_captured_errors_array_of_sinfo_is_a_slurm_error() -> None:
    assert json.loads(SINFO_ERRORS)["nodes"] == []  # an empty list must not pass as "no nodes"
    with pytest.raises(SlurmError) as err:
        parse_sinfo(SINFO_ERRORS)
    message = str(err.value)
    assert message.startswith("sinfo --json reported an error: Unspecified error (errno -1)")
    assert "scontrol ping" in message


def test_captured_errors_array_of_squeue_is_a_slurm_error() -> None:
    with pytest.raises(SlurmError, match=r"^squeue --json reported an error: slurm_load_jobs: "):
        parse_squeue(SQUEUE_ERRORS)
    with pytest.raises(SlurmError, match="Failed while looking for jobs: Unspecified error"):
        parse_squeue(SQUEUE_ERRORS)


def test_several_errors_and_odd_error_entries_are_all_reported() -> None:
    doc = {"errors": [{"error": "Invalid node name", "errno": 2009}, "plain text"], "nodes": []}
    with pytest.raises(
        SlurmError, match=r"reported 2 errors: Invalid node name \(errno 2009\); plain"
    ):
        parse_sinfo(json.dumps(doc))
    with pytest.raises(SlurmError, match="reported an error: boom"):
        parse_squeue(json.dumps({"errors": "boom", "jobs": []}))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", r"^sinfo --json printed nothing"),
        ("   \n", r"^sinfo --json printed nothing"),
        (
            "sinfo: error: invalid option",
            r"^sinfo --json did not print JSON .*'sinfo: error: inval",
        ),
        ('{"nodes": [', r"^sinfo --json did not print JSON"),
        ("[" * 100_000, r"^sinfo --json (printed JSON nested too deeply|did not print JSON)"),
        ("1" * 5000, r"^sinfo --json did not print JSON"),  # over Python's int digit limit
        ("[]", r"^sinfo --json printed JSON that is not an object"),
        ('{"meta": {}}', r"^sinfo --json printed no 'nodes' list"),
        ('{"nodes": {}}', r"^sinfo --json printed no 'nodes' list"),
        ('{"nodes": [1]}', r"^sinfo --json: nodes\[0\] is not an object"),
        ('{"nodes": [{}]}', r"^sinfo --json: a node has no name"),
        ('{"nodes": [{"name": "x", "cpus": "4"}]}', r"node 'x': cpus should be an integer"),
        ('{"nodes": [{"name": "x", "cpus": true}]}', r"node 'x': cpus should be an integer"),
        ('{"nodes": [{"name": "x", "state_flags": "DRAIN"}]}', r"state_flags should be a list"),
    ],
)
def test_unusable_sinfo_output_is_a_slurm_error(text: str, expected: str) -> None:
    with pytest.raises(SlurmError, match=expected):
        parse_sinfo(text)


def test_long_garbage_is_quoted_short() -> None:
    with pytest.raises(SlurmError) as err:
        parse_squeue("x" * 10_000)
    assert str(err.value).startswith("squeue --json did not print JSON")
    assert len(str(err.value)) < 250


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"jobs": [{"name": "x"}]}, r"^squeue --json: a job has no job_id"),
        ({"jobs": [{"job_id": "7"}]}, r"job_id should be an integer"),
        ({"jobs": [{"job_id": 7, "exit_code": 1.5}]}, r"job 7: exit_code should be an integer"),
        ({"jobs": [{"job_id": 7, "nodes": ["a"]}]}, r"job 7: nodes should be a string"),
    ],
)
def test_unusable_squeue_entries_are_a_slurm_error(doc: dict[str, Any], expected: str) -> None:
    with pytest.raises(SlurmError, match=expected):
        parse_squeue(json.dumps(doc))


# --- any input: a list or a SlurmError, nothing else ----------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-2, max_value=70_000)
    | st.floats(allow_nan=False)
    | st.text(max_size=10)
    | st.sampled_from(["idle", "DRAIN", "RUNNING", "compute-st-[1-2]", "None", "0-3"])
)
json_values = st.recursive(
    json_scalars,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=15,
)
top_keys = st.sampled_from(["nodes", "jobs", "errors", "meta"]) | st.text(max_size=6)
documents = json_values | st.dictionaries(top_keys, json_values, max_size=4)


def _parses_or_slurm_error(text: str) -> None:
    for parse in (parse_sinfo, parse_squeue):
        try:
            result = parse(text)
        except SlurmError as exc:
            assert str(exc) and "\n" not in str(exc)
        else:
            assert isinstance(result, list)


@FUZZ
@given(st.text())
def test_any_text_gives_a_list_or_a_slurm_error(text: str) -> None:
    _parses_or_slurm_error(text)


@FUZZ
@given(documents)
def test_any_json_document_gives_a_list_or_a_slurm_error(doc: Any) -> None:
    _parses_or_slurm_error(json.dumps(doc))


REAL_DOCS = [("nodes", json.loads(SINFO)), ("jobs", json.loads(SQUEUE))]


@FUZZ
@given(st.sampled_from(REAL_DOCS), st.data())
def test_captured_output_with_one_field_replaced(doc_pick: Any, data: st.DataObject) -> None:
    key, real = doc_pick
    doc = copy.deepcopy(real)
    entry = data.draw(st.sampled_from(doc[key]))
    field = data.draw(st.sampled_from(sorted(entry)))
    entry[field] = data.draw(json_values)
    _parses_or_slurm_error(json.dumps(doc))


@FUZZ
@given(st.sampled_from(REAL_DOCS), st.data())
def test_captured_output_with_optional_keys_removed_still_parses(
    doc_pick: Any, data: st.DataObject
) -> None:
    key, real = doc_pick
    doc = copy.deepcopy(real)
    required = "name" if key == "nodes" else "job_id"
    for entry in doc[key]:
        optional = sorted(k for k in entry if k != required)
        for gone in data.draw(st.lists(st.sampled_from(optional), unique=True)):
            del entry[gone]
    parse = parse_sinfo if key == "nodes" else parse_squeue
    parsed = parse(json.dumps(doc))
    assert len(parsed) == len(real[key])


# --- SlurmReader --------------------------------------------------------------------------


class RecordingRunner:
    """Stands in for the command runner: returns captured output, records each argv."""

    def __init__(self, sinfo: str = SINFO, squeue: str = SQUEUE) -> None:
        self.outputs = {"sinfo": sinfo, "squeue": squeue}
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> str:
        self.calls.append(argv)
        return self.outputs[argv[0]]


def test_reader_runs_sinfo_json_and_parses_it() -> None:
    runner = RecordingRunner()
    reader = SlurmReader(runner)
    assert reader.backend == "cli"
    assert [n.name for n in reader.nodes()] == ["compute-st-1", "compute-st-2"]
    assert runner.calls == [["sinfo", "--json"]]
    assert list(SINFO_ARGV) == ["sinfo", "--json"]


def test_reader_asks_squeue_for_jobs_in_every_state() -> None:
    runner = RecordingRunner()
    jobs = SlurmReader(runner).jobs()
    assert runner.calls == [["squeue", "--json", "--states=all"]]
    assert list(SQUEUE_ARGV) == runner.calls[0]
    assert {j.state for j in jobs} >= {"COMPLETED", "OUT_OF_MEMORY", "RUNNING", "PENDING"}


def test_reader_node_by_name_and_unknown_node() -> None:
    reader = SlurmReader(RecordingRunner())
    assert reader.node("compute-st-2").state == "MIXED"
    with pytest.raises(
        SlurmError, match=r"no node named 'gpu-dy-1'; its nodes: compute-st-\[1-2\]$"
    ):
        reader.node("gpu-dy-1")
    empty = SlurmReader(RecordingRunner(sinfo='{"errors": [], "nodes": []}'))
    with pytest.raises(SlurmError, match=r"its nodes: none$"):
        empty.node("compute-st-1")


def test_reader_job_by_id_and_a_forgotten_job() -> None:
    runner = RecordingRunner()
    reader = SlurmReader(runner)
    job = reader.job(4)
    assert job is not None and job.state == "OUT_OF_MEMORY"
    assert reader.job(99) is None
    assert runner.calls == [list(SQUEUE_ARGV)] * 2


def test_reader_turns_slurm_errors_into_slurm_error() -> None:
    reader = SlurmReader(RecordingRunner(sinfo=SINFO_ERRORS, squeue=SQUEUE_ERRORS))
    with pytest.raises(SlurmError, match=r"^sinfo --json reported an error"):
        reader.nodes()
    with pytest.raises(SlurmError, match=r"^squeue --json reported an error"):
        reader.job(1)


def test_runner_failures_pass_through_unchanged() -> None:
    failure = CommandError(["ssh", "head", "sinfo", "--json"], 255, "Connection refused")

    def failing(argv: list[str]) -> str:
        raise failure

    with pytest.raises(CommandError) as err:
        SlurmReader(failing).nodes()
    assert err.value is failure


def test_create_uses_the_cli_unless_local_and_pyslurm_imports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runner = RecordingRunner()
    monkeypatch.setitem(sys.modules, "pyslurm", None)  # `import pyslurm` raises ImportError
    assert SlurmReader.create(runner, local=True).backend == "cli"
    monkeypatch.setitem(sys.modules, "pyslurm", ModuleType("pyslurm"))  # it imports
    assert SlurmReader.create(runner).backend == "cli"  # not local: over SSH, never pyslurm
    assert SlurmReader.create(runner, local=False).backend == "cli"
    chosen = SlurmReader.create(runner, local=True)
    assert chosen.backend == "pyslurm" and isinstance(chosen, SlurmReader)
    assert runner.calls == []


# --- hostlists ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "names"),
    [
        (
            "compute-st-[1-3,5],gpu-dy-[01-02],head",
            [
                "compute-st-1",
                "compute-st-2",
                "compute-st-3",
                "compute-st-5",
                "gpu-dy-01",
                "gpu-dy-02",
                "head",
            ],
        ),
        ("", []),
        ("head", ["head"]),
        ("compute-st-1", ["compute-st-1"]),
        ("n[7]", ["n7"]),
        ("n[8-10]", ["n8", "n9", "n10"]),
        ("n[08-10]", ["n08", "n09", "n10"]),
        ("n[098-101]", ["n098", "n099", "n100", "n101"]),
        ("n[1-2]-ib", ["n1-ib", "n2-ib"]),
        ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
        ("[1-2]", ["1", "2"]),
        ("b,a,b", ["b", "a", "b"]),  # order and duplicates kept, like scontrol show hostnames
        ("a,,b,", ["a", "b"]),
        ("a1 b2\n\tc3", ["a1", "b2", "c3"]),
        ("n[3,1-2]", ["n3", "n1", "n2"]),
    ],
)
def test_hostnames_expands(expression: str, names: list[str]) -> None:
    assert hostnames(expression) == names


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("n[1-2", "never closed"),
        ("n1-2]", "without '\\['"),
        ("n[[1-2]]", "nested"),
        ("n[]", "must hold numbers"),
        ("n[a-c]", "must hold numbers"),
        ("n[1-]", "must hold numbers"),
        ("n[-1]", "must hold numbers"),
        ("n[1,,2]", "must hold numbers"),
        ("n[3-1]", "runs backwards"),
        ("n[1-2000000]", f"more than {MAX_HOSTS} hosts"),
        ("a[1-2000]b[1-2000]", f"more than {MAX_HOSTS} hosts"),
        ("n[1-" + "9" * 31 + "]", "over 30 digits"),
    ],
)
def test_hostnames_rejects_malformed_expressions(expression: str, problem: str) -> None:
    with pytest.raises(SlurmError, match=problem):
        hostnames(expression)


@pytest.mark.parametrize(
    ("names", "expression"),
    [
        (
            [
                "head",
                "gpu-dy-02",
                "compute-st-5",
                "compute-st-1",
                "compute-st-3",
                "compute-st-2",
                "gpu-dy-01",
            ],
            "compute-st-[1-3,5],gpu-dy-[01-02],head",
        ),
        ([], ""),
        (["head"], "head"),
        (["head1"], "head1"),
        (["n1", "n1", "n2"], "n[1-2]"),
        (["n10", "n9"], "n[9-10]"),
        (["n09", "n10"], "n09,n10"),  # n10 has no padding to share with n09
        (["n01", "n1"], "n1,n01"),
        (["n", "n1", "n2"], "n,n[1-2]"),
        (["a1b2", "a1b3"], "a1b[2-3]"),
        (["7", "8"], "[7-8]"),
    ],
)
def test_compress_hostlist(names: list[str], expression: str) -> None:
    assert compress_hostlist(names) == expression
    assert hostnames(expression) == sorted(set(names), key=hostname_sort_key)


@pytest.mark.parametrize("bad", ["", "a b", "a,b", "n[1]", "x]"])
def test_compress_hostlist_rejects_names_no_hostlist_can_hold(bad: str) -> None:
    with pytest.raises(SlurmError, match="cannot be part of a hostlist"):
        compress_hostlist(["ok1", bad])


def test_sort_key_orders_numbers_as_numbers() -> None:
    names = ["n10", "n9", "m2", "n", "n01", "n1"]
    assert sorted(names, key=hostname_sort_key) == ["m2", "n", "n1", "n01", "n9", "n10"]
    assert hostname_sort_key("x" + "1" * 31) == ("x" + "1" * 31, -1, 0)  # too long to count


host_numbers = st.integers(min_value=0, max_value=130).map(str) | st.integers(
    min_value=0, max_value=130
).flatmap(lambda n: st.integers(min_value=len(str(n)), max_value=4).map(lambda w: str(n).zfill(w)))
host_names = st.one_of(
    st.tuples(st.sampled_from(["compute-st-", "gpu-dy-", "n", "a1b", ""]), host_numbers).map(
        "".join
    ),
    st.sampled_from(["head", "login", "n", "demo-head"]),
    st.text("ab-0123456789", min_size=1, max_size=8),
)


@FUZZ
@given(st.lists(host_names, max_size=30))
def test_expand_of_compress_is_the_sorted_unique_names(names: list[str]) -> None:
    expression = compress_hostlist(names)
    assert hostnames(expression) == sorted(set(names), key=hostname_sort_key)
    assert compress_hostlist(hostnames(expression)) == expression


@FUZZ
@given(st.text(max_size=40) | st.text("n[]-,0123 ", max_size=20))
def test_hostnames_of_any_text_is_a_list_or_a_slurm_error(text: str) -> None:
    try:
        names = hostnames(text)
    except SlurmError as exc:
        assert str(exc).startswith("hostlist ")
    else:
        assert all(name and "," not in name for name in names)


@FUZZ
@given(st.lists(st.text(max_size=12), max_size=8))
def test_compress_of_any_names_is_an_expression_or_a_slurm_error(names: list[str]) -> None:
    try:
        expression = compress_hostlist(names)
    except SlurmError as exc:
        assert "cannot be part of a hostlist" in str(exc)
    else:
        assert hostnames(expression) == sorted(set(names), key=hostname_sort_key)


@pytest.mark.parametrize(
    ("requeued_at", "now", "slept"),
    [(100.2, 100.3, 0.75), (100.9, 100.95, 0.1), (100.2, 101.06, None), (100.0, 100.0, 1.05)],
)  # fmt: skip
def test_a_requeued_job_is_released_only_after_the_second_of_its_revocation(
    requeued_at: float, now: float, slept: float | None
) -> None:
    sleeps: list[float] = []
    wait_past_revocation(requeued_at, clock=lambda: now, sleep=sleeps.append)
    assert sleeps == ([] if slept is None else [pytest.approx(slept)])
    # what slurmd compares: the release's whole second is after the revocation's
    assert slept is None or int(now + slept) > int(requeued_at)
