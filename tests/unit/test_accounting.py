"""Accounting: slurmdbd's and MariaDB's files, the accounts' plan, and what ck-accounts runs
to make slurmdbd hold that plan (on recorded ``sacctmgr -P`` answers)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from clusterkit.accounting import (
    accounts_plan,
    database,
    database_init_sql,
    mariadb_conf,
    playbook_vars,
    slurmdbd_conf,
)
from clusterkit.nodetools.accounts import PARENT_ACCOUNT, Current, qos_differs, steps, tres
from clusterkit.slurmconf import accounting_settings
from clusterkit.spec import parse_spec
from tests.unit.conftest import GoldenCheck

SPEC = parse_spec({
    "name": "demo",
    "users": [{"name": "alice", "uid": 2001}, {"name": "bob", "uid": 2002},
              {"name": "carol", "uid": 2003}],
    "tenants": [
        {"name": "physics", "users": ["alice"], "limits": {"cpus": 4, "mem": "8G", "jobs": 3}},
        {"name": "chem", "users": ["bob"], "limits": {"nodes": 1, "jobs_per_user": 2}},
    ],
})  # fmt: skip
PASSWORD = "S3cret-made-per-cluster"


def test_slurmdbd_conf_golden(golden: GoldenCheck) -> None:
    golden("slurmdbd.conf.txt", slurmdbd_conf(SPEC, "demo-head", PASSWORD))


def test_mariadb_conf_golden(golden: GoldenCheck) -> None:
    golden("mariadb.cnf.txt", mariadb_conf(SPEC))


def test_accounts_plan_golden(golden: GoldenCheck) -> None:
    golden("accounts.json", json.dumps(accounts_plan(SPEC), indent=1) + "\n")


def test_the_head_database_listens_on_the_head_only() -> None:
    assert "bind-address=127.0.0.1\n" in mariadb_conf(SPEC)
    assert database(SPEC).on_head and database(SPEC).host == "localhost"


def test_users_in_no_tenant_share_the_default_account_and_each_tenant_has_its_qos() -> None:
    plan = accounts_plan(SPEC)
    assert [a["name"] for a in plan["accounts"]] == ["physics", "chem", "default"]
    assert {u["name"]: u["account"] for u in plan["users"]} == {
        "alice": "physics", "bob": "chem", "carol": "default",
    }  # fmt: skip
    physics = plan["accounts"][0]["qos"]
    assert physics == {
        "GrpTRES": "cpu=4,mem=8192,node=-1", "GrpJobs": "3", "MaxJobsPerUser": "-1",
        "GrpTRESMins": "billing=-1", "Flags": "DenyOnLimit",
    }  # fmt: skip
    assert plan["accounts"][0]["GrpTRESMins"] == "billing=-1"  # no budget in the spec


def test_gpu_limits_exist_only_where_the_cluster_has_gpus() -> None:
    gpu = parse_spec({
        "name": "g", "groups": [{"name": "gpu", "gpus": 2}],
        "tenants": [{"name": "ml", "users": ["ckuser"], "limits": {"gpus": 1}}],
    })  # fmt: skip
    assert accounts_plan(gpu)["accounts"][0]["qos"]["GrpTRES"].endswith(",gres/gpu=1")
    assert accounting_settings(gpu, "10.0.0.2")["AccountingStorageTRES"] == "gres/gpu"
    assert "gres/gpu" not in accounts_plan(SPEC)["accounts"][0]["qos"]["GrpTRES"]


def test_the_init_sql_quotes_a_given_password() -> None:
    sql = database_init_sql(SPEC, "it's")
    assert "IDENTIFIED BY 'it''s';" in sql
    assert "CREATE DATABASE IF NOT EXISTS slurm_acct_db;" in sql


def test_no_accounting_means_no_slurmdbd_and_no_role_inputs() -> None:
    off = parse_spec({"name": "x", "accounting": {"enabled": False}})
    assert (
        accounting_settings(off, "10.0.0.2")["AccountingStorageType"] == "accounting_storage/none"
    )
    assert playbook_vars(off, password_src="/p", files={}) == {"ck_accounting": False}


def test_an_external_database_is_named_without_its_password() -> None:
    spec = parse_spec({"name": "x", "accounting": {"database": {
        "host": "db.example.org", "port": 3307, "password_secret": "file:/p"}}})  # fmt: skip
    got = playbook_vars(spec, password_src="/p", files={})
    assert got["ck_database_on_head"] is False
    assert got["ck_database"]["label"] == "slurm@db.example.org:3307/slurm_acct_db"
    assert "StorageHost=db.example.org\n" in slurmdbd_conf(spec, "x-head", PASSWORD)


# ---------------------------------------------------------------------------------------------
# ck-accounts: the difference between slurmdbd and the plan

EMPTY = Current(qos={"normal": {"GrpTRES": "", "GrpJobs": "", "MaxJobsPerUser": "",
                                "Flags": ""}}, accounts={"root": ("normal", "")},
                users={"root": frozenset({"root"})}, parents={"root": ""},
                account_mins={"root": ""})  # fmt: skip


def _as_current(plan: dict[str, object]) -> Current:
    """What slurmdbd holds once ``plan`` was applied (as ``sacctmgr -P`` prints it)."""
    accounts = plan["accounts"]
    assert isinstance(accounts, list)
    qos = {a["name"]: {
        "GrpTRES": ",".join(
            p.replace("mem=8192", "mem=8G") for p in a["qos"]["GrpTRES"].split(",")
            if not p.endswith("=-1")
        ),
        "GrpJobs": a["qos"]["GrpJobs"].replace("-1", ""),
        "MaxJobsPerUser": a["qos"]["MaxJobsPerUser"].replace("-1", ""),
        "GrpTRESMins": "" if a["qos"]["GrpTRESMins"].endswith("=-1") else a["qos"]["GrpTRESMins"],
        "Flags": a["qos"]["Flags"],
    } for a in accounts}  # fmt: skip
    users = plan["users"]
    assert isinstance(users, list)
    parent = plan["parent"]
    assert isinstance(parent, dict)

    def mins(limit: str) -> str:
        return "" if limit.endswith("=-1") else limit

    return Current(
        qos={**EMPTY.qos, **qos},
        accounts={**EMPTY.accounts, PARENT_ACCOUNT: ("normal", ""),
                  **{a["name"]: (a["name"], a["name"]) for a in accounts}},
        users={**EMPTY.users, **{u["name"]: frozenset({u["account"]}) for u in users}},
        parents={**EMPTY.parents, PARENT_ACCOUNT: "root",
                 **{a["name"]: PARENT_ACCOUNT for a in accounts}},
        account_mins={**EMPTY.account_mins, PARENT_ACCOUNT: mins(parent["GrpTRESMins"]),
                      **{a["name"]: mins(a["GrpTRESMins"]) for a in accounts}},
    )  # fmt: skip


def test_a_fresh_database_gets_the_qos_in_one_run_per_limit_set_and_the_rest_in_one_load() -> None:
    plan = accounts_plan(SPEC)
    done = steps(plan, EMPTY)
    assert [s.argv[:2] for s in done] == [("add", "qos")] * 3 + [("load", "file=/dev/stdin")]
    assert done[0].argv == (
        "add", "qos", "physics", "GrpTRES=cpu=4,mem=8192,node=-1", "GrpJobs=3",
        "MaxJobsPerUser=-1", "GrpTRESMins=billing=-1", "Flags=DenyOnLimit",
    )  # fmt: skip
    load = done[-1].load.splitlines()
    # every tenant under the one account that carries the cluster's budget
    assert load[:4] == ["Cluster - 'demo'", "Parent - 'root'",
                        "Account - 'cluster':Description='every tenant':Organization='clusterkit'",
                        "Parent - 'cluster'"]  # fmt: skip
    assert "Account - 'chem':Description='tenant chem':Organization='clusterkit':QOS='chem'" \
        ":DefaultQOS='chem'" in load  # fmt: skip
    assert load[-2:] == ["Parent - 'default'", "User - 'carol':DefaultAccount='default'"]


def test_the_same_plan_again_runs_nothing() -> None:
    plan = accounts_plan(SPEC)
    assert steps(plan, _as_current(plan)) == []


def test_a_changed_limit_modifies_only_that_qos() -> None:
    before = _as_current(accounts_plan(SPEC))
    raised = SPEC.model_copy(update={"tenants": (
        SPEC.tenants[0].model_copy(update={"limits": SPEC.tenants[0].limits.model_copy(
            update={"cpus": 8})}),
        SPEC.tenants[1],
    )})  # fmt: skip
    done = steps(accounts_plan(raised), before)
    assert [s.argv[:3] for s in done] == [("modify", "qos", "physics")]
    assert "GrpTRES=cpu=8,mem=8192,node=-1" in done[0].argv


def test_a_budget_is_billing_minutes_on_its_tenants_account_not_its_qos() -> None:
    before = _as_current(accounts_plan(SPEC))
    funded = SPEC.model_copy(update={"tenants": (
        SPEC.tenants[0].model_copy(update={"budget": 0.05}), SPEC.tenants[1],
    )})  # fmt: skip
    done = steps(accounts_plan(funded), before)
    # A billing-minute is a millionth of the currency: 0.05 is 50,000 of them.
    assert [s.describe() for s in done] == [
        "modify account physics where cluster=demo set GrpTRESMins=billing=50000"
    ]
    assert steps(accounts_plan(funded), _as_current(accounts_plan(funded))) == []


def test_a_budget_of_an_account_the_load_makes_is_set_once_it_is_made() -> None:
    funded = SPEC.model_copy(update={"tenants": (
        SPEC.tenants[0].model_copy(update={"budget": 0.05}), SPEC.tenants[1],
    )})  # fmt: skip
    done = [s.argv[:3] for s in steps(accounts_plan(funded), EMPTY)]
    assert done[-2:] == [("load", "file=/dev/stdin"), ("modify", "account", "physics")]


def test_an_old_clusters_qos_budget_is_cleared_and_moved_to_its_account() -> None:
    funded = SPEC.model_copy(update={"tenants": (
        SPEC.tenants[0].model_copy(update={"budget": 0.05}), SPEC.tenants[1],
    )})  # fmt: skip
    now = _as_current(accounts_plan(funded))
    physics = {**now.qos["physics"], "GrpTRESMins": "billing=50000", "Flags": "DenyOnLimit,NoDecay"}
    old = replace(now, qos={**now.qos, "physics": physics},
                  account_mins={**now.account_mins, "physics": ""})  # fmt: skip
    done = steps(accounts_plan(funded), old)
    # the account's budget first (it tightens), then the QOS loses its own
    assert [s.argv[:3] for s in done] == [("modify", "account", "physics"),
                                          ("modify", "qos", "physics")]  # fmt: skip
    assert "GrpTRESMins=billing=-1" in done[1].argv


def test_a_cluster_budget_is_set_on_the_parent_account_only() -> None:
    before = _as_current(accounts_plan(SPEC))
    funded = SPEC.model_copy(update={"cost": SPEC.cost.model_copy(update={"budget": 2.5})})
    done = steps(accounts_plan(funded), before)
    assert [s.describe() for s in done] == [
        "modify account cluster where cluster=demo set GrpTRESMins=billing=2500000"
    ]
    assert steps(accounts_plan(funded), _as_current(accounts_plan(funded))) == []
    # budgets that tighten come before those that loosen: nothing may start in between
    tenant = funded.model_copy(update={"tenants": (
        SPEC.tenants[0].model_copy(update={"budget": 0.05}), SPEC.tenants[1],
    )})  # fmt: skip
    raised = tenant.model_copy(update={"cost": SPEC.cost.model_copy(update={"budget": 9.0})})
    assert [s.argv[2] for s in steps(accounts_plan(raised), _as_current(accounts_plan(tenant)))
            ] == ["cluster"]  # fmt: skip
    lowered = SPEC.model_copy(update={"tenants": (
        SPEC.tenants[0].model_copy(update={"budget": 0.01}), SPEC.tenants[1],
    ), "cost": raised.cost})  # fmt: skip
    assert [s.argv[2] for s in steps(accounts_plan(lowered), _as_current(accounts_plan(tenant)))
            ] == ["physics", "cluster"]  # fmt: skip
    # dropped from the spec, it is cleared
    cleared = steps(accounts_plan(SPEC), _as_current(accounts_plan(funded)))
    assert [s.argv[-1] for s in cleared] == ["GrpTRESMins=billing=-1"]


def test_tenants_made_under_root_move_under_the_parent_account() -> None:
    """A cluster made before tenants had a parent: up again makes it and moves them."""
    now = _as_current(accounts_plan(SPEC))
    old = Current(
        qos=now.qos, users=now.users,
        accounts={k: v for k, v in now.accounts.items() if k != PARENT_ACCOUNT},
        parents={k: "root" for k in now.parents if k != PARENT_ACCOUNT},
        account_mins={k: v for k, v in now.account_mins.items() if k != PARENT_ACCOUNT},
    )  # fmt: skip
    done = [s.describe() for s in steps(accounts_plan(SPEC), old)]
    assert done[0] == (
        "load Account - 'cluster':Description='every tenant':Organization='clusterkit'"
    )
    assert done[1:] == [
        f"modify account {name} where cluster=demo set parent=cluster"
        for name in ("physics", "chem", "default")
    ]


def test_a_user_moved_to_another_tenant_leaves_its_old_account() -> None:
    before = _as_current(accounts_plan(SPEC))
    moved = SPEC.model_copy(update={"tenants": (
        SPEC.tenants[0].model_copy(update={"users": ("alice", "carol")}), SPEC.tenants[1],
    )})  # fmt: skip
    done = steps(accounts_plan(moved), before)
    assert [s.describe() for s in done] == [
        "load Parent - 'physics'; User - 'carol':DefaultAccount='physics'",
        "modify user carol set defaultaccount=physics",
        "delete user carol account=default cluster=demo",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("cpu=4,mem=2G", {"cpu": 4, "mem": 2048}), ("cpu=-1,node=2", {"node": 2}), ("", {}),
     ("mem=3000M,gres/gpu=1", {"mem": 3000, "gres/gpu": 1})],
)  # fmt: skip
def test_tres_reads_what_sacctmgr_prints(text: str, expected: dict[str, int]) -> None:
    assert tres(text) == expected


def test_unset_limits_equal_empty_ones() -> None:
    want = {"GrpTRES": "cpu=-1,mem=-1", "GrpJobs": "-1", "MaxJobsPerUser": "2",
            "Flags": "DenyOnLimit"}  # fmt: skip
    have = {"GrpTRES": "", "GrpJobs": "", "MaxJobsPerUser": "2", "Flags": "DenyOnLimit"}
    assert not qos_differs(want, have)
    assert qos_differs(want, {**have, "Flags": ""})
