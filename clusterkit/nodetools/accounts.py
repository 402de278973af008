"""``ck-accounts``: make Slurm's accounts, QOS and users what ``accounts.json`` says.

Runs on the head (the ``accounting`` role runs it after slurmctld registered with slurmdbd).
It reads what slurmdbd holds with ``sacctmgr -P``, compares it with the plan clusterkit
computed, and runs only the ``sacctmgr`` commands that close the difference, printing one
``changed: ...`` line for each. Run again on an unchanged plan it runs none and prints none,
so ``up`` again leaves accounting as it was. ``sacctmgr`` itself cannot tell (it answers
"Modified" to a modification that changed nothing), hence the comparison here.

A user moved to another tenant loses its old association (Slurm refuses while it has jobs
running: the error says so). Accounts the plan no longer names are left alone.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from clusterkit.errors import CommandError
from clusterkit.proc import run

SACCTMGR = "sacctmgr"
# Every tenant's account is a child of this one, whose association carries the cluster's
# budget (cost.budget): Slurm checks a job against its account's parents too, and a QOS
# cannot hold it (a job has one QOS, and a partition's QOS overrides the job's own limit).
# A tenant's budget is on its own account's association, not its QOS: Slurm skips every
# association's billing-minutes limit for a job whose QOS has one (acct_policy.c, measured).
PARENT_ACCOUNT = "cluster"
# Slurm's reason for a job that a budget (its tenant's or the cluster's) cannot admit.
BUDGET_REASON = "AssocGrpBillingMinutes"
# sacctmgr prints memory with a unit (mem=2G); plans hold MiB.
_UNITS = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2, "P": 1024**3}


@dataclass(frozen=True)
class Current:
    """What slurmdbd holds now, as far as the plan cares."""

    # name -> GrpTRES, GrpJobs, MaxJobsPerUser, Flags, GrpTRESMins
    qos: Mapping[str, Mapping[str, str]]
    accounts: Mapping[str, tuple[str, str]]  # account -> (qos list, default qos)
    users: Mapping[str, frozenset[str]]  # user -> its accounts
    parents: Mapping[str, str] = field(default_factory=dict)  # account -> its parent
    account_mins: Mapping[str, str] = field(default_factory=dict)  # account -> GrpTRESMins


@dataclass(frozen=True)
class Budget:
    """An account's budget as the controller counts it, in billing-minutes."""

    account: str
    limit: int
    used: int  # by jobs that ended, and what running jobs have used so far
    running: int  # what running jobs may still use, to their time limits

    @property
    def left(self) -> int:
        return self.limit - self.used - self.running


def budgets(text: str) -> dict[str, Budget]:
    """The accounts with a budget in ``scontrol -o show assoc_mgr flags=assoc``: one line per
    association, an account's own with ``UserName=`` empty."""
    found = {}
    for line in text.splitlines():
        account = re.search(r"\bAccount=(\S+) UserName= ", line)
        mins = re.search(r"\bGrpTRESMins=\S*?\bbilling=(\d+)\((\d+)", line)
        if account is None or mins is None:
            continue
        run_mins = re.search(r"\bGrpTRESRunMins=\S*?\bbilling=(?:N|\d+)\((\d+)", line)
        found[account.group(1)] = Budget(
            account.group(1), int(mins.group(1)), int(mins.group(2)),
            int(run_mins.group(1)) if run_mins else 0,
        )  # fmt: skip
    return found


def holding(account: str, found: Mapping[str, Budget]) -> Budget | None:
    """The budget that holds back a job of ``account`` (Slurm checks the account's own and
    then its parent's, the cluster's): of the two, the one with less left."""
    mine = [found[a] for a in (account, PARENT_ACCOUNT) if a in found]
    return min(mine, key=lambda b: b.left, default=None)


def _rows(*args: str) -> list[list[str]]:
    out = run([SACCTMGR, "-n", "-P", *args]).stdout
    return [line.split("|") for line in out.splitlines() if line.strip()]


def read_current(cluster: str) -> Current:
    qos = {
        row[0]: {
            "GrpTRES": row[1], "GrpJobs": row[2], "MaxJobsPerUser": row[3], "Flags": row[4],
            "GrpTRESMins": row[5],
        }
        for row in _rows(
            "show", "qos", "format=name,grptres,grpjobs,maxjobsperuser,flags,grptresmins"
        )
    }  # fmt: skip
    accounts: dict[str, tuple[str, str]] = {}
    parents: dict[str, str] = {}
    mins: dict[str, str] = {}
    users: dict[str, set[str]] = {}
    assoc = _rows(
        "show", "assoc", f"cluster={cluster}",
        "format=account,user,qos,defaultqos,parentname,grptresmins",
    )  # fmt: skip
    for account, user, qos_list, default_qos, parent, grp_mins in assoc:
        if user:
            users.setdefault(user, set()).add(account)
        else:
            accounts[account] = (qos_list, default_qos)
            parents[account], mins[account] = parent, grp_mins
    return Current(
        qos=qos, accounts=accounts, users={u: frozenset(a) for u, a in users.items()},
        parents=parents, account_mins=mins,
    )  # fmt: skip


def tres(text: str) -> dict[str, int]:
    """``cpu=4,mem=2G,node=-1`` -> ``{"cpu": 4, "mem": 2048}``: unset limits left out."""
    found: dict[str, int] = {}
    for part in filter(None, text.split(",")):
        key, _, raw = part.partition("=")
        m = re.fullmatch(r"(-?\d+)([KMGTP]?)", raw.strip())
        if m is None:
            raise ValueError(f"unexpected TRES value {part!r}")
        value = int(m.group(1))
        if value >= 0:
            found[key] = round(value * _UNITS.get(m.group(2) or "M", 1))
    return found


def _limit(raw: str) -> str:
    return "" if raw in ("", "-1") else raw


def _flags(raw: str) -> set[str]:
    return set(filter(None, raw.split(",")))


def qos_differs(want: Mapping[str, str], have: Mapping[str, str]) -> bool:
    for key in ("GrpTRES", "GrpTRESMins"):
        if tres(want.get(key, "")) != tres(have.get(key, "")):
            return True
    if _flags(want["Flags"]) != _flags(have.get("Flags", "")):
        return True
    return any(
        _limit(want[key]) != _limit(have.get(key, "")) for key in ("GrpJobs", "MaxJobsPerUser")
    )


def _loosens(want: str, have: str) -> bool:
    """Whether limit ``want`` allows more than ``have`` of some TRES (unset: no limit)."""
    new, old = tres(want), tres(have)
    return any(key not in new or (key in old and new[key] > old[key]) for key in {*new, *old})


@dataclass(frozen=True)
class Step:
    """One sacctmgr run: its arguments, and for ``load`` the file it loads."""

    argv: tuple[str, ...]
    load: str = ""

    def describe(self) -> str:
        if self.load:
            return "load " + "; ".join(self.load.splitlines()[2:])
        return " ".join(self.argv)


def _settings(limits: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(f"{k}={v}" for k, v in limits.items())


def _budget_steps(
    plan: Mapping[str, Any], current: Current
) -> tuple[list[Step], list[Step], list[Step]]:
    """The budgets that change: those that tighten, those that loosen (so that no job starts
    in between), and those of accounts the load makes (set once it has)."""
    tighten: list[Step] = []
    loosen: list[Step] = []
    after: list[Step] = []
    parent = plan["parent"]
    for name, want in [(parent["name"], parent["GrpTRESMins"]),
                       *((a["name"], a["GrpTRESMins"]) for a in plan["accounts"])]:  # fmt: skip
        have = current.account_mins.get(name, "")
        if tres(want) == tres(have):
            continue
        step = Step(("modify", "account", name, "where", f"cluster={plan['cluster']}", "set",
                     f"GrpTRESMins={want}"))  # fmt: skip
        if name not in current.accounts:
            after.append(step)
        else:
            (loosen if _loosens(want, have) else tighten).append(step)
    return tighten, loosen, after


def steps(plan: Mapping[str, Any], current: Current) -> list[Step]:
    """The sacctmgr runs that make ``current`` the plan, as few as it takes.

    Each sacctmgr run costs about half a second here whatever it does, so new QOS with the
    same limits are added by one run, and new accounts and users by one ``load``.
    """
    cluster, parent = plan["cluster"], plan["parent"]
    where = ("where", f"cluster={cluster}", "set")
    todo: list[Step] = []
    new_qos: dict[tuple[str, ...], list[str]] = {}
    load = [f"Cluster - '{cluster}'", "Parent - 'root'"]
    if parent["name"] not in current.accounts:
        load.append(f"Account - '{parent['name']}':Description='every tenant'"
                    ":Organization='clusterkit'")  # fmt: skip
    tighten, loosen, after = _budget_steps(plan, current)
    todo += tighten  # budgets that tighten first, then limits, then those that loosen
    tenants = [f"Parent - '{parent['name']}'"]
    for account in plan["accounts"]:
        name, limits = account["name"], account["qos"]
        if name not in current.qos:
            new_qos.setdefault(_settings(limits), []).append(name)
        elif qos_differs(limits, current.qos[name]):
            todo.append(Step(("modify", "qos", name, "set", *_settings(limits))))
        if name not in current.accounts:
            tenants.append(
                f"Account - '{name}':Description='{account['description']}'"
                f":Organization='clusterkit':QOS='{name}':DefaultQOS='{name}'"
            )
            continue
        if current.accounts[name] != (name, name):
            todo.append(Step((
                "modify", "account", name, *where, f"qos={name}", f"defaultqos={name}",
            )))  # fmt: skip
        if current.parents.get(name) != parent["name"]:  # made before tenants had a parent
            after.append(Step(("modify", "account", name, *where, f"parent={parent['name']}")))
    load += tenants if len(tenants) > 1 else []
    moved = []
    for user in plan["users"]:
        name, account = user["name"], user["account"]
        have = current.users.get(name, frozenset())
        if account not in have:
            load += [f"Parent - '{account}'", f"User - '{name}':DefaultAccount='{account}'"]
            if have:
                moved.append(Step(("modify", "user", name, "set", f"defaultaccount={account}")))
        moved += [
            Step(("delete", "user", name, f"account={old}", f"cluster={cluster}"))
            for old in sorted(have - {account})
        ]
    todo += loosen
    added = [Step(("add", "qos", ",".join(names), *s)) for s, names in new_qos.items()]
    loaded = [Step(("load", "file=/dev/stdin"), "\n".join(load) + "\n")] if len(load) > 2 else []
    return [*added, *todo, *loaded, *after, *moved]


def wait_for_cluster(cluster: str, seconds: float) -> None:
    """Until slurmdbd holds the cluster's row (slurmctld registers it as it starts)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if [cluster] in _rows("list", "cluster", "format=cluster"):
                return
        except CommandError:
            pass  # slurmdbd not answering yet
        if time.monotonic() >= deadline:
            raise ValueError(f"slurmdbd holds no cluster {cluster} after {seconds:g} s "
                             "(slurmctld did not register: see its log)")  # fmt: skip
        time.sleep(0.2)


def apply(plan: Mapping[str, Any]) -> list[str]:
    """Run what closes the difference; return one description per sacctmgr run."""
    done = []
    for step in steps(plan, read_current(plan["cluster"])):
        run([SACCTMGR, "-i", *step.argv], input=step.load or None)
        done.append(step.describe())
    return done


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ck-accounts",
        description="Make Slurm's accounts, QOS and users those of clusterkit's plan "
        "(prints 'changed: ...' per change; nothing when already so).",
    )
    parser.add_argument("--plan", default="/etc/clusterkit/accounts.json")
    parser.add_argument("--wait-cluster", type=float, default=0.0, metavar="SECONDS",
                        help="first wait this long at most for the cluster's row")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        with open(args.plan, encoding="utf-8") as fh:
            plan = json.load(fh)
        if args.wait_cluster > 0:
            wait_for_cluster(plan["cluster"], args.wait_cluster)
        for line in apply(plan):
            print(f"changed: {line}")
    except (OSError, ValueError, CommandError) as exc:
        print(f"ck-accounts: {exc}", file=sys.stderr)
        return 1
    return 0
