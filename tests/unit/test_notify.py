"""Notifications: which jobs have ended, storms, spent budgets, and delivery to a real HTTP
server (on loopback) and a real command."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from clusterkit.nodetools import accounts, events, notify

SACCT = """\
12|12|sim|alice|physics|REQUEUED|100|200|billing=1000,cpu=2
12|12|sim|alice|physics|COMPLETED|250|310|billing=1000,cpu=2
20_1|20_1|pack-ab12|bob|chem|COMPLETED|100|160|billing=10,cpu=1
20_2|20_2|pack-ab12|bob|chem|FAILED|100|130|billing=10,cpu=1
30|30|long|carol|default|REQUEUED|100|200|billing=5
40_1|40_1|arr|carol|default|COMPLETED|100|110|billing=5
"""


def test_a_job_has_ended_when_all_its_records_ended_and_none_is_queued() -> None:
    rows = notify.parse_rows(SACCT)
    # 30 was requeued and runs again; task 40_2 of array 40 still waits.
    ended = notify.ended_jobs(rows, queued=["30", "40_2"])
    assert sorted(ended) == ["12", "20"]


def test_a_pack_arrays_end_is_a_pack_message_with_its_tasks_states() -> None:
    rows = notify.parse_rows(SACCT)
    msg = notify.job_message("demo", "20", notify.ended_jobs(rows, [])["20"])
    assert msg["schema"] == notify.SCHEMA and msg["kind"] == "pack" and msg["pack"] == "ab12"
    assert msg["states"] == {"COMPLETED": 1, "FAILED": 1} and msg["tasks"] == 2
    job = notify.job_message("demo", "12", notify.ended_jobs(rows, [])["12"])
    assert job["kind"] == "job" and job["attempts"] == 2 and job["states"] == {"COMPLETED": 1}
    # billing is millionths of the currency per minute: 1000 for 100 s, then for 60 s
    assert job["billing_minutes"] == pytest.approx(1000 * 100 / 60 + 1000 * 60 / 60)
    # sacct's own times (ISO 8601) count the same
    iso = notify.parse_rows(
        "7|7|x|alice|physics|COMPLETED|2026-12-02T10:00:00|2026-12-02T10:02:00|billing=30\n"
    )
    assert notify.job_message("demo", "7", iso)["billing_minutes"] == pytest.approx(60)


def notice(t: float, instance: str) -> dict[str, Any]:
    return {"time": events.utc(t), "source": "spot-agent", "action": "notice",
            "instance": instance, "spot_action": "terminate"}  # fmt: skip


def test_a_storm_is_enough_notices_close_together() -> None:
    found = [notice(0, "i-1"), notice(10, "i-2"), notice(20, "i-3"), notice(1000, "i-4")]
    assert notify.storms(found, count=3, seconds=60) == [["i-1", "i-2", "i-3"]]
    assert notify.storms(found, count=4, seconds=60) == []
    rebalance = {**notice(5, "i-9"), "spot_action": "rebalance"}
    assert notify.storms([*found[:2], rebalance], count=3, seconds=60) == []


# scontrol -o show assoc_mgr flags=assoc, as Slurm 22.05 printed it here (cut short): the
# cluster's account, a user's association under it, and tenant lab's account
ASSOC = (
    "Current Association Manager state\nAssociation Records\n"
    "ClusterName=bx Account=cluster UserName= Partition= Priority=0 ID=7 "
    "SharesRaw/Norm/Level/Factor=1/0.50/2/0.00 UsageRaw/Norm/Efctv=0.00/1.00/0.00 "
    "ParentAccount=root(1) Lft=2 DefAssoc=No GrpJobs=N(1) GrpWall=N(0.00) "
    "GrpTRES=cpu=N(2),mem=N(2048),billing=N(2000) "
    "GrpTRESMins=cpu=N(0),mem=N(682),energy=N(0),node=N(0),billing=3000(666),fs/disk=N(0) "
    "GrpTRESRunMins=cpu=N(2),billing=N(2000) MaxJobs= MaxTRESPJ= MinPrioThresh=\n"
    "ClusterName=bx Account=cluster UserName=bob(2102) Partition= ID=9 "
    "GrpTRESMins=cpu=N(0),billing=N(666)\n"
    "ClusterName=bx Account=lab UserName= Partition= ID=8 ParentAccount=cluster(7) "
    "GrpTRESMins=cpu=N(0),billing=10500(10490) GrpTRESRunMins=cpu=N(0),billing=N(50)\n"
    "ClusterName=bx Account=chem UserName= Partition= ID=10 ParentAccount=cluster(7) "
    "GrpTRESMins=cpu=N(0),billing=N(12) GrpTRESRunMins=cpu=N(0),billing=N(0)"
)


def test_budgets_are_read_from_the_accounts_own_lines() -> None:
    found = accounts.budgets(ASSOC)
    assert found == {
        "cluster": accounts.Budget("cluster", 3000, 666, 2000),
        "lab": accounts.Budget("lab", 10500, 10490, 50),
    }
    assert accounts.budgets(ASSOC.replace("billing=3000(666)", "billing=N(666)")).keys() == {"lab"}


def test_the_budget_holding_a_job_back_is_the_one_with_less_left() -> None:
    found = accounts.budgets(ASSOC)
    holding = accounts.holding
    assert holding("lab", found) == found["lab"]  # -40 left, against the cluster's 334
    assert holding("chem", found) == found["cluster"]  # chem has no budget of its own
    assert holding("lab", {**found, "lab": accounts.Budget("lab", 10500, 0, 0)}) == found["cluster"]
    assert holding("chem", {}) is None


class Hook(http.server.BaseHTTPRequestHandler):
    got: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        Hook.got.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[str]:
    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    Hook.got = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook"
    server.shutdown()


def test_messages_reach_a_webhook_and_a_command(hook: str, tmp_path: Path) -> None:
    out = tmp_path / "got.json"
    targets = notify.Targets(webhook=hook, command=f"cat > {out}")
    msg = notify.message("budget", "demo", tenant="physics")
    assert notify.deliver(targets, msg) == []
    assert Hook.got == [msg]
    assert json.loads(out.read_text()) == msg


def test_a_dead_webhook_or_failing_command_is_an_error_not_an_exception() -> None:
    targets = notify.Targets(webhook="http://127.0.0.1:9/none", command="exit 3")
    errors = notify.deliver(targets, notify.message("job", "demo"))
    assert len(errors) == 2 and errors[0].startswith("webhook:") and "exited 3" in errors[1]


def test_the_notifier_sends_each_thing_once_across_restarts(
    hook: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "events.jsonl"
    monkeypatch.setattr(events.record, "__defaults__", (log,))
    answers = {"sacct": SACCT, "squeue": "30\n40_2\n", "scontrol": ASSOC}

    def run(argv: list[str]) -> str:
        if argv[:3] == ["squeue", "-h", "-t"]:  # what waits, and why, by account
            return "lab|AssocGrpBillingMinutes\nops|Resources\nops|AssocGrpBillingMinutes\n"
        return answers[argv[0]]

    state = tmp_path / "notified.json"
    first = notify.Notifier("demo", notify.Targets(webhook=hook), run, state_path=state)
    first.load()
    first.tick(100.0, [])
    assert sorted(m["kind"] for m in Hook.got) == ["budget", "budget", "job", "pack"]
    whole, tenant = sorted((m for m in Hook.got if m["kind"] == "budget"), key=lambda m: m["scope"])
    assert (whole["scope"], whole["tenant"], whole["jobs_waiting"]) == ("cluster", None, 1)
    assert (whole["budget_minutes"], whole["used_minutes"]) == (3000, 666)
    assert (tenant["scope"], tenant["tenant"], tenant["used_minutes"]) == ("tenant", "lab", 10490)
    assert tenant["jobs_waiting"] == 1
    again = notify.Notifier("demo", notify.Targets(webhook=hook), run, state_path=state)
    again.load()
    again.tick(200.0, [notice(0, "i-1"), notice(1, "i-2"), notice(2, "i-3")])
    kinds = sorted(m["kind"] for m in Hook.got)
    assert kinds == ["budget", "budget", "interruption-storm", "job", "pack"]
    assert [e["action"] for e in events.read(log)] == ["sent"] * 5


def test_the_aws_head_may_publish_to_the_specs_topic_and_no_other() -> None:
    from clusterkit.providers.aws.policies import Scope, head_policy

    topic = "arn:aws:sns:eu-west-1:123456789012:ck"
    with_topic = json.loads(head_policy(Scope("c", "eu-west-1", "123456789012", "b", "b", topic)))
    publish = [s for s in with_topic["Statement"] if "sns:Publish" in str(s["Action"])]
    assert [s["Resource"] for s in publish] == [topic]
    without = json.loads(head_policy(Scope("c", "eu-west-1", "123456789012", "b", "b")))
    assert not [s for s in without["Statement"] if "sns:" in str(s["Action"])]
