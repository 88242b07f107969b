"""The agent: watches one cluster and streams its state to the hub."""

from fleetsync.agent import leanclient

# Before any agent module imports kubernetes_asyncio: its generated classes load only if used (agent/leanclient.py).
leanclient.install()
