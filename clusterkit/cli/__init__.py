"""The ``clusterkit`` command: ``main`` is its entry point (see ``app.py``)."""

from clusterkit.cli.app import EXIT_INTERNAL, cli, main

__all__ = ["EXIT_INTERNAL", "cli", "main"]
