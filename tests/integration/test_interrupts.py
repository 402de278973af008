"""Ctrl-C (SIGINT) and SIGTERM stop `up` at every step within 2 s, with one line naming what
was left and the command that removes it, and exit 130 / 143; `down` then leaves nothing.

Steps run one after the other and `up` prints a line as each ends, so the signal is sent a
moment after the line of the step before: inside the step for every step that lasts (the
ones of a few milliseconds may be over by then; the message then names the step it
followed)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from clusterkit.cli.cluster import RichProgress
from clusterkit.providers.local import net
from tests.driver import CK, Clusterkit
from tests.local_residue import residue

NAME = "sigtest"
STEP_LABELS = RichProgress("local").labels
# (step, the line after which it starts, seconds to wait after it, whether it surely lasts)
STEPS = [
    ("network", f"Cluster {NAME} on local", 0.0, False),
    ("keys", STEP_LABELS["network"], 0.0, False),
    ("nodes", STEP_LABELS["keys"], 0.0, False),
    ("render", STEP_LABELS["nodes"], 0.0, False),
    ("ssh", STEP_LABELS["render"], 0.0, False),
    ("configure", STEP_LABELS["ssh"], 2.0, True),
    # The boot scripts are held from the start of configure (the nodes would else be done
    # booting before it ends), so the boot step waits for them.
    ("boot", STEP_LABELS["configure"], 0.2, True),
    ("verify", STEP_LABELS["boot"], 0.1, True),
]
SIGNALS = [(signal.SIGINT, 130), (signal.SIGTERM, 143)]
# Both signals in every step, but one each in the two that need a configured head first
# (half a minute a case): the handling is the same for both, the step's clean-up is not.
ONE_SIGNAL = {"boot": signal.SIGTERM, "verify": signal.SIGINT}
CASES = [
    pytest.param(*step, sig, code, id=f"{step[0]}-{sig.name}")
    for step in STEPS
    for sig, code in SIGNALS
    if ONE_SIGNAL.get(step[0], sig) == sig
]


def _stop_boot_scripts(sig: signal.Signals) -> list[int]:
    """Send ``sig`` to the boot scripts (user-data) running on the cluster's compute nodes."""
    nets = {os.stat(p).st_ino for p in net.NETNS_DIR.glob(f"ck.{NAME}.compute-*")}
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or os.stat(entry / "ns/net").st_ino not in nets:
                continue
            if b"/etc/clusterkit/user-data" in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), sig)
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def interrupted_up(
    ck: Clusterkit, after: str, wait: float, sig: signal.Signals, *, hold_boot: bool = False
) -> tuple[int, list[str], float]:
    """Start `up`, send ``sig`` ``wait`` s after the line containing ``after``; return the exit
    code, stderr's lines and the seconds from the signal to the exit. ``hold_boot``: the
    compute nodes' boot scripts are stopped (SIGSTOP) once the head's configuration begins,
    so the boot step surely lasts however long that configuration takes."""
    proc = subprocess.Popen(
        [CK, "up", "-f", str(ck.spec(NAME, 1))], env=ck.env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    lines = []
    held: list[int] = []
    for line in proc.stderr:
        lines.append(line.rstrip("\n"))
        if hold_boot and not held and STEP_LABELS["ssh"] in line:
            held = _stop_boot_scripts(signal.SIGSTOP)
            assert held, "no compute boot script to hold"
        if after in line:
            break
    else:
        proc.wait()
        pytest.fail(f"up ended before {after!r}:\n" + "\n".join(lines))
    time.sleep(wait)
    sent = time.monotonic()
    proc.send_signal(sig)
    try:
        code = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    took = time.monotonic() - sent
    for pid in held:  # as a node's boot goes on after up stopped; down ends it
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    lines += proc.stderr.read().splitlines()
    return code, lines, took


@pytest.mark.parametrize(("step", "after", "wait", "lasts", "sig", "code"), CASES)
def test_a_signal_stops_up_and_down_cleans_up(  # noqa: PLR0917 - one per parameter
    ck: Clusterkit, step: str, after: str, wait: float, lasts: bool, sig: signal.Signals,
    code: int,
) -> None:  # fmt: skip
    exit_code, lines, took = interrupted_up(ck, after, wait, sig, hold_boot=step == "boot")
    shown = "\n".join(lines)
    assert exit_code == code, shown
    assert took < 2.0, f"up took {took:.2f}s to stop:\n{shown}"
    last = lines[-1]
    assert last.startswith(f"error: up interrupted by {sig.name}"), shown
    assert sum("interrupted" in line for line in lines) == 1, shown
    if step == "network":
        assert last.endswith("nothing was created") or last.endswith(
            f"`clusterkit down {NAME}` removes it"
        ), shown
    else:
        assert f"left of cluster {NAME}:" in last, shown
        assert last.endswith(f"`clusterkit down {NAME}` removes it"), shown
    if lasts:
        assert f"during {STEP_LABELS[step]!r}" in last, shown
        assert f"✗ {STEP_LABELS[step]}" in shown, shown
    else:
        # A signal sent right after the first line may land before the first step begins.
        where = re.search(r"(during|after) '|before its first step", last)
        assert where or "nothing was created" in last, shown
    down = ck.run("down", NAME, check=False, timeout=120)
    assert residue(ck, NAME) == [], f"down exited {down.rc}:\n{down.stderr}"
