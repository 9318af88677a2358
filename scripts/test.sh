#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs the real clients and
# peer servers the tests drive, then checks formatting and lints, runs every unit and
# black-box test, and smoke-runs the benchmark against Berth and CNCF Distribution.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

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

step "cargo test"
cargo test --workspace --locked --no-fail-fast

step "benchmark smoke run (quick mode, debug build: checks the bench works, not speed)"
cargo build --locked -p berth -p berth-bench
target/debug/berth-bench compare --berth target/debug/berth --quick --rounds 1
