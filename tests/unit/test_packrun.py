"""clusterkit pack, node side: the pack directory, the element runner, the manifest, status."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from clusterkit.nodetools.packdir import PackDir, RunSpec, guided_blocks, read_records, task_files
from clusterkit.nodetools.packrun import Runner, oom_counter_files, oom_kills, plain_argv
from clusterkit.nodetools.packstate import (
    array_indexes,
    collect,
    durations,
    element_states,
    failed_groups,
    failed_tasks,
    pack_status,
)
from clusterkit.slurm import SlurmJob


def make_pack(root: Path, commands: list[str], spec: RunSpec, job_id: int | None = 7) -> PackDir:
    """A pack directory as ``clusterkit pack submit`` writes it."""
    for d in ("runs", "manifest", "out", "logs"):
        (root / d).mkdir(parents=True, exist_ok=True)
    txt, idx = task_files(commands)
    (root / "tasks.txt").write_bytes(txt)
    (root / "tasks.idx").write_bytes(idx)
    (root / "pack.json").write_text(json.dumps({"pack": root.name, "tasks": len(commands)}))
    pack = PackDir(root)
    add_run(pack, spec, job_id)
    return pack


def add_run(pack: PackDir, spec: RunSpec, job_id: int | None) -> None:
    pack.run_path(spec.run, "json").write_text(json.dumps(spec.to_json()))
    if spec.ids is not None:
        pack.run_path(spec.run, "ids").write_text("".join(f"{i}\n" for i in spec.ids))
    if job_id is not None:
        pack.run_path(spec.run, "job").write_text(f"{job_id}\n")


def env(tmp_path: Path, element: int = 0, restart: int = 0) -> dict[str, str]:
    return {
        "HOME": str(tmp_path),
        "PATH": "/usr/bin:/bin",
        "TMPDIR": str(tmp_path),
        "SLURM_ARRAY_JOB_ID": "7",
        "SLURM_ARRAY_TASK_ID": str(element),
        "SLURM_RESTART_COUNT": str(restart),
        "SLURMD_NODENAME": "compute-st-1",
    }


def job(element: int | None, state: str, pending: str = "", job_id: int = 7) -> SlurmJob:
    return SlurmJob(
        job_id=100 + (element or 0), array_job_id=job_id, array_task_id=element,
        array_task_string=pending, name="pack", user="ckuser", state=state, partition="all",
        nodes="", reason="", restart_count=0, exit_code=None, signal=None, raw_exit_code=None,
        submit_time=None, start_time=None, end_time=None,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# layout


def test_commands_are_read_by_offset(tmp_path: Path) -> None:
    commands = ["echo 0", "echo ünïcode", "", "x" * 5000, "last"]
    pack = make_pack(tmp_path / "p", commands, RunSpec(run=0, chunk=2, elements=3, count=5))
    assert pack.commands([4, 1, 3]) == {4: "last", 1: "echo ünïcode", 3: "x" * 5000}


def test_element_tasks_cover_every_task_once() -> None:
    spec = RunSpec(run=0, chunk=3, elements=4, count=10)
    chunks = [spec.element_tasks(e) for e in range(spec.elements)]
    assert chunks == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    retry = RunSpec(run=1, chunk=2, elements=2, count=3, ids=(4, 8, 9))
    assert [retry.element_tasks(e) for e in range(2)] == [[4, 8], [9]]


def test_runs_round_trip_through_their_files(tmp_path: Path) -> None:
    spec = RunSpec(run=0, chunk=2, elements=2, count=4, retries=1, time_s=3.0, chdir="/x")
    pack = make_pack(tmp_path / "p", ["a"] * 4, spec)
    add_run(pack, RunSpec(run=1, chunk=1, elements=2, count=2, ids=(1, 3)), 9)
    assert pack.runs() == [spec, RunSpec(run=1, chunk=1, elements=2, count=2, ids=(1, 3))]
    assert [pack.job_id(0), pack.job_id(1), pack.job_id(2)] == [7, 9, None]


@pytest.mark.parametrize(
    ("expr", "indexes"),
    [("3", {3}), ("0-3", {0, 1, 2, 3}), ("0-3,7", {0, 1, 2, 3, 7}), ("4-31%8", set(range(4, 32))),
     ("1-9:4", {1, 5, 9}), ("", set())],
)  # fmt: skip
def test_array_indexes(expr: str, indexes: set[int]) -> None:
    assert array_indexes(expr) == indexes


def test_element_states_of_one_array() -> None:
    jobs = [
        job(0, "RUNNING"),
        job(1, "COMPLETED"),
        job(2, "REQUEUED"),
        job(3, "COMPLETING"),  # a requeued element is, before it is PENDING again
        job(4, "FAILED"),
        job(None, "PENDING", pending="5-7%4"),
        job(0, "RUNNING", job_id=8),  # another array
    ]
    assert element_states(jobs, 7) == {0: "RUNNING", 2: "PENDING", 3: "COMPLETING",
                                       5: "PENDING", 6: "PENDING", 7: "PENDING"}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# the runner


def run_element(pack: PackDir, tmp_path: Path, element: int = 0, restart: int = 0) -> Runner:
    spec = pack.runs()[-1]
    runner = Runner(pack, spec, element, env(tmp_path, element, restart))
    runner.run()
    return runner


def test_an_element_runs_its_chunk_and_records_every_task(tmp_path: Path) -> None:
    commands = [
        "echo out $CK_PACK_TASK $CK_PACK_ATTEMPT; echo err >&2",
        "exit 3",
        "kill -KILL $$",
        "pwd",
    ]
    pack = make_pack(tmp_path / "p", commands, RunSpec(run=0, chunk=4, elements=1, count=4))
    run_element(pack, tmp_path)
    records = read_records(pack.manifest(0, 0))
    assert [r["task"] for r in records] == [0, 1, 2, 3]
    assert [r["state"] for r in records] == ["done", "failed", "failed", "done"]
    assert [(r["exit"], r["signal"]) for r in records] == [(0, None), (3, None), (None, 9),
                                                            (0, None)]  # fmt: skip
    assert records[1]["reason"] == "exit 3"
    assert records[2]["reason"] == "killed by signal 9"
    first = records[0]
    assert (first["node"], first["job"], first["attempt"], first["restart"]) == (
        "compute-st-1", "7_0", 1, 0)  # fmt: skip
    assert (tmp_path / "p" / first["out"]).read_text() == "out 0 1\n"
    assert (tmp_path / "p" / first["err"]).read_text() == "err\n"
    assert records[1]["out"] is None and records[1]["err"] is None
    assert (tmp_path / "p" / records[3]["out"]).read_text() == f"{tmp_path}\n"  # home
    assert not list(tmp_path.glob("ck-pack-*"))  # scratch removed


def test_a_task_over_its_time_is_recorded_as_timeout(tmp_path: Path) -> None:
    spec = RunSpec(run=0, chunk=2, elements=1, count=2, time_s=0.3)
    pack = make_pack(tmp_path / "p", ["sleep 30", "echo next"], spec)
    run_element(pack, tmp_path)
    slow, fast = read_records(pack.manifest(0, 0))
    assert slow["state"] == "timeout"
    assert slow["reason"] == "over its time limit of 0.3 s"
    assert 0.3 <= slow["runtime"] < 5
    assert fast["state"] == "done"


def test_retries_run_inside_the_element_and_are_recorded(tmp_path: Path) -> None:
    flaky = f"test -e {tmp_path}/seen || {{ touch {tmp_path}/seen; exit 1; }}"
    spec = RunSpec(run=0, chunk=2, elements=1, count=2, retries=2)
    pack = make_pack(tmp_path / "p", [flaky, "exit 5"], spec)
    run_element(pack, tmp_path)
    records = read_records(pack.manifest(0, 0))
    assert [(r["task"], r["attempt"], r["state"]) for r in records] == [
        (0, 1, "failed"), (0, 2, "done"),
        (1, 1, "failed"), (1, 2, "failed"), (1, 3, "failed"),
    ]  # fmt: skip


def test_a_restarted_element_skips_what_it_finished(tmp_path: Path) -> None:
    log = tmp_path / "ran"
    commands = [f"echo {i} >> {log}" for i in range(4)]
    spec = RunSpec(run=0, chunk=4, elements=1, count=4, retries=1)
    pack = make_pack(tmp_path / "p", commands, spec)
    # The first run finished task 0, and task 1 failed once; then it was requeued.
    manifest = pack.manifest(0, 0)
    manifest.write_text(
        json.dumps({"task": 0, "attempt": 1, "state": "done"}) + "\n"
        + json.dumps({"task": 1, "attempt": 1, "state": "failed"}) + "\n"
        + '{"task": 2, "attem'  # cut short by the node's end
    )  # fmt: skip
    run_element(pack, tmp_path, restart=1)
    assert log.read_text().split() == ["1", "2", "3"]
    records = read_records(manifest)
    assert [(r["task"], r["attempt"], r.get("restart")) for r in records] == [
        (0, 1, None), (1, 1, None), (1, 2, 1), (2, 1, 1), (3, 1, 1)]  # fmt: skip


def test_a_stopped_runner_records_nothing_for_its_task(tmp_path: Path) -> None:
    pack = make_pack(tmp_path / "p", ["echo a", "echo b"], RunSpec(0, 2, 1, 2))
    runner = Runner(pack, pack.runs()[0], 0, env(tmp_path))
    runner.stop = True
    runner.run()
    assert read_records(pack.manifest(0, 0)) == []


def test_the_runner_command_outside_slurm(tmp_path: Path) -> None:
    pack = make_pack(tmp_path / "p", ["echo a"], RunSpec(0, 1, 1, 1))
    code = "from clusterkit.nodetools.packrun import main; raise SystemExit(main())"
    no_job = subprocess.run(
        [sys.executable, "-c", code, str(pack.root), "0"], capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin"}, cwd=Path(__file__).parents[2], check=False,
    )  # fmt: skip
    assert no_job.returncode == 2
    assert "SLURM_ARRAY_TASK_ID is not set" in no_job.stderr
    ok = subprocess.run(
        [sys.executable, "-c", code, str(pack.root), "0"], capture_output=True, text=True,
        env=env(tmp_path), cwd=Path(__file__).parents[2], check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert read_records(pack.manifest(0, 0))[0]["state"] == "done"


def queued(count: int, elements: int, run: int = 0, **extra: object) -> RunSpec:
    blocks = guided_blocks(count, elements)
    return RunSpec(run=run, chunk=blocks[0], elements=elements, count=count, blocks=blocks,
                   **extra)  # type: ignore[arg-type]  # fmt: skip


def test_elements_of_a_queued_run_share_its_blocks(tmp_path: Path) -> None:
    # Four elements at once on 60 short tasks: every task runs exactly once, every block
    # has one element, and the blocks an element took hold the tasks it ran.
    pack = make_pack(tmp_path / "p", ["sleep 0.01"] * 60, queued(60, 4))
    spec = pack.runs()[0]
    threads = [threading.Thread(target=run_element, args=(pack, tmp_path, e)) for e in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = [r for e in range(4) for r in read_records(pack.manifest(0, e))]
    assert sorted(r["task"] for r in records) == list(range(60))
    owners = pack.claims(0)
    assert sorted(owners) == list(range(spec.block_count))
    for r in records:
        block = next(b for b in owners if r["task"] in spec.block_tasks(b))
        assert owners[block] == r["element"]
    assert {r["element"] for r in records} == {0, 1, 2, 3}  # every element got work


def test_a_requeued_element_finishes_its_own_blocks_before_taking_more(tmp_path: Path) -> None:
    log = tmp_path / "ran"
    spec = queued(8, 2)  # blocks of 2, 2, 1, 1, 1, 1 tasks
    assert spec.blocks == (2, 2, 1, 1, 1, 1)
    pack = make_pack(tmp_path / "p", [f"echo {i} >> {log}" for i in range(8)], spec)
    pack.claims_dir.mkdir()
    pack.claim(0, 0).write_text("0 7_0\n")  # element 0 took block 0, did task 0, was requeued
    pack.claim(0, 1).write_text("1 7_1\n")  # element 1 has block 1 (tasks 2, 3)
    pack.manifest(0, 0).write_text(record(0, "done"))
    run_element(pack, tmp_path, element=0, restart=1)
    assert log.read_text().split() == ["1", "4", "5", "6", "7"]  # its task 1, then blocks 2-5
    assert pack.claims(0) == {0: 0, 1: 1, 2: 0, 3: 0, 4: 0, 5: 0}


def test_status_of_a_queued_run_in_flight(tmp_path: Path) -> None:
    spec = queued(8, 2)  # blocks (2, 2, 1, 1, 1, 1): tasks 0-1, 2-3, 4, 5, 6, 7
    pack = make_pack(tmp_path / "p", [f"t{i}" for i in range(8)], spec)
    pack.claims_dir.mkdir()
    for block, element in ((0, 0), (1, 1), (2, 0)):
        pack.claim(0, block).write_text(f"{element} 7_{element}\n")
    pack.manifest(0, 0).write_text(record(0, "done") + record(1, "failed"))
    pack.manifest(0, 1).write_text(record(2, "done"))
    status = pack_status(pack, [job(0, "RUNNING"), job(1, "RUNNING")])
    assert [v.state for v in status.views] == [
        "done", "failed", "done", "running", "running", *["pending"] * 3]  # fmt: skip
    assert [v.element for v in status.views] == [0, 0, 1, 1, 0, None, None, None]
    # Element 1 was cancelled and element 0 ended: what nobody ran is lost (retry runs it).
    final = pack_status(pack, [])
    assert [v.state for v in final.views][3:] == ["lost"] * 5
    assert failed_tasks(final) == [1, 3, 4, 5, 6, 7]


def test_a_task_whose_need_failed_is_skipped_and_retried_with_it(tmp_path: Path) -> None:
    log = tmp_path / "ran"
    commands = [f"echo 0 >> {log}", "exit 4", f"echo 2 >> {log}", f"echo 3 >> {log}"]
    first = RunSpec(run=0, chunk=2, elements=1, count=2, ids=(0, 1))
    pack = make_pack(tmp_path / "p", commands, first)
    then = RunSpec(run=1, chunk=2, elements=1, count=2, ids=(2, 3), after={2: (0,), 3: (1,)})
    add_run(pack, then, 8)
    for run in (0, 1):  # Slurm starts run 1 once run 0 has ended (afterany)
        Runner(pack, pack.runs()[run], 0, env(tmp_path)).run()
    assert log.read_text().split() == ["0", "2"]
    skipped = read_records(pack.manifest(1, 0))[1]
    assert (skipped["task"], skipped["state"], skipped["runtime"]) == (3, "skipped", 0.0)
    assert skipped["reason"] == "needs task 1, which ended failed (exit 4)"
    status = pack_status(pack, [])
    assert [v.state for v in status.views] == ["done", "failed", "done", "skipped"]
    assert status.summary()["failures"] == {"failed": 1, "skipped": 1}
    assert failed_tasks(status) == [1, 3]
    groups = failed_groups(pack, status)
    assert [(g["tasks"], g["after"]) for g in groups] == [([1, 3], {"3": [1]})]


@pytest.mark.parametrize(
    ("command", "argv"),
    [("sleep 0.5", ["sleep", "0.5"]), ("/opt/sim --seed=3 -o out.1", ["/opt/sim", "--seed=3",
     "-o", "out.1"]), ("echo hi", None), ("cd /tmp", None), ("X=1 sim", None),
     ("sim $HOME", None), ("sim > out", None), ("sim 'a b'", None), ("sim  two", None),
     ("sim *.dat", None), ("./sim", None), ("bin/sim", None), ("for x", None),
     ("sim ~/x", None), ("sim; other", None)],
)  # fmt: skip
def test_only_commands_without_shell_syntax_skip_the_shell(
    command: str, argv: list[str] | None
) -> None:
    assert plain_argv(command) == argv


def test_a_plain_command_runs_without_a_shell_and_a_missing_one_says_so(tmp_path: Path) -> None:
    commands = ["cat /proc/self/comm", "no-such-program-here x", "sh -c 'exit 4'"]
    pack = make_pack(tmp_path / "p", commands, RunSpec(run=0, chunk=3, elements=1, count=3))
    run_element(pack, tmp_path)
    plain, missing, shell = read_records(pack.manifest(0, 0))
    assert (tmp_path / "p" / plain["out"]).read_text() == "cat\n"  # no bash in between
    assert (missing["exit"], missing["state"]) == (127, "failed")
    assert "command not found" in (tmp_path / "p" / missing["err"]).read_text()
    assert shell["exit"] == 4


# ---------------------------------------------------------------------------------------------
# the cgroup's OOM counter


def test_oom_counter_files_v1_under_a_mounted_subtree(tmp_path: Path) -> None:
    # /proc/self/cgroup names the path from the hierarchy's root; the node mounts a subtree.
    step = tmp_path / "memory" / "slurm_n1" / "uid_1" / "job_5" / "step_batch" / "task_0"
    step.mkdir(parents=True)
    for d in [step, *step.parents][:6]:
        (d / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    (step / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    proc = "5:freezer:/x\n4:memory:/clusterkit/c1/slurm_n1/uid_1/job_5/step_batch/task_0\n"
    files = oom_counter_files(proc, tmp_path)
    assert files[0] == step / "memory.oom_control"
    assert files[-1] == tmp_path / "memory" / "memory.oom_control"
    assert oom_kills(files) == 2


def test_oom_counter_files_v2(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("memory\n")
    leaf = tmp_path / "system.slice" / "job_5"
    leaf.mkdir(parents=True)
    (leaf / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    files = oom_counter_files("0::/system.slice/job_5\n", tmp_path)
    assert files == [leaf / "memory.events"]
    assert oom_kills(files) == 1


def test_no_memory_cgroup_means_no_counter(tmp_path: Path) -> None:
    assert oom_counter_files("1:cpu:/x\n", tmp_path) == []
    assert oom_kills([tmp_path / "missing"]) == 0


# ---------------------------------------------------------------------------------------------
# status and collect


def record(task: int, state: str, attempt: int = 1, **extra: object) -> str:
    rec = {"task": task, "attempt": attempt, "state": state, "start": 100.0 + task,
           "runtime": 1.0, "node": "n1", **extra}  # fmt: skip
    return json.dumps(rec) + "\n"


def test_status_of_a_pack_in_flight(tmp_path: Path) -> None:
    spec = RunSpec(run=0, chunk=3, elements=4, count=12, retries=1)
    pack = make_pack(tmp_path / "p", [f"t{i}" for i in range(12)], spec)
    # element 0 ended: done, failed twice (final), never ran task 2 (lost)
    pack.manifest(0, 0).write_text(record(0, "done") + record(1, "oom") + record(1, "oom", 2))
    # element 1 runs: task 3 done, task 4 failed once (a retry is due), task 5 waits
    pack.manifest(0, 1).write_text(record(3, "done") + record(4, "failed"))
    # element 2 ended with a timeout; element 3 is pending
    pack.manifest(0, 2).write_text(
        "".join(record(t, "done") for t in (6, 7)) + record(8, "timeout") + record(8, "timeout", 2)
    )
    jobs = [job(1, "RUNNING"), job(None, "PENDING", pending="3")]
    status = pack_status(pack, jobs)
    states = {v.task: v.state for v in status.views}
    assert states == {0: "done", 1: "oom", 2: "lost", 3: "done", 4: "running", 5: "pending",
                      6: "done", 7: "done", 8: "timeout", 9: "pending", 10: "pending",
                      11: "pending"}  # fmt: skip
    summary = status.summary()
    assert (summary["done"], summary["running"], summary["failed"], summary["pending"]) == (
        4, 1, 3, 4)  # fmt: skip
    assert summary["failures"] == {"timeout": 1, "oom": 1, "lost": 1}
    assert not summary["finished"]
    assert failed_tasks(status) == [1, 2, 8]


def test_a_retry_run_supersedes_the_first(tmp_path: Path) -> None:
    pack = make_pack(tmp_path / "p", ["a", "b", "c"], RunSpec(0, 3, 1, 3))
    pack.manifest(0, 0).write_text(record(0, "done") + record(1, "failed") + record(2, "oom"))
    add_run(pack, RunSpec(run=1, chunk=1, elements=2, count=2, ids=(1, 2)), 8)
    pack.manifest(1, 0).write_text(record(1, "done", out="out/1.out"))
    status = pack_status(pack, [job(1, "RUNNING", job_id=8)])
    assert [v.state for v in status.views] == ["done", "done", "running"]
    assert status.views[1].run == 1
    final = pack_status(pack, [])
    assert [v.state for v in final.views] == ["done", "done", "lost"]
    assert final.summary()["finished"]


def test_collect_writes_a_row_per_task_and_a_summary(tmp_path: Path) -> None:
    pack = make_pack(tmp_path / "p", ["echo a", "exit 2"], RunSpec(0, 2, 1, 2))
    pack.manifest(0, 0).write_text(
        record(0, "done", exit=0, out="out/0.out") + record(1, "failed", exit=2)
    )
    summary = collect(pack, pack_status(pack, []))
    assert (summary["done"], summary["failed"], summary["task_seconds"]) == (1, 1, 1.0)
    assert summary["nodes"] == {"n1": 1}
    assert json.loads((pack.root / "summary.json").read_text()) == summary
    with open(pack.root / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["task"], r["state"], r["exit"], r["out"], r["command"]) for r in rows] == [
        ("0", "done", "0", "out/0.out", "echo a"), ("1", "failed", "2", "", "exit 2")]  # fmt: skip


def test_durations_are_each_done_tasks_last_run_time(tmp_path: Path) -> None:
    pack = make_pack(tmp_path / "p1", ["true"] * 3, RunSpec(run=0, chunk=3, elements=1, count=3))
    lines = [
        {"task": 0, "run": 0, "state": "done", "runtime": 0.5},
        {"task": 1, "run": 0, "state": "failed", "runtime": 0.2},
        {"task": 2, "run": 0, "state": "failed", "runtime": 0.1},
    ]
    pack.manifest(0, 0).write_text("".join(json.dumps(r) + "\n" for r in lines))
    # `pack retry` ran task 1 again in run 1, and it succeeded; task 2 failed for good
    retried = {"task": 1, "run": 1, "state": "done", "runtime": 0.75}
    pack.manifest(1, 0).write_text(json.dumps(retried) + "\n")
    found = durations(tmp_path)
    assert {k: sorted(v) for k, v in found.items()} == {"p1": [0.5, 0.75]}
