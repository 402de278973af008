"""Slurm accounting of a cluster: slurmdbd, its database, and the tenants' accounts.

slurmdbd keeps one record per job attempt in a database: MariaDB on the head by default
(clusterkit starts it, listening on the head only, with a password made for this cluster), or
an external MariaDB/MySQL named in the spec. Tenants become Slurm accounts, each with a QOS of
its own that carries its limits (its budget is on the account's association). Every value is
computed here; the ``accounting`` role only places the files, and ``ck-accounts`` on the head
makes Slurm's associations match ``accounts.json`` (so ``up`` again changes nothing, or only
what the spec changed).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from clusterkit.billing import budget_minutes
from clusterkit.nodetools.accounts import PARENT_ACCOUNT
from clusterkit.plan import cluster_users
from clusterkit.render import render
from clusterkit.spec import DEFAULT_TENANT, ClusterSpec, TenantLimits, tenant_of

SLURMDBD_PORT = 6819
DATABASE_PORT = 3306
DATABASE_USER = "slurm"
DATABASE_NAME = "slurm_acct_db"
SLURMDBD_CONF = "/etc/slurm/slurmdbd.conf"
SLURMDBD_LOG = "/var/log/slurm/slurmdbd.log"
# Local nodes share the machine's /run: the pid file lives in the head's own spool directory.
SLURMDBD_PID = "/var/spool/slurmctld/slurmdbd.pid"
# A head without systemd runs MariaDB with these settings on top of Debian's own.
MARIADB_CONF_DIRECT = "/etc/clusterkit/mariadb.cnf"
MARIADBD_ARGV = (
    "/usr/sbin/mariadbd",
    f"--defaults-extra-file={MARIADB_CONF_DIRECT}",
    "--user=mysql",
)
# slurmdbd 22.05 warns ("Database settings not recommended values") below a 1 GiB buffer pool,
# a 64 MiB log and a 900 s lock wait, as SchedMD's accounting guide advises. The pool is
# taken as pages are used: measured here, an idle head's MariaDB holds 120 MB.
MARIADB_SETTINGS = {
    "bind-address": "127.0.0.1",  # slurmdbd runs beside it: nothing else may connect
    "innodb_buffer_pool_size": "1024M",
    "innodb_log_file_size": "64M",
    "innodb_lock_wait_timeout": "900",
    "max_allowed_packet": "64M",
}
# Every tenant's QOS refuses at submit a job that could never fit its limits (Slurm treats
# Grp limits as Max limits for DenyOnLimit), instead of leaving it pending forever.
QOS_FLAGS = "DenyOnLimit"
PASSWORD_BYTES = 24


@dataclass(frozen=True)
class Database:
    """Where slurmdbd keeps its tables; ``on_head``: clusterkit runs this MariaDB itself."""

    host: str
    port: int
    user: str
    name: str
    on_head: bool

    @property
    def label(self) -> str:
        """How messages name the database (never with its password)."""
        return f"{self.user}@{self.host}:{self.port}/{self.name}"


def playbook_vars(spec: ClusterSpec, *, password_src: str, files: dict[str, str]) -> dict[str, Any]:
    """The accounting role's inputs (``files``: the rendered files' paths by name)."""
    if not spec.accounting.enabled:
        return {"ck_accounting": False}
    db = database(spec)
    return {
        "ck_accounting": True,
        "ck_database_on_head": db.on_head,
        "ck_database": {
            "host": db.host, "port": db.port, "user": db.user, "name": db.name,
            "label": db.label,
        },
        "ck_db_password_src": password_src,
        "ck_mariadb_conf": MARIADB_CONF_DIRECT,
        "ck_mariadbd_argv": list(MARIADBD_ARGV),
        **{f"ck_{name}_src": path for name, path in files.items()},
    }  # fmt: skip


def new_password() -> str:
    """A password for the head's database user, made once per cluster."""
    return secrets.token_urlsafe(PASSWORD_BYTES)


def database(spec: ClusterSpec) -> Database:
    """The spec's external database, else MariaDB on the head (reached through its socket)."""
    external = spec.accounting.database
    if external is None:
        return Database("localhost", DATABASE_PORT, DATABASE_USER, DATABASE_NAME, on_head=True)
    return Database(external.host, external.port, external.user, external.name, on_head=False)


def slurmdbd_settings(spec: ClusterSpec, head: str, password: str) -> dict[str, str]:
    """slurmdbd.conf's settings; the file holds the password: it is 0600, owned by slurm."""
    db = database(spec)
    return {
        "AuthType": "auth/munge",
        "DbdHost": head,
        "DbdPort": str(SLURMDBD_PORT),
        "SlurmUser": "slurm",
        "StorageType": "accounting_storage/mysql",
        "StorageHost": db.host,
        "StoragePort": str(db.port),
        "StorageUser": db.user,
        "StoragePass": password,
        "StorageLoc": db.name,
        # sacct and sreport show a user its own jobs, usage and associations only (squeue's
        # counterpart is slurm.conf's PrivateData with the MCS labels).
        "PrivateData": "accounts,jobs,usage,users",
        "LogFile": SLURMDBD_LOG,
        "PidFile": SLURMDBD_PID,
        "DebugLevel": "info",
    }


def slurmdbd_conf(spec: ClusterSpec, head: str, password: str) -> str:
    return render(
        "slurm/slurmdbd.conf.j2",
        cluster=spec.name,
        settings=slurmdbd_settings(spec, head, password),
    )


def mariadb_conf(spec: ClusterSpec) -> str:
    """The head's MariaDB settings (a drop-in under Debian's own configuration)."""
    return render("accounting/mariadb.cnf.j2", cluster=spec.name, settings=MARIADB_SETTINGS)


def database_init_sql(spec: ClusterSpec, password: str) -> str:
    """Makes the database and its user on the head's MariaDB; run again, it changes nothing
    but the password (which it sets to the cluster's own every time)."""
    db = database(spec)
    return render(
        "accounting/init.sql.j2",
        database=db.name,
        user=db.user,
        password=_sql_string(password),
    )


def _sql_string(value: str) -> str:
    """A SQL string literal; generated passwords hold no quote, given ones may."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


# ---------------------------------------------------------------------------------------------
# Accounts, QOS and users


def tenant_names(spec: ClusterSpec) -> list[str]:
    """Every account clusterkit makes: the tenants, and ``default`` for users in none."""
    names = [t.name for t in spec.tenants]
    if any(tenant_of(spec, u.name) == DEFAULT_TENANT for u in spec.users):
        names.append(DEFAULT_TENANT)
    return names


def billing_limit(budget: float | None) -> str:
    """``GrpTRESMins`` of a budget in currency units; ``-1`` clears one the spec dropped."""
    return f"billing={budget_minutes(budget) if budget is not None else -1}"


def qos_limits(limits: TenantLimits, *, gpus: bool) -> dict[str, str]:
    """A tenant's limits as sacctmgr QOS settings; ``-1`` clears a limit the spec dropped.
    ``gpus``: the cluster has GPUs (Slurm knows no ``gres/gpu`` TRES otherwise). The QOS
    holds no budget (``GrpTRESMins`` cleared): with one there, Slurm would check no account's."""

    def value(v: int | None) -> str:
        return str(v) if v is not None else "-1"

    tres = {
        "cpu": limits.cpus,
        "mem": limits.mem,
        "node": limits.nodes,
        **({"gres/gpu": limits.gpus} if gpus else {}),
    }
    return {
        "GrpTRES": ",".join(f"{k}={value(v)}" for k, v in tres.items()),
        "GrpJobs": value(limits.jobs),
        "MaxJobsPerUser": value(limits.jobs_per_user),
        "GrpTRESMins": billing_limit(None),
        "Flags": QOS_FLAGS,
    }


def accounts_plan(spec: ClusterSpec) -> dict[str, Any]:
    """``/etc/clusterkit/accounts.json``: what ``ck-accounts`` makes Slurm's associations be.

    Each tenant is an account whose one QOS (of the same name) holds its limits and whose
    association holds its budget, under one parent account that holds the cluster's budget;
    each user is in its tenant's account only. Every limit is listed, unset ones as ``-1``,
    so a limit removed from the spec is removed from Slurm by ``up`` again.
    """
    by_name = {t.name: t for t in spec.tenants}
    accounts = []
    gpus = any(g.gpus > 0 for g in spec.groups)
    for name in tenant_names(spec):
        tenant = by_name.get(name)
        limits = tenant.limits if tenant is not None else TenantLimits()
        budget = tenant.budget if tenant is not None else None
        accounts.append({
            "name": name,
            "description": f"tenant {name}" if tenant else "users in no tenant",
            "qos": qos_limits(limits, gpus=gpus),
            "GrpTRESMins": billing_limit(budget),
        })  # fmt: skip
    return {
        "cluster": spec.slurm_cluster_name,
        "parent": {"name": PARENT_ACCOUNT, "GrpTRESMins": billing_limit(spec.cost.budget)},
        "accounts": accounts,
        "users": [
            {"name": u.name, "account": tenant_of(spec, u.name)} for u in cluster_users(spec)
        ],
    }
