#!/usr/bin/env bash
# Side-by-side comparison with a peer framework, pipecat-ai 1.14.0, on the
# same workloads, recording and measurements (benches/peer/README.md), in
# one run; prints one table of ratios.
#   scripts/peer-bench.sh            full run (a few minutes)
#   scripts/peer-bench.sh --quick    tiny run (checks that everything works)
# pipecat is installed from PyPI, pinned (benches/peer/requirements.txt), into
# a virtual environment outside the clone ($PEER_VENV, default
# ~/.cache/colloquy/peer-venv); its code is never copied into the repository.
# Results go to $PEER_OUT (default ~/.cache/colloquy/peer-results).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
quick=0
[ "${1:-}" = "--quick" ] && quick=1

step() { printf '\n==> %s\n' "$*"; }

venv="${PEER_VENV:-$HOME/.cache/colloquy/peer-venv}"
out="${PEER_OUT:-$HOME/.cache/colloquy/peer-results}"
mkdir -p "$out"

python="${PEER_PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
  echo "error: $python is older than 3.10 (pipecat-ai 1.14 needs 3.10+); set PEER_PYTHON" >&2
  exit 2
fi
if [ ! -x "$venv/bin/python" ]; then
  step "creating the virtual environment $venv"
  if ! "$python" -m venv "$venv" 2>/dev/null; then
    rm -rf "$venv"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv
      "$python" -m venv "$venv"
    else
      echo "error: '$python -m venv' failed; install Debian python3-venv and rerun" >&2
      exit 2
    fi
  fi
fi
step "pipecat-ai 1.14.0 and its pinned dependencies from PyPI"
"$venv/bin/pip" install -q --disable-pip-version-check -r benches/peer/requirements.txt
"$venv/bin/python" -c 'import pipecat; assert pipecat.__version__ == "1.14.0", pipecat.__version__'

step "building colloquy's side (cargo bench --bench peer)"
cargo bench --bench peer --locked --no-run

recording="$out/recording.wav"
quick_env=()
py_args=()
if [ "$quick" = 1 ]; then
  quick_env=(PEER_QUICK=1)
  py_args=(--quick)
fi
step "colloquy (writes the shared recording to $recording)"
# PEER_FETCH_MODELS: fetch only Silero VAD and onnxruntime if missing.
env "${quick_env[@]}" PEER_RECORDING="$recording" PEER_FETCH_MODELS=1 \
  cargo bench --bench peer --locked | tee "$out/colloquy.jsonl"
step "pipecat-ai, same recording"
"$venv/bin/python" benches/peer/pipecat_bench.py "$recording" "${py_args[@]}" | tee "$out/pipecat.jsonl"

step "ratios (pipecat ÷ colloquy)"
"$venv/bin/python" benches/peer/compare.py "$out/colloquy.jsonl" "$out/pipecat.jsonl" | tee "$out/table.md"
