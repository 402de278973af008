"""clusterkit pack on a real cluster (head + 1 compute declaring 4 CPUs): elements packed on
one node, the manifest, failures that stay with their task (exit, OOM, time limit), a
requeued element that does not redo finished work, retry of failed tasks only, collect;
shapes, dependencies, and tasks in containers. The tests share one cluster and run in file
order."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.driver import Clusterkit, Result
from tests.rootfs import build_image

NAME = "pkit"
USER = "ckuser"
LEAK = "python3 -c 'x = bytearray(300 * 1024 * 1024); print(len(x))'"
# Three elements of three tasks: every element holds a failure between two that succeed.
TASKS = [
    "echo zero", "exit 3", "sleep 1; echo two",
    LEAK, "sleep 1; echo four", "sleep 5; echo five",
    "echo six >&2", "sleep 1; echo seven", "echo eight",
]  # fmt: skip


@pytest.fixture(scope="module")
def cluster(ck: Clusterkit) -> str:
    spec = ck.home / f"{NAME}.yaml"
    spec.write_text(json.dumps({
        "name": NAME,
        "groups": [{"name": "compute", "min": 1, "max": 1, "cpus": 4, "memory_mb": 2048}],
    }))  # fmt: skip
    ck.run("up", "-f", str(spec), timeout=600)
    return NAME


def pack_dir(ck: Clusterkit, pack: str) -> Path:
    """The pack's directory as the head stores it (the head's /shared is the cluster dir's)."""
    return ck.cluster_dir(NAME) / "shared" / "home" / USER / "ck-pack" / pack


def records(ck: Clusterkit, pack: str, run: int | None = None) -> list[dict[str, Any]]:
    pattern = "*.jsonl" if run is None else f"{run}-*.jsonl"
    return [
        json.loads(line)
        for path in sorted((pack_dir(ck, pack) / "manifest").glob(pattern))
        for line in path.read_text().splitlines()
    ]


def submit(ck: Clusterkit, tasks_file: Path, *options: str) -> dict[str, Any]:
    out = ck.run("pack", "submit", NAME, str(tasks_file), *options, "-o", "json").stdout
    data: dict[str, Any] = json.loads(out)
    return data


def wait(ck: Clusterkit, pack: str, timeout: float = 120) -> Result:
    return ck.run("pack", "status", NAME, pack, "--wait", "--interval", "0.5", "-o", "json",
                  check=False, timeout=timeout)  # fmt: skip


def test_a_pack_runs_and_failures_stay_with_their_task(ck: Clusterkit, cluster: str) -> None:
    tasks = ck.home / "tasks.txt"
    tasks.write_text("\n".join(TASKS) + "\n")
    sub = submit(ck, tasks, "--name", "mixed", "--chunk", "3", "--mem", "100M", "--time", "3")
    assert (sub["pack"], sub["tasks"], sub["chunking"]["elements"]) == ("mixed", 9, 3)
    done = wait(ck, "mixed")
    assert done.returncode == 1  # some tasks failed
    assert "3 task(s) of pack mixed failed" in done.stderr
    status = json.loads(done.stdout)
    assert (status["done"], status["failed"], status["running"], status["pending"]) == (6, 3, 0, 0)
    assert status["failures"] == {"failed": 1, "timeout": 1, "oom": 1}

    by_task = {r["task"]: r for r in records(ck, "mixed")}
    assert sorted(by_task) == list(range(9))
    states = [by_task[t]["state"] for t in range(9)]
    assert states == ["done", "failed", "done", "oom", "done", "timeout", "done", "done", "done"]
    assert by_task[1]["exit"] == 3
    assert by_task[3]["signal"] == 9 and "memory limit" in by_task[3]["reason"]
    assert by_task[5]["reason"] == "over its time limit of 3 s"
    assert 3 <= by_task[5]["runtime"] < 5
    assert {r["node"] for r in by_task.values()} == {"compute-st-1"}
    assert {r["job"] for r in by_task.values()} == {f"{sub['job_id']}_{e}" for e in range(3)}
    home = pack_dir(ck, "mixed")
    assert (home / by_task[2]["out"]).read_text() == "two\n"
    assert (home / by_task[6]["err"]).read_text() == "six\n"
    assert by_task[1]["out"] is None
    # The elements shared the node at the same time (cons_tres packs them).
    spans: dict[int, tuple[float, float]] = {}
    for r in by_task.values():
        lo, hi = spans.get(r["element"], (r["start"], r["start"]))
        spans[r["element"]] = (min(lo, r["start"]), max(hi, r["start"] + r["runtime"]))
    assert max(lo for lo, _ in spans.values()) < min(hi for _, hi in spans.values())


def test_a_requeued_element_does_not_redo_finished_tasks(ck: Clusterkit, cluster: str) -> None:
    tasks = ck.home / "slow.txt"
    tasks.write_text("".join(f"sleep 1; echo {i}\n" for i in range(6)))
    sub = submit(ck, tasks, "--name", "requeue", "--chunk", "6")
    manifest = pack_dir(ck, "requeue") / "manifest" / "0-0.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if manifest.exists() and len(manifest.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    element = f"{sub['job_id']}_0"
    ck.run("ssh", NAME, "--", f"scontrol requeue {element}")
    # Slurm holds a requeued batch job back (BeginTime); let it start again at once, but not
    # in the second its old credential was revoked in: slurmd refuses a credential made then
    # ("Job credential revoked") and the element would end without running again.
    time.sleep(1.1)
    for _ in range(30):
        if ck.run("ssh", NAME, "--", f"scontrol update jobid={element} starttime=now",
                  check=False).returncode == 0:  # fmt: skip
            break
        time.sleep(0.5)
    done = wait(ck, "requeue")
    recs = records(ck, "requeue")
    assert done.returncode == 0, recs
    assert sorted(r["task"] for r in recs) == list(range(6))  # each task ran to its end once
    restarts = [r["restart"] for r in sorted(recs, key=lambda r: r["task"])]
    assert restarts[:2] == [0, 0]
    assert restarts[-1] == 1
    assert restarts == sorted(restarts)


def test_retry_runs_only_the_failed_tasks(ck: Clusterkit, cluster: str) -> None:
    before = {r["task"] for r in records(ck, "mixed", run=0)}
    out = ck.run("pack", "retry", NAME, "mixed", "--mem", "400M", "--time", "30", "-o", "json")
    retried = json.loads(out.stdout)
    assert retried["submitted"]["tasks"] == 3
    wait(ck, "mixed")
    again = records(ck, "mixed", run=1)
    assert sorted(r["task"] for r in again) == [1, 3, 5]
    assert {r["task"] for r in records(ck, "mixed", run=0)} == before  # run 0 untouched
    final = json.loads(ck.run("pack", "status", NAME, "mixed", "-o", "json").stdout)
    assert (final["done"], final["failed"]) == (8, 1)  # the leak fits 400M; exit 3 stays
    assert final["failures"] == {"failed": 1}
    assert [r["run"] for r in final["runs"]] == [0, 1]
    assert final["runs"][1]["job_id"] == retried["submitted"]["job_id"]
    packs = json.loads(ck.run("pack", "list", NAME, "-o", "json").stdout)
    assert [p["pack"] for p in packs] == ["mixed", "requeue"]


def test_collect_gathers_results_and_outputs(ck: Clusterkit, cluster: str, tmp_path: Path) -> None:
    out = ck.run("pack", "collect", NAME, "mixed", "-d", str(tmp_path), "-o", "json")
    summary = json.loads(out.stdout)
    assert (summary["tasks"], summary["done"], summary["failed"]) == (9, 8, 1)
    assert summary["nodes"] == {"compute-st-1": 8}
    local = tmp_path / "mixed"
    with open(local / "results.csv", newline="") as fh:
        rows = {int(r["task"]): r for r in csv.DictReader(fh)}
    assert sorted(rows) == list(range(9))
    assert rows[1]["state"] == "failed" and rows[1]["exit"] == "3" and rows[1]["run"] == "1"
    assert rows[3]["state"] == "done" and rows[3]["run"] == "1"
    assert rows[0]["command"] == "echo zero"
    assert (local / "out" / "0.out").read_text() == "zero\n"
    assert (local / "out" / "3.out").read_text() == f"{300 * 1024 * 1024}\n"
    assert json.loads((local / "summary.json").read_text())["done"] == 8


def test_the_report_shows_each_packs_task_durations(ck: Clusterkit, cluster: str,
                                                    tmp_path: Path) -> None:  # fmt: skip
    page = tmp_path / "pkit-report.html"
    ck.run("report", NAME, str(page))
    text = page.read_text(encoding="utf-8")
    start = text.index('<script type="application/json" id="report-data">')
    payload = text[text.index(">", start) + 1 : text.index("</script>", start)]
    packs = {p["pack"]: p for p in json.loads(payload.replace("<\\/", "</"))["packs"]}
    mixed = packs["mixed"]
    # the 8 tasks that ended done (their last attempts), by duration: "sleep 5" is the longest
    assert mixed["tasks"] == 8
    assert sum(n for _, n in mixed["task_histogram"]) == 8
    assert mixed["task_histogram"][-1][1] == 1 and mixed["task_histogram"][-1][0] >= 4.0


def test_tasks_of_two_shapes_run_side_by_side_and_a_too_big_one_is_refused(
    ck: Clusterkit, cluster: str
) -> None:
    tasks = ck.home / "shapes.txt"
    small = "".join(f"echo small {i} $SLURM_CPUS_PER_TASK; sleep 1\n" for i in range(4))
    tasks.write_text(small + "@cpus=2,mem=200M echo big $SLURM_CPUS_PER_TASK; sleep 3\n")
    sub = submit(ck, tasks, "--name", "shapes")
    arrays = sub["arrays"]
    assert [(a["cpus"], a["memory_mb"], a["tasks"]) for a in arrays] == [(2, 200, 1), (1, None, 4)]
    assert wait(ck, "shapes").returncode == 0
    home = pack_dir(ck, "shapes")
    recs = {r["task"]: r for r in records(ck, "shapes")}
    out = {t: (home / r["out"]).read_text().split() for t, r in recs.items()}
    assert [out[t] for t in range(5)] == [
        *(["small", str(i), "1"] for i in range(4)), ["big", "2"]]  # fmt: skip
    # The big task's element (2 of the node's 4 CPUs) ran while the small ones took the rest.
    big = recs[4]
    assert big["job"].startswith(f"{arrays[0]['job_id']}_")
    beside = [r for t, r in recs.items() if t < 4 and r["start"] < big["start"] + big["runtime"]]
    assert beside and all(r["start"] + r["runtime"] > big["start"] for r in beside)

    huge = ck.home / "huge.txt"
    huge.write_text("echo fits\n@cpus=64 echo never\n")
    refused = ck.run("pack", "submit", NAME, str(huge), "--name", "huge", check=False)
    assert refused.returncode == 1
    assert (
        "task 1 needs 64 CPU(s): more than any node of the cluster holds (the largest, "
        "compute-st-1, has 4 CPUs" in refused.stderr
    )
    assert not pack_dir(ck, "huge").exists()  # nothing was made


def test_a_task_waits_for_the_tasks_it_needs_and_is_skipped_when_one_fails(
    ck: Clusterkit, cluster: str
) -> None:
    flag = f"/shared/home/{USER}/ck-dep-ok"
    lines = [
        {"id": "first", "cmd": "sleep 2; date +%s.%N"},
        {"id": "second", "cmd": "date +%s.%N", "after": ["first"]},
        {"id": "flaky", "cmd": f"test -e {flag}"},
        {"id": "last", "cmd": "echo last", "after": ["flaky", "second"]},
    ]
    tasks = ck.home / "dag.jsonl"
    tasks.write_text("".join(json.dumps(line) + "\n" for line in lines))
    sub = submit(ck, tasks, "--template", "bash -c {cmd}", "--name", "dag")
    assert [a["level"] for a in sub["arrays"]] == [0, 1, 2]
    done = wait(ck, "dag")
    status = json.loads(done.stdout)
    assert (status["done"], status["failures"]) == (2, {"failed": 1, "skipped": 1})
    by_task = {r["task"]: r for r in records(ck, "dag")}
    home = pack_dir(ck, "dag")
    first_end = by_task[0]["start"] + by_task[0]["runtime"]
    assert float((home / by_task[1]["out"]).read_text()) >= first_end  # after its need ended
    assert by_task[3]["state"] == "skipped"
    assert by_task[3]["reason"] == "needs task 2, which ended failed (exit 1)"

    # retry runs the failed task and the one skipped for it, in that order
    ck.run("ssh", NAME, "-u", USER, "--", f"touch {flag}")
    retried = json.loads(ck.run("pack", "retry", NAME, "dag", "-o", "json").stdout)
    assert [(a["tasks"], a["level"]) for a in retried["submitted"]["arrays"]] == [(1, 0), (1, 1)]
    assert wait(ck, "dag").returncode == 0
    last = [r for r in records(ck, "dag") if r["task"] == 3][-1]
    assert (last["state"], (home / last["out"]).read_text()) == ("done", "last\n")


def test_tasks_in_containers_run_as_the_user_in_their_cgroup_and_write_only_the_pack(
    ck: Clusterkit, cluster: str
) -> None:
    image = build_image(ck.home / "image.tgz")  # the host's own sh, cat, dd ... and libraries
    home = f"/shared/home/{USER}"
    ck.run("ssh", NAME, "-u", USER, "--", "echo secret > ~/secret.txt")
    tasks = ck.home / "contained.txt"
    tasks.write_text("\n".join([
        "id -u",                                            # 0: the cluster user
        "touch /bin/x",                                     # 1: the image is read-only
        'echo kept > "$CK_PACK_DIR/kept.txt"; pwd',         # 2: the pack is writable, and cwd
        "cat /proc/self/cgroup",                            # 3: the element's cgroup
        f"ls -a {home}; cat {home}/secret.txt",             # 4: the rest of home is not there
        "dd if=/dev/zero of=/dev/null bs=300M count=1",     # 5: over its memory
        "sleep 30",                                         # 6: over its time
        "ls /proc",                                         # 7: a PID namespace of its own
    ]) + "\n")  # fmt: skip
    sub = submit(ck, tasks, "--name", "boxed", "--container", str(image), "--mem", "100M",
                 "--time", "2")  # fmt: skip
    assert sub["tasks"] == 8
    wait(ck, "boxed")
    pack = pack_dir(ck, "boxed")
    recs = {r["task"]: r for r in records(ck, "boxed")}

    def out(task: int, stream: str = "out") -> str:
        name = recs[task][stream]
        return (pack / name).read_text() if name else ""

    uid = ck.run("ssh", NAME, "-u", USER, "--", "id -u").stdout.strip()
    assert (recs[0]["state"], out(0).strip()) == ("done", uid)
    assert recs[1]["state"] == "failed" and "Read-only file system" in out(1, "err")
    assert (pack / "kept.txt").read_text() == "kept\n"
    assert out(2).strip() == str(Path(home) / "ck-pack" / "boxed")
    memory = next(ln for ln in out(3).splitlines() if ":memory:" in ln)
    assert f"/uid_{uid}/job_" in memory  # Slurm's cgroup of the element, not one of its own
    assert out(4).split()[:3] == [".", "..", "ck-pack"] and "secret" not in out(4)
    assert "No such file" in out(4, "err")
    assert (recs[5]["state"], recs[5]["signal"]) == ("oom", 9)
    assert recs[6]["state"] == "timeout" and recs[6]["runtime"] < 4  # its PID 1 has no handler
    assert [p for p in out(7).split() if p.isdigit()] == ["1"]

    # a retry runs in the same image
    retried = json.loads(ck.run("pack", "retry", NAME, "boxed", "-o", "json").stdout)
    assert retried["submitted"]["tasks"] == 4  # 1, 4, 5, 6
    wait(ck, "boxed")
    again = [r for r in records(ck, "boxed", run=1) if r["task"] == 1]
    assert again and "Read-only file system" in (pack / again[0]["err"]).read_text()


def test_a_bad_image_is_refused_before_anything_is_made(ck: Clusterkit, cluster: str) -> None:
    tasks = ck.home / "one.txt"
    tasks.write_text("echo one\n")
    refused = ck.run("pack", "submit", NAME, str(tasks), "--name", "noimage",
                     "--container", "no/such/image.tar", check=False)  # fmt: skip
    assert refused.returncode == 1
    assert "--container no/such/image.tar: no such directory or tar archive" in refused.stderr
    assert not pack_dir(ck, "noimage").exists()
    assert not (pack_dir(ck, "noimage").parent / ".staging" / "noimage").exists()
