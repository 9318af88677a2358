#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs the real clients and
# peer servers the tests drive, then checks formatting and lints, runs every unit and
# black-box test, and smoke-runs the benchmark against Berth and CNCF Distribution.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step says how long the run has taken so far, so a slow CI run shows where.
step() { printf '\n==> [%dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*" >&2; }

command -v cargo >/dev/null 2>&1 || {
    echo "test.sh: cargo is not installed; install a stable Rust toolchain (rustup) first" >&2
    exit 1
}

step "installing test dependencies"
bash scripts/install-test-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "building the container image berth:dev (static release binary + docker build)"
bash scripts/build-image.sh berth:dev

step "starting the S3 servers the storage and cluster tests use (SeaweedFS and Garage from ../shared/s3)"
SHARED_S3="$(cd .. && pwd)/shared/s3"
[ -d "$SHARED_S3" ] || { echo "test.sh: $SHARED_S3 is missing: ../shared must sit beside the checkout" >&2; exit 1; }
S3_RUN_DIR=$(mktemp -d /tmp/berth-test-s3.XXXXXX)
stop_servers() {
    bash "$SHARED_S3/stop-seaweedfs.sh" "$S3_RUN_DIR/seaweedfs" --purge >/dev/null 2>&1 || true
    bash "$SHARED_S3/stop-garage.sh" "$S3_RUN_DIR/garage" --purge >/dev/null 2>&1 || true
    bash scripts/stop-postgres.sh "$S3_RUN_DIR/postgres" --purge >/dev/null 2>&1 || true
    rm -rf "$S3_RUN_DIR"
}
trap stop_servers EXIT
for kind in seaweedfs garage; do
    mkdir -p "$S3_RUN_DIR/$kind"
    bash "$SHARED_S3/start-$kind.sh" "$S3_RUN_DIR/$kind" > "$S3_RUN_DIR/$kind.env"
done
export BERTH_TEST_S3_SEAWEEDFS_ENV="$S3_RUN_DIR/seaweedfs.env"
export BERTH_TEST_S3_GARAGE_ENV="$S3_RUN_DIR/garage.env"

step "starting the PostgreSQL server the metadata and cluster tests use"
chmod 755 "$S3_RUN_DIR"
eval "$(bash scripts/start-postgres.sh "$S3_RUN_DIR/postgres")"
export BERTH_TEST_POSTGRES_URL

step "cargo test"
cargo test --workspace --locked --no-fail-fast

step "benchmark smoke run (quick mode, debug build: checks the bench works, not speed)"
cargo build --locked -p berth -p berth-bench
target/debug/berth-bench compare --berth target/debug/berth --quick --rounds 1

step "all passed"
