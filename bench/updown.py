"""Benchmark of ``clusterkit up`` and ``clusterkit down`` on the local provider.

It measures the figures of the foundation issue, each against a baseline measured in the
same run:

1. ``up`` of a head + 8 compute nodes (namespaces, sshd, SSH trust; no Slurm) through the
   real CLI, and ``down`` of that cluster: the median of 3 runs (1 with ``--quick``).
   Targets: up <= 10 s, down <= 3 s. The baseline does the same essential work with plain
   commands and no clusterkit: a bridge ``ckbasebr0`` on 10.249.250.0/24, 9 x
   (``ip netns add ckbase.N`` + a veth on the bridge + an address), 9 x ``/usr/sbin/sshd -D``
   started inside with ``nsenter`` (one throwaway host key and config), 9 x one real ssh
   login with ``StrictHostKeyChecking=yes`` against a known_hosts it wrote; then it tears
   all of that down. The table shows clusterkit/baseline ratios for up and down.
2. 20 up/down cycles (5 with ``--quick``) of a head + 2 cluster; in 3 of them (1) ``up`` is
   killed with SIGKILL in a different step each time (the CLI prints a line to stderr as
   each step completes; the kill follows such a line), and ``clusterkit down`` follows
   every cycle. After every cycle it counts residue (target: 0): network namespaces
   ``ck.NAME.*``, links ``ck<id>*`` (``id = net.cluster_id(NAME)``), live processes outside
   the host's network namespace that are the cluster's node holders (``ck-node:NAME:``) or
   an sshd, and the state dir ``$CLUSTERKIT_HOME/clusters/NAME``. An sshd that provably
   belongs to someone else (its network namespace is mounted under another name in
   /run/netns, or its /etc/ssh is bind-mounted from another cluster's dir) is not counted,
   so clusters of other users on the machine do not show up as residue.

Run it as root from the repository root (a full run takes a few minutes):

    .venv/bin/python bench/updown.py [--quick] [--home DIR]

It prints a table (figure, measured, target, baseline, ratio, PASS/FAIL), writes
``bench/results/updown.json`` and exits 1 when a target is missed (2 when it cannot run).
Its clusters are named ``bench*`` and kept under ``--home`` (default /tmp/ck-bench-home);
everything it makes, clusters and baseline alike, is removed on exit, also on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common import CK, Result, last_line, table  # bench/ is on sys.path when run
from common import Clusterkit as Cli
from common import sh as run_timed

from clusterkit.providers.local import cgroups
from clusterkit.providers.local.net import cluster_id

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "updown.json"
NETNS_DIR = Path("/run/netns")

BIG = "bench"  # head + 8: the up/down timing
SMALL = "bench-cycle"  # head + 2: the up/down cycles
BIG_COMPUTES = 8
SMALL_COMPUTES = 2
UP_TARGET_S = 10.0
DOWN_TARGET_S = 3.0

# The CLI's step lines, in order ("✓ Network (bridge and subnet) (0.0s)").
STEPS = ("Network", "Keys", "Slurm", "Nodes", "SSH")


# ---------------------------------------------------------------------------------------------
# running commands


def sh(argv: list[str], check: bool = True, timeout: float = 60.0) -> Result:
    """Run ``argv`` with output captured and timed; with ``check`` a non-zero exit raises."""
    result = run_timed(argv, timeout=timeout)
    if check and result.rc != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {result.rc}: {result.stderr.strip()}")
    return result


def link_names() -> list[str]:
    return [str(link["ifname"]) for link in json.loads(sh(["ip", "-j", "link"]).stdout or "[]")]


def netns_inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


@dataclass(frozen=True)
class Proc:
    pid: int
    netns: int
    cmdline: str


def alive(pid: int) -> bool:
    """True when ``pid`` runs (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def processes() -> Iterator[Proc]:
    """Every live process with its network namespace inode and command line."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            netns = os.stat(f"/proc/{entry.name}/ns/net").st_ino
            raw = Path(f"/proc/{entry.name}/cmdline").read_bytes()
        except OSError:
            continue
        if alive(int(entry.name)):
            yield Proc(int(entry.name), netns, raw.replace(b"\0", b" ").decode(errors="replace"))


def kill_and_wait(pids: list[int], timeout: float = 5.0) -> None:
    """SIGKILL ``pids`` and wait (up to ``timeout``) until none of them runs."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------
# clusterkit through its CLI


@dataclass(frozen=True)
class Clusterkit:
    """The real CLI with its own ``CLUSTERKIT_HOME``; specs are written to ``specs``."""

    home: Path
    specs: Path

    def run(self, *args: str, timeout: float = 120.0) -> Result:
        return Cli(self.home).run(*args, check=False, timeout=timeout)

    def spec(self, name: str, computes: int) -> Path:
        path = self.specs / f"{name}.yaml"
        path.write_text(
            f"name: {name}\nprovider: local\n"
            f"groups:\n  - name: compute\n    min: {computes}\n    max: {computes}\n",
            encoding="utf-8",
        )
        return path

    def up(self, spec: Path) -> Result:
        # Nodes and SSH only: this benchmark measures the foundation, not Slurm's set-up.
        return self.run("up", "-f", str(spec), "--no-configure")

    def down(self, name: str) -> Result:
        return self.run("down", name)

    def popen_up(self, spec: Path) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [CK, "up", "-f", str(spec), "--no-configure"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            env={**os.environ, "CLUSTERKIT_HOME": str(self.home)},
        )

    def residue(self, name: str) -> list[str]:
        """What is left of cluster ``name`` on this machine (empty when nothing is)."""
        found = [f"netns {p.name}" for p in sorted(NETNS_DIR.glob(f"ck.{name}.*"))]
        prefix = f"ck{cluster_id(name)}"
        found += [f"link {link}" for link in link_names() if link.startswith(prefix)]
        found += [f"process {p.pid}: {p.cmdline.strip()}" for p in node_processes(name)]
        found += [f"cgroup {path}" for path in cgroups.leftovers(name)]
        if (self.home / "clusters" / name).exists():
            found.append(f"dir {self.home / 'clusters' / name}")
        return found

    def ensure_gone(self, name: str) -> None:
        """``down`` the cluster if anything of it exists (a stale run, an aborted one)."""
        if self.residue(name):
            self.down(name)


def node_processes(name: str) -> list[Proc]:
    """Live processes outside the host's netns that are node holders of ``name`` or an sshd
    not provably someone else's (see the module docstring)."""
    host = os.stat("/proc/self/ns/net").st_ino
    foreign = {
        ino
        for p in (NETNS_DIR.iterdir() if NETNS_DIR.is_dir() else [])
        if not p.name.startswith(f"ck.{name}.") and (ino := netns_inode(p)) is not None
    }
    return [p for p in processes() if p.netns != host and is_node_process(p, name, foreign)]


def is_node_process(p: Proc, name: str, foreign: set[int]) -> bool:
    if f"ck-node:{name}:" in p.cmdline:
        return True
    return "sshd" in p.cmdline and p.netns not in foreign and not other_clusters_sshd(p, name)


def other_clusters_sshd(p: Proc, name: str) -> bool:
    """True when the process's /etc/ssh is bind-mounted from a dir other than ``name``'s nodes."""
    try:
        mountinfo = Path(f"/proc/{p.pid}/mountinfo").read_text(encoding="utf-8")
    except OSError:
        return False
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] == "/etc/ssh":
            return f"/clusters/{name}/nodes/" not in fields[3]
    return False


# ---------------------------------------------------------------------------------------------
# the baseline: the same essential work with plain commands


BASE_BRIDGE = "ckbasebr0"
BASE_NET = "10.249.250"  # .0/24; .1 is the bridge
BASE_NODES = 1 + BIG_COMPUTES
SSH_WAIT_S = 20.0

SSHD_CONFIG = """\
Port 22
HostKey {work}/host_key
PidFile none
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile {work}/authorized_keys
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PrintMotd no
"""


def base_ns(i: int) -> str:
    return f"ckbase.{i}"


def base_addr(i: int) -> str:
    return f"{BASE_NET}.{i + 2}"


class Baseline:
    """9 namespace nodes with sshd, made and removed with plain commands."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.sshd: list[subprocess.Popen[bytes]] = []

    def up(self) -> None:
        self.work.mkdir(parents=True)
        self._keys_and_config()
        sh(["ip", "link", "add", BASE_BRIDGE, "type", "bridge"])
        sh(["ip", "addr", "add", f"{BASE_NET}.1/24", "dev", BASE_BRIDGE])
        sh(["ip", "link", "set", BASE_BRIDGE, "up"])
        for i in range(BASE_NODES):
            self._node_net(i)
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation dir
        for i in range(BASE_NODES):
            self._start_sshd(i)
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(self._login, range(BASE_NODES)))

    def _keys_and_config(self) -> None:
        keygens = [
            subprocess.Popen(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)])
            for path in (self.work / "host_key", self.work / "user_key")
        ]
        if any(k.wait() != 0 for k in keygens):
            raise RuntimeError("ssh-keygen failed")
        host_key = (self.work / "host_key.pub").read_text(encoding="utf-8").split()[:2]
        known = "".join(f"{base_addr(i)} {' '.join(host_key)}\n" for i in range(BASE_NODES))
        (self.work / "known_hosts").write_text(known, encoding="utf-8")
        shutil.copyfile(self.work / "user_key.pub", self.work / "authorized_keys")
        (self.work / "sshd_config").write_text(SSHD_CONFIG.format(work=self.work), encoding="utf-8")

    def _node_net(self, i: int) -> None:
        ns, veth = base_ns(i), f"ckbasev{i}"
        sh(["ip", "netns", "add", ns])
        sh(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
        sh(["ip", "link", "set", veth, "master", BASE_BRIDGE, "up"])
        sh(["ip", "-n", ns, "addr", "add", f"{base_addr(i)}/24", "dev", "eth0"])
        sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
        sh(["ip", "-n", ns, "link", "set", "lo", "up"])

    def _start_sshd(self, i: int) -> None:
        argv = ["nsenter", f"--net={NETNS_DIR / base_ns(i)}", "--"]
        argv += ["/usr/sbin/sshd", "-D", "-e", "-f", str(self.work / "sshd_config")]
        with open(self.work / f"sshd{i}.log", "wb") as log:
            self.sshd.append(
                subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            )

    def _login(self, i: int) -> None:
        """One real ssh login with strict host key checking; retried while sshd starts."""
        argv = ["ssh", "-F", "/dev/null", "-i", str(self.work / "user_key")]
        for option in (
            "IdentitiesOnly=yes",
            f"UserKnownHostsFile={self.work / 'known_hosts'}",
            "GlobalKnownHostsFile=/dev/null",
            "StrictHostKeyChecking=yes",
            "HostKeyAlgorithms=ssh-ed25519",
            "BatchMode=yes",
            "ConnectTimeout=5",
            "LogLevel=ERROR",
        ):
            argv += ["-o", option]
        argv += [f"root@{base_addr(i)}", "true"]
        deadline = time.monotonic() + SSH_WAIT_S
        while (last := sh(argv, check=False, timeout=10)).rc != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"baseline ssh to {base_addr(i)}: {last.stderr.strip()}")
            time.sleep(0.05)

    def down(self) -> None:
        for p in self.sshd:
            p.terminate()
        for p in self.sshd:
            p.wait(timeout=10)
        self.sshd.clear()
        for i in range(BASE_NODES):
            sh(["ip", "netns", "delete", base_ns(i)])
        sh(["ip", "link", "delete", BASE_BRIDGE])
        shutil.rmtree(self.work)

    def cleanup(self) -> None:
        """Remove whatever of the baseline exists, from any partial state; safe on nothing."""
        for p in self.sshd:
            p.kill()
            p.wait()
        self.sshd.clear()
        namespaces = sorted(NETNS_DIR.glob("ckbase.*")) if NETNS_DIR.is_dir() else []
        inodes = {netns_inode(path) for path in namespaces}
        kill_and_wait([p.pid for p in processes() if p.netns in inodes])
        for path in namespaces:
            sh(["ip", "netns", "delete", path.name], check=False)
        for link in link_names():
            if link.startswith("ckbase"):
                sh(["ip", "link", "delete", link], check=False)
        shutil.rmtree(self.work, ignore_errors=True)

    def timed_run(self) -> tuple[float, float]:
        """(seconds of up, seconds of down) of one full baseline run."""
        start = time.monotonic()
        self.up()
        up_s = time.monotonic() - start
        start = time.monotonic()
        self.down()
        return up_s, time.monotonic() - start


# ---------------------------------------------------------------------------------------------
# part 1: up and down of head + 8


@dataclass
class UpDown:
    ck_up: list[float] = field(default_factory=list)
    ck_down: list[float] = field(default_factory=list)
    base_up: list[float] = field(default_factory=list)
    base_down: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    residue: list[str] = field(default_factory=list)


def measure_updown(ck: Clusterkit, baseline: Baseline, reps: int) -> UpDown:
    """Baseline and clusterkit alternate, so both see the same machine load."""
    result = UpDown()
    spec = ck.spec(BIG, BIG_COMPUTES)
    for rep in range(1, reps + 1):
        base_up, base_down = baseline.timed_run()
        result.base_up.append(base_up)
        result.base_down.append(base_down)
        up = ck.up(spec)
        down = ck.down(BIG)
        for step, run in (("up", up), ("down", down)):
            if run.rc != 0:
                result.errors.append(f"rep {rep}: {step} exit {run.rc}: {last_line(run.stderr)}")
        result.ck_up.append(up.seconds)
        result.ck_down.append(down.seconds)
        result.residue += [f"rep {rep}: {r}" for r in ck.residue(BIG)]
        print(
            f"  rep {rep}/{reps}: clusterkit up {up.seconds:.2f} s, down {down.seconds:.2f} s; "
            f"baseline up {base_up:.2f} s, down {base_down:.2f} s",
            flush=True,
        )
    return result


# ---------------------------------------------------------------------------------------------
# part 2: up/down cycles, some with `up` killed


@dataclass(frozen=True)
class KillPlan:
    """SIGKILL ``up`` ``delay`` seconds after its step line ``after`` appears on stderr."""

    after: str
    delay: float


# In the order they are used: mid-nodes first (the one --quick runs), then mid-keys, mid-ssh.
KILL_PLANS = (KillPlan("Keys", 0.1), KillPlan("Network", 0.0), KillPlan("Nodes", 0.2))


@dataclass
class Cycle:
    index: int
    up_s: float  # until the kill, for a killed `up`
    up_rc: int
    killed_during: str | None  # the step `up` was in when killed; None: not killed
    down_s: float
    down_rc: int
    residue: list[str]
    errors: list[str]


def completed_step(line: str) -> str | None:
    if line[:2] in ("✓ ", "✗ "):
        return next((s for s in STEPS if line[2:].startswith(s)), None)
    return None


def killed_up(ck: Clusterkit, spec: Path, plan: KillPlan) -> tuple[float, int, str | None]:
    """Run ``up`` and kill it per ``plan``; (seconds until the kill, rc, step it was in)."""
    start = time.monotonic()
    proc = ck.popen_up(spec)
    assert proc.stderr is not None
    done: list[str] = []
    triggered = False
    for line in proc.stderr:
        step = completed_step(line)
        if step:
            done.append(step)
        if step == plan.after:
            time.sleep(plan.delay)
            proc.kill()
            triggered = True
            break
    elapsed = time.monotonic() - start
    # Lines written before the kill are still in the pipe: they tell where the kill landed.
    done += [s for s in map(completed_step, proc.stderr.read().splitlines()) if s]
    proc.stderr.close()
    rc = proc.wait()
    during = next((s for s in STEPS if s not in done), "after the last step")
    return elapsed, rc, during if triggered else None


def run_cycle(ck: Clusterkit, spec: Path, index: int, plan: KillPlan | None) -> Cycle:
    errors: list[str] = []
    if plan is None:
        up = ck.up(spec)
        up_s, up_rc, during = up.seconds, up.rc, None
        if up.rc != 0:
            errors.append(f"up exit {up.rc}: {last_line(up.stderr)}")
    else:
        up_s, up_rc, during = killed_up(ck, spec, plan)
        if during is None:
            errors.append(f"up ended (exit {up_rc}) before step {plan.after} completed")
    down = ck.down(SMALL)
    if down.rc != 0:
        errors.append(f"down exit {down.rc}: {last_line(down.stderr)}")
    return Cycle(index, up_s, up_rc, during, down.seconds, down.rc, ck.residue(SMALL), errors)


def kill_positions(cycles: int, kills: int) -> list[int]:
    """Cycle numbers (1-based) of the killed ones, spread over the run."""
    return [(k + 1) * cycles // (kills + 1) + 1 for k in range(kills)]


def measure_cycles(ck: Clusterkit, cycles: int, kills: int) -> list[Cycle]:
    spec = ck.spec(SMALL, SMALL_COMPUTES)
    plans = dict(zip(kill_positions(cycles, kills), KILL_PLANS, strict=False))
    results = []
    for i in range(1, cycles + 1):
        c = run_cycle(ck, spec, i, plans.get(i))
        what = f"killed during {c.killed_during}" if c.killed_during else f"up rc {c.up_rc}"
        print(
            f"  cycle {i:2}/{cycles}: up {c.up_s:.2f} s ({what}), down {c.down_s:.2f} s "
            f"(rc {c.down_rc}), residue {len(c.residue)}"
            + "".join(f"\n    {r}" for r in c.residue + c.errors),
            flush=True,
        )
        results.append(c)
    return results


# ---------------------------------------------------------------------------------------------
# report


@dataclass(frozen=True)
class Figure:
    name: str
    measured: float
    unit: str
    target: float  # measured must be <= target
    baseline: float | None = None

    @property
    def ratio(self) -> float | None:
        return self.measured / self.baseline if self.baseline else None

    @property
    def passed(self) -> bool:
        return self.measured <= self.target

    def row(self) -> list[str]:
        def fmt(v: float) -> str:
            return f"{v:.2f} {self.unit}" if self.unit == "s" else f"{v:g}"

        return [
            self.name,
            fmt(self.measured),
            f"<= {fmt(self.target)}",
            fmt(self.baseline) if self.baseline is not None else "-",
            f"{self.ratio:.2f}x" if self.ratio is not None else "-",
            "PASS" if self.passed else "FAIL",
        ]


def figures(updown: UpDown, cycles: list[Cycle], reps: int) -> list[Figure]:
    med = statistics.median
    killed = sum(c.killed_during is not None for c in cycles)
    return [
        Figure(f"up, head + 8 (median of {reps})", med(updown.ck_up), "s", UP_TARGET_S,
               med(updown.base_up)),
        Figure(f"down, head + 8 (median of {reps})", med(updown.ck_down), "s", DOWN_TARGET_S,
               med(updown.base_down)),
        Figure("errors, head + 8 up/down", len(updown.errors), "", 0),
        Figure("residue after head + 8 downs", len(updown.residue), "", 0),
        Figure(f"residue after {len(cycles)} cycles ({killed} killed)",
               sum(len(c.residue) for c in cycles), "", 0),
        Figure("errors in cycles", sum(len(c.errors) for c in cycles), "", 0),
    ]  # fmt: skip


def cycle_summary(cycles: list[Cycle]) -> str:
    normal = [c for c in cycles if c.killed_during is None]
    killed = [c for c in cycles if c.killed_during is not None]
    lines = []
    for label, values in (
        ("up (not killed)", [c.up_s for c in normal]),
        ("down after a full up", [c.down_s for c in normal]),
        ("down after a killed up", [c.down_s for c in killed]),
    ):
        if values:
            lines.append(
                f"  {label:24} n={len(values):2}  median {statistics.median(values):.2f} s  "
                f"min {min(values):.2f} s  max {max(values):.2f} s"
            )
    for c in killed:
        lines.append(
            f"  cycle {c.index:2}: up killed after {c.up_s:.2f} s during step "
            f"{c.killed_during}; down {c.down_s:.2f} s; residue {len(c.residue)}"
        )
    return "\n".join(lines)


def git_commit() -> str:
    """HEAD, with ``-dirty`` when clusterkit/ has uncommitted changes (they were measured)."""
    try:
        head = sh(["git", "-C", str(REPO), "rev-parse", "HEAD"]).stdout.strip()
        dirty = sh(["git", "-C", str(REPO), "status", "--porcelain", "--", "clusterkit"]).stdout
    except (RuntimeError, OSError):
        return "unknown"
    return head + ("-dirty" if dirty.strip() else "")


def write_json(
    path: Path, quick: bool, figs: list[Figure], updown: UpDown, cycles: list[Cycle]
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "benchmark": "updown",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": quick,
        "commit": git_commit(),
        "machine": {"kernel": platform.release(), "cpus": os.cpu_count()},
        "figures": [{**asdict(f), "ratio": f.ratio, "pass": f.passed} for f in figs],
        "updown": asdict(updown),
        "cycles": [asdict(c) for c in cycles],
        "passed": all(f.passed for f in figs),
    }
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 rep and 5 cycles (1 killed)")
    parser.add_argument(
        "--home", type=Path, default=Path("/tmp/ck-bench-home"), help="CLUSTERKIT_HOME to use"
    )
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write results")
    return parser.parse_args()


def measure(ck: Clusterkit, baseline: Baseline, quick: bool) -> tuple[UpDown, list[Cycle]]:
    """Both parts; whatever they make is removed when they end, however they end."""
    reps, cycles, kills = (1, 5, 1) if quick else (3, 20, 3)
    try:
        baseline.cleanup()
        for name in (BIG, SMALL):
            ck.ensure_gone(name)
        print(f"head + {BIG_COMPUTES}: {reps} x (baseline, clusterkit up, down)", flush=True)
        updown = measure_updown(ck, baseline, reps)
        print(f"head + {SMALL_COMPUTES}: {cycles} up/down cycles, {kills} killed", flush=True)
        return updown, measure_cycles(ck, cycles, kills)
    finally:
        baseline.cleanup()
        for name in (BIG, SMALL):
            ck.ensure_gone(name)


def report(updown: UpDown, cycles: list[Cycle], quick: bool, json_path: Path) -> bool:
    """Print the summary and the table, write the JSON; True when every target is met."""
    figs = figures(updown, cycles, len(updown.ck_up))
    print("\nCycles:\n" + cycle_summary(cycles))
    for problem in updown.errors + updown.residue:
        print(f"  head + {BIG_COMPUTES}: {problem}")
    header = ["figure", "measured", "target", "baseline", "ratio", "result"]
    print("\n" + table([header] + [f.row() for f in figs]))
    write_json(json_path, quick, figs, updown, cycles)
    print(f"\nresults: {json_path}")
    return all(f.passed for f in figs)


def main() -> int:
    args = parse_args()
    if os.geteuid() != 0:
        print("updown: needs root (namespaces, bridges)", file=sys.stderr)
        return 2
    # A SIGTERM unwinds like Ctrl-C does, through the clean-up of ``measure``.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    with tempfile.TemporaryDirectory(prefix="ck-bench-") as tmp:
        ck = Clusterkit(args.home, Path(tmp))
        try:
            updown, cycles = measure(ck, Baseline(Path(tmp) / "baseline"), args.quick)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            print(f"updown: cannot measure: {exc}", file=sys.stderr)
            return 2
    return 0 if report(updown, cycles, args.quick, args.json) else 1


if __name__ == "__main__":
    sys.exit(main())
