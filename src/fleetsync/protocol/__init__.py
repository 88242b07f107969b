"""The sync protocol: wire schema (``fleetsync.proto``), codec, and the pure rules.

``rules`` holds every decision of the protocol (the hub's apply rules, the agent's
per-stream bookkeeping, digest comparison) as a sans-I/O state machine: transports
and stores call it and never re-implement a rule.
"""
