"""kubeconfig files for the simulated clusters."""

from __future__ import annotations

from pathlib import Path

import yaml


def kubeconfig(name: str, server: str, token: str) -> str:
    """A kubeconfig with one cluster, user and context, all named ``name``."""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server}}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name, "namespace": "default"}}],
        "current-context": name,
        "preferences": {},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def write_kubeconfig(directory: Path, name: str, server: str, token: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.kubeconfig"
    path.write_text(kubeconfig(name, server, token))
    path.chmod(0o600)  # it holds a bearer token
    return path
