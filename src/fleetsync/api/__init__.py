"""The hub's HTTP API: clusters, Kubernetes-compatible reads, health and metrics. Reads the store."""
