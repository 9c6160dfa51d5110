#!/usr/bin/env bash
# `colloquy run` on PulseAudio virtual devices (no sound card needed).
#
# The test (tests/local_devices.rs) starts its own PulseAudio in user mode with
# a private runtime dir, creates the devices (stereo null sink `mix`; remap
# sinks `micsink` = left, `vsink` = right; virtual source `vmic` on
# micsink.monitor), runs the real `colloquy run --agent parrot`, feeds
# assets/speech/librivox-0880.wav into the microphone with paplay, records
# mix.monitor with parec, stops everything it started by PID, and checks the
# answer (duration, energy, envelope, timing after the end of the user's
# speech), echo control (canceller, gate, off) with the speaker fed into the
# microphone, the virtual room of issue 16 (module-loopback echo + reflection,
# a 21 s reply alone, a second voice 12 dB under the echo: the canceller stops
# the bot within 500 ms, the gate misses it), and a vanished device. See
# docs/devices.md.
#
# Needs: pulseaudio pulseaudio-utils libasound2-plugins (and libasound2-dev to build).
# Fails (does not skip) when any of them is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
for tool in pulseaudio pactl pacmd paplay parec; do
    command -v "$tool" >/dev/null || {
        echo "error: $tool not found; install pulseaudio and pulseaudio-utils" >&2
        exit 2
    }
done
export COLLOQUY_PULSE_TEST=1 COLLOQUY_REQUIRE_DEVICES=1
cargo test --release --test local_devices -- --nocapture --test-threads=1 "$@"
