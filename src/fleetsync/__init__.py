"""fleetsync: one consolidated, versioned, queryable view of many Kubernetes clusters."""

__version__ = "0.1.0"
