"""``clusterkit report``: one self-contained HTML page of what a cluster cost and went through.

Everything comes from the ledger's inputs (``costs.Inputs``), so the page can be made while
the cluster runs or from the ledger ``down`` kept. The numbers are computed here; the page
carries them as JSON and draws its charts with a few lines of its own script (SVG, no
library, nothing fetched: it opens anywhere, offline). Charts:

- cost over time by tenant (cumulative; an attempt's cost spread evenly over its run);
- spent against the on-demand equivalent, the Spot savings and the interruption cost;
- interruptions and recoveries over time (a recovery: a job an interruption cut short that
  then completed), with the interruption rate and recovery success;
- node utilisation over time: CPUs held by jobs over the CPUs of the nodes alive;
- for packs: the duration histograms of their tasks and of their array elements, and their
  throughput (tasks and elements per second over the pack's span).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from clusterkit.costs import Inputs, inputs_of, kept_path, report
from clusterkit.errors import StateError
from clusterkit.ledger import INTERRUPTED, AttemptCost, Ledger
from clusterkit.render import render
from clusterkit.state import atomic_write

SAMPLES = 60  # points of each time series
BINS = 12  # bars of a duration histogram


def page_data(inputs: Inputs) -> dict[str, Any]:
    """What the page shows, as JSON-ready data."""
    ledger = inputs.build()
    start = min([x.start for x in ledger.lives] + [a.attempt.start for a in ledger.costs] or [0])
    times = _samples(start, inputs.now)
    summary = report(inputs, by="tenant", built=ledger)
    return {
        "cluster": inputs.cluster,
        "provider": inputs.provider,
        "as_of": summary["as_of"],
        "saved_at": summary["saved_at"],
        "summary": summary["summary"],
        "tenants": summary["rows"],
        "prices": summary["prices"],
        "notes": summary["notes"],
        "cost_over_time": _cost_over_time(ledger, times),
        "utilisation": _utilisation(inputs, ledger, times),
        "operations": _operations(inputs, ledger, times),
        "packs": _packs(ledger, inputs.tasks),
    }


def _samples(start: float, end: float) -> list[float]:
    if end <= start:
        return [start]
    step = (end - start) / (SAMPLES - 1)
    return [start + i * step for i in range(SAMPLES)]


def _done(cost: AttemptCost, at: float, now: float) -> float:
    """How much of ``cost`` was spent by time ``at`` (evenly over the attempt's run)."""
    start, end = cost.attempt.start, cost.attempt.end if cost.attempt.end is not None else now
    if at >= end:
        return cost.total
    if at <= start or end <= start:
        return 0.0
    return cost.total * (at - start) / (end - start)


def _cost_over_time(ledger: Ledger, times: Sequence[float]) -> list[dict[str, Any]]:
    tenants = list(dict.fromkeys(c.attempt.tenant for c in ledger.costs))
    series = []
    for tenant in tenants:
        mine = [c for c in ledger.costs if c.attempt.tenant == tenant]
        points = [[t, round(sum(_done(c, t, ledger.now) for c in mine), 6)] for t in times]
        series.append({"name": tenant, "points": points})
    return series


def _utilisation(inputs: Inputs, ledger: Ledger, times: Sequence[float]) -> list[list[float]]:
    points = []
    for t in times:
        alive = [x for x in ledger.lives if x.group and x.start <= t < (x.end or ledger.now)]
        cpus = sum(inputs.sizes[x.group].cpus for x in alive if x.group in inputs.sizes)
        held = sum(
            c.attempt.cpus
            for c in ledger.costs
            if c.attempt.start <= t < (c.attempt.end or ledger.now)
        )
        points.append([t, round(min(1.0, held / cpus), 4) if cpus else 0.0])
    return points


def _operations(inputs: Inputs, ledger: Ledger, times: Sequence[float]) -> dict[str, Any]:
    """Interruptions and recoveries over time, their rate, and how many jobs came through."""
    interruptions = sorted(x.end for x in ledger.lives if x.ended_by == INTERRUPTED and x.end)
    cut = {c.attempt.job for c in ledger.costs if c.interrupted}
    last: dict[str, AttemptCost] = {}
    for c in ledger.costs:
        if c.attempt.job in cut:
            last[c.attempt.job] = c
    recovered = sorted(
        c.attempt.end
        for c in last.values()
        if c.attempt.state == "COMPLETED" and not c.interrupted and c.attempt.end is not None
    )
    ended = [c for c in last.values() if c.attempt.end is not None and not c.interrupted]
    spot_hours = sum(x.seconds(ledger.now) for x in ledger.lives if x.capacity == "spot") / 3600
    return {
        "interruptions": _counts(interruptions, times),
        "recoveries": _counts(recovered, times),
        "interruption_count": len(interruptions),
        "interruptions_per_spot_node_hour": (
            round(len(interruptions) / spot_hours, 4) if spot_hours else None
        ),
        "jobs_interrupted": len(cut),
        "jobs_recovered": len(recovered),
        "recovery_success": round(len(recovered) / len(ended), 4) if ended else None,
    }


def _counts(when: Sequence[float], times: Sequence[float]) -> list[list[float]]:
    """How many of ``when`` fall in each interval ending at a sample time."""
    points = []
    for i, t in enumerate(times):
        before = times[i - 1] if i else -math.inf
        points.append([t, float(sum(1 for w in when if before < w <= t))])
    return points


def _packs(ledger: Ledger, tasks: Mapping[str, Sequence[float]]) -> list[dict[str, Any]]:
    packs: dict[str, list[AttemptCost]] = {}
    for c in ledger.costs:
        if c.attempt.pack and c.attempt.end is not None:
            packs.setdefault(c.attempt.pack, []).append(c)
    found = []
    for pack, runs in packs.items():
        durations = [float(c.attempt.end or 0) - c.attempt.start for c in runs]
        span = max(float(c.attempt.end or 0) for c in runs) - min(c.attempt.start for c in runs)
        done = tasks.get(pack, [])
        found.append({
            "pack": pack, "elements": len(runs), "histogram": _histogram(durations),
            "elements_per_second": round(len(runs) / span, 4) if span > 0 else None,
            "tasks": len(done), "task_histogram": _histogram(done) if done else [],
            "tasks_per_second": round(len(done) / span, 4) if done and span > 0 else None,
            "cost": round(sum(c.total for c in runs), 6),
        })  # fmt: skip
    return found


def _histogram(values: Sequence[float]) -> list[list[float]]:
    """[[bin start, count], ...] over ``BINS`` equal bins from 0 to the longest value."""
    top = max(values, default=0.0)
    if top <= 0:
        return [[0.0, float(len(values))]]
    width = top / BINS
    counts = [0] * BINS
    for v in values:
        counts[min(BINS - 1, int(v / width))] += 1
    return [[round(i * width, 3), float(n)] for i, n in enumerate(counts)]


def html(inputs: Inputs) -> str:
    """The page: one HTML file with its data, styles and script inside."""
    data = page_data(inputs)
    made = datetime.now().astimezone().isoformat(timespec="seconds")
    # </script> inside the data would end the script element early.
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return render("report/report.html.j2", data=data, payload=payload, made=made)


def keep(inputs: Inputs) -> Path:
    """At ``down``: the report of the ledger kept, beside it (``NAME/STAMP.html``)."""
    target = kept_path(inputs).with_suffix(".html")
    atomic_write(target, html(inputs), mode=0o600)
    return target


def write(name: str, path: Path | None = None) -> Path:
    """Write cluster ``name``'s report to ``path`` (default ``NAME-report.html`` here)."""
    target = path or Path(f"{name}-report.html")
    text = html(inputs_of(name, tasks=True))
    try:
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise StateError(f"{target}: cannot write the report ({exc.strerror})") from None
    return target
