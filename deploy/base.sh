#!/bin/sh
# Make the Debian bookworm base image from Debian's own packages: no container registry is
# reachable here, Debian's archive is. Cached: does nothing when the image already exists.
# Usage: deploy/base.sh [TAG]   (needs root, debootstrap and podman; `make image` runs it)
set -eu
TAG=${1:-localhost/digits-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PODMAN=${PODMAN:-podman --runtime runc}
if $PODMAN image exists "$TAG"; then
    echo "base image $TAG exists"
    exit 0
fi
ROOT=build/image/rootfs
rm -rf "$ROOT"
mkdir -p "$ROOT"
debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR"
# Security and point-release updates, as Debian's own bookworm images list them.
cat > "$ROOT/etc/apt/sources.list" <<SOURCES
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
# Keep the image small: no package lists or downloaded .debs in the base layer.
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/archives/*.deb
tar -C "$ROOT" --numeric-owner -c . | $PODMAN import --change 'CMD ["/bin/bash"]' - "$TAG"
rm -rf "$ROOT"
