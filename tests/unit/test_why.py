"""``clusterkit why``: Slurm's reasons in words, with a tenant's numbers from assoc_mgr."""

from __future__ import annotations

from typing import Any

import pytest

from clusterkit.nodetools.accounts import Budget
from clusterkit.why import explain, matching, parse_counters

# `scontrol -o show assoc_mgr flags=qos qos=physics` on a live 22.05 cluster, cut short.
QOS_LINE = (
    "QOS=physics(2) UsageRaw=0.000000 GrpJobs=N(1) GrpJobsAccrue=N(0) GrpSubmitJobs=N(0) "
    "GrpWall=N(0.00) GrpTRES=cpu=2(2),mem=N(1024),energy=N(0),node=1(1),billing=N(2),"
    "fs/disk=N(0) MaxWallPJ= MaxTRESPJ= Account Limits= physics={MaxJobsPA=N(1) "
    "MaxSubmitJobsPA=N(2)} User Limits= 2101={MaxJobsPU=3(1) MaxJobsAccruePU=N(0) "
    "MaxSubmitJobsPU=N(2)}"
)


def job(**fields: Any) -> dict[str, Any]:
    base = {"job_id": 17, "job_state": "PENDING", "state_reason": "QOSGrpCpuLimit",
            "user_name": "alice", "user_id": 2101, "account": "physics", "qos": "physics",
            "nodes": "", "tres_req_str": "cpu=2,mem=2G,node=1,billing=2",
            "array_job_id": 0, "array_task_id": None, "array_task_string": ""}  # fmt: skip
    return {**base, **fields}


def test_parse_counters_reads_limits_and_use() -> None:
    got = parse_counters(QOS_LINE)
    assert got["GrpTRES"]["cpu"] == (2, 2)
    assert got["GrpTRES"]["mem"] == (None, 1024)
    assert got["GrpTRES"]["node"] == (1, 1)
    assert got["GrpJobs"][""] == (None, 1)
    assert got["MaxJobsPU:2101"][""] == (3, 1)


def test_a_job_at_its_tenants_cpu_limit_gets_the_numbers_and_the_way_out() -> None:
    e = explain(job(), parse_counters(QOS_LINE))
    assert e.limit == {"name": "cpus", "limit": 2, "in_use": 2, "asked": 2}
    assert e.text.startswith(
        "tenant physics is at its limit of 2 CPUs at once (tenants[physics].limits.cpus): "
        "2 held by its running jobs, and this job asks for 2."
    )
    assert "`clusterkit up` again" in e.text


def test_the_per_user_job_limit_reads_the_users_own_counter() -> None:
    e = explain(job(state_reason="QOSMaxJobsPerUserLimit"), parse_counters(QOS_LINE))
    assert e.limit == {"name": "jobs_per_user", "limit": 3, "in_use": 1, "asked": 1}
    assert "3 running jobs per user" in e.text


def test_memory_limits_are_in_mib() -> None:
    line = QOS_LINE.replace("mem=N(1024)", "mem=4096(3072)")
    e = explain(job(state_reason="QOSGrpMemLimit"), parse_counters(line))
    assert e.limit == {"name": "mem", "limit": 4096, "in_use": 3072, "asked": 2048}


def test_a_job_the_clusters_budget_holds_is_told_the_clusters_numbers() -> None:
    held = job(state_reason="AssocGrpBillingMinutes", account="chem", billable_tres=2000.0,
               time_limit={"set": True, "number": 1})  # fmt: skip
    e = explain(held, budget=Budget("cluster", 3000, 666, 2000))
    assert e.limit == {"name": "budget", "limit": 3000, "in_use": 666, "held": 2000,
                       "asked": 2000.0}  # fmt: skip
    assert e.text.startswith(
        "the cluster has spent 0.0007 of its budget of 0.0030 (cost.budget), and its running "
        "jobs may spend 0.0020 more; this job may cost up to 0.0020 (its time limit)."
    )


def test_a_job_its_tenants_budget_holds_names_the_tenant() -> None:
    held = job(state_reason="AssocGrpBillingMinutes", account="lab")
    e = explain(held, budget=Budget("lab", 7000, 6500, 0))
    assert e.text.startswith("tenant lab has spent 0.0065 of its budget of 0.0070 "
                             "(tenants[lab].budget). It starts")  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"state_reason": "Resources"}, "no node has room for it now"),
        ({"state_reason": "Priority"}, "jobs ahead of it in the queue go first"),
        ({"state_reason": "JobHeldUser"}, "scontrol release 17"),
        ({"state_reason": "ReqNodeNotAvail, UnavailableNodes:compute-st-1"}, "unavailable"),
        ({"state_reason": "SomethingNew"}, "Slurm's reason is SomethingNew"),
        ({"job_state": "CONFIGURING", "nodes": "compute-dy-1"},
         "its nodes (compute-dy-1) are powering up"),
        ({"job_state": "RUNNING", "nodes": "compute-st-2", "state_reason": "None"},
         "it is running on compute-st-2, not waiting"),
    ],
)  # fmt: skip
def test_other_reasons_in_words(fields: dict[str, Any], words: str) -> None:
    assert words in explain(job(**fields)).text


def test_squeue_json_lists_every_job_so_the_ids_are_matched_here() -> None:
    jobs = [job(job_id=16), job(job_id=17), job(job_id=19, array_job_id=18, array_task_id=1),
            job(job_id=18, array_job_id=18, array_task_string="2-3")]  # fmt: skip
    assert [j["job_id"] for j in matching(jobs, "17")] == [17]
    assert [j["job_id"] for j in matching(jobs, "18")] == [19, 18]
    assert [j["job_id"] for j in matching(jobs, "18_1")] == [19]
    assert [j["job_id"] for j in matching(jobs, "18_3")] == [18]
    assert matching(jobs, "18_4") == []
    assert explain(jobs[3]).job == "18_[2-3]"
    assert matching(jobs, "20") == []
