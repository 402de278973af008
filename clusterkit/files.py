"""Where a cluster keeps what configuration reads, all under its state directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ClusterFiles:
    root: Path

    @property
    def munge_key(self) -> Path:
        return self.root / "keys" / "munge.key"

    @property
    def node_key(self) -> Path:
        return self.root / "keys" / "node_ed25519"

    @property
    def db_password(self) -> Path:
        """The password of the head's database user (made per cluster, 0400)."""
        return self.root / "keys" / "slurmdb.password"

    @property
    def slurmdbd_conf(self) -> Path:
        """slurmdbd.conf: it holds the database password (0600)."""
        return self.root / "keys" / "slurmdbd.conf"

    @property
    def db_init_sql(self) -> Path:
        """Makes the head's database and its user (holds the password, 0600)."""
        return self.root / "keys" / "db-init.sql"

    def user_key(self, user: str) -> Path:
        return self.root / "keys" / "users" / user

    def host_key(self, node: str) -> Path:
        return self.root / "keys" / "hosts" / node

    @property
    def rendered(self) -> Path:
        return self.root / "rendered"

    @property
    def slurm_conf_dir(self) -> Path:
        return self.rendered / "slurm"

    @property
    def boot_script(self) -> Path:
        return self.rendered / "compute-boot.sh"

    @property
    def nodetools_archive(self) -> Path:
        return self.rendered / "nodetools.tar.gz"

    @property
    def prolog(self) -> Path:
        return self.rendered / "prolog-slurmctld"

    @property
    def power_config(self) -> Path:
        return self.rendered / "power.json"

    @property
    def cloud_config(self) -> Path:
        return self.rendered / "cloud.json"

    @property
    def spot_config(self) -> Path:
        return self.rendered / "spot.json"

    @property
    def mariadb_conf(self) -> Path:
        return self.rendered / "mariadb.cnf"

    @property
    def accounts_plan(self) -> Path:
        return self.rendered / "accounts.json"

    @property
    def task_prolog(self) -> Path:
        return self.rendered / "task-prolog"

    @property
    def prices(self) -> Path:
        """The prices ``up`` priced the cluster at (node weights, billing, the ledger)."""
        return self.rendered / "prices.json"
