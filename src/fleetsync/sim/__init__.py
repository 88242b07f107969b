"""``fleetsync sim``: many simulated Kubernetes API servers in one process.

No real Kubernetes can run on the machines fleetsync is developed and tested on, so
the simulator speaks enough of the real API (discovery, list/watch with
resourceVersions, pagination, selectors, bookmarks, 410 Gone, tables, create/update/
patch/server-side apply/delete) that unmodified clients -- kubectl, client
libraries, the fleetsync agent -- work against it. No Python library offers a
Kubernetes-compatible API server, hence this package (in the spirit of kwok).
"""
