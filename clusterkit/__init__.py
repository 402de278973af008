"""clusterkit: ephemeral Slurm clusters on demand (local namespaces or AWS Spot)."""

__version__ = "0.1.0"
