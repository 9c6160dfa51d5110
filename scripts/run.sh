#!/usr/bin/env bash
# The main job: set up, then have a real conversation.
#   scripts/run.sh                 replay the bundled recording (assets/conversation.wav)
#   scripts/run.sh FILE.wav        replay your own recording
#   scripts/run.sh --mic           talk through the microphone and speaker
# Writes out/conversation.wav (left = you, right = bot) and out/conversation.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
scripts/setup.sh
printf '\n==> models (PyPI, pinned, verified; cached in %s)\n' "$COLLOQUY_MODELS"
"$COLLOQUY_BIN" models fetch
mkdir -p out
if [ "${1:-}" = "--mic" ]; then
  shift
  exec "$COLLOQUY_BIN" run "$@"
fi
input="${1:-assets/conversation.wav}"
printf '\n==> replaying %s\n' "$input"
"$COLLOQUY_BIN" replay "$input" --out out/conversation.wav --events out/conversation.jsonl
