"""The report page, opened in a real headless browser (Chromium): it renders offline, its
charts are drawn from its own data, and a screenshot is kept as the test's artifact."""

from __future__ import annotations

import html.parser
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from clusterkit import costs, report
from clusterkit.ledger import JobAttempt, Life
from clusterkit.prices import price_book
from clusterkit.spec import parse_spec

ARTIFACTS = Path(os.environ.get("CK_ARTIFACTS", "tests/artifacts"))
SPEC = parse_spec({"name": "demo"})
NOW = 1_790_000_000.0  # a fixed moment: 2026-09-21


def inputs() -> costs.Inputs:
    t0 = NOW - 3600
    lives = [
        Life("i-h", "demo-head", "", "m7i.large", "on-demand", t0),
        Life("i-1", "compute-st-1", "compute", "c7i.2xlarge", "spot", t0, t0 + 1800,
             "interrupted"),
        Life("i-2", "compute-st-1", "compute", "c7i.2xlarge", "spot", t0 + 1850),
        Life("i-3", "compute-st-2", "compute", "c7i.2xlarge", "spot", t0),
    ]  # fmt: skip

    def run(  # noqa: PLR0917 - one row of the table below
        job: str, n: int, who: tuple[str, str], name: str, state: str, a: float, b: float,
        node: str, cpus: int,
    ) -> JobAttempt:  # fmt: skip
        return JobAttempt(job, n, *who, "all", name, state, t0 + a, t0 + b, (node,), cpus, 500)

    ann, bob = ("ann", "physics"), ("bob", "chem")
    attempts = [
        run("1", 0, ann, "sim", "REQUEUED", 100, 1790, "compute-st-1", 2),
        run("1", 1, ann, "sim", "COMPLETED", 1900, 2500, "compute-st-1", 2),
        *(run(f"2_{i}", 0, bob, "pack-p1", "COMPLETED", 200 + i, 230 + 3 * i, "compute-st-2", 1)
          for i in range(20)),
    ]  # fmt: skip
    # the pack's 20 elements ran 200 tasks: 190 of about 0.5 s and 10 of about 4 s
    tasks = {"p1": [0.5 + i % 100 / 1000 for i in range(190)] + [4.0] * 10}
    return costs.Inputs(
        "demo", "local", "2026-09-21T00:00:00+00:00", NOW, lives, attempts,
        costs.node_sizes(SPEC), price_book(SPEC), tasks=tasks,
    )  # fmt: skip


class Charts(html.parser.HTMLParser):
    """The charts of a rendered page: one dict of attributes per <svg class="chart">, and
    how many marks (lines and bars) each holds."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: list[dict[str, str | None]] = []
        self.marks: list[int] = []
        self.rendered = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "body" and found.get("data-rendered") == "yes":
            self.rendered = True
        if tag == "svg" and found.get("class") == "chart":
            self.charts.append(found)
            self.marks.append(0)
        elif tag in ("path", "rect") and found.get("class") in ("line", "bar") and self.marks:
            self.marks[-1] += 1


def browser() -> str:
    found = shutil.which("chromium")
    assert found, "chromium is needed to test the report (scripts/setup-host.sh installs it)"
    return found


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    # --no-sandbox: the tests run as root, where Chromium's sandbox refuses to start.
    argv = [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=90, check=True)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report") / "demo-report.html"
    path.write_text(report.html(inputs()), encoding="utf-8")
    return path


def test_the_page_fetches_nothing(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in text
    assert "<script src" not in text and "<link" not in text


def test_the_browser_draws_every_chart_with_data(page: Path) -> None:
    dom = chromium("--dump-dom", page.as_uri()).stdout
    charts = Charts()
    charts.feed(dom)
    assert charts.rendered, "the page's script did not finish"
    # cost by tenant, savings, interruptions/recoveries, utilisation, one pack's tasks and
    # its elements
    assert len(charts.charts) == 6, charts.charts
    assert all(int(c["data-points"] or 0) > 0 for c in charts.charts), charts.charts
    assert all(m > 0 for m in charts.marks), charts.marks
    assert charts.charts[0]["data-series"] == "2"  # physics and chem
    assert "1 of 1" in dom  # the interrupted job completed
    assert "pack p1: 200 tasks done in 20 array elements" in dom


def test_a_packs_task_histogram_counts_its_tasks_by_duration() -> None:
    (pack,) = report.page_data(inputs())["packs"]
    bars = pack["task_histogram"]
    assert sum(n for _, n in bars) == 200
    assert bars[1] == [pytest.approx(1 / 3, abs=1e-3), 190.0]  # 12 bins of 4 s / 12
    assert bars[-1][1] == 10.0
    # The ledger kept at down carries them; one kept before it did reads as none.
    kept = costs.Inputs.from_dict(inputs().as_dict())
    assert kept.tasks == inputs().tasks
    old = {k: v for k, v in inputs().as_dict().items() if k != "tasks"}
    assert costs.Inputs.from_dict(old).tasks == {}


def test_a_screenshot_is_kept(page: Path) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = (ARTIFACTS / "report.png").resolve()
    shot.unlink(missing_ok=True)
    chromium(f"--screenshot={shot}", "--window-size=1000,2600", page.as_uri())
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 50_000, "a near-empty screenshot: the page drew little"


def test_down_keeps_the_report_beside_its_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLUSTERKIT_HOME", str(tmp_path))
    ledger = costs.save(inputs())
    page = report.keep(inputs())
    assert page == ledger.with_suffix(".html") and page.stat().st_mode & 0o777 == 0o600
    assert '"cluster":"demo"' in page.read_text(encoding="utf-8")
