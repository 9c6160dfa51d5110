#!/usr/bin/env bash
# The test suite: set up (packages, build, models), then every test.
# In CI (CI=true) missing models or devices are failures, not skips.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
scripts/setup.sh --test
export COLLOQUY_REQUIRE_MODELS=1 COLLOQUY_REQUIRE_DEVICES=1

printf '\n==> models (PyPI, pinned, verified; cached in %s)\n' "$COLLOQUY_MODELS"
"$COLLOQUY_BIN" models fetch

printf '\n==> cargo test (release, whole workspace)\n'
cargo test --release --locked --workspace --all-targets

printf '\n==> embedded conversation with the network cut off (new network namespace)\n'
if unshare -n true 2>/dev/null; then
  unshare -n -- cargo test --release --locked --offline --test embedded_conversation --test flows_embedded --test route_offline -- --nocapture
else
  echo "error: cannot create a network namespace (unshare -n); run as root" >&2
  exit 1
fi

printf '\n==> fleet: journal on PostgreSQL, two instances behind HAProxy\n'
scripts/fleet-test.sh

printf '\n==> browser end to end (headless Chromium)\n'
COLLOQUY_BIN_PREBUILT="$COLLOQUY_BIN" scripts/browser-test.sh
