"""A client of the instance metadata service, IMDSv2 only (a token on every request).

The same code reads EC2's service on AWS and the local cloud service's stand-in in local mode:
both answer on ``169.254.169.254``. A token is fetched with ``PUT /latest/api/token`` and
reused until shortly before it expires; a 401 (the token expired early, or the service was
restarted) fetches a new one once.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

ENDPOINT = "http://169.254.169.254"
TOKEN_TTL_SECONDS = 21600
TIMEOUT_SECONDS = 2.0


class ImdsError(Exception):
    """The metadata service did not answer, or answered with an unexpected status."""


class Imds:
    def __init__(self, endpoint: str = ENDPOINT, timeout: float = TIMEOUT_SECONDS) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.timeout = timeout
        self._token = ""
        self._token_expires = 0.0

    def get(self, path: str) -> str | None:
        """The text at ``/latest/meta-data/PATH``, or None where the service answers 404."""
        for attempt in (1, 2):
            request = urllib.request.Request(  # noqa: S310 - http to the metadata address
                f"{self.endpoint}/latest/meta-data/{path.lstrip('/')}",
                headers={"X-aws-ec2-metadata-token": self._valid_token()},
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as reply:  # noqa: S310
                    return str(reply.read().decode())
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return None
                if exc.code == 401 and attempt == 1:
                    self._token_expires = 0.0
                    continue
                raise ImdsError(f"GET {path}: HTTP {exc.code}") from exc
            except (OSError, urllib.error.URLError) as exc:
                raise ImdsError(f"GET {path}: {exc}") from exc
        raise ImdsError(f"GET {path}: token refused twice")

    def get_json(self, path: str) -> dict[str, Any] | None:
        text = self.get(path)
        if text is None:
            return None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ImdsError(f"GET {path}: not JSON: {text[:80]!r}") from exc
        return data if isinstance(data, dict) else None

    def _valid_token(self) -> str:
        if time.monotonic() < self._token_expires:
            return self._token
        request = urllib.request.Request(  # noqa: S310 - http to the metadata address
            f"{self.endpoint}/latest/api/token",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_SECONDS)},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:  # noqa: S310
                self._token = reply.read().decode()
        except (OSError, urllib.error.URLError) as exc:
            raise ImdsError(f"PUT /latest/api/token: {exc}") from exc
        # Renewed well before the end, so a request never carries a token about to lapse.
        self._token_expires = time.monotonic() + TOKEN_TTL_SECONDS - 60
        return self._token
