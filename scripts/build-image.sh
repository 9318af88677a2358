#!/usr/bin/env bash
# Builds Berth's container image `berth:dev` (or the tag given as $1): a statically linked
# release binary built here, outside Docker, then `docker build` of the FROM-scratch
# Dockerfile at the repository root. Needs no network access and no base image.
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-berth:dev}"
target_dir="${CARGO_TARGET_DIR:-target}"
triple=x86_64-unknown-linux-gnu

echo "build-image.sh: building a static berth binary (release, $triple)" >&2
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked --target "$triple" -p berth
bin="$target_dir/$triple/release/berth"

# A binary from scratch must not need a dynamic loader or shared libraries.
if ! file "$bin" | grep -q 'statically linked\|static-pie linked'; then
    echo "build-image.sh: $bin is not statically linked:" >&2
    file "$bin" >&2
    exit 1
fi

mkdir -p target/image/bin
cp "$bin" target/image/bin/berth.new
# The release profile keeps debug info; the image does not need it (52 MB -> 10 MB).
if command -v strip >/dev/null 2>&1; then
    strip --strip-debug target/image/bin/berth.new
fi
mv target/image/bin/berth.new target/image/bin/berth
# The image answers to `registry` too, as registry:2's does: the guides' cron line
# `docker exec registry registry garbage-collect /etc/docker/registry/config.yml`
# works unchanged. A symlink (COPY keeps it), so the binary is in the image once.
ln -sfn berth target/image/bin/registry
rm -f target/image/berth

# The trust store for outgoing TLS (an https proxy upstream, https webhooks): the build
# machine's Debian CA bundle (package ca-certificates), at the path the binary probes.
ca=/etc/ssl/certs/ca-certificates.crt
if [ ! -s "$ca" ]; then
    echo "build-image.sh: $ca is missing: install Debian's ca-certificates package" >&2
    exit 1
fi
cp "$ca" target/image/ca-certificates.crt

echo "build-image.sh: docker build -t $tag ." >&2
docker build -q -t "$tag" .
