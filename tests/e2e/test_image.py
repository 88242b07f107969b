"""The container image (deploy/image): the hub runs FROM it, an agent outside syncs to it.

The image is built with buildah as `make image` builds it, or the build already made for
these exact sources is reused (deploy/image/build.sh tags each build with a hash of its
inputs and keeps it in buildah's storage, outside the clone), so only a change of the
sources costs a build (about 1.5 minutes with the Debian root cached, 4 without).

There is no container runtime here, so the test does what one does with the image's own
configuration: the image's root (a buildah container, mounted) becomes the root of a
process in a mount namespace of its own, read-only, with a tmpfs on /tmp and a data volume
on /var/lib/fleetsync, and the image's entry point runs there as the image's user with the
image's environment. buildah and debootstrap are installed if missing (`make image-tools`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.harness import API_TOKEN, BIN, PKI, SPAWNED, Hub, Proc, Sim, free_port, http, start_agent, stop_process, wait_converged, wait_until

#: A build from nothing (the Debian root too) takes about 4 minutes here, more on a busy machine.
pytestmark = pytest.mark.timeout(900)

REPO = Path(__file__).resolve().parents[2]
BUILDAH = ("buildah", "--storage-driver", "vfs")
#: Where the image keeps its state (the hub's SQLite database): a volume in a pod.
DATA = "/var/lib/fleetsync"
#: Mounts the image's root read-only in a new mount namespace, with what a container runtime
#: adds (/dev, /proc, a tmpfs /tmp, the data volume), then runs the rest of the arguments.
ENTER = """
root=$1 data=$2; shift 2
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount -t tmpfs -o size=64m,mode=1777 tmpfs "$root/tmp"
mount --bind "$data" "$root/var/lib/fleetsync"
mount --rbind /dev "$root/dev"
mount --bind /proc "$root/proc"
exec "$@"
"""


@dataclass(frozen=True)
class ImageRoot:
    """A mounted copy of the image's root with the image's run configuration."""

    path: Path
    entrypoint: list[str]
    user: str
    env: list[str]
    workdir: str

    def argv(self, data: Path, *args: str, entrypoint: list[str] | None = None, env: dict[str, str] | None = None) -> list[str]:
        """The command that runs the entry point (or ``entrypoint``) with ``args`` as a container
        would: the image's environment and ``env``, its user, its working directory."""
        inside = ["/usr/bin/env", f"--chdir={self.workdir}", *(self.entrypoint if entrypoint is None else entrypoint), *args]
        variables = [*self.env, *(f"{k}={v}" for k, v in (env or {}).items())]
        chroot = ["env", "-i", *variables, "chroot", f"--userspec={self.user}", str(self.path), *inside]
        return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-ec", ENTER, "sh", str(self.path), str(data), *chroot]


@pytest.fixture(scope="module")
def image() -> str:
    """The image reference built (or reused) for these sources."""
    tools = subprocess.run(["make", "-C", str(REPO), "image-tools"], capture_output=True, text=True, timeout=600)
    # the image's tools come from Debian like the tests' other services: missing ones are installed, never skipped
    assert tools.returncode == 0 and shutil.which("buildah"), (
        f"make image-tools could not install buildah and debootstrap: {(tools.stdout + tools.stderr)[-500:]}"
    )
    built = subprocess.run([str(REPO / "deploy/image/build.sh")], capture_output=True, text=True, timeout=900, env={**os.environ, "PIP": str(BIN / "pip")})
    assert built.returncode == 0, f"deploy/image/build.sh failed ({built.returncode}):\n{built.stderr[-4000:]}"
    return built.stdout.strip().splitlines()[-1]


def buildah(*args: str) -> str:
    result = subprocess.run([*BUILDAH, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"buildah {' '.join(args)}: {result.stderr}"
    return result.stdout.strip()


@contextmanager
def image_root(image: str) -> Iterator[ImageRoot]:
    """A working container of ``image``, mounted; removed afterwards."""
    container = buildah("from", "--pull-never", image)
    try:
        path = Path(buildah("mount", container))
        config = json.loads(buildah("inspect", "--type", "image", image))["OCIv1"]["config"]
        yield ImageRoot(
            path=path,
            entrypoint=list(config["Entrypoint"]),
            user=str(config["User"]),
            env=list(config["Env"]),
            workdir=str(config.get("WorkingDir") or "/"),
        )
    finally:
        subprocess.run([*BUILDAH, "rm", container], capture_output=True, timeout=120)


def test_the_image_is_small_and_non_root_with_fleetsync_as_its_entry_point(image: str) -> None:
    config = json.loads(buildah("inspect", "--type", "image", image))["OCIv1"]["config"]
    uid, _, gid = str(config["User"]).partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit(), (
        f"the image's user must be a numeric non-root uid:gid (runAsNonRoot checks it), not {config['User']!r}"
    )
    assert config["Entrypoint"] == ["/opt/fleetsync/bin/fleetsync"], config["Entrypoint"]
    size = buildah("images", "--format", "{{.Size}}", image).splitlines()[0]
    number, unit = size.split()
    assert unit == "MB" and float(number) < 400, f"the image grew to {size}"


def test_hub_from_the_image_on_a_read_only_root_syncs_an_agent_outside(image: str, sim: Sim, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    # What a pod mounts (the admin token, the TLS certificate: Secrets), here on the volume.
    for name, content in (("api.token", API_TOKEN), ("tls.crt", PKI.server_cert.read_text()), ("tls.key", PKI.server_key.read_text())):
        (data / name).write_text(content)
    with image_root(image) as root:
        uid, _, gid = root.user.partition(":")
        for path in (data, *data.iterdir()):
            os.chown(path, int(uid), int(gid))

        # The root is read-only to the image's user and to root alike; the volume is writable.
        probe = subprocess.run(root.argv(data, "/probe", entrypoint=["/usr/bin/touch"]), capture_output=True, text=True, timeout=60)
        assert probe.returncode != 0 and "Read-only file system" in probe.stderr, probe
        # The image's own FLEETSYNC_DB: the store on the volume.
        created = subprocess.run(root.argv(data, "token", "create", "c1"), capture_output=True, text=True, timeout=120)
        assert created.returncode == 0, created.stderr
        token = tmp_path / "c1.token"
        token.write_text(created.stdout.strip())

        # Configured as deploy/base/hub configures a pod: `hub` and FLEETSYNC_* variables, TLS on.
        grpc_port, http_port = free_port(), free_port()
        settings = {
            "FLEETSYNC_GRPC": f"127.0.0.1:{grpc_port}",
            "FLEETSYNC_HTTP": f"127.0.0.1:{http_port}",
            "FLEETSYNC_HUB_ID": "hub-in-image",
            "FLEETSYNC_TLS_CERT": f"{DATA}/tls.crt",
            "FLEETSYNC_TLS_KEY": f"{DATA}/tls.key",
            "FLEETSYNC_ADMIN_TOKEN_FILE": f"{DATA}/api.token",
        }
        log = tmp_path / "hub-in-image.log"
        with log.open("wb") as out:
            process = subprocess.Popen(root.argv(data, "hub", env=settings), stdout=out, stderr=subprocess.STDOUT)
        hub = Hub(Proc(process, log), f"sqlite:///{DATA}/fleetsync.db", grpc_port, http_port, tls=True)
        SPAWNED.append(hub.proc)  # a failure's report shows its log
        agent = None
        try:
            wait_until(
                lambda: process.poll() is not None or http("GET", f"{hub.url}/readyz", timeout=1)[0] == 200,
                timeout=60,
                what="the hub in the image to be ready",
            )
            assert process.poll() is None, f"the hub in the image exited with {process.returncode}: {log.read_text()[-3000:]}"
            assert http("GET", f"{hub.url}/livez")[0] == 200, "the liveness probe's path"
            assert psutil.Process(process.pid).uids().effective == int(uid), "the hub does not run as the image's user"
            agent = start_agent(tmp_path, sim, "c1", hub.agent_url, token, "--types", "v1/Service,v1/Pod,v1/ConfigMap")
            wait_converged(sim, hub, "c1", types="v1/Service,v1/Pod,v1/ConfigMap", timeout=90, what="the hub in the image to hold c1's objects")
            assert (data / "fleetsync.db").stat().st_uid == int(uid), "the store is not on the volume, as the image's user"
        finally:
            if agent is not None:
                agent.stop()
            stop_process(process)
