"""The cluster spec: defaults, the shipped examples, and error reports with paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from clusterkit.errors import SpecError
from clusterkit.spec import (
    MAX_LOCAL_NODES,
    AccountingSpec,
    AwsSpec,
    ClusterSpec,
    GroupSpec,
    HeadSpec,
    LocalSpec,
    SharedStorageSpec,
    SlurmSpec,
    UserSpec,
    example_spec_text,
    format_path,
    load_spec,
    parse_spec,
    parse_spec_text,
    tenant_of,
)

REPO = Path(__file__).resolve().parents[2]

TOP_KEYS = (
    "name, provider, head, groups, shared_storage, slurm, spot, protected_mode, users, "
    "accounting, tenants, cost, notify, local, aws"
)
GROUP_KEYS = "name, instance_types, capacity, min, max, cpus, memory_mb, gpus, features, weight"


def problems_of(data: Any) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(data, source="t.yaml")
    assert info.value.source == "t.yaml"
    return info.value.problems


def text_problems(text: str, source: str = "t.yaml") -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec_text(text, source=source)
    return info.value.problems


# ---------------------------------------------------------------------------------------------
# Defaults and the shipped examples


def test_minimal_spec_gets_every_default() -> None:
    spec = parse_spec({"name": "x"})
    assert spec == ClusterSpec(name="x")
    assert spec.model_dump() == {
        "name": "x",
        "provider": "local",
        "head": {
            "instance_type": "m7i.large",
            "capacity": "on-demand",
            "cpus": 2,
            "memory_mb": 2048,
        },
        "groups": (
            {
                "name": "compute",
                "instance_types": ("c7i.2xlarge",),
                "capacity": "spot",
                "min": 2,
                "max": 4,
                "cpus": 2,
                "memory_mb": 2048,
                "gpus": 0,
                "features": (),
                "weight": None,
            },
        ),
        "shared_storage": {"mount_point": "/shared", "type": "auto"},
        "slurm": {
            "cluster_name": None,
            "suspend_time": 300,
            "resume_timeout": 300,
            "suspend_timeout": 120,
            "resume_retry_seconds": 30,
            "resume_rate": 0,
            "suspend_rate": 0,
            "max_array_size": 100001,
            "max_job_count": 200000,
            "max_restarts": 3,
            "extra": (),
        },
        "spot": {
            "checkpoint_signal": "USR1",
            "signal_jobs": "ck-run",
            "grace_seconds": 60,
            "requeue_margin_seconds": 5,
            "events_queue_url": None,
            "events_region": None,
            "events_endpoint_url": None,
        },
        "protected_mode": {"failures": 10, "window_seconds": 600},
        "users": ({"name": "ckuser", "uid": 2001, "gid": None, "ssh_public_keys": ()},),
        "accounting": {"enabled": True, "database": None},
        "tenants": (),
        "cost": {
            "currency": "USD",
            "prices": (),
            "assumed_spot_ratio": 0.35,
            "default_time_minutes": 60,
            "budget": None,
        },
        "notify": {
            "webhook": None,
            "command": None,
            "sns_topic_arn": None,
            "events": ("job", "pack", "budget", "interruption-storm", "mission"),
            "storm": {"count": 3, "window_seconds": 300},
        },
        "local": {"subnet": "auto", "spot_notice_seconds": 10, "boot_delay_seconds": 0},
        "aws": {
            "region": None,
            "admin_cidr": None,
            "vpc_id": None,
            "subnet_ids": (),
            "image_id": None,
            "checkpoint_bucket": None,
        },
    }
    assert spec.slurm_cluster_name == "x"


def test_slurm_cluster_name_overrides_the_name() -> None:
    spec = parse_spec({"name": "x", "slurm": {"cluster_name": "prod"}})
    assert spec.slurm_cluster_name == "prod"


def test_examples_local_yaml_validates() -> None:
    spec = load_spec(REPO / "examples" / "local.yaml")
    assert spec.name == "ck"
    assert spec.provider == "local"
    assert [(g.name, g.min, g.max) for g in spec.groups] == [("compute", 3, 3)]


def test_init_template_equals_the_model_defaults() -> None:
    assert parse_spec_text(example_spec_text()) == ClusterSpec(name="demo")
    assert parse_spec_text(example_spec_text("other")) == ClusterSpec(name="other")


def _assert_shows_every_field(data: Any, model: type[BaseModel], where: str) -> None:
    assert isinstance(data, dict), where
    assert list(data) == list(model.model_fields), f"{where}: keys differ from {model.__name__}"


def test_init_template_shows_every_key_of_the_model() -> None:
    """'Every key below shows its default': a field added to the model must appear there."""
    data = yaml.safe_load(example_spec_text())
    _assert_shows_every_field(data, ClusterSpec, "top level")
    nested: dict[str, type[BaseModel]] = {
        "head": HeadSpec,
        "shared_storage": SharedStorageSpec,
        "slurm": SlurmSpec,
        "local": LocalSpec,
        "accounting": AccountingSpec,
        "aws": AwsSpec,
    }
    for key, model in nested.items():
        _assert_shows_every_field(data[key], model, key)
    _assert_shows_every_field(data["groups"][0], GroupSpec, "groups[0]")
    _assert_shows_every_field(data["users"][0], UserSpec, "users[0]")
    assert data["tenants"] == []


def test_example_spec_text_replaces_only_the_name() -> None:
    default = example_spec_text()
    other = example_spec_text("other")
    assert "\nname: other\n" in other
    assert other.replace("name: other", "name: demo", 1) == default


# ---------------------------------------------------------------------------------------------
# Every problem at once, each with its path


def test_every_problem_is_reported_at_once_with_its_path() -> None:
    problems = problems_of(
        {
            "name": "Bad_Name",
            "provider": "gcp",
            "head": {"cpus": 0},
            "groups": [
                {"name": "a", "min": 1, "max": 2},
                {"name": "b", "max": 0},
                {"name": "c", "capacity": "cheap", "gpus": -1},
            ],
            "shared_storage": {"mount_point": "relative"},
            "users": [{"name": "u", "uid": 5}],
        }
    )
    expected = {
        "name: must be lowercase letters, digits and '-', starting with a letter",
        "provider: Input should be 'local' or 'aws'",
        "head.cpus: Input should be greater than or equal to 1",
        "groups[1].max: Input should be greater than or equal to 1",
        "groups[2].capacity: Input should be 'spot', 'on-demand' or 'spot-then-on-demand'",
        "groups[2].gpus: Input should be greater than or equal to 0",
        "shared_storage.mount_point: must be an absolute path below / (for example /shared)",
        "users[0].uid: Input should be greater than or equal to 1000",
    }
    assert set(problems) == expected
    assert len(problems) == len(expected)


def test_spec_error_message_lists_every_problem_on_one_line() -> None:
    err = SpecError("t.yaml", ["a: one", "b: two"])
    assert str(err) == "t.yaml: 2 problems: a: one; b: two"
    assert str(SpecError("t.yaml", ["a: one"])) == "t.yaml: a: one"


def test_group_max_below_min_names_the_group() -> None:
    problems = problems_of({"name": "x", "groups": [{"name": "a", "min": 3, "max": 1}]})
    assert problems == ["groups[0]: max (1) must be >= min (3)"]


def test_max_equal_to_min_is_valid() -> None:
    spec = parse_spec({"name": "x", "groups": [{"name": "a", "min": 3, "max": 3}]})
    assert (spec.groups[0].min, spec.groups[0].max) == (3, 3)


def test_unknown_top_level_key_lists_the_valid_keys() -> None:
    assert problems_of({"name": "x", "nodes": 3}) == [f"nodes: unknown key; valid keys: {TOP_KEYS}"]


def test_unknown_nested_key_lists_the_valid_keys_of_its_model() -> None:
    problems = problems_of({"name": "x", "groups": [{"name": "a"}, {"name": "b", "cpu": 4}]})
    assert problems == [f"groups[1].cpu: unknown key; valid keys: {GROUP_KEYS}"]
    problems = problems_of({"name": "x", "head": {"memory": 1}})
    assert problems == [
        "head.memory: unknown key; valid keys: instance_type, capacity, cpus, memory_mb"
    ]


def test_a_key_that_is_not_a_string_is_an_unknown_key_of_its_parent() -> None:
    assert problems_of({"name": "x", 1: "a"}) == [
        f"(top level): unknown key 1; valid keys: {TOP_KEYS}"
    ]
    assert problems_of({"name": "x", "groups": [{"name": "a", 5: 1}]}) == [
        f"groups[0]: unknown key 5; valid keys: {GROUP_KEYS}"
    ]


def test_odd_keys_are_quoted_in_the_path_and_keep_the_message_on_one_line() -> None:
    assert problems_of({"name": "x", "a b\nc": 1}) == [
        f"['a b\\nc']: unknown key; valid keys: {TOP_KEYS}"
    ]


@pytest.mark.parametrize(
    ("loc", "path"),
    [
        ((), "(top level)"),
        (("name",), "name"),
        (("groups", 1, "max"), "groups[1].max"),
        (("slurm", "extra", 0), "slurm.extra[0]"),
        (("head", "a b"), "head['a b']"),
        (("head", True), "head[True]"),
        (("0\n",), "['0\\n']"),  # a key ending in a newline keeps the message one line
    ],
)
def test_format_path(loc: tuple[Any, ...], path: str) -> None:
    assert format_path(loc) == path


def test_an_invalid_group_does_not_also_report_the_group_list_as_empty() -> None:
    problems = problems_of({"name": "x", "groups": [{"name": "a", "cpus": 0}]})
    assert problems == ["groups[0].cpus: Input should be greater than or equal to 1"]


def test_an_empty_group_list_is_reported() -> None:
    assert problems_of({"name": "x", "groups": []}) == ["groups: needs at least 1 item(s)"]


def test_missing_name_is_required() -> None:
    assert problems_of({"provider": "local"}) == ["name: required"]


@pytest.mark.parametrize("value", ["2", 2.0, True])
def test_integers_are_strict(value: object) -> None:
    problems = problems_of({"name": "x", "head": {"cpus": value}})
    assert len(problems) == 1
    assert problems[0].startswith("head.cpus: Input should be a valid integer")


def test_user_name_pattern_message_matches_the_user_pattern() -> None:
    problems = problems_of({"name": "x", "users": [{"name": "Bob", "uid": 2001}]})
    assert problems == [
        "users[0].name: must be lowercase letters, digits, '_' and '-', starting with a letter "
        "or '_'"
    ]
    spec = parse_spec({"name": "x", "users": [{"name": "_svc", "uid": 2001}]})
    assert spec.users[0].name == "_svc"


def test_instance_types_must_not_be_blank_or_repeat() -> None:
    assert problems_of({"name": "x", "groups": [{"name": "a", "instance_types": [" "]}]}) == [
        "groups[0].instance_types: instance types must not be blank"
    ]
    assert problems_of(
        {"name": "x", "groups": [{"name": "a", "instance_types": ["c7i.large", "c7i.large"]}]}
    ) == ["groups[0].instance_types: instance types must not repeat"]


@pytest.mark.parametrize(
    ("mount_point", "normalised"), [("/shared", "/shared"), ("/data/ck/", "/data/ck")]
)
def test_mount_point_is_normalised(mount_point: str, normalised: str) -> None:
    spec = parse_spec({"name": "x", "shared_storage": {"mount_point": mount_point}})
    assert spec.shared_storage.mount_point == normalised


@pytest.mark.parametrize("mount_point", ["/", "//", "///", "shared", "/a/../etc", ""])
def test_mount_point_must_be_absolute_below_root(mount_point: str) -> None:
    assert problems_of({"name": "x", "shared_storage": {"mount_point": mount_point}}) == [
        "shared_storage.mount_point: must be an absolute path below / (for example /shared)"
    ]


# ---------------------------------------------------------------------------------------------
# Cross-field checks


def test_duplicate_group_names() -> None:
    problems = problems_of({"name": "x", "groups": [{"name": "a"}, {"name": "b"}, {"name": "a"}]})
    assert problems == ["groups: group name 'a' is used more than once"]


def test_duplicate_user_names_and_uids_are_each_reported() -> None:
    problems = problems_of(
        {
            "name": "x",
            "users": [
                {"name": "ann", "uid": 2001},
                {"name": "ann", "uid": 2002},
                {"name": "bob", "uid": 2002},
            ],
        }
    )
    assert problems == [
        "users: user name 'ann' is used more than once",
        "users: uid 2002 is used more than once",
    ]


def test_too_many_local_nodes_keeps_its_message_whole() -> None:
    problems = problems_of(
        {"name": "x", "groups": [{"name": "a", "max": 200}, {"name": "b", "max": 51}]}
    )
    assert problems == [
        f"groups: 251 compute nodes in all (sum of max); "
        f"the local provider holds at most {MAX_LOCAL_NODES}"
    ]


def test_local_node_limit_is_inclusive() -> None:
    spec = parse_spec({"name": "x", "groups": [{"name": "a", "max": MAX_LOCAL_NODES}]})
    assert spec.groups[0].max == MAX_LOCAL_NODES


def test_aws_needs_admin_cidr() -> None:
    assert problems_of({"name": "x", "provider": "aws"}) == [
        "aws.admin_cidr: required when provider is aws (who may SSH to the head)"
    ]
    spec = parse_spec({"name": "x", "provider": "aws", "aws": {"admin_cidr": "203.0.113.0/24"}})
    assert spec.aws.admin_cidr == "203.0.113.0/24"


def test_aws_admin_cidr_must_be_a_network() -> None:
    problems = problems_of({"name": "x", "aws": {"admin_cidr": "203.0.113.7/24"}})
    assert len(problems) == 1
    assert problems[0].startswith("aws.admin_cidr: must be a CIDR such as 203.0.113.0/24 (")


def test_several_cross_field_problems_are_all_reported() -> None:
    problems = problems_of(
        {
            "name": "x",
            "provider": "aws",
            "groups": [{"name": "a"}, {"name": "a"}],
            "users": [{"name": "u", "uid": 2001}, {"name": "v", "uid": 2001}],
        }
    )
    assert problems == [
        "groups: group name 'a' is used more than once",
        "users: uid 2001 is used more than once",
        "aws.admin_cidr: required when provider is aws (who may SSH to the head)",
    ]


# ---------------------------------------------------------------------------------------------
# local.subnet


@pytest.mark.parametrize("subnet", ["auto", "10.250.7.0/24", "192.168.3.0/24", "172.16.0.0/24"])
def test_local_subnet_accepts_auto_and_private_slash_24(subnet: str) -> None:
    assert parse_spec({"name": "x", "local": {"subnet": subnet}}).local.subnet == subnet


@pytest.mark.parametrize(
    ("subnet", "message"),
    [
        ("8.8.8.0/24", "must be a private IPv4 /24 such as 10.250.7.0/24"),
        ("10.250.0.0/16", "must be a private IPv4 /24 such as 10.250.7.0/24"),
        ("fd00::/64", "must be a private IPv4 /24 such as 10.250.7.0/24"),
        ("10.250.7.5/24", "must be 'auto' or a network such as 10.250.7.0/24 ("),
        ("garbage", "must be 'auto' or a network such as 10.250.7.0/24 ("),
    ],
)
def test_local_subnet_rejects(subnet: str, message: str) -> None:
    problems = problems_of({"name": "x", "local": {"subnet": subnet}})
    assert len(problems) == 1
    assert problems[0].startswith(f"local.subnet: {message}")


# ---------------------------------------------------------------------------------------------
# Documents that are not specs at all


def test_bad_yaml_reports_line_and_column() -> None:
    problems = text_problems("name: x\nhead:\n  cpus: [2\n")
    assert len(problems) == 1
    assert problems[0].startswith("not valid YAML: line 4, column 1: ")
    assert text_problems("name: x\n  bad: indent\n") == [
        "not valid YAML: line 2, column 6: mapping values are not allowed here"
    ]


def test_a_key_given_twice_is_an_error_with_its_line() -> None:
    text = "name: x\ngroups:\n  - name: a\n    min: 1\n    min: 2\n"
    assert text_problems(text) == ["not valid YAML: line 5, column 5: found duplicate key 'min'"]


def test_yaml_merge_keys_may_still_override() -> None:
    spec = parse_spec_text("name: x\nhead:\n  <<: {cpus: 3, memory_mb: 4096}\n  cpus: 4\n")
    assert (spec.head.cpus, spec.head.memory_mb) == (4, 4096)


def test_unsafe_yaml_tags_are_rejected() -> None:
    problems = text_problems("name: !!python/object/apply:os.system [true]\n")
    assert len(problems) == 1
    assert problems[0].startswith("not valid YAML: line 1, column 7: could not determine")


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n"])
def test_empty_document(text: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec_text(text, source="empty.yaml")
    assert str(info.value) == "empty.yaml: empty document: a spec needs at least `name:`"


@pytest.mark.parametrize(
    ("text", "kind"), [("- name: x\n", "a list"), ("just text\n", "a string"), ("7\n", "int")]
)
def test_top_level_must_be_a_mapping(text: str, kind: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec_text(text, source="list.yaml")
    assert str(info.value) == f"list.yaml: expected a mapping at the top level, got {kind}"


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.source == str(path)
    assert str(info.value) == f"{path}: file not found (create one with `clusterkit init`)"


def test_load_spec_names_the_file_in_every_problem_report(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nhead: {cpus: 0}\n", encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}: head.cpus: Input should be greater than or equal to 1"


def test_unreadable_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value).startswith(f"{path}: cannot read: ")


def test_a_directory_is_not_a_spec(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path)
    assert str(info.value).startswith(f"{tmp_path}: cannot read: ")


# ---------------------------------------------------------------------------------------------
# Frozen


def test_spec_is_frozen() -> None:
    spec = ClusterSpec(name="x")
    with pytest.raises(ValidationError, match="frozen"):
        spec.name = "y"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        spec.groups[0].min = 0  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        spec.head.cpus = 8  # type: ignore[misc]
    assert isinstance(spec.groups, tuple)
    assert spec.name == "x"
    assert spec.groups[0].min == 2


def test_spec_is_hashable_and_comparable() -> None:
    assert hash(ClusterSpec(name="x")) == hash(parse_spec({"name": "x"}))
    assert ClusterSpec(name="x") != ClusterSpec(name="y")


# ---------------------------------------------------------------------------------------------
# Accounting and tenants

TWO_USERS = [{"name": "alice", "uid": 2001}, {"name": "bob", "uid": 2002}]


def _problems_of(data: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec({"name": "x", **data})
    return str(info.value)


def test_tenants_map_users_to_accounts_and_limits_to_mib() -> None:
    spec = parse_spec({
        "name": "x", "users": TWO_USERS,
        "tenants": [{"name": "physics", "users": ["alice"], "limits": {"cpus": 4, "mem": "2G"}}],
    })  # fmt: skip
    assert spec.tenants[0].limits.mem == 2048
    assert spec.tenants[0].limits.cpus == 4
    assert spec.tenants[0].limits.nodes is None
    assert tenant_of(spec, "alice") == "physics"
    assert tenant_of(spec, "bob") == "default"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"tenants": [{"name": "a", "users": ["carol"]}]},
         "tenants[0].users: 'carol' is not a cluster user (add it under users:)"),
        ({"tenants": [{"name": "a", "users": ["alice"]}, {"name": "b", "users": ["alice"]}]},
         "tenants[1].users: 'alice' is already in tenant 'a' (a user belongs to one tenant)"),
        ({"tenants": [{"name": "a", "users": ["alice"]}, {"name": "a", "users": ["bob"]}]},
         "tenants: tenant name 'a' is used more than once"),
        ({"tenants": [{"name": "default", "users": ["alice"]}]},
         "tenants[0].name: 'default' is reserved for clusterkit's own accounts; choose another"),
        ({"tenants": [{"name": "a", "users": []}]}, "tenants[0].users: needs at least 1 item(s)"),
        ({"tenants": [{"name": "a", "users": ["alice"], "limits": {"mem": "lots"}}]},
         "tenants[0].limits.mem: must be MiB as a number, or a size such as 512M, 4G or 1T"),
        ({"tenants": [{"name": "a", "users": ["alice"], "limits": {"cpus": 0}}]},
         "tenants[0].limits.cpus: Input should be greater than or equal to 1"),
        ({"tenants": [{"name": "a", "users": ["alice"], "limits": {"disk": 1}}]},
         "tenants[0].limits.disk: unknown key; valid keys: cpus, gpus, nodes, mem, jobs, "
         "jobs_per_user"),
        ({"accounting": {"enabled": False}, "tenants": [{"name": "a", "users": ["alice"]}]},
         "tenants: need accounting (remove `accounting.enabled: false`, or the tenants)"),
        ({"accounting": {"database": {"host": "db", "password_secret": "hunter2"}}},
         "accounting.database.password_secret: must be file:/PATH, aws-secretsmanager:NAME or "
         "a Secrets Manager ARN (never the password itself)"),
        ({"accounting": {"database": {"host": "db"}}},
         "accounting.database.password_secret: required"),
    ],
)  # fmt: skip
def test_bad_tenants_and_accounting_name_the_field(data: dict[str, Any], expected: str) -> None:
    assert expected in _problems_of({"users": TWO_USERS, **data})


def test_an_external_database_takes_a_secret_reference() -> None:
    spec = parse_spec({
        "name": "x",
        "accounting": {"database": {"host": "db.example.org", "password_secret": "file:/p"}},
    })  # fmt: skip
    assert spec.accounting.database is not None
    assert (spec.accounting.database.port, spec.accounting.database.user) == (3306, "slurm")
    assert spec.accounting.database.name == "slurm_acct_db"
