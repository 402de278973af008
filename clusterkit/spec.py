"""The cluster spec: a YAML document becomes a frozen, typed ``ClusterSpec``.

Every default lives in these models. ``load_spec``/``parse_spec`` report *all* problems of a
document at once, each with its path (``groups[1].max: must be >= min (3)``), and an unknown
key lists the valid ones. Nothing but ``SpecError`` escapes them.
"""

from __future__ import annotations

import ipaddress
import re
import zlib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from clusterkit.errors import SpecError
from clusterkit.resources import templates_dir

# DNS-label-like names: they become host names (NAME-head, GROUP-st-N) and file names.
NAME_PATTERN = r"^[a-z][a-z0-9-]*[a-z0-9]$|^[a-z]$"
# Signals a job may catch to checkpoint (not ones that stop or kill it).
CHECKPOINT_SIGNALS = ("USR1", "USR2", "HUP", "URG", "WINCH")
Name = Annotated[str, Field(pattern=NAME_PATTERN, min_length=1, max_length=24)]
GroupName = Annotated[str, Field(pattern=NAME_PATTERN, min_length=1, max_length=16)]
PosInt = Annotated[int, Field(strict=True, ge=1)]
NonNegInt = Annotated[int, Field(strict=True, ge=0)]
Money = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Capacity = Literal["spot", "on-demand", "spot-then-on-demand"]

# The most nodes one local cluster may have: its /24 holds the gateway, the head and these.
MAX_LOCAL_NODES = 250

# The Slurm partition holding every compute node; no group may take its name.
DEFAULT_PARTITION = "all"

# Separates the problems of the cross-field checks inside their one ValueError.
CROSS_SEPARATOR = "\n"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HeadSpec(_Model):
    """The head node: slurmctld, shared storage, the cluster's entry point."""

    instance_type: str = Field("m7i.large", description="AWS instance type of the head")
    capacity: Literal["on-demand", "spot"] = Field(
        "on-demand", description="the head is on-demand by default: losing it loses the cluster"
    )
    cpus: PosInt = Field(2, description="CPUs Slurm sees on the head (local provider)")
    memory_mb: PosInt = Field(2048, description="memory of the head in MiB")


class GroupSpec(_Model):
    """One group of compute nodes; it becomes a Slurm partition of its own name."""

    name: GroupName
    instance_types: tuple[str, ...] = Field(
        ("c7i.2xlarge",), min_length=1, description="tried in order on capacity errors"
    )
    capacity: Capacity = Field("spot", description="spot | on-demand | spot-then-on-demand")
    min: NonNegInt = Field(0, description="static nodes, always on (GROUP-st-N)")
    max: PosInt = Field(4, description="all nodes; max - min are dynamic (GROUP-dy-N)")
    cpus: PosInt = Field(2, description="CPUs per node as Slurm sees them")
    memory_mb: PosInt = Field(2048, description="memory per node in MiB")
    gpus: NonNegInt = Field(0, description="GPUs per node (gres gpu)")
    features: tuple[str, ...] = Field((), description="Slurm node features")
    weight: PosInt | None = Field(
        None, description="Slurm node weight, lower first; default: from the price per CPU"
    )

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        if v == DEFAULT_PARTITION:
            raise ValueError(f"{v!r} is reserved for the default partition; choose another name")
        return v

    @field_validator("instance_types")
    @classmethod
    def _nonblank_types(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if any(not t.strip() for t in v):
            raise ValueError("instance types must not be blank")
        if len(set(v)) != len(v):
            raise ValueError("instance types must not repeat")
        return v

    @model_validator(mode="after")
    def _min_le_max(self) -> GroupSpec:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self


class SharedStorageSpec(_Model):
    """Storage the head exports to every compute node (homes, checkpoints, manifests)."""

    mount_point: str = Field("/shared", description="absolute path on every node")
    type: Literal["auto", "sshfs", "nfs"] = Field(
        "auto", description="auto: sshfs on the local provider, nfs on aws"
    )

    @field_validator("mount_point")
    @classmethod
    def _absolute(cls, v: str) -> str:
        path = v.rstrip("/")
        if not v.startswith("/") or not path or ".." in v.split("/"):
            raise ValueError("must be an absolute path below / (for example /shared)")
        return path


class SlurmSpec(_Model):
    """Slurm settings that clusterkit renders into slurm.conf."""

    cluster_name: str | None = Field(None, description="defaults to the cluster's name")
    suspend_time: PosInt = Field(300, description="seconds idle before a dynamic node is released")
    resume_timeout: PosInt = Field(300, description="seconds a node may take to power up")
    suspend_timeout: PosInt = Field(120, description="seconds a node may take to power down")
    resume_retry_seconds: NonNegInt = Field(
        30, description="a job whose nodes could not be powered up is tried again after this"
    )
    resume_rate: NonNegInt = Field(0, description="nodes powered up per minute (0: no limit)")
    suspend_rate: NonNegInt = Field(0, description="nodes powered down per minute (0: no limit)")
    max_array_size: PosInt = Field(100001, description="MaxArraySize")
    max_job_count: PosInt = Field(200000, description="MaxJobCount")
    max_restarts: NonNegInt = Field(3, description="requeues before a job fails for good")
    extra: tuple[str, ...] = Field((), description="raw lines appended to slurm.conf")


class SpotSpec(_Model):
    """What the Spot agent does on an interruption notice (README: Spot interruptions)."""

    checkpoint_signal: str = Field("USR1", description="signal asking jobs to checkpoint")
    signal_jobs: Literal["ck-run", "all", "none"] = Field(
        "ck-run",
        description="ck-run: jobs run under ck-run; all: every job (scancel --full); none",
    )
    grace_seconds: PosInt = Field(
        60, description="longest wait for checkpoints before requeueing (bounded by the notice)"
    )
    requeue_margin_seconds: NonNegInt = Field(
        5, description="jobs are requeued at least this long before the instance ends"
    )
    events_queue_url: str | None = Field(
        None, description="an SQS queue of EC2 interruption events (aws: the cluster's own)"
    )
    events_region: str | None = Field(None, description="the queue's region")
    events_endpoint_url: str | None = Field(None, description="another SQS endpoint")

    @field_validator("checkpoint_signal")
    @classmethod
    def _signal(cls, v: str) -> str:
        name = v.upper().removeprefix("SIG")
        if name not in CHECKPOINT_SIGNALS:
            raise ValueError(f"must be one of {', '.join(CHECKPOINT_SIGNALS)}")
        return name


class ProtectedModeSpec(_Model):
    """When launches or repairs of a group keep failing, the reconciler stops retrying it."""

    failures: NonNegInt = Field(
        10, description="failed launches or repairs of a group that protect it (0: never)"
    )
    window_seconds: PosInt = Field(600, description="counted over this many seconds")


# Tenant names that clusterkit's own Slurm accounts take.
# root is Slurm's; default holds users in no tenant; cluster is every tenant's parent (the
# association the cluster's budget, cost.budget, is set on).
RESERVED_TENANTS = ("root", "default", "cluster")
DEFAULT_TENANT = "default"  # the account of users who belong to no tenant
# Each tenant is a Unix group of its name on every node, its gid fixed by the name (so adding or
# reordering tenants never renumbers one) above the users' range (uid/gid <= 60000).
TENANT_GID_BASE = 61000
TENANT_GID_SPAN = 4000
_MEM_UNITS = {"": 1, "M": 1, "G": 1024, "T": 1024 * 1024}


class DatabaseSpec(_Model):
    """An external MariaDB/MySQL for slurmdbd, instead of the one clusterkit runs on the head."""

    host: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9.:_-]+$")]
    port: Annotated[int, Field(strict=True, ge=1, le=65535)] = 3306
    user: Annotated[str, Field(pattern=r"^[A-Za-z0-9_]{1,32}$")] = "slurm"
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_]{1,64}$")] = Field(
        "slurm_acct_db", description="the database slurmdbd keeps its tables in"
    )
    password_secret: str = Field(
        description="where the password is: file:/PATH on this machine, or an AWS Secrets "
        "Manager secret (aws-secretsmanager:NAME or its ARN)"
    )

    @field_validator("password_secret")
    @classmethod
    def _secret_ref(cls, v: str) -> str:
        prefixes = ("file:/", "aws-secretsmanager:", "arn:aws:secretsmanager:")
        if any(v.startswith(p) and len(v) > len(p) for p in prefixes):
            return v
        raise ValueError(
            "must be file:/PATH, aws-secretsmanager:NAME or a Secrets Manager ARN "
            "(never the password itself)"
        )


class AccountingSpec(_Model):
    """Slurm accounting: slurmdbd on a real database (MariaDB on the head by default)."""

    enabled: bool = Field(True, description="false: no slurmdbd, no tenants, no sacct")
    database: DatabaseSpec | None = Field(
        None, description="an external database; default: MariaDB on the head"
    )


def _mem_mb(v: Any) -> Any:
    """``4096``, ``"4096M"``, ``"4G"`` -> MiB; anything else is left to the type check."""
    if isinstance(v, str):
        m = re.fullmatch(r"\s*(\d+)\s*([MGT]?)i?B?\s*", v.upper())
        if not m:
            raise ValueError("must be MiB as a number, or a size such as 512M, 4G or 1T")
        return int(m.group(1)) * _MEM_UNITS[m.group(2)]
    return v


class TenantLimits(_Model):
    """What a tenant may use at once; jobs over a limit wait (Slurm QOS Grp*/Max* limits)."""

    cpus: PosInt | None = Field(None, description="CPUs allocated to its running jobs")
    gpus: PosInt | None = Field(None, description="GPUs allocated to its running jobs")
    nodes: PosInt | None = Field(None, description="nodes its running jobs hold")
    mem: PosInt | None = Field(None, description="memory of its running jobs (MiB, or 4G)")
    jobs: PosInt | None = Field(None, description="its running jobs")
    jobs_per_user: PosInt | None = Field(None, description="running jobs of each of its users")

    @field_validator("mem", mode="before")
    @classmethod
    def _mem(cls, v: Any) -> Any:
        return _mem_mb(v)


class TenantSpec(_Model):
    """A team: a Slurm account with its users, its limits, nodes of its own while it runs
    there, and a private directory on shared storage."""

    name: Name
    users: tuple[str, ...] = Field(min_length=1, description="cluster users of this tenant")
    limits: TenantLimits = Field(default_factory=TenantLimits)
    budget: Money | None = Field(
        None, description="what its jobs may cost in all (cost.currency); then they wait"
    )

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        if v in RESERVED_TENANTS:
            raise ValueError(f"{v!r} is reserved for clusterkit's own accounts; choose another")
        return v


class InstancePrices(_Model):
    """Hourly prices of one instance type, instead of the ones clusterkit finds."""

    instance_type: str = Field(min_length=1, description="the type these prices are for")
    on_demand: Money | None = Field(None, description="per hour on on-demand capacity")
    spot: Money | None = Field(None, description="per hour on Spot capacity")


NOTIFY_KINDS = ("job", "pack", "budget", "interruption-storm", "mission")


class StormSpec(_Model):
    """How many interruption notices, how close together, make a storm worth a message."""

    count: PosInt = Field(3, description="notices ...")
    window_seconds: PosInt = Field(300, description="... within this many seconds")


class NotifySpec(_Model):
    """Where messages go when jobs, packs or the mission end, a budget is spent, or
    interruptions storm (README: Notifications has each message's JSON)."""

    webhook: str | None = Field(None, description="an http(s) URL each message is POSTed to")
    command: str | None = Field(
        None, description="a shell command on the head, each message on its stdin"
    )
    sns_topic_arn: str | None = Field(None, description="an SNS topic (aws)")
    events: tuple[Literal[NOTIFY_KINDS], ...] = Field(  # type: ignore[valid-type]
        NOTIFY_KINDS, description="which kinds are sent"
    )
    storm: StormSpec = Field(default_factory=StormSpec)

    @field_validator("webhook")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", v):
            raise ValueError("must be an http:// or https:// URL")
        return v

    @field_validator("sns_topic_arn")
    @classmethod
    def _arn(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"arn:aws[\w-]*:sns:[\w-]+:\d{12}:[\w-]+", v):
            raise ValueError("must be an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)")
        return v


class CostSpec(_Model):
    """What the cluster costs: the prices, and the currency they (and budgets) are in."""

    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = Field(
        "USD", description="ISO 4217 code of every price and budget"
    )
    prices: tuple[InstancePrices, ...] = Field(
        (), description="[{instance_type, on_demand, spot}]: hourly prices to use"
    )

    def given(self, instance_type: str) -> InstancePrices | None:
        """The prices the spec gives for ``instance_type``."""
        return next((p for p in self.prices if p.instance_type == instance_type), None)

    assumed_spot_ratio: Annotated[float, Field(gt=0, le=1)] = Field(
        0.35, description="Spot price as a share of on-demand where none is known (local)"
    )
    default_time_minutes: PosInt = Field(
        60, description="with a budget: the time limit of a job that sets none (--time)"
    )
    budget: Money | None = Field(
        None, description="what all jobs together may cost (currency); then they wait"
    )


class UserSpec(_Model):
    """A cluster user: same uid/gid on every node, home on shared storage."""

    name: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_-]{0,30}$")]
    uid: Annotated[int, Field(strict=True, ge=1000, le=60000)]
    gid: Annotated[int, Field(strict=True, ge=1000, le=60000)] | None = Field(
        None, description="defaults to the uid"
    )
    ssh_public_keys: tuple[str, ...] = Field((), description="keys allowed to log in")


class LocalSpec(_Model):
    """Settings of the local provider (nodes are Linux namespaces on this machine)."""

    subnet: str = Field("auto", description="a private /24 for the cluster bridge, or auto")
    spot_notice_seconds: PosInt = Field(10, description="lead time of a simulated interruption")
    boot_delay_seconds: NonNegInt = Field(0, description="simulated boot time of a node")

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, v: str) -> str:
        if v == "auto":
            return v
        try:
            net = ipaddress.ip_network(v, strict=True)
        except ValueError as exc:
            raise ValueError(f"must be 'auto' or a network such as 10.250.7.0/24 ({exc})") from None
        if not isinstance(net, ipaddress.IPv4Network) or net.prefixlen != 24 or not net.is_private:
            raise ValueError("must be a private IPv4 /24 such as 10.250.7.0/24")
        return str(net)


class AwsSpec(_Model):
    """Settings of the aws provider; credentials come from the standard boto3 chain."""

    region: str | None = Field(None, description="defaults to the boto3 chain's region")
    admin_cidr: str | None = Field(None, description="who may SSH to the head (required on aws)")
    vpc_id: str | None = Field(None, description="use this VPC instead of creating one")
    subnet_ids: tuple[str, ...] = Field((), description="use these subnets (one per AZ)")
    image_id: str | None = Field(None, description="node image (AMI); default: Debian 12's")
    checkpoint_bucket: str | None = Field(None, description="defaults to a bucket per cluster")

    @field_validator("admin_cidr")
    @classmethod
    def _cidr(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            return str(ipaddress.ip_network(v, strict=True))
        except ValueError as exc:
            raise ValueError(f"must be a CIDR such as 203.0.113.0/24 ({exc})") from None


def _default_groups() -> tuple[GroupSpec, ...]:
    return (GroupSpec(name="compute", min=2, max=4),)


def _default_users() -> tuple[UserSpec, ...]:
    return (UserSpec(name="ckuser", uid=2001),)


DEFAULT_PROVIDER: Literal["local"] = "local"


class ClusterSpec(_Model):
    """A whole cluster: what ``clusterkit up`` builds."""

    name: Name
    provider: Literal["local", "aws"] = DEFAULT_PROVIDER
    head: HeadSpec = Field(default_factory=HeadSpec)
    groups: tuple[GroupSpec, ...] = Field(default_factory=_default_groups, min_length=1)
    shared_storage: SharedStorageSpec = Field(default_factory=SharedStorageSpec)
    slurm: SlurmSpec = Field(default_factory=SlurmSpec)
    spot: SpotSpec = Field(default_factory=SpotSpec)
    protected_mode: ProtectedModeSpec = Field(default_factory=ProtectedModeSpec)
    users: tuple[UserSpec, ...] = Field(default_factory=_default_users)
    accounting: AccountingSpec = Field(default_factory=AccountingSpec)
    tenants: tuple[TenantSpec, ...] = ()
    cost: CostSpec = Field(default_factory=CostSpec)
    notify: NotifySpec = Field(default_factory=NotifySpec)
    local: LocalSpec = Field(default_factory=LocalSpec)
    aws: AwsSpec = Field(default_factory=AwsSpec)

    @model_validator(mode="after")
    def _cross_checks(self) -> ClusterSpec:
        problems = _cross_problems(self)
        if problems:
            # One problem per line: a problem's own text may contain "; ".
            raise ValueError(CROSS_SEPARATOR.join(problems))
        return self

    @property
    def slurm_cluster_name(self) -> str:
        return self.slurm.cluster_name or self.name


def _tenant_problems(spec: ClusterSpec) -> list[str]:
    """Tenants need accounting; each names known users, and a user is in one tenant only."""
    if spec.cost.budget is not None and not spec.accounting.enabled:
        return ["cost.budget: needs accounting (remove `accounting.enabled: false`, or the "
                "budget)"]  # fmt: skip
    if not spec.tenants:
        return []
    if not spec.accounting.enabled:
        return ["tenants: need accounting (remove `accounting.enabled: false`, or the tenants)"]
    problems = [
        f"tenants: tenant name {n!r} is used more than once"
        for n in _duplicates([t.name for t in spec.tenants])
    ]
    gpus = any(g.gpus > 0 for g in spec.groups)
    problems += [
        f"tenants[{i}].limits.gpus: no group has GPUs (set groups[].gpus, or drop the limit)"
        for i, t in enumerate(spec.tenants)
        if t.limits.gpus is not None and not gpus
    ]
    known = {u.name for u in spec.users}
    problems += [
        f"tenants[{i}].name: {t.name!r} is also a user's name (each names a Unix group); "
        "choose another"
        for i, t in enumerate(spec.tenants)
        if t.name in known
    ]
    gids: dict[int, str] = {}
    for t in spec.tenants:
        other = gids.setdefault(tenant_gid(t.name), t.name)
        if other != t.name:
            problems.append(
                f"tenants: {other!r} and {t.name!r} get the same group id; rename one of them"
            )
    seen: dict[str, str] = {}
    for i, tenant in enumerate(spec.tenants):
        for user in tenant.users:
            if user not in known:
                problems.append(
                    f"tenants[{i}].users: {user!r} is not a cluster user (add it under users:)"
                )
            elif user in seen and seen[user] != tenant.name:
                problems.append(
                    f"tenants[{i}].users: {user!r} is already in tenant {seen[user]!r} "
                    "(a user belongs to one tenant)"
                )
            seen.setdefault(user, tenant.name)
    return problems


def tenant_gid(name: str) -> int:
    """The gid of tenant ``name``'s group, from its name alone."""
    return TENANT_GID_BASE + zlib.crc32(name.encode()) % TENANT_GID_SPAN


def tenant_of(spec: ClusterSpec, user: str) -> str:
    """The tenant (Slurm account) of a cluster user: ``default`` when it is in none."""
    return next((t.name for t in spec.tenants if user in t.users), DEFAULT_TENANT)


def _duplicates(values: list[Any]) -> list[Any]:
    return sorted({v for v in values if values.count(v) > 1}, key=str)


def _cross_problems(spec: ClusterSpec) -> list[str]:
    """Checks spanning several fields; each problem names its own path."""
    problems = [
        f"groups: group name {n!r} is used more than once"
        for n in _duplicates([g.name for g in spec.groups])
    ]
    problems += [
        f"users: user name {n!r} is used more than once"
        for n in _duplicates([u.name for u in spec.users])
    ]
    problems += [
        f"users: uid {u} is used more than once" for u in _duplicates([u.uid for u in spec.users])
    ]
    problems += _tenant_problems(spec)
    problems += [
        f"cost.prices: {t!r} is priced more than once"
        for t in _duplicates([p.instance_type for p in spec.cost.prices])
    ]
    if spec.notify.sns_topic_arn and spec.provider != "aws":
        problems.append("notify.sns_topic_arn: needs provider aws (use notify.webhook here)")
    if spec.provider == "local":
        total = sum(g.max for g in spec.groups)
        if total > MAX_LOCAL_NODES:
            problems.append(
                f"groups: {total} compute nodes in all (sum of max); "
                f"the local provider holds at most {MAX_LOCAL_NODES}"
            )
    if spec.provider == "aws" and spec.aws.admin_cidr is None:
        problems.append("aws.admin_cidr: required when provider is aws (who may SSH to the head)")
    return problems


# ---------------------------------------------------------------------------------------------
# Loading and error reporting


def load_spec(path: str | Path) -> ClusterSpec:
    """Read and validate a spec file; raise ``SpecError`` naming the file on any problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(str(p), ["file not found (create one with `clusterkit init`)"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(str(p), [f"cannot read: {exc}"]) from None
    return parse_spec_text(text, source=str(p))


class _SpecLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a key given twice in one mapping (YAML itself keeps
    the last one silently, so a second ``groups:`` would drop the first without a word)."""


def _mapping_without_duplicates(loader: _SpecLoader, node: yaml.MappingNode) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue  # merge keys (<<) may be overridden on purpose; complex keys are rare
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_yaml_map(node)


_SpecLoader.add_constructor("tag:yaml.org,2002:map", _mapping_without_duplicates)


def parse_spec_text(text: str, source: str = "<spec>") -> ClusterSpec:
    """Parse YAML text into a ``ClusterSpec``."""
    try:
        data = yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise SpecError(source, [f"not valid YAML: {_yaml_reason(exc)}"]) from None
    except (RecursionError, ValueError, TypeError, OverflowError) as exc:
        raise SpecError(source, [f"not valid YAML: {exc}"]) from None
    return parse_spec(data, source=source)


def parse_spec(data: Any, source: str = "<spec>") -> ClusterSpec:
    """Validate already-parsed data (a mapping) into a ``ClusterSpec``."""
    if data is None:
        raise SpecError(source, ["empty document: a spec needs at least `name:`"])
    if not isinstance(data, dict):
        raise SpecError(source, [f"expected a mapping at the top level, got {_kind(data)}"])
    try:
        return ClusterSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(source, _problems(exc)) from None
    except RecursionError:
        raise SpecError(
            source, ["the document refers to itself (a recursive YAML alias)"]
        ) from None


def _yaml_reason(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return str(problem)


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")  # fullmatch: "$" would let "a\n" pass


def format_path(loc: tuple[Any, ...]) -> str:
    """``('groups', 1, 'max')`` -> ``groups[1].max``; an odd key is quoted: ``head['a b']``."""
    out = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        elif isinstance(part, str) and _PLAIN_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out or "(top level)"


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class whose fields live at ``loc`` (used to list valid keys)."""
    model: type[BaseModel] = ClusterSpec
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        inner = _inner_model(field.annotation)
        if inner is None:
            return None
        model = inner
    return model


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _problems(exc: ValidationError) -> list[str]:
    errors = exc.errors(include_url=False)
    locs = [tuple(e["loc"]) for e in errors]
    problems: list[str] = []
    for err, loc in zip(errors, locs, strict=True):
        if err["type"] == "too_short" and any(
            len(other) > len(loc) and other[: len(loc)] == loc for other in locs
        ):
            # "should have at least 1 item after validation, not 0": only a consequence of
            # the problems of its items, which are reported with their own paths.
            continue
        if err["type"] in ("extra_forbidden", "invalid_key"):
            problems.append(_unknown_key(err["type"], loc))
            continue
        msg = _message(err)
        if not loc and err["type"] == "value_error":
            # Cross-field checks already name their paths, several per message.
            problems.extend(p for p in msg.split(CROSS_SEPARATOR) if p)
            continue
        problems.append(f"{format_path(loc)}: {msg}")
    return problems


def _unknown_key(kind: str, loc: tuple[Any, ...]) -> str:
    parent = _model_at(loc[:-1])
    valid = ", ".join(parent.model_fields) if parent else "see `clusterkit init`"
    if kind == "invalid_key":  # a key that is not a string at all (YAML `1: x`)
        return f"{format_path(loc[:-1])}: unknown key {loc[-1]!r}; valid keys: {valid}"
    return f"{format_path(loc)}: unknown key; valid keys: {valid}"


def _message(err: Any) -> str:
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if err["type"] == "string_pattern_mismatch":
        if err.get("ctx", {}).get("pattern") == NAME_PATTERN:
            msg = "must be lowercase letters, digits and '-', starting with a letter"
        else:
            msg = "must be lowercase letters, digits, '_' and '-', starting with a letter or '_'"
    elif err["type"] == "missing":
        msg = "required"
    elif err["type"] == "too_short":
        msg = f"needs at least {err.get('ctx', {}).get('min_length', 1)} item(s)"
    return msg


def example_spec_text(name: str = "demo") -> str:
    """The annotated example written by ``clusterkit init``."""
    text = (templates_dir() / "cluster.example.yaml").read_text(encoding="utf-8")
    return text.replace("name: demo", f"name: {name}", 1)
