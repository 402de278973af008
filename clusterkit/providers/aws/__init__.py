"""The ``aws`` provider: EC2 Spot fleets, and everything a cluster owns there, found by tag."""
