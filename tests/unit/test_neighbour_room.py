"""The machine's ARP table limits grow with the nodes on it and are never lowered."""

from __future__ import annotations

from pathlib import Path

import pytest

from clusterkit.errors import ProviderError
from clusterkit.providers.local.net import ensure_neighbour_room, neighbour_entries


def limits(directory: Path, thresh2: int, thresh3: int) -> Path:
    (directory / "gc_thresh2").write_text(f"{thresh2}\n")
    (directory / "gc_thresh3").write_text(f"{thresh3}\n")
    return directory


def read(directory: Path) -> tuple[int, int]:
    return int((directory / "gc_thresh2").read_text()), int((directory / "gc_thresh3").read_text())


def test_the_kernel_defaults_hold_a_small_cluster(tmp_path: Path) -> None:
    sysctl = limits(tmp_path, 512, 1024)
    assert ensure_neighbour_room(4, sysctl) == {}
    assert read(sysctl) == (512, 1024)


def test_a_large_cluster_raises_both_limits(tmp_path: Path) -> None:
    sysctl = limits(tmp_path, 512, 1024)
    need = neighbour_entries(251)  # a head and 250 nodes: every pair may meet
    assert need > 1024
    assert ensure_neighbour_room(251, sysctl) == {"gc_thresh2": need, "gc_thresh3": 2 * need}
    assert read(sysctl) == (need, 2 * need)


def test_higher_limits_set_by_the_admin_are_kept(tmp_path: Path) -> None:
    sysctl = limits(tmp_path, 10**6, 2 * 10**6)
    assert ensure_neighbour_room(251, sysctl) == {}
    assert read(sysctl) == (10**6, 2 * 10**6)


def test_a_limit_that_cannot_be_raised_names_the_sysctl(tmp_path: Path) -> None:
    sysctl = limits(tmp_path, 512, 1024)
    (sysctl / "gc_thresh3").unlink()
    (sysctl / "gc_thresh3").mkdir()  # cannot be read as a number nor written
    with pytest.raises(ProviderError, match=r"net\.ipv4\.neigh\.default\.gc_thresh3"):
        ensure_neighbour_room(251, sysctl)
