#!/usr/bin/env bash
# Build a minimal Debian bookworm image with python3, python3-venv and python3-pip,
# entirely offline from any image registry: debootstrap a root filesystem from the
# host's configured Debian mirror, then `docker import` it.
#
# Usage: scripts/build_base_image.sh [IMAGE_TAG]   (default: rlmesh/python-base:3.11)
# Environment: RLMESH_BASE_MIRROR overrides the mirror; RLMESH_BASE_SUITE the suite.
# Idempotent: does nothing when the image already exists.
set -euo pipefail

TAG="${1:-rlmesh/python-base:3.11}"
SUITE="${RLMESH_BASE_SUITE:-bookworm}"

if docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "base image $TAG already exists; skipping"
    exit 0
fi

mirror_from_sources() {
    # First URIs line of a deb822 .sources file that is not the security archive.
    local f
    for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' "$f" \
            | head -n 1
        return 0
    done
    if [ -r /etc/apt/sources.list ]; then
        awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) { print $i; exit } }' \
            /etc/apt/sources.list | head -n 1
    fi
}

MIRROR="${RLMESH_BASE_MIRROR:-$(mirror_from_sources)}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"

if ! command -v debootstrap >/dev/null 2>&1; then
    echo "debootstrap is not installed (apt-get install -y debootstrap)" >&2
    exit 1
fi

ROOTFS="$(mktemp -d /tmp/rlmesh-rootfs.XXXXXX)"
cleanup() { rm -rf "$ROOTFS"; }
trap cleanup EXIT

echo "debootstrap $SUITE from $MIRROR into $ROOTFS"
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    "$SUITE" "$ROOTFS" "$MIRROR"

# Trim caches to keep the image small.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* || true

echo "importing $ROOTFS as $TAG"
tar -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    - "$TAG"
echo "built base image $TAG"
