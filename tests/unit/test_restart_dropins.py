"""On systemd hosts (aws) the cluster's daemons restart whenever they die: the common role's
drop-ins, as systemd itself reads them."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

DEFAULTS = Path(__file__).parents[2] / "playbooks/roles/common/defaults/main.yml"
UNITS = Path("/lib/systemd/system")


def _defaults() -> dict[str, Any]:
    data = yaml.safe_load(DEFAULTS.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_every_cluster_daemon_gets_restart_always_without_a_start_limit() -> None:
    defaults = _defaults()
    assert set(defaults["ck_restarted_daemons"]) == {
        "munge",
        "slurmd",
        "slurmctld",
        "slurmdbd",
        "mariadb",
    }
    parser = configparser.ConfigParser()
    parser.read_string(str(defaults["ck_restart_dropin"]))
    assert parser["Service"]["Restart"] == "always"
    assert int(parser["Service"]["RestartSec"]) <= 1
    assert parser["Unit"]["StartLimitIntervalSec"] == "0"  # never given up


@pytest.mark.parametrize("daemon", ["munge", "slurmd", "slurmctld", "slurmdbd", "mariadb"])
def test_systemd_reads_the_drop_in_without_complaint(tmp_path: Path, daemon: str) -> None:
    unit = UNITS / f"{daemon}.service"
    if shutil.which("systemd-analyze") is None or not unit.exists():
        pytest.skip(f"needs systemd-analyze and Debian's {unit} (scripts/setup-host.sh)")
    shutil.copy(unit, tmp_path)
    dropins = tmp_path / f"{daemon}.service.d"
    dropins.mkdir()
    (dropins / "clusterkit-restart.conf").write_text(str(_defaults()["ck_restart_dropin"]))
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"}
    done = subprocess.run(["systemd-analyze", "verify", f"{daemon}.service"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    complaints = [line for line in done.stderr.splitlines() if "clusterkit-restart.conf" in line]
    assert done.returncode == 0 and complaints == [], done.stderr
