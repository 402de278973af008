"""The cloud backend a head's programs use: the one ``/etc/clusterkit/cloud.json`` names.

Apart from ``cloud`` (the interface and the local backend) and ``cloud_aws`` so that neither
imports the other; the aws backend (boto3) is imported only when it is the one named.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clusterkit.nodetools.cloud import CONFIG_PATH, LOCAL_SOCKET, Cloud, CloudError, LocalCloud


def load_config(path: Path = CONFIG_PATH) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def cloud_from_config(config: dict[str, Any]) -> Cloud:
    """The backend ``config`` (``/etc/clusterkit/cloud.json``) names."""
    kind = config.get("kind")
    if kind == "local":
        return LocalCloud(config.get("socket", LOCAL_SOCKET))
    if kind == "aws":
        from clusterkit.nodetools.cloud_aws import aws_cloud_from_config  # noqa: PLC0415 - boto3

        return aws_cloud_from_config(config)
    raise CloudError("UnknownProvider", f"no cloud backend {kind!r} (cloud.json kind)")
