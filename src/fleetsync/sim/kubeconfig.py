"""kubeconfig files (for the simulated clusters, and for the demo's hub)."""

from __future__ import annotations

import urllib.parse
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


def fleet_kubeconfig(name: str, hub_url: str, token: str, clusters: list[str], *, certificate_authority: Path | None = None) -> str:
    """A kubeconfig for a hub: context ``name`` (the current one) on the fleet-wide paths, and a
    context ``name/CLUSTER`` per cluster on ``/clusters/CLUSTER`` (docs/api.md), all with one
    user, so ``kubectl --context fleetsync/c1 get pods -A`` reads one cluster with kubectl's own
    columns, without typing the hub's URL."""
    servers = {name: hub_url.rstrip("/")} | {f"{name}/{c}": f"{hub_url.rstrip('/')}/clusters/{urllib.parse.quote(c, safe='')}" for c in clusters}
    entries = []
    for context, server in servers.items():
        cluster: dict[str, str] = {"server": server}
        if certificate_authority is not None:
            cluster["certificate-authority"] = str(certificate_authority)
        entries.append({"name": context, "cluster": cluster})
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": entries,
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": name, "namespace": "default"}} for context in servers],
        "current-context": name,
        "preferences": {},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def write_fleet_kubeconfig(directory: Path, name: str, hub_url: str, token: str, clusters: list[str], *, certificate_authority: Path | None = None) -> Path:
    """:func:`fleet_kubeconfig` written to ``directory/NAME.kubeconfig``, readable by its owner only (it holds a token)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.kubeconfig"
    path.write_text(fleet_kubeconfig(name, hub_url, token, clusters, certificate_authority=certificate_authority))
    path.chmod(0o600)
    return path
