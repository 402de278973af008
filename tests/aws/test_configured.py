"""A configured ``up`` on aws against the moto server: it refuses a spec without a node image
before creating anything."""

from __future__ import annotations

from tests.aws.conftest import Aws


def test_a_configured_cluster_without_a_node_image_is_refused_before_anything(aws: Aws) -> None:
    spec = aws.spec("awi", static=1, dynamic=1, image_id=None)
    refused = aws.run("up", "-f", str(spec), check=False)
    assert refused.returncode == 1
    error = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert error == [
        "error: cluster awi: aws.image_id: a configured cluster needs a clusterkit node image "
        "(Slurm, munge, AWS CLI); build one with `clusterkit image build SPEC` and set "
        "aws.image_id, or use --no-configure"
    ], refused.stderr
    assert aws.tagged("awi") == {}
    assert not (aws.home / "clusters" / "awi").exists()
