#!/usr/bin/env bash
# The test suite: set up (packages, build), then every test.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
scripts/setup.sh --test
printf '\n==> cargo test (release)\n'
cargo test --release --locked --all-targets -- --test-threads=2
