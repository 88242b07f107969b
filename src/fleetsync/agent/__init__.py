"""The agent: watches one cluster and streams its state to the hub."""
