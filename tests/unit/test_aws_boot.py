"""What an aws compute node boots from, whatever the cluster's size: host keys in bundles
found from the node's name, and user-data that does not grow with the node count."""

from __future__ import annotations

import json
from pathlib import Path

from clusterkit.nodetools.cloud_aws import bundle_of
from clusterkit.providers.aws.provider import host_key_bundles


def test_host_keys_travel_in_a_bundle_per_500_nodes_found_from_the_name(tmp_path: Path) -> None:
    nodes = [f"compute-dy-{i}" for i in range(1, 5001)]
    for node in nodes:
        (tmp_path / node).write_text(f"key of {node}")
        (tmp_path / f"{node}-cert.pub").write_text(f"cert of {node}")
    bundles = host_key_bundles("demo", tmp_path, nodes)
    assert sorted(bundles) == sorted(f"boot/demo/host-keys/{i}.json" for i in range(10))
    seen: dict[str, dict[str, str]] = {}
    for key, text in bundles.items():
        bundle = json.loads(text)
        assert all(key == f"boot/demo/host-keys/{bundle_of(n, 10)}.json" for n in bundle)
        assert 350 <= len(bundle) <= 650  # the name's hash spreads nodes about evenly
        seen.update(bundle)
    assert seen == {n: {"key": f"key of {n}", "cert": f"cert of {n}"} for n in nodes}
    assert list(host_key_bundles("demo", tmp_path, nodes[:3])) == ["boot/demo/host-keys/0.json"]
