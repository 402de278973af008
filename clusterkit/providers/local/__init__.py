"""The local provider: nodes are Linux namespaces on this machine."""
