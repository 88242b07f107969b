"""kubeconfig files (for the simulated clusters, and for the demo's hub)."""

from __future__ import annotations

from pathlib import Path

import yaml


def kubeconfig(name: str, server: str, token: str, *, certificate_authority: Path | None = None) -> str:
    """A kubeconfig with one cluster, user and context, all named ``name`` (an https:// server
    verified against ``certificate_authority``)."""
    cluster: dict[str, str] = {"server": server}
    if certificate_authority is not None:
        cluster["certificate-authority"] = str(certificate_authority)
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": cluster}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name, "namespace": "default"}}],
        "current-context": name,
        "preferences": {},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def write_kubeconfig(directory: Path, name: str, server: str, token: str, *, certificate_authority: Path | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.kubeconfig"
    path.write_text(kubeconfig(name, server, token, certificate_authority=certificate_authority))
    path.chmod(0o600)  # it holds a bearer token
    return path
