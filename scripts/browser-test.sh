#!/usr/bin/env bash
# End-to-end test of `colloquy serve` in headless Chromium (tests/browser/).
# Needs Debian `chromium`, node/npm and sox; installs its own npm packages
# (`npm ci`). Writes docs/screenshot.png and docs/screenshot-flow.png; the
# flow test needs the embedded models (`colloquy models fetch`).
#
#   scripts/browser-test.sh            # build, then test
#   COLLOQUY_BIN_PREBUILT=path/to/colloquy scripts/browser-test.sh   # skip the build
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
. scripts/env.sh

if [[ -z "${COLLOQUY_BIN_PREBUILT:-}" ]]; then
  cargo build --release --bin colloquy
else
  COLLOQUY_BIN=$COLLOQUY_BIN_PREBUILT
fi
chromium_bin=${CHROMIUM:-/usr/bin/chromium}
for need in "$chromium_bin" node npm sox espeak-ng; do
  command -v "$need" >/dev/null || { echo "browser test: $need is missing (Debian: apt-get install -y chromium nodejs npm sox espeak-ng)" >&2; exit 2; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The microphone: a question, a pause too short for the parrot's whole reply,
# a second voice cutting in over the reply, then room for the last answer.
sox assets/speech/q-france.wav -r 16000 -c 1 -b 16 "$work/a.wav"
sox assets/speech/q-germany-f3.wav -r 16000 -c 1 -b 16 "$work/b.wav"
sox -n -r 16000 -c 1 -b 16 "$work/gap.wav" trim 0 1.4
sox -n -r 16000 -c 1 -b 16 "$work/tail.wav" trim 0 6
sox "$work/a.wav" "$work/gap.wav" "$work/b.wav" "$work/tail.wav" "$work/mic.wav"

cd tests/browser
npm ci --no-audit --no-fund --loglevel=error
node talk.test.mjs --bin "$COLLOQUY_BIN" --mic "$work/mic.wav" --out "$work" \
  --screenshot "$root/docs/screenshot.png" --chromium "$chromium_bin"

# Heard means heard: the voice agent on hosted models the test serves itself
# (a reply of espeak-ng words with known timings); a second voice cuts in at
# a random point of the sentence and the committed text must end within one
# word of where the page stopped (needs espeak-ng; no models).
mkdir -p "$work/heard"
node heard.test.mjs --bin "$COLLOQUY_BIN" --speech "$root/assets/speech" --out "$work/heard" \
  --chromium "$chromium_bin"

# A phone booking on the embedded models and flows/restaurant.toml (needs
# `colloquy models fetch`): the caller answers each question, then confirms
# by cutting into the read-back.
cd "$root"
sp=assets/speech
sox "$sp/book-hello.wav" -r 16000 -c 1 -b 16 "$work/f1.wav" pad 5 7  # after the bot's greeting
sox "$sp/book-party.wav" -r 16000 -c 1 -b 16 "$work/f2.wav" pad 0 6
sox "$sp/book-time.wav" -r 16000 -c 1 -b 16 "$work/f3.wav" pad 0 7
sox "$sp/book-name.wav" -r 16000 -c 1 -b 16 "$work/f4.wav" pad 0 4
sox "$sp/book-yes.wav" -r 16000 -c 1 -b 16 "$work/f5.wav" pad 0 7
sox "$work"/f{1,2,3,4,5}.wav "$work/booking.wav"
cd tests/browser
mkdir -p "$work/flow"
node flow.test.mjs --bin "$COLLOQUY_BIN" --mic "$work/booking.wav" --out "$work/flow" \
  --screenshot "$root/docs/screenshot-flow.png" --chromium "$chromium_bin"
