#!/usr/bin/env bash
# Idempotent set-up on Debian (run as root): system packages, then a release
# build of colloquy with the Cargo target dir outside the clone.
#   scripts/setup.sh            packages for building and running
#   scripts/setup.sh --test     plus what the tests need (PulseAudio, Chromium, Node)
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

step() { printf '\n==> %s\n' "$*"; }

pkgs=(cmake clang libclang-dev pkg-config libasound2-dev libespeak-ng-dev espeak-ng sox
      pocketsphinx-testdata python3-pip ca-certificates)
if [ "$want_test" = 1 ]; then
  pkgs+=(pulseaudio pulseaudio-utils libasound2-plugins iproute2 chromium)
  # PostgreSQL and HAProxy for the fleet test (scripts/fleet-test.sh).
  pkgs+=(postgresql haproxy)
  # Node.js for the browser test; the machine's own node/npm is fine.
  command -v npm >/dev/null || pkgs+=(nodejs npm)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# python3-pip is optional when a pip is already on PATH (pyenv, venv).
if command -v pip3 >/dev/null || command -v pip >/dev/null; then
  missing=("${missing[@]/python3-pip}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if [ "${#missing[@]}" -gt 0 ]; then
  step "installing Debian packages: ${missing[*]}"
  if [ "$(id -u)" != 0 ]; then
    echo "error: need root to install ${missing[*]} (or install them yourself)" >&2
    exit 2
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  step "Debian packages: all present"
fi

if ! command -v cargo >/dev/null; then
  echo "error: no Rust toolchain (cargo) on PATH; install Rust 1.85 or newer and rerun" >&2
  exit 2
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/colloquy/target}"
step "building colloquy (release; target dir $CARGO_TARGET_DIR; a cold build takes about 10 minutes on 2 cores)"
cargo build --release --workspace --all-targets --locked
