"""Accounting, tenants and what work cost, on a real cluster: MariaDB and slurmdbd on the head,
tenants with limits and a budget, clients from this machine (submitit, sacct) following jobs
through it, the cost ledger against a hand computation from Slurm's own records, and the
ledger kept after ``down``.

One cluster for the module: tenant physics (alice, at most 2 CPUs at once), tenant chem (bob),
tenant lab (dave, with a budget), and carol in no tenant; two static compute nodes of 2 CPUs,
one of a cheap group and one of a dear one (prices given in the spec), and a dynamic node
(spare) that only jobs asking for it use."""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests.driver import Clusterkit
from tests.local_residue import residue

NAME = "tnt"
HEAD = f"{NAME}-head"
CHEAP, DEAR = 0.12, 0.36  # Spot, per hour
ON_DEMAND = {"c7i.large": 0.24, "c7i.xlarge": 0.72}
# 0.007 is 7,000 billing-minutes. A 2-CPU job bills 0.36 / 60 * 1e6 = 6,000 a minute in
# partition dear and 2,000 in cheap: a 3-minute job in cheap (6,000) fits the budget alone,
# not beside a running 1-minute job in dear (its 6,000 are reserved), nor after that job
# spent a third of them (20 s).
BUDGET, RAISED = 0.007, 0.05
# The cluster's budget, set late: 7,000 billing-minutes admit the 6,000 of a 3-minute job in
# cheap alone, not beside the 2,000 or more every earlier test spent together.
CLUSTER_BUDGET = 0.007
# Messages go to a webhook on this machine's address on the cluster's bridge (the subnet is
# fixed so the address is known before up makes it).
SUBNET, BRIDGE, HOOK_PORT = "10.250.231.0/24", "10.250.231.1", 18231
SPEC: dict[str, Any] = {
    "name": NAME,
    "local": {"subnet": SUBNET},
    "notify": {"webhook": f"http://{BRIDGE}:{HOOK_PORT}/hook"},
    "groups": [
        {"name": "cheap", "instance_types": ["c7i.large"], "min": 1, "max": 1, "cpus": 2,
         "memory_mb": 2048},
        {"name": "dear", "instance_types": ["c7i.xlarge"], "min": 1, "max": 1, "cpus": 2,
         "memory_mb": 2048},
        {"name": "spare", "instance_types": ["c7i.large"], "min": 0, "max": 1, "cpus": 2,
         "memory_mb": 2048, "weight": 100000},  # last: only jobs that ask for it
    ],
    "users": [{"name": "alice", "uid": 2101}, {"name": "bob", "uid": 2102},
              {"name": "carol", "uid": 2103}, {"name": "dave", "uid": 2104}],
    "tenants": [{"name": "physics", "users": ["alice"], "limits": {"cpus": 2}},
                {"name": "chem", "users": ["bob"]},
                {"name": "lab", "users": ["dave"], "budget": BUDGET}],
    "cost": {"prices": [
        {"instance_type": "c7i.large", "spot": CHEAP, "on_demand": ON_DEMAND["c7i.large"]},
        {"instance_type": "c7i.xlarge", "spot": DEAR, "on_demand": ON_DEMAND["c7i.xlarge"]},
    ]},
}  # fmt: skip


class Hook(http.server.BaseHTTPRequestHandler):
    got: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        Hook.got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


class FreeBindServer(http.server.ThreadingHTTPServer):
    """Bound to the bridge's address before the bridge exists (IP_FREEBIND)."""

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_IP, getattr(socket, "IP_FREEBIND", 15), 1)
        super().server_bind()


@pytest.fixture(scope="module")
def hook() -> Iterator[list[dict[str, Any]]]:
    server = FreeBindServer((BRIDGE, HOOK_PORT), Hook)
    Hook.got = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Hook.got
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def cluster(ck: Clusterkit, hook: list[dict[str, Any]]) -> Iterator[str]:
    ck.run("up", "-f", str(ck.write_spec(SPEC)), timeout=600)
    yield NAME
    ck.down(NAME, check=False)


def messages(hook: list[dict[str, Any]], kind: str, **fields: Any) -> list[dict[str, Any]]:
    return [m for m in hook if m["kind"] == kind and all(m.get(k) == v for k, v in fields.items())]


def wait_message(hook: list[dict[str, Any]], kind: str, **fields: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 40  # the head looks every 10 s
    while not (found := messages(hook, kind, **fields)):
        assert time.monotonic() < deadline, (kind, fields, hook)
        time.sleep(0.5)
    return found[0]


def as_user(ck: Clusterkit, user: str, command: str, node: str = HEAD, check: bool = True) -> str:
    # In the user's home, where its jobs write their output: local nodes share this
    # machine's /tmp, where an earlier cluster's slurm-N.out of another user is not writable.
    done = ck.ssh(NAME, node, f"runuser -u {user} -- sh -c 'cd && {command}'", check=check)
    return done.stdout.strip() + done.stderr.strip() * (not check)


def job_state(ck: Clusterkit, job: str) -> tuple[str, str, str]:
    """(state, reason, nodes) as root sees them."""
    out = ck.ssh(NAME, HEAD, f"squeue -h -j {job} -o '%T|%r|%N'", check=False).stdout.strip()
    state, _, rest = out.partition("|")
    reason, _, nodes = rest.partition("|")
    return state or "GONE", reason, nodes


def wait_state(ck: Clusterkit, job: str, states: set[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while (state := job_state(ck, job)[0]) not in states:
        assert time.monotonic() < deadline, f"job {job} stayed {state}, not {states}"
        time.sleep(0.5)
    return state


def accounting_dump(ck: Clusterkit) -> str:
    return ck.ssh(NAME, HEAD, "sacctmgr -n -P show assoc "
                  "format=account,user,qos,defaultqos,parentname,grptresmins; "
                  "sacctmgr -n -P show qos format=name,grptres,grpjobs,maxjobsperuser,flags,"
                  "grptresmins; "
                  "sacctmgr -n -P show user format=user,defaultaccount").stdout  # fmt: skip


def test_up_starts_the_database_and_slurmdbd_and_keeps_the_password_private(
    ck: Clusterkit, cluster: str
) -> None:
    status = ck.status(cluster)
    assert status["status"] == "ready", status
    out = ck.ssh(cluster, HEAD, "pgrep -x mariadbd; pgrep -x slurmdbd; "
                 "stat -c '%a %U' /etc/slurm/slurmdbd.conf; "
                 "ss -Hltn 'sport = :3306' | awk '{print $4}'").stdout.split()  # fmt: skip
    assert out[-3:] == ["600", "slurm", "127.0.0.1:3306"], out  # the database: the head only
    keys = ck.cluster_dir(cluster) / "keys"
    password = (keys / "slurmdb.password").read_text()
    assert len(password) >= 24
    assert (keys / "slurmdb.password").stat().st_mode & 0o777 == 0o400
    logs = [p for p in (ck.cluster_dir(cluster) / "ansible").rglob("*") if p.is_file()]
    assert logs and not [p for p in logs if password in p.read_text(errors="replace")]
    verify = ck.run("verify", cluster).stdout
    for check in ("slurmdbd", "accounting", "sacct", "tenant-isolation"):
        line = next(x for x in verify.splitlines() if f" {check} " in x)
        assert " ok " in line, line


def test_submitit_and_sacct_follow_an_array_from_this_machine(
    ck: Clusterkit, cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import submitit

    env = ck.client_env(cluster)
    for key in ("SLURM_CONF",):
        monkeypatch.setenv(key, env[key])
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit")
    executor.update_parameters(timeout_min=5, slurm_partition="all", cpus_per_task=1,
                               mem_gb=0.5)  # fmt: skip
    jobs = executor.map_array(pow, [2, 3, 4], [2, 2, 2])
    deadline = time.monotonic() + 120
    while (states := [j.state for j in jobs]) != ["COMPLETED"] * 3:  # submitit asks sacct
        assert time.monotonic() < deadline, states
        time.sleep(1)
    assert [j.result() for j in jobs] == [4, 9, 16]
    array = jobs[0].job_id.split("_")[0]
    sacct = subprocess.run(["sacct", "-X", "-n", "-P", "-j", array, "-o", "jobid,state"],
                           env=env, capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert sorted(sacct.split()) == [f"{array}_{i}|COMPLETED" for i in range(3)]


def test_a_tenant_at_its_cpu_limit_waits_while_another_runs_elsewhere(
    ck: Clusterkit, cluster: str
) -> None:
    first = as_user(ck, "alice", 'sbatch --parsable -n2 --wrap="sleep 30"')
    second = as_user(ck, "alice", 'sbatch --parsable -n2 --wrap="echo second"')
    wait_state(ck, first, {"RUNNING"})
    time.sleep(1)  # a scheduling pass that could have started the second
    assert job_state(ck, second)[:2] == ("PENDING", "QOSGrpCpuLimit")
    why = ck.run("why", cluster, second).stdout
    assert "tenant physics is at its limit of 2 CPUs at once" in why, why
    assert "2 held by its running jobs, and this job asks for 2" in why, why
    theirs = as_user(ck, "bob", 'sbatch --parsable -n1 --wrap="sleep 5"')
    wait_state(ck, theirs, {"RUNNING", "COMPLETED", "GONE"})
    assert job_state(ck, theirs)[2] != job_state(ck, first)[2]  # never beside physics' job
    # bob sees none of alice's jobs, in the queue or in accounting
    assert as_user(ck, "bob", "squeue -h -u alice -o %i") == ""
    assert first not in as_user(ck, "bob", "sacct -n -X -a -o jobid")
    ck.ssh(cluster, HEAD, f"scancel {first}")
    wait_state(ck, second, {"RUNNING", "COMPLETED", "GONE"})


def test_a_tenants_directory_is_its_own(ck: Clusterkit, cluster: str) -> None:
    wrote = as_user(ck, "alice", "srun -w cheap-st-1 sh -c \"echo mine > "
                    "/shared/tenants/physics/a && cat /shared/tenants/physics/a\"")  # fmt: skip
    assert wrote == "mine"
    denied = as_user(ck, "bob", "srun -w dear-st-1 cat /shared/tenants/physics/a",
                     check=False)  # fmt: skip
    assert "Permission denied" in denied
    outside = as_user(ck, "bob", "srun -w dear-st-1 touch /shared/bob-was-here", check=False)
    assert "Permission denied" in outside  # nothing outside homes and tenants is users'


def test_a_job_that_can_never_fit_its_tenant_is_refused_at_submit(
    ck: Clusterkit, cluster: str
) -> None:
    refused = ck.ssh(cluster, HEAD, "cd /tmp && runuser -u alice -- sbatch -n3 --wrap=true",
                     check=False)  # fmt: skip
    assert refused.rc == 1
    assert "QOSGrpCpuLimit" in refused.stderr
    assert "Job violates accounting/QOS policy" in refused.stderr


def wait_gone(ck: Clusterkit, jobs: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while any(job_state(ck, j)[0] != "GONE" for j in jobs):
        assert time.monotonic() < deadline, [job_state(ck, j) for j in jobs]
        time.sleep(0.5)


def sacct(ck: Clusterkit, jobs: list[str]) -> dict[str, dict[str, str]]:
    """Slurm's own records of ``jobs``: elapsed seconds, CPUs, node, state."""
    out = ck.ssh(NAME, HEAD, "sacct -X -n -P -o JobID,ElapsedRaw,AllocCPUS,NodeList,State "
                 f"-j {','.join(jobs)}").stdout  # fmt: skip
    rows = [line.split("|") for line in out.splitlines() if line]
    return {r[0]: {"elapsed": r[1], "cpus": r[2], "node": r[3], "state": r[4]} for r in rows}


def cost(ck: Clusterkit, *args: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(ck.run("cost", NAME, "-o", "json", *args).stdout)
    return found


def test_cheapest_nodes_first_and_each_jobs_cost_is_its_share_of_its_node(
    ck: Clusterkit, cluster: str, hook: list[dict[str, Any]]
) -> None:
    one = as_user(ck, "bob", 'sbatch --parsable -n1 --wrap="sleep 4"')
    wait_gone(ck, [one])
    two = as_user(ck, "bob", 'sbatch --parsable -n2 -w dear-st-1 --wrap="sleep 3"')
    lab = as_user(ck, "dave", 'sbatch --parsable -n1 -p cheap -t 2 --wrap="sleep 2"')
    wait_gone(ck, [two, lab])
    records = sacct(ck, [one, two, lab])
    # a 1-CPU job on an idle cluster goes to the cheapest node (the lowest weight)
    assert records[one]["node"] == "cheap-st-1", records
    price = {"cheap-st-1": (CHEAP, ON_DEMAND["c7i.large"]),
             "dear-st-1": (DEAR, ON_DEMAND["c7i.xlarge"])}  # fmt: skip
    by_hand = {}
    for job, r in records.items():
        share = int(r["cpus"]) / 2  # its CPUs over the node's (its memory share is no larger)
        spot, od = price[r["node"]]
        seconds = int(r["elapsed"])
        by_hand[job] = (share * spot * seconds / 3600, share * od * seconds / 3600)
    rows = {r["key"]: r for r in cost(ck, "--by", "job")["rows"]}
    for job, (spent, od) in by_hand.items():
        # within a cent, and here within a thousandth of one (sacct keeps whole seconds)
        assert rows[job]["spent"] == pytest.approx(spent, abs=1e-5), (job, rows[job], spent)
        assert rows[job]["on_demand"] == pytest.approx(od, abs=1e-5), (job, rows[job], od)
    tenants = {r["key"]: r for r in cost(ck, "--by", "tenant")["rows"]}
    assert tenants["lab"]["spent"] == pytest.approx(by_hand[lab][0], abs=1e-5)
    told = wait_message(hook, "job", job=one)
    assert told["schema"] == "clusterkit.notify/1" and told["cluster"] == NAME
    assert (told["user"], told["tenant"], told["states"]) == ("bob", "chem", {"COMPLETED": 1})
    summary = cost(ck)["summary"]
    # the nodes and the on-demand head have run since up: the jobs are part of what was spent
    assert summary["spent"] > summary["jobs"] > 0
    assert summary["head"] > 0 and summary["spot_savings"] > 0


def wait_reason(ck: Clusterkit, job: str, reason: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while job_state(ck, job)[:2] != ("PENDING", reason):
        assert time.monotonic() < deadline, (job, job_state(ck, job), reason)
        time.sleep(0.5)


def powered_down(ck: Clusterkit, node: str) -> bool:
    return ck.ssh(NAME, HEAD, f"sinfo -h -n {node} -o %t").stdout.strip().endswith("~")


def test_a_tenant_at_its_budget_waits_and_runs_once_up_raises_it(
    ck: Clusterkit, cluster: str, hook: list[dict[str, Any]]
) -> None:
    """Then the cluster's own budget holds every tenant's work, until up raises it too."""
    spend = as_user(ck, "dave", 'sbatch --parsable -n2 -p dear -t 1 --wrap="sleep 20"')
    wait_state(ck, spend, {"RUNNING"})
    waits = as_user(ck, "dave", 'sbatch --parsable -n2 -p spare -t 3 --wrap="echo ran"')
    other = as_user(ck, "bob", 'sbatch --parsable -n1 -p cheap --wrap="sleep 1"')
    time.sleep(2)
    assert job_state(ck, waits)[:2] == ("PENDING", "AssocGrpBillingMinutes")
    why = ck.run("why", cluster, waits).stdout
    assert "tenant lab has spent" in why and "of its budget of 0.0070" in why, why
    wait_gone(ck, [other, spend], timeout=60)  # chem is not held back; lab's job runs out
    assert sacct(ck, [spend])[spend]["state"] == "COMPLETED"
    # What it spent is counted at its end: the 3 minutes no longer fit what is left.
    time.sleep(2)
    assert job_state(ck, waits)[:2] == ("PENDING", "AssocGrpBillingMinutes")
    assert powered_down(ck, "spare-dy-1")  # no node is started for work a budget holds
    spent = wait_message(hook, "budget", tenant="lab")
    assert spent["budget_minutes"] == 7000 and spent["jobs_waiting"] >= 1
    before = accounting_dump(ck)
    raised = {**SPEC, "tenants": [*SPEC["tenants"][:2], {**SPEC["tenants"][2], "budget": RAISED}]}
    capped = {**raised, "cost": {**SPEC["cost"], "budget": CLUSTER_BUDGET}}
    ck.run("up", "-f", str(ck.write_spec(capped)), timeout=600)
    # up again changed the two budgets and nothing else of accounts, QOS and users
    assert accounting_dump(ck) == before.replace("billing=7000\n", "billing=50000\n").replace(
        "cluster||normal||root|\n", "cluster||normal||root|billing=7000\n"
    )
    # lab's raised budget has room, the cluster's has not: it holds lab's job and chem's
    theirs = as_user(ck, "bob", 'sbatch --parsable -n2 -p cheap -t 3 --wrap="echo ran"')
    wait_reason(ck, theirs, "AssocGrpBillingMinutes")
    for held in (waits, theirs):
        why = ck.run("why", cluster, held).stdout
        assert "the cluster has spent" in why and "of its budget of 0.0070 (cost.budget)" in why
    whole = wait_message(hook, "budget", scope="cluster")
    assert whole["budget_minutes"] == 7000 and whole["jobs_waiting"] >= 1
    ck.run("up", "-f", str(ck.write_spec(raised)), timeout=600)
    wait_gone(ck, [theirs], timeout=90)
    wait_gone(ck, [waits], timeout=90)
    ran = sacct(ck, [waits, theirs])
    assert ran[waits]["state"] == ran[theirs]["state"] == "COMPLETED", ran
    assert ran[waits]["node"] == "spare-dy-1"  # powered up once the budgets allowed it


# A second MariaDB on the head, on its cluster address and port 3307, in the head's own
# directory (gone with the cluster), that knows slurm@'%' with the password 'right'.
EXTERNAL_DB = r"""
d=/var/lib/clusterkit/extdb
mkdir -p $d && chown mysql: $d
mariadb-install-db --no-defaults --user=mysql --datadir=$d/data \
    --auth-root-authentication-method=socket >/dev/null
(setsid mariadbd --no-defaults --user=mysql --datadir=$d/data --socket=$d/sock --port=3307 \
    --bind-address=$ADDRESS </dev/null >$d/log 2>&1 &)
for i in $(seq 100); do
    mariadb --socket=$d/sock -e 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.2
done
mariadb --socket=$d/sock -e "CREATE USER IF NOT EXISTS slurm@'%' IDENTIFIED BY 'right';
    GRANT ALL ON slurm_acct_db.* TO slurm@'%'"
"""


def test_a_wrong_external_database_password_fails_in_one_line_and_down_cleans_up(
    ck: Clusterkit, cluster: str, tmp_path: Path
) -> None:
    """An external database (a second MariaDB on the head, on its cluster address) that
    refuses the password of the spec's secret."""
    address = next(n["address"] for n in ck.status(cluster)["nodes"] if n["name"] == HEAD)
    ck.ssh(cluster, HEAD, f"ADDRESS={address}\n{EXTERNAL_DB}")
    secret = tmp_path / "db-password"
    secret.write_text("Not-the-right-one-7f3\n")
    external = {**SPEC, "accounting": {"database": {
        "host": address, "port": 3307, "password_secret": f"file:{secret}"}}}  # fmt: skip
    failed = ck.run("up", "-f", str(ck.write_spec(external)), check=False, timeout=600)
    assert failed.rc == 1
    line = failed.stderr.strip().splitlines()[-1]
    assert f"accounting database slurm@{address}:3307/slurm_acct_db" in line, failed.stderr
    assert "Access denied" in line and "password_secret" in line
    assert "Not-the-right-one-7f3" not in failed.stderr + failed.stdout
    ck.down(cluster)
    assert residue(ck, cluster) == []


def test_cost_and_report_answer_from_the_ledger_down_kept(
    ck: Clusterkit, hook: list[dict[str, Any]]
) -> None:
    """The test before ended with `down`: the ledger it kept still answers."""
    assert not ck.cluster_dir(NAME).exists()
    (mission,) = messages(hook, "mission")
    assert mission["summary"]["jobs"] > 0 and "lab" in mission["tenants"]
    after = cost(ck, "--by", "tenant")
    assert after["saved_at"], after
    assert {"chem", "lab"} <= {r["key"] for r in after["rows"]}
    assert after["summary"]["jobs"] > 0 and after["summary"]["head"] > 0
    page = ck.home / f"{NAME}-report.html"
    ck.run("report", NAME, str(page))
    assert f'"cluster":"{NAME}"' in page.read_text()
    # down kept the report beside the ledger, made from the same ledger
    (kept,) = (ck.home / "ledgers" / NAME).glob("*.html")
    assert kept.with_suffix(".json").is_file() and f'"cluster":"{NAME}"' in kept.read_text()
    assert kept.stat().st_mode & 0o777 == 0o600
