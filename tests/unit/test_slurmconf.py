"""slurm.conf, cgroup.conf and gres.conf: golden files, plus what they must always say.

Refresh the golden files after an intended change with:
    make golden
"""

from __future__ import annotations

import gzip
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
import pytest

from clusterkit.errors import SpecError
from clusterkit.hostlist import hostnames
from clusterkit.plan import plan_nodes
from clusterkit.prices import price_book
from clusterkit.providers import provider_class
from clusterkit.render import render
from clusterkit.slurmconf import SlurmNodeDef, slurm_files
from clusterkit.spec import ClusterSpec, parse_spec
from clusterkit.traits import Traits

GoldenCheck = Callable[[str, str], None]

MAN5 = Path("/usr/share/man/man5")

LOCAL = parse_spec({"name": "demo", "groups": [{"name": "compute", "min": 3, "max": 3}]})
AWS = parse_spec(
    {
        "name": "hpc",
        "provider": "aws",
        "aws": {"admin_cidr": "203.0.113.0/24"},
        "slurm": {"cluster_name": "hpc-prod", "extra": ["KillWait=60", "PrologFlags=Contain"]},
        "groups": [
            {
                "name": "cpu",
                "min": 2,
                "max": 4,
                "cpus": 8,
                "memory_mb": 15000,
                "features": ["avx512", "spot"],
                "weight": 10,
            },
            {
                "name": "gpu",
                "instance_types": ["g5.12xlarge"],
                "min": 1,
                "max": 3,
                "cpus": 48,
                "memory_mb": 180000,
                "gpus": 4,
                "features": ["a10g"],
                "weight": 100,
            },
        ],
    }
)
LOCAL_GPU = parse_spec(
    {
        "name": "lab",
        "groups": [
            {"name": "cpu", "min": 1, "max": 1},
            {"name": "gpu", "min": 2, "max": 3, "gpus": 2},
        ],
    }
)


def node_defs(spec: ClusterSpec, subnet_prefix: str) -> list[SlurmNodeDef]:
    """The spec's compute nodes as the caller passes them: plan order, static ones with
    ``<prefix>.<plan index + 2>`` (dynamic ones have no address yet)."""
    return [
        SlurmNodeDef(
            name=n.name,
            group=n.group or "",
            address=None if not n.static else f"{subnet_prefix}.{n.index + 2}",
            dynamic=not n.static,
        )
        for n in plan_nodes(spec)
        if n.role == "compute"
    ]


def traits_of(spec: ClusterSpec) -> Traits:
    return provider_class(spec.provider).traits


def files_of(spec: ClusterSpec, include_dynamic: bool = False) -> dict[str, str]:
    prefix = "10.250.0" if spec.provider == "local" else "10.0.1"
    return slurm_files(
        spec, f"{spec.name}-head", f"{prefix}.2", node_defs(spec, prefix),
        traits=traits_of(spec), include_dynamic=include_dynamic, prices=price_book(spec),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# A tiny slurm.conf reader


def conf_lines(text: str) -> list[str]:
    """The lines that are not blank and not comments."""
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def pairs(line: str) -> list[tuple[str, str]]:
    """``A=1 B=x`` -> [("A", "1"), ("B", "x")]; anything else fails the test."""
    out = []
    for token in line.split(" "):
        key, sep, value = token.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z]+", key), f"not KEY=VALUE: {token!r} in {line!r}"
        out.append((key, value))
    return out


def parse_conf(text: str) -> tuple[dict[str, str], list[dict[str, str]], list[dict[str, str]]]:
    """(top-level settings, node lines, partition lines); repeated keys fail the test."""
    top: dict[str, str] = {}
    nodes: list[dict[str, str]] = []
    partitions: list[dict[str, str]] = []
    for line in conf_lines(text):
        items = pairs(line)
        keys = [k for k, _ in items]
        assert len(set(keys)) == len(keys), f"a key repeats in {line!r}"
        if keys[0] == "NodeName":
            nodes.append(dict(items))
        elif keys[0] == "PartitionName":
            partitions.append(dict(items))
        else:
            assert len(items) == 1, f"one setting per line: {line!r}"
            key, value = items[0]
            assert key not in top, f"{key} is set twice"
            top[key] = value
    return top, nodes, partitions


def test_the_reader_rejects_what_slurm_conf_must_not_hold() -> None:
    with pytest.raises(AssertionError, match="set twice"):
        parse_conf("A=1\nA=2\n")
    with pytest.raises(AssertionError, match="not KEY=VALUE"):
        parse_conf("A 1\n")
    with pytest.raises(AssertionError, match="one setting per line"):
        parse_conf("A=1 B=2\n")
    top, nodes, parts = parse_conf("# c\n\nA=1\nNodeName=n State=UP\nPartitionName=p Nodes=\n")
    assert (top, nodes, parts) == (
        {"A": "1"},
        [{"NodeName": "n", "State": "UP"}],
        [{"PartitionName": "p", "Nodes": ""}],
    )


# ---------------------------------------------------------------------------------------------
# Golden files


def test_local_golden(golden: GoldenCheck) -> None:
    files = files_of(LOCAL)
    golden("slurm.conf.local.txt", files["slurm.conf"])
    golden("cgroup.conf.local.txt", files["cgroup.conf"])
    assert files["gres.conf"] == "# gres.conf, written by clusterkit for cluster demo.\n"


def test_aws_gpu_golden(golden: GoldenCheck) -> None:
    files = files_of(AWS)
    golden("slurm.conf.aws-gpu.txt", files["slurm.conf"])
    golden("cgroup.conf.aws-gpu.txt", files["cgroup.conf"])
    golden("gres.conf.aws-gpu.txt", files["gres.conf"])


def test_aws_gpu_with_dynamic_nodes_golden(golden: GoldenCheck) -> None:
    files = files_of(AWS, include_dynamic=True)
    golden("slurm.conf.aws-gpu-dynamic.txt", files["slurm.conf"])
    golden("gres.conf.aws-gpu-dynamic.txt", files["gres.conf"])


def test_local_gpu_golden(golden: GoldenCheck) -> None:
    golden("gres.conf.local-gpu.txt", files_of(LOCAL_GPU)["gres.conf"])


# ---------------------------------------------------------------------------------------------
# What slurm.conf must always say, whatever the golden files hold

CASE_VALUES = [(LOCAL, False), (AWS, False), (AWS, True), (LOCAL_GPU, True)]
CASES = [
    pytest.param(spec, dynamic, id=f"{spec.name}{'-dynamic' if dynamic else ''}")
    for spec, dynamic in CASE_VALUES
]


@pytest.mark.parametrize(("spec", "include_dynamic"), CASES)
def test_every_file_says_who_wrote_it_for_which_cluster(
    spec: ClusterSpec, include_dynamic: bool
) -> None:
    for name, text in files_of(spec, include_dynamic).items():
        assert text.startswith(f"# {name}, written by clusterkit for cluster {spec.name}.\n")


@pytest.mark.parametrize(("spec", "include_dynamic"), CASES)
def test_slurm_conf_is_configless_with_the_head_as_controller(
    spec: ClusterSpec, include_dynamic: bool
) -> None:
    top, _, _ = parse_conf(files_of(spec, include_dynamic)["slurm.conf"])
    assert "enable_configless" in top["SlurmctldParameters"].split(",")
    assert re.fullmatch(rf"{spec.name}-head\(10\.\d+\.\d+\.2\)", top["SlurmctldHost"])
    assert top["ClusterName"] == spec.slurm_cluster_name


def test_config_overrides_only_on_local() -> None:
    local, _, _ = parse_conf(files_of(LOCAL)["slurm.conf"])
    assert local["SlurmdParameters"] == "config_overrides"
    aws_text = files_of(AWS, include_dynamic=True)["slurm.conf"]
    assert "SlurmdParameters" not in parse_conf(aws_text)[0]
    assert "config_overrides" not in aws_text


@pytest.mark.parametrize(("spec", "include_dynamic"), CASES)
def test_every_declared_node_appears_once_and_the_head_never(
    spec: ClusterSpec, include_dynamic: bool
) -> None:
    _, nodes, _ = parse_conf(files_of(spec, include_dynamic)["slurm.conf"])
    names = [n["NodeName"] for n in nodes]
    expected = [
        n.name for n in plan_nodes(spec) if n.role == "compute" and (include_dynamic or n.static)
    ]
    assert names == expected
    assert max(Counter(names).values()) == 1
    assert f"{spec.name}-head" not in names


@pytest.mark.parametrize(("spec", "include_dynamic"), CASES)
def test_partition_all_is_the_default_and_holds_every_compute_node(
    spec: ClusterSpec, include_dynamic: bool
) -> None:
    _, nodes, partitions = parse_conf(files_of(spec, include_dynamic)["slurm.conf"])
    by_name = {p["PartitionName"]: p for p in partitions}
    assert len(by_name) == len(partitions), "a partition name repeats"
    assert sorted(by_name) == sorted(["all", *(g.name for g in spec.groups)])
    assert [p["PartitionName"] for p in partitions if p.get("Default") == "YES"] == ["all"]
    assert sorted(hostnames(by_name["all"]["Nodes"])) == sorted(n["NodeName"] for n in nodes)
    for group in spec.groups:
        members = [n["NodeName"] for n in nodes if n["NodeName"].startswith(f"{group.name}-")]
        listed = by_name[group.name]["Nodes"]
        assert sorted(hostnames(listed) if listed else []) == sorted(members)


@pytest.mark.parametrize(("spec", "include_dynamic"), CASES)
def test_static_nodes_have_addresses_dynamic_ones_are_cloud(
    spec: ClusterSpec, include_dynamic: bool
) -> None:
    _, nodes, _ = parse_conf(files_of(spec, include_dynamic)["slurm.conf"])
    for node in nodes:
        if "-dy-" in node["NodeName"]:
            assert node["State"] == "CLOUD"
            assert "NodeAddr" not in node
        else:
            assert node["State"] == "UNKNOWN"
            assert re.fullmatch(r"10\.\d+\.\d+\.\d+", node["NodeAddr"])
        assert node["NodeHostname"] == node["NodeName"]


def test_dynamic_nodes_are_left_out_by_default() -> None:
    text = files_of(AWS)["slurm.conf"]
    assert "-dy-" not in text
    assert "State=CLOUD" not in text
    assert "-dy-" in files_of(AWS, include_dynamic=True)["slurm.conf"]


def test_node_lines_carry_their_groups_resources() -> None:
    _, nodes, _ = parse_conf(files_of(AWS, include_dynamic=True)["slurm.conf"])
    by_name = {n["NodeName"]: n for n in nodes}
    assert by_name["cpu-st-1"] == {
        "NodeName": "cpu-st-1",
        "NodeAddr": "10.0.1.3",
        "NodeHostname": "cpu-st-1",
        "CPUs": "8",
        "RealMemory": "15000",
        "Features": "avx512,spot",
        "Weight": "10",
        "State": "UNKNOWN",
    }
    assert by_name["gpu-dy-2"]["Gres"] == "gpu:4"
    assert by_name["gpu-dy-2"]["Features"] == "a10g"
    assert "Gres" not in by_name["cpu-dy-1"]
    local = parse_conf(files_of(LOCAL)["slurm.conf"])[1]
    assert all("Features" not in n and "Gres" not in n for n in local)


def test_gres_types_only_with_gpus() -> None:
    assert parse_conf(files_of(AWS)["slurm.conf"])[0]["GresTypes"] == "gpu"
    assert parse_conf(files_of(LOCAL_GPU)["slurm.conf"])[0]["GresTypes"] == "gpu"
    assert "GresTypes" not in parse_conf(files_of(LOCAL)["slurm.conf"])[0]


def test_spec_values_reach_slurm_conf() -> None:
    spec = LOCAL.model_copy(
        update={"slurm": LOCAL.slurm.model_copy(update={"max_array_size": 5, "max_job_count": 7})}
    )
    top, _, _ = parse_conf(files_of(spec)["slurm.conf"])
    assert (top["MaxArraySize"], top["MaxJobCount"]) == ("5", "7")
    assert top["JobRequeue"] == "1"
    assert top["ReturnToService"] == "2"


def test_extra_lines_come_last_verbatim() -> None:
    text = files_of(AWS)["slurm.conf"]
    assert text.endswith(
        "\n# slurm.extra of the spec, verbatim\nKillWait=60\nPrologFlags=Contain\n"
    )


def test_a_group_without_declared_nodes_keeps_an_empty_partition() -> None:
    spec = parse_spec({"name": "z", "groups": [{"name": "burst", "min": 0, "max": 2}]})
    text = files_of(spec)["slurm.conf"]
    assert "PartitionName=burst Nodes= DefMemPerCPU=1024 MaxTime=INFINITE State=UP" in text
    everyone = "PartitionName=all Nodes= Default=YES DefMemPerCPU=1024 MaxTime=INFINITE State=UP"
    assert everyone in text
    assert not parse_conf(text)[1]


# ---------------------------------------------------------------------------------------------
# Every setting exists in Slurm 22.05 (the man pages of this machine)


def man_page(name: str) -> str:
    path = MAN5 / f"{name}.5.gz"
    if not path.exists():
        pytest.skip(f"{path} is not installed")
    return gzip.decompress(path.read_bytes()).decode("utf-8", "replace")


def documented(man: str, key: str) -> bool:
    """True when the man page has an entry for ``key`` (``\\fBKey\\fR`` or ``\\fBKey=``)."""
    return re.search(rf"^\\fB{re.escape(key)}(\\fR|=)", man, re.MULTILINE) is not None


def all_keys(text: str) -> set[str]:
    return {k for line in conf_lines(text) for k, _ in pairs(line)}


def test_every_slurm_conf_key_is_in_the_man_page() -> None:
    man = man_page("slurm.conf")
    extra = {"KillWait", "PrologFlags"}
    keys = set().union(*(all_keys(files_of(s, d)["slurm.conf"]) for s, d in CASE_VALUES))
    assert [k for k in sorted(keys - extra) if not documented(man, k)] == []
    top, _, _ = parse_conf(files_of(LOCAL)["slurm.conf"])
    options = [o.split("=")[0] for o in top["SchedulerParameters"].split(",")]
    assert [o for o in options if not documented(man, o)] == []


def test_every_cgroup_and_gres_key_is_in_its_man_page() -> None:
    cgroup, gres = man_page("cgroup.conf"), man_page("gres.conf")
    for spec, dynamic in CASE_VALUES:
        files = files_of(spec, dynamic)
        assert [k for k in all_keys(files["cgroup.conf"]) if not documented(cgroup, k)] == []
        assert [k for k in all_keys(files["gres.conf"]) if not documented(gres, k)] == []


# ---------------------------------------------------------------------------------------------
# cgroup.conf and gres.conf


def cgroup(spec: ClusterSpec) -> dict[str, str]:
    return dict(pairs(line)[0] for line in conf_lines(files_of(spec)["cgroup.conf"]))


def test_cgroup_plugin_by_provider_and_devices_by_gpus() -> None:
    local, aws, local_gpu = cgroup(LOCAL), cgroup(AWS), cgroup(LOCAL_GPU)
    assert local["CgroupPlugin"] == "cgroup/v1"
    assert aws["CgroupPlugin"] == "autodetect"
    assert (local["ConstrainDevices"], aws["ConstrainDevices"]) == ("no", "yes")
    assert local_gpu["ConstrainDevices"] == "yes"
    for conf in (local, aws):
        assert conf["ConstrainCores"] == conf["ConstrainRAMSpace"] == "yes"
        assert conf["AllowedRAMSpace"] == "100"
        assert conf["ConstrainSwapSpace"] == "no"


def test_gres_conf_local_counts_gpus_without_device_files() -> None:
    text = files_of(LOCAL_GPU, include_dynamic=True)["gres.conf"]
    lines = [dict(pairs(line)) for line in conf_lines(text)]
    assert len(lines) == 1
    assert sorted(hostnames(lines[0].pop("NodeName"))) == ["gpu-dy-1", "gpu-st-1", "gpu-st-2"]
    assert lines[0] == {"Name": "gpu", "Count": "2"}


def test_gres_conf_aws_autodetects_static_nodes_and_names_files_of_cloud_nodes() -> None:
    static_only = conf_lines(files_of(AWS)["gres.conf"])
    assert static_only == ["NodeName=gpu-st-1 AutoDetect=nvml"]
    lines = [dict(pairs(line)) for line in conf_lines(files_of(AWS, True)["gres.conf"])]
    assert lines[0] == {"NodeName": "gpu-st-1", "AutoDetect": "nvml"}
    assert lines[1]["Name"] == "gpu"
    assert lines[1]["File"] == "/dev/nvidia[0-3]"
    assert "AutoDetect" not in lines[1]  # gres.conf(5): not with cloud nodes
    assert sorted(hostnames(lines[1]["NodeName"])) == ["gpu-dy-1", "gpu-dy-2"]


def test_one_gpu_cloud_node_names_one_device() -> None:
    spec = AWS.model_copy(
        update={"groups": (AWS.groups[1].model_copy(update={"gpus": 1, "min": 0}),)}
    )
    assert "File=/dev/nvidia0\n" in files_of(spec, include_dynamic=True)["gres.conf"]


# ---------------------------------------------------------------------------------------------
# Nodes that contradict the spec


@pytest.mark.parametrize(
    ("node", "message"),
    [
        (SlurmNodeDef("x-st-1", "x", "10.0.0.9", False), "group 'x' is not in the spec"),
        (SlurmNodeDef("compute-st-1", "compute", "10.0.0.9", False), "more than once"),
        (SlurmNodeDef("demo-head", "compute", "10.0.0.9", False), "more than once"),
        (SlurmNodeDef("compute-st-9", "compute", None, False), "needs its address"),
    ],
)
def test_nodes_that_contradict_the_spec_are_refused(node: SlurmNodeDef, message: str) -> None:
    nodes = [*node_defs(LOCAL, "10.250.0"), node]
    with pytest.raises(ValueError, match=re.escape(message)):
        slurm_files(LOCAL, "demo-head", "10.250.0.2", nodes, traits=traits_of(LOCAL))


def test_a_dynamic_node_needs_no_address() -> None:
    nodes = [*node_defs(LOCAL, "10.250.0"), SlurmNodeDef("compute-dy-1", "compute", None, True)]
    text = slurm_files(
        LOCAL, "demo-head", "10.250.0.2", nodes, traits=traits_of(LOCAL), include_dynamic=True
    )
    assert "NodeName=compute-dy-1 NodeHostname=compute-dy-1 " in text["slurm.conf"]


# ---------------------------------------------------------------------------------------------
# The spec keeps the default partition's name free


def test_a_group_may_not_be_named_all() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({"name": "demo", "groups": [{"name": "cpu"}, {"name": "all"}]})
    assert info.value.problems == [
        "groups[1].name: 'all' is reserved for the default partition; choose another name"
    ]


def test_names_that_merely_contain_all_are_fine() -> None:
    spec = parse_spec({"name": "demo", "groups": [{"name": "all-cpus"}, {"name": "small"}]})
    assert [g.name for g in spec.groups] == ["all-cpus", "small"]


# ---------------------------------------------------------------------------------------------
# StrictUndefined: a missing value raises


@pytest.mark.parametrize(
    ("template", "values"),
    [
        ("slurm/slurm.conf.j2", {"cluster": "c"}),
        ("slurm/cgroup.conf.j2", {"cluster": "c"}),
        ("slurm/gres.conf.j2", {"lines": []}),
        ("slurm/machinefile.openmpi.j2", {"origin": "x"}),
        ("slurm/machinefile.mpich.j2", {"hosts": []}),
    ],
)
def test_a_missing_value_raises(template: str, values: dict[str, Any]) -> None:
    with pytest.raises(jinja2.UndefinedError):
        render(template, **values)


def test_every_partition_gives_jobs_memory_per_cpu_by_default() -> None:
    """Without DefMemPerCPU, CR_Core_Memory hands a job without --mem its node's whole
    memory and a node runs one task at a time."""
    spec = parse_spec({
        "name": "m",
        "groups": [
            {"name": "small", "min": 1, "max": 1, "cpus": 4, "memory_mb": 2048},
            {"name": "big", "min": 1, "max": 1, "cpus": 8, "memory_mb": 32768},
        ],
    })  # fmt: skip
    nodes = [
        SlurmNodeDef("small-st-1", "small", "10.0.0.3", dynamic=False),
        SlurmNodeDef("big-st-1", "big", "10.0.0.4", dynamic=False),
    ]
    conf = slurm_files(spec, "m-head", "10.0.0.2", nodes, traits=traits_of(spec))["slurm.conf"]
    lines = [line for line in conf.splitlines() if line.startswith("PartitionName=")]
    assert [line.split()[0] for line in lines] == [
        "PartitionName=all", "PartitionName=small", "PartitionName=big",
    ]  # fmt: skip
    assert [w for line in lines for w in line.split() if w.startswith("DefMemPerCPU=")] == [
        "DefMemPerCPU=512", "DefMemPerCPU=512", "DefMemPerCPU=4096",
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Settings that follow the cluster's size


def sized(count: int, dynamic: bool) -> ClusterSpec:
    """An aws cluster of ``count`` compute nodes, all static or all but one dynamic."""
    return parse_spec({
        "name": "big", "provider": "aws", "aws": {"admin_cidr": "203.0.113.0/24"},
        "groups": [{"name": "c", "min": 1 if dynamic else count, "max": count}],
    })  # fmt: skip


def top_settings(spec: ClusterSpec) -> str:
    """slurm.conf without its node and partition lines (thousands of them here)."""
    text = files_of(spec, include_dynamic=True)["slurm.conf"]
    return "".join(
        line for line in text.splitlines(keepends=True)
        if not line.startswith(("NodeName=", "PartitionName=", "SuspendExcNodes="))
    )  # fmt: skip


@pytest.mark.parametrize("count", [16, 1000, 5000])
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_size_settings_golden(golden: GoldenCheck, count: int, dynamic: bool) -> None:
    text = top_settings(sized(count, dynamic))
    golden(f"slurm.conf.size-{count}-{'dynamic' if dynamic else 'static'}.txt", text)


@pytest.mark.parametrize("count", [1, 50, 51, 64, 1000, 1024, 2500, 2501, 5000, 20_000])
def test_the_tree_reaches_every_node_in_the_hops_the_manual_gives(count: int) -> None:
    top = parse_conf(top_settings(sized(count, dynamic=False)))[0]
    width = int(top.get("TreeWidth", "50"))  # Slurm's default when unset
    hops = 2 if count <= 2500 else 3  # the square root up to 2,500 nodes, the cube root above
    assert width**hops >= count
    assert count <= 50 or (width - 1) ** hops < count  # the smallest such width
    assert top["SlurmdTimeout"] == ("120" if count >= 1024 else "30")


def test_dynamic_nodes_are_reached_directly_at_any_size() -> None:
    for count in (16, 5000):
        assert parse_conf(top_settings(sized(count, dynamic=True)))[0]["TreeWidth"] == "65533"


@pytest.mark.parametrize(("count", "backlog"), [(16, None), (1000, None), (2047, None),
                                                (2048, "4098"), (5000, "10002")])  # fmt: skip
def test_the_heads_listen_backlog_is_raised_only_past_the_kernels(
    count: int, backlog: str | None
) -> None:
    from clusterkit.slurmconf import head_sysctls

    wanted = {"net.core.somaxconn": backlog, "net.ipv4.tcp_max_syn_backlog": backlog}
    assert head_sysctls(sized(count, dynamic=True)) == ({} if backlog is None else wanted)
