"""Tools for testing fleetsync deployments: a TCP proxy that partitions the network (:mod:`.proxy`).

Message-level faults (drops, duplicates, reordering, delays) are a transport layer:
:mod:`fleetsync.transport.faults`, enabled with ``fleetsync agent --inject-faults``.
"""
