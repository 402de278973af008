"""clusterkit pack, host side: reading tasks, options, chunking, the job script."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from clusterkit.errors import ClusterkitError
from clusterkit.nodetools.packdir import PackError, RunSpec, guided_blocks
from clusterkit.pack import (
    Planned,
    Throughput,
    job_script,
    node_gpus,
    submit_script,
    task_groups,
    upload,
    waits_for,
)
from clusterkit.packplan import (
    PackOptions,
    Shape,
    auto_chunk,
    cluster_slots,
    element_time_limit,
    fixed_chunk,
    parse_duration,
    parse_memory,
    partition_nodes,
    too_big,
)
from clusterkit.packtasks import command_lines, load_tasks, placeholders
from clusterkit.slurm import SlurmNode
from clusterkit.spec import parse_spec


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# tasks


def test_one_command_per_line_skips_blanks_and_comments(tmp_path: Path) -> None:
    path = write(tmp_path, "t.txt", "# sweep\necho a\n\n   \n  echo b  \n#x\nsleep 1; echo c\n")
    assert load_tasks(path).commands == ["echo a", "echo b", "sleep 1; echo c"]


def test_command_lines_keeps_order_of_a_large_file() -> None:
    text = "".join(f"run {i}\n" for i in range(100_000))
    lines = command_lines(text).commands
    assert len(lines) == 100_000
    assert lines[99_999] == "run 99999"


def test_a_template_filled_from_csv_quotes_values(tmp_path: Path) -> None:
    path = write(tmp_path, "p.csv", "seed,name\n1,plain\n2,two words\n3,it's\n")
    commands = load_tasks(path, "sim --seed {seed} --out {name}.dat {{literal}}").commands
    assert commands == [
        "sim --seed 1 --out plain.dat {literal}",
        "sim --seed 2 --out 'two words'.dat {literal}",
        "sim --seed 3 --out 'it'\"'\"'s'.dat {literal}",
    ]


def test_a_template_filled_from_jsonl(tmp_path: Path) -> None:
    path = write(tmp_path, "p.jsonl", '{"x": 1, "y": "a"}\n\n{"x": 2.5, "y": true}\n')
    assert load_tasks(path, "f {x} {y}").commands == ["f 1 a", "f 2.5 true"]


@pytest.mark.parametrize(
    ("name", "text", "template", "message"),
    [
        ("t.txt", "", None, "t.txt: no tasks in it"),
        ("t.txt", "# only a comment\n", None, "t.txt: no tasks in it"),
        ("t.txt", b"echo a\necho \xff\n", None, "t.txt line 2: not UTF-8 text"),
        ("p.csv", "a,b\n1,2\n", "f {c}", "p.csv: no column 'c' for placeholder {c}"),
        ("p.csv", "a,b\n1,2\n3\n", "f {a}", "p.csv line 3: 2 columns expected, as in the header"),
        ("p.csv", 'a\n"x\ny"\n', "f {a}", "p.csv line 3: a value holds a line break"),
        ("p.jsonl", '{"a": 1}\n{"b": 2}\n', "f {a}", "p.jsonl line 2: no key 'a' for"),
        ("p.jsonl", '{"a": 1}\n{"a": \n', "f {a}", "p.jsonl line 2: not JSON"),
        ("p.jsonl", "[1, 2]\n", "f {a}", "p.jsonl line 1: a JSON object expected"),
        ("p.jsonl", '{"a": [1]}\n', "f {a}", "p.jsonl line 1: 'a' is list"),
        ("p.txt", "a\n", "f {a}", "p.txt: with --template, TASKS must be a .csv or .jsonl"),
        ("p.csv", "a\n1\n", "f a", "--template: no {name} placeholder"),
        ("p.csv", "a\n1\n", "f {a} }", "--template: a lone '}' at column 7"),
    ],
)  # fmt: skip
def test_bad_tasks_are_one_line_naming_file_and_line(
    tmp_path: Path, name: str, text: str | bytes, template: str | None, message: str
) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(PackError) as info:
        load_tasks(path, template)
    assert str(info.value).startswith(message if message[0] == "-" else f"{tmp_path}/{message}")
    assert "\n" not in str(info.value)


def test_a_missing_tasks_file(tmp_path: Path) -> None:
    with pytest.raises(PackError, match=r"nope\.txt: no such file"):
        load_tasks(tmp_path / "nope.txt")


def test_placeholders_in_order() -> None:
    assert placeholders("a {x} {{b}} {y_2} {x}") == ["x", "y_2", "x"]


# ---------------------------------------------------------------------------------------------
# options


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("1.5m", 90), ("2h", 7200), ("1d", 86400), ("1:30", 90),
     ("1:00:00", 3600), ("0.5", 0.5)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-1", "5x", "1:2:3:4", "a:b"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(PackError, match=r"^--time '.*': give seconds"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "mib"), [("512", 512), ("512M", 512), ("2G", 2048), ("2gb", 2048), ("1T", 1 << 20)]
)
def test_memory(text: str, mib: int) -> None:
    assert parse_memory(text) == mib


@pytest.mark.parametrize("text", ["0", "2X", "G", "-5M", "1.5G"])
def test_bad_memory(text: str) -> None:
    with pytest.raises(PackError, match=r"^--mem"):
        parse_memory(text)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (PackOptions(cpus=0), "--cpus 0: must be at least 1"),
        (PackOptions(chunk=0), "--chunk 0: must be at least 1"),
        (PackOptions(max_concurrent=0), "--max-concurrent 0: must be at least 1"),
        (PackOptions(retries=-1), "--retries -1: must be 0 or more"),
        (PackOptions(name="../x"), "--name '../x': letters, digits"),
    ],
)
def test_bad_options(options: PackOptions, message: str) -> None:
    with pytest.raises(PackError) as info:
        options.check()
    assert str(info.value).startswith(message)


# ---------------------------------------------------------------------------------------------
# chunking


def node(name: str, cpus: int = 8, memory_mb: int = 4096, partitions: tuple[str, ...] = ("all",
         "compute")) -> SlurmNode:  # fmt: skip
    return SlurmNode(
        name=name, state="IDLE", flags=(), cpus=cpus, alloc_cpus=0, memory_mb=memory_mb,
        alloc_memory_mb=0, partitions=partitions, reason="", address="", hostname=name,
    )  # fmt: skip


def test_slots_count_cpus_and_memory_of_the_partition() -> None:
    nodes = [node("c1"), node("c2"), node("g1", cpus=4, partitions=("all", "gpu")),
             node("head", partitions=())]  # fmt: skip
    assert cluster_slots(nodes, None, 1, None) == 20
    assert cluster_slots(nodes, "compute", 1, None) == 16
    assert cluster_slots(nodes, "compute", 3, None) == 4
    assert cluster_slots(nodes, "compute", 1, 1024) == 8  # memory bounds it: 4 per node
    assert cluster_slots(nodes, "nope", 1, None) == 0


def test_the_benchmark_workload_is_one_element_per_slot_taking_guided_blocks() -> None:
    c = auto_chunk(4000, 32, 0.5, 100_001)
    assert (c.elements, c.slots, c.fixed) == (32, 32, False)
    sizes = c.sizes(4000)
    assert sum(sizes) == 4000 and len(sizes) == c.blocks
    assert sizes[0] == c.chunk == 63  # ceil(4000 / (2 x 32)): half of each element's share
    assert list(sizes) == sorted(sizes, reverse=True)  # large first ...
    assert sizes[-32:] == (1,) * 32  # ... and the last wave single tasks: elements end together


def test_guided_blocks_take_a_share_of_what_is_left() -> None:
    assert guided_blocks(10, 1) == (5, 3, 1, 1)  # ceil(10/2), ceil(5/2), ceil(2/2), ...
    assert guided_blocks(7, 2, size=3) == (3, 3, 1)  # --chunk 3
    assert guided_blocks(1, 32) == (1,)


def test_without_an_estimate_every_slot_gets_an_element() -> None:
    # ten tasks of unknown length: each could take an hour, so none waits behind another
    assert auto_chunk(10, 32, None, 100_001).elements == 10
    assert auto_chunk(100_000, 32, None, 100_001).elements == 32


def test_an_estimate_of_little_work_starts_fewer_elements() -> None:
    c = auto_chunk(100, 32, 0.05, 100_001)  # 5 s of work: 2 elements of >= 2 s each
    assert c.elements == 2
    assert "--estimate 0.05 s" in c.rule
    assert auto_chunk(100, 32, 0.5, 100_001).elements == 25  # 50 s of work


def test_the_array_limit_caps_the_element_count() -> None:
    assert auto_chunk(1_000_000, 64, 600.0, 40).elements == 40


def test_a_fixed_chunk_makes_blocks_of_that_size() -> None:
    c = fixed_chunk(1000, 10, 32, 1001)
    assert (c.chunk, c.blocks, c.elements, c.fixed) == (10, 100, 32, True)
    assert set(c.sizes(1000)) == {10}
    assert fixed_chunk(9, 3, 32, 1001).elements == 3  # one element per block at most


def test_element_time_limit_covers_every_attempt() -> None:
    assert element_time_limit(10, PackOptions()) is None
    # 10 tasks x 2 attempts x (60 s + 5 s grace) + 120 s slack = 1420 s -> 24 minutes
    assert element_time_limit(10, PackOptions(time_s=60, retries=1)) == 24


# ---------------------------------------------------------------------------------------------
# the job script


def test_the_job_script_asks_for_one_task_per_element() -> None:
    spec = RunSpec(run=0, chunk=125, elements=32, count=4000)
    options = PackOptions(cpus=2, memory_mb=1024, time_s=30, max_concurrent=8, partition="p")
    text = job_script("/shared/clusterkit/bin", "sweep", spec, options)
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    for line in ("#SBATCH --array=0-31%8", "#SBATCH --cpus-per-task=2", "#SBATCH --mem=1024M",
                 "#SBATCH --time=75", "#SBATCH --partition=p", "#SBATCH --requeue",
                 "#SBATCH --output=logs/0-%a.log", "#SBATCH --job-name=pack-sweep",
                 '/shared/clusterkit/bin/ck-pack-run "$SLURM_SUBMIT_DIR" 0'):  # fmt: skip
        assert any(line in ln for ln in lines), line
    assert "--hold" not in text


def test_the_job_script_leaves_unset_options_to_slurm() -> None:
    spec = RunSpec(run=2, chunk=1, elements=3, count=3, ids=(4, 9, 11))
    text = job_script("/s/bin", "p", spec, PackOptions(hold=True))
    assert "--mem" not in text
    assert "--time" not in text
    assert "--partition" not in text
    assert "#SBATCH --array=0-2\n" in text
    assert "#SBATCH --hold\n" in text
    assert text.rstrip().endswith('exec /s/bin/ck-pack-run "$SLURM_SUBMIT_DIR" 2')


# ---------------------------------------------------------------------------------------------
# the command


def test_pack_help_teaches_the_commands() -> None:
    from click.testing import CliRunner

    from clusterkit.cli import cli

    result = CliRunner().invoke(cli, ["pack", "--help"])
    assert result.exit_code == 0
    for text in ("submit", "status", "retry", "collect", "--template", "manifest"):
        assert text in result.output
    submit = CliRunner().invoke(cli, ["pack", "submit", "--help"])
    for text in ("--mem", "--time", "--estimate", "--chunk", "--max-concurrent", "--retries",
                 "--partition", "CK_PACK_TASK"):  # fmt: skip
        assert text in submit.output


def test_a_bad_chunk_is_a_usage_error(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from clusterkit.cli import cli

    tasks = write(tmp_path, "t.txt", "true\n")
    result = CliRunner().invoke(cli, ["pack", "submit", "demo", str(tasks), "--chunk", "lots"])
    assert result.exit_code == 2
    assert "a number of tasks per block (1 or more), or auto" in result.output


def test_pack_and_checkpoint_errors_are_expected_errors(tmp_path: Path) -> None:
    """One error base: the CLI prints either as one line, never as a bug's traceback."""
    from clusterkit.nodetools.checkpoint import CheckpointError

    with pytest.raises(PackError):  # the host's side raises the nodes' class: there is one
        load_tasks(tmp_path / "missing.txt")
    assert issubclass(PackError, ClusterkitError)
    assert issubclass(CheckpointError, ClusterkitError)


# ---------------------------------------------------------------------------------------------
# pack status --wait


def test_throughput_is_the_rate_over_the_last_window_of_polls() -> None:
    rate = Throughput(window_s=10)
    rate.add(0.0, 0)
    assert rate.rate is None and rate.eta(100) is None  # one poll says nothing yet
    rate.add(2.0, 0)
    assert rate.rate is None  # nothing ended between them
    for t in range(4, 31, 2):
        rate.add(float(t), (t - 2) * 5)  # 5 tasks/s from t = 2
    assert rate.rate == pytest.approx(5.0)
    assert rate.eta(50) == pytest.approx(10.0)
    assert rate.samples[0][0] >= 30 - 10 - 2  # older polls dropped
    rate.add(32.0, 140)  # a stall: 0 more in 2 s pulls the rate down, it does not jump
    assert 3.0 < (rate.rate or 0) < 5.0


def test_status_wait_shows_tasks_per_second_and_an_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from clusterkit import pack as lib
    from clusterkit.cli import cli
    from clusterkit.cli import pack as pack_cli

    def at(done: int, finished: bool = False) -> lib.PackStatus:
        running = 0 if finished else 4
        return lib.PackStatus(pack="p", tasks=100, done=done, running=running, failed=0,
                              pending=100 - done - running, finished=finished)  # fmt: skip

    polls = iter([at(0), at(20), at(40), at(100, finished=True)])
    clock = iter(range(0, 100, 2))  # every poll 2 s after the last
    monkeypatch.setattr(lib, "status", lambda *args: next(polls))
    monkeypatch.setattr("clusterkit.cli.pack.time.monotonic", lambda: float(next(clock)))
    monkeypatch.setattr("clusterkit.cli.pack.time.sleep", lambda s: None)
    monkeypatch.setattr("clusterkit.cli.console.err", Console(width=160, force_terminal=False))
    result = CliRunner().invoke(cli, ["pack", "status", "demo", "p", "--wait"])
    assert result.exit_code == 0, result.output
    # the bar's last line (no terminal here): 100 tasks in the 6 s of four polls
    assert "100/100 running 0, pending 0, failed 0  16.7 tasks/s, ETA 0:00:00" in result.output
    shown = pack_cli._speed  # and while it ran: 40 done in 4 s, 60 left
    rate = lib.Throughput()
    for t, n in ((0, 0), (2, 20), (4, 40)):
        rate.add(float(t), n)
    assert shown(rate, at(40)) == "10.0 tasks/s, ETA 0:00:06"
    assert shown(lib.Throughput(), at(0)) == "- tasks/s, ETA -"


# ---------------------------------------------------------------------------------------------
# tasks of any shape


def test_a_line_gives_its_own_resources(tmp_path: Path) -> None:
    path = write(tmp_path, "t.txt", "echo small\n@cpus=4,mem=2G,time=5m,gpus=1 sim --big\n"
                 "# a comment\n@mem=512 echo half\n")  # fmt: skip
    tasks = load_tasks(path)
    assert tasks.commands == ["echo small", "sim --big", "echo half"]
    assert tasks.shapes == [None, Shape(4, 2048, 300.0, 1), Shape(None, 512, None, None)]


def test_csv_columns_and_jsonl_keys_of_resources(tmp_path: Path) -> None:
    csv_path = write(tmp_path, "p.csv", "seed,cpus,mem\n1,2,1G\n2,,\n")
    tasks = load_tasks(csv_path, "sim {seed}")
    assert tasks.commands == ["sim 1", "sim 2"]
    assert tasks.shapes == [Shape(2, 1024, None, None), Shape(None, None, None, None)]
    jsonl = write(tmp_path, "p.jsonl", '{"x": 1, "cpus": 8, "time": 90}\n{"x": 2}\n')
    assert load_tasks(jsonl, "f {x}").shapes == [Shape(8, None, 90.0, None), None]


@pytest.mark.parametrize(
    ("text", "message"),
    [("@cpu=4 sim\n", "t.txt line 1: 'cpu=4' in '@cpu=4': write @key=value"),
     ("echo a\n@cpus=0 sim\n", "t.txt line 2: cpus '0': a whole number, at least 1"),
     ("@mem=lots sim\n", "t.txt line 1: mem 'lots': give MiB"),
     ("@time=-1 sim\n", "t.txt line 1: time '-1': give seconds"),
     ("@cpus=2\n", "t.txt line 1: '@cpus=2' and no command after it")],
)  # fmt: skip
def test_bad_resources_name_the_line_and_the_fix(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(PackError) as info:
        load_tasks(write(tmp_path, "t.txt", text))
    assert str(info.value).startswith(f"{tmp_path}/{message}")


def test_tasks_are_grouped_by_shape_largest_first() -> None:
    shapes = [None, Shape(cpus=4), None, Shape(cpus=4), Shape(memory_mb=100)]
    groups = task_groups(range(5), PackOptions(cpus=1, memory_mb=200), shapes.__getitem__)
    assert [(g.options.cpus, g.options.memory_mb, g.ids) for g in groups] == [
        (4, 200, [1, 3]), (1, 200, [0, 2]), (1, 100, [4])]  # fmt: skip
    # a shape equal to the options' is the options' group
    same = task_groups(range(2), PackOptions(), [None, Shape(cpus=1)].__getitem__)
    assert [g.ids for g in same] == [[0, 1]]


def test_tasks_that_need_others_run_in_later_levels() -> None:
    # 0 and 1 need nothing; 2 needs 0; 3 needs 2 and 1; 4 (2 CPUs) needs 0
    after = [(), (), (0,), (1, 2), (0,)]
    shapes = [None, None, None, None, Shape(cpus=2)]
    groups = task_groups(range(5), PackOptions(), shapes.__getitem__, after.__getitem__)
    assert [(g.level, g.options.cpus, g.ids) for g in groups] == [
        (0, 1, [0, 1]), (1, 2, [4]), (1, 1, [2]), (2, 1, [3])]  # fmt: skip
    assert groups[2].after == {2: (0,)}
    planned: list[Planned] = [
        (RunSpec(run=r, chunk=1, elements=1, count=1), PackOptions(), auto_chunk(1, 1, None, 9),
         g.level) for r, g in enumerate(groups)]  # fmt: skip
    assert waits_for(planned) == {1: [0], 2: [0], 3: [1, 2]}
    # a retry of tasks 2 and 3 only: 3 still comes after 2; 1 and 0 ran before
    again = task_groups([2, 3], PackOptions(), shapes.__getitem__, after.__getitem__)
    assert [(g.level, g.ids) for g in again] == [(0, [2]), (1, [3])]


def test_jsonl_after_names_ids_or_task_numbers(tmp_path: Path) -> None:
    named = write(tmp_path, "n.jsonl", '{"id": "prep", "x": 1}\n{"id": "run", "x": 2, '
                  '"after": ["prep"]}\n{"x": 3, "after": ["prep", "run"]}\n')  # fmt: skip
    assert load_tasks(named, "f {x}").after == [(), (0,), (0, 1)]
    numbered = write(tmp_path, "k.jsonl", '{"x": 1}\n{"x": 2, "after": 0}\n')
    assert load_tasks(numbered, "f {x}").after == [(), (0,)]
    assert load_tasks(write(tmp_path, "p.jsonl", '{"x": 1}\n'), "f {x}").after is None


@pytest.mark.parametrize(
    ("text", "message"),
    [('{"x": 1, "after": [5]}\n', "p.jsonl line 1: after '5' is not a task number (0-0)"),
     ('{"id": "a", "x": 1, "after": ["b"]}\n', "p.jsonl line 1: after 'b' is no task's id"),
     ('{"x": 1, "after": [0]}\n', "p.jsonl line 1: a task cannot come after itself"),
     ('{"x": 1, "after": {"a": 1}}\n', "p.jsonl line 1: 'after' {'a': 1}: a list of task ids"),
     ('{"id": "a", "x": 1}\n{"id": "a", "x": 2}\n', "p.jsonl line 2: id 'a' is also task 0's"),
     ('{"x": 1, "after": [2]}\n{"x": 2, "after": [0]}\n{"x": 3, "after": [1]}\n',
      "p.jsonl: tasks 0, 1, 2 need each other in a cycle (lines 1, 2, 3)")],
)  # fmt: skip
def test_bad_dependencies_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(PackError) as info:
        load_tasks(write(tmp_path, "p.jsonl", text), "f {x}")
    assert str(info.value).startswith(f"{tmp_path}/{message}")


def test_a_task_bigger_than_any_node_names_itself_and_the_largest_node() -> None:
    nodes = [node("c1"), node("big", cpus=16, memory_mb=8192), node("head", partitions=())]
    options = PackOptions(cpus=32, memory_mb=1024)
    assert cluster_slots(nodes, None, 32, 1024) == 0
    error = too_big("task 7", options, partition_nodes(nodes, None), lambda name: 0)
    assert str(error) == (
        "task 7 needs 32 CPU(s), 1024 MiB: more than any node of the cluster holds (the "
        "largest, big, has 16 CPUs, 8192 MiB); ask for less, or add a bigger group to the spec"
    )


def test_gpus_count_towards_slots_and_the_job_script() -> None:
    spec = parse_spec({"name": "g", "groups": [{"name": "gpu", "min": 1, "max": 2, "gpus": 2},
                                               {"name": "cpu", "min": 1, "max": 1}]})  # fmt: skip
    gpus_of = node_gpus(spec)
    assert [gpus_of(n) for n in ("gpu-st-1", "gpu-dy-1", "cpu-st-1", "g-head")] == [2, 2, 0, 0]
    nodes = [node("gpu-st-1"), node("cpu-st-1")]
    assert cluster_slots(nodes, None, 1, None, gpus=1, gpus_of=gpus_of) == 2
    assert cluster_slots(nodes, None, 1, None, gpus=3, gpus_of=gpus_of) == 0
    run = RunSpec(run=0, chunk=1, elements=2, count=2)
    text = job_script("/b", "g", run, PackOptions(gpus=1))
    assert "#SBATCH --gres=gpu:1" in text.splitlines()
    assert "--gres" not in job_script("/b", "g", run, PackOptions())


# ---------------------------------------------------------------------------------------------
# the head's submission script, run here with stand-ins for sbatch and scancel


def fake_slurm(tmp_path: Path, refuse: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(
        "#!/bin/bash\n"
        f'echo "$*" >> {tmp_path}/sbatch.log\n'
        f'case "$*" in *{refuse}*) echo "sbatch: error: refused" >&2; exit 1;; esac\n'
        f"n=$(wc -l < {tmp_path}/sbatch.log); echo $((100 + n))\n"
    )
    (bin_dir / "scancel").write_text(f'#!/bin/bash\necho "$*" >> {tmp_path}/scancel.log\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path / "home")}


def run_submit(tmp_path: Path, refuse: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    env = fake_slurm(tmp_path, refuse)
    Path(env["HOME"]).mkdir()
    files = {f"runs/{r}.sh": b"#!/bin/bash\n" for r in (0, 1, 2)}
    return subprocess.run(["bash", "-c", submit_script("p", [0, 1, 2], **kwargs)],
                          input=upload(files, fresh=True), env=env, text=True,
                          capture_output=True, check=False)  # fmt: skip


def test_each_array_is_submitted_after_the_ones_it_waits_for(tmp_path: Path) -> None:
    done = run_submit(tmp_path, "nothing", fresh=True, waits={1: [0], 2: [0, 1]})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["101", "102", "103"]
    assert (tmp_path / "sbatch.log").read_text().splitlines() == [
        "--parsable runs/0.sh",
        "--parsable --dependency=afterany:101 runs/1.sh",
        "--parsable --dependency=afterany:101:102 runs/2.sh",
    ]
    pack = tmp_path / "home" / "ck-pack" / "p"
    assert (pack / "runs" / "2.job").read_text() == "103\n"
    assert {d.name for d in pack.iterdir()} >= {"manifest", "out", "logs", "claims", "runs"}


def test_a_refused_array_cancels_the_ones_before_and_leaves_nothing(tmp_path: Path) -> None:
    done = run_submit(tmp_path, "runs/2.sh", fresh=True)
    assert done.returncode == 1
    assert "refused" in done.stderr
    assert sorted((tmp_path / "scancel.log").read_text().split()) == ["101", "102"]
    assert not (tmp_path / "home" / "ck-pack" / "p").exists()
