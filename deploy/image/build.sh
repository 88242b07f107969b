#!/usr/bin/env bash
# Build the fleetsync container image with buildah, from Debian packages and PyPI wheels
# only (no image registry is needed): `make image` runs this.
#
#   1. A minimal Debian root (debootstrap --variant=minbase with python3 and CA
#      certificates, documentation, locales and package caches stripped) is made once and
#      kept as a tarball in $CACHE, named by a hash of what it is made from (suite, mirror,
#      packages, this script's root recipe), so a second build skips it.
#   2. fleetsync's wheel and its dependencies' are built outside the image (`pip wheel`);
#      the wheel's version is the image's.
#   3. `buildah build` (vfs storage, chroot isolation: works without a daemon, user
#      namespaces or overlayfs) runs deploy/image/Containerfile on that context.
#
# The image is tagged $IMAGE:latest, $IMAGE:VERSION and $IMAGE:inputs-HASH, HASH covering
# every input of the build (the root's key, the Containerfile, this script, pyproject.toml,
# README.md and src/). A build whose inputs-HASH tag exists is skipped: the tests and CI on
# one machine reuse the image until the sources change. FLEETSYNC_IMAGE_REBUILD=1 forces one.
#
# Prints the image reference (IMAGE:inputs-HASH) as its last line.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
HERE="$REPO/deploy/image"
CACHE=${FLEETSYNC_IMAGE_CACHE:-/var/cache/fleetsync-image}
IMAGE=${FLEETSYNC_IMAGE:-localhost/fleetsync}
PIP=${PIP:-$REPO/.venv/bin/pip}
SUITE=${DEBIAN_SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=python3,ca-certificates
# What the image installs: a hub and an agent with every store and transport.
EXTRAS=${EXTRAS:-hub,agent,postgres,mqtt,nats}
BUILDAH=(buildah --storage-driver vfs)

say() { echo "image: $*" >&2; }

for tool in buildah debootstrap; do
	command -v "$tool" >/dev/null || { say "$tool is missing: apt-get install buildah debootstrap (make image does)"; exit 1; }
done
[ -x "$PIP" ] || { say "no pip at $PIP: run make install first (or set PIP)"; exit 1; }
mkdir -p "$CACHE"
# One build at a time on this machine (parallel test workers, CI beside a developer): the
# second waits, then finds the first's image and reuses it.
exec 9>"$CACHE/build.lock"
flock 9

# ---- 1. the Debian root, cached by its inputs -------------------------------------------
# Bump ROOT_RECIPE when strip_root (or the debootstrap line) changes what the root holds.
ROOT_RECIPE=2
root_key=$(printf '%s\n' "$ROOT_RECIPE" "$SUITE" "$MIRROR" "$PACKAGES" "$(uname -m)" | sha256sum | cut -c1-16)
rootfs="$CACHE/rootfs-$SUITE-$root_key.tar"

strip_root() {
	# What a container never reads: documentation, manuals, translations, apt's package
	# lists and downloaded .debs, logs, and device nodes (the runtime provides /dev).
	local root=${1:?the root to strip}
	rm -rf "${root:?}"/usr/share/doc/* "${root:?}"/usr/share/man/* "${root:?}"/usr/share/info/* \
		"${root:?}"/usr/share/locale/* "${root:?}"/usr/share/lintian "${root:?}"/usr/share/bash-completion \
		"${root:?}"/var/cache/apt/* "${root:?}"/var/lib/apt/lists/* "${root:?}"/var/cache/debconf/*-old \
		"${root:?}"/var/log/* "${root:?}"/dev/* "${root:?}"/tmp/* "${root:?}"/root/.cache
	# The stdlib's bytecode (Debian compiles most at install), all of it now: at run time the
	# root may be read-only. One process: the chroot has no /dev/shm for a pool.
	chroot "$root" python3 -m compileall -q /usr/lib/python3.11 >/dev/null
}

if [ ! -s "$rootfs" ]; then
	say "making the Debian $SUITE root (debootstrap, about 2 minutes; cached as $rootfs)"
	work=$(mktemp -d "$CACHE/root-XXXXXX")
	trap 'rm -rf "$work"' EXIT
	debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$work/root" "$MIRROR" >"$work/debootstrap.log" 2>&1 ||
		{ say "debootstrap failed:"; tail -20 "$work/debootstrap.log" >&2; exit 1; }
	strip_root "$work/root"
	tar --numeric-owner -C "$work/root" -cf "$work/rootfs.tar" .
	mv "$work/rootfs.tar" "$rootfs"
	find "$CACHE" -maxdepth 1 -name 'rootfs-*.tar' ! -path "$rootfs" -delete  # roots of older recipes
	rm -rf "$work"
	trap - EXIT
fi

# ---- 2. has this exact build been made already? ------------------------------------------
inputs_key=$(
	{
		printf '%s\n' "$root_key" "$EXTRAS"
		inputs=(deploy/image pyproject.toml README.md src)
		[ -f "$REPO/LICENSE" ] && inputs+=(LICENSE)
		cd "$REPO" && find "${inputs[@]}" -type f \
			! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' -print0 |
			sort -z | xargs -0 sha256sum
	} | sha256sum | cut -c1-16
)
ref="$IMAGE:inputs-$inputs_key"
if [ "${FLEETSYNC_IMAGE_REBUILD:-0}" != 1 ] && "${BUILDAH[@]}" inspect --type image "$ref" >/dev/null 2>&1; then
	say "$ref is up to date (same inputs): not rebuilt"
	version=$("${BUILDAH[@]}" inspect --type image --format '{{index .OCIv1.Config.Labels "org.opencontainers.image.version"}}' "$ref")
	"${BUILDAH[@]}" tag "$ref" "$IMAGE:latest" "$IMAGE:$version"
	echo "$ref"
	exit 0
fi

# ---- 3. the context: the root and the wheels ----------------------------------------------
context=$(mktemp -d "$CACHE/context-XXXXXX")
trap 'rm -rf "$context"' EXIT
ln "$rootfs" "$context/rootfs.tar" 2>/dev/null || cp "$rootfs" "$context/rootfs.tar"
cp "$HERE/Containerfile" "$context/Containerfile"
# From a copy of the sources, so the build leaves nothing in the checkout (build/, egg-info).
mkdir "$context/source"
cp -r "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/src" "$context/source/"
[ -f "$REPO/LICENSE" ] && cp "$REPO/LICENSE" "$context/source/"
find "$context/source" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
say "building wheels (fleetsync[$EXTRAS] and pip)"
"$PIP" wheel --quiet --disable-pip-version-check --wheel-dir "$context/wheels" "$context/source[$EXTRAS]" pip >&2
# The version the wheel was built with (pyproject's, static or dynamic): the image's tag.
wheel=$(find "$context/wheels" -name 'fleetsync-*.whl' -printf '%f\n')
version=$(echo "$wheel" | cut -d- -f2)
[ -n "$version" ] || { say "no fleetsync wheel was built"; exit 1; }

# ---- 4. the image -------------------------------------------------------------------------
say "buildah build (vfs, chroot isolation) -> $ref"
"${BUILDAH[@]}" build --isolation chroot --layers=false \
	--build-arg "EXTRAS=$EXTRAS" --build-arg "VERSION=$version" \
	-f "$context/Containerfile" -t "$ref" -t "$IMAGE:latest" -t "$IMAGE:$version" "$context" >&2
# Older builds of this image (their inputs-* tags) and the build stages' images go: with vfs
# storage every layer is a full copy of the root, so they would fill the disk build by build.
for old in $("${BUILDAH[@]}" images --format '{{.Name}}:{{.Tag}}' | grep "^$IMAGE:inputs-" | grep -vx "$ref" || true); do
	"${BUILDAH[@]}" rmi "$old" >/dev/null 2>&1 || true
done
"${BUILDAH[@]}" rmi --prune >/dev/null 2>&1 || true
size=$("${BUILDAH[@]}" images --format "{{.Size}}" "$ref" 2>/dev/null | awk "NR == 1")
say "built $ref ($IMAGE:latest, $IMAGE:$version), $size"
echo "$ref"
