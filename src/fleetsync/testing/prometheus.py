"""A Prometheus server of one's own (Debian's package), for tests, benchmarks and the demo.

It scrapes the given targets (e.g. the simulator's per-cluster Istio metrics) on a free
loopback port, with its data and log in a directory of the caller's, never a server that
happens to be running on the machine.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
from pathlib import Path
from typing import IO, Any


def prometheus_binary() -> str:
    """Where ``prometheus`` is; a RuntimeError saying how to install it otherwise."""
    found = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
    if not found:
        raise RuntimeError("prometheus is not installed (make install installs it: apt-get install prometheus)")
    return found


def prometheus_config(targets: dict[str, str], *, scrape_interval: str = "1s") -> dict[str, Any]:
    """A configuration with one scrape job per target (job name -> URL of a metrics endpoint)."""
    scrape_configs = []
    for job, url in targets.items():
        parts = urllib.parse.urlsplit(url)
        scrape: dict[str, Any] = {
            "job_name": job,
            "scheme": parts.scheme,
            "metrics_path": parts.path or "/metrics",
            "static_configs": [{"targets": [parts.netloc]}],
        }
        if parts.query:
            scrape["params"] = urllib.parse.parse_qs(parts.query)
        scrape_configs.append(scrape)
    # the scrape timeout may not exceed the interval (10 s by default)
    timing = {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval, "evaluation_interval": scrape_interval}
    return {"global": timing, "scrape_configs": scrape_configs}


def start_prometheus_process(
    data: Path, targets: dict[str, str], *, port: int, scrape_interval: str = "1s", log: IO[bytes] | None = None
) -> subprocess.Popen[bytes]:
    """Start Prometheus on 127.0.0.1:``port`` with its configuration and TSDB under ``data``
    (created); its output goes to ``log`` (default: ``data/prometheus.log``)."""
    data.mkdir(parents=True, exist_ok=True)
    config = data / "prometheus.yml"
    config.write_text(json.dumps(prometheus_config(targets, scrape_interval=scrape_interval), indent=2) + "\n")  # JSON is YAML
    argv = [
        prometheus_binary(),
        f"--config.file={config}",
        f"--storage.tsdb.path={data / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1d",
        "--log.level=warn",
    ]
    if log is not None:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    with (data / "prometheus.log").open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
