#!/usr/bin/env bash
# The fleet tests with the real parts (issue 15): a PostgreSQL from Debian's
# packages (initdb in a temporary directory, loopback, a free port), then
#  - the journal tests on both backends (tests/journal_store.rs, tests/ws_journal.rs,
#    tests/journal_cli.rs: sessions, trace and status),
#  - two `colloquy serve` instances behind HAProxy (config from docs/deploy.md,
#    verbatim) driven by tests/fleet.rs: kill -9 mid-reply, a lease refused
#    then expired, a rolling restart, PostgreSQL restarted during a call,
#  - the talk page in headless Chromium through the same setup
#    (tests/browser/fleet.test.mjs): a turn, a reload while the holder is
#    drained, the session resumed on the other instance, one more turn.
# Everything started here is stopped at the end, by pid.
#   scripts/fleet-test.sh            (test.sh runs it; needs root for initdb as `postgres`)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$PGBIN" ] || ! command -v haproxy >/dev/null; then
  echo "error: PostgreSQL or HAProxy missing; run scripts/setup.sh --test" >&2
  exit 1
fi

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

D=$(mktemp -d /tmp/colloquy-fleet-pg.XXXXXX)
chown postgres "$D"
chmod 755 "$D"
PGPORT=$(free_port)
as_pg() { runuser -u postgres -- "$@"; }
pg_ctl_() { as_pg "$PGBIN/pg_ctl" -D "$D/data" "$@"; }

cleanup() {
  # Our PostgreSQL only: its own data directory's pg_ctl, then its pid.
  if [ -f "$D/data/postmaster.pid" ]; then
    pg_ctl_ -m immediate stop >/dev/null 2>&1 || true
    if [ -f "$D/data/postmaster.pid" ]; then
      pid=$(head -1 "$D/data/postmaster.pid")
      [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  rm -rf "$D"
}
trap cleanup EXIT

printf '\n==> PostgreSQL (%s) on 127.0.0.1:%s, data in a temporary directory\n' "$PGBIN" "$PGPORT"
as_pg "$PGBIN/initdb" -D "$D/data" -A trust -U postgres >"$D/initdb.log" 2>&1 || { cat "$D/initdb.log" >&2; exit 1; }
PGOPTS="-p $PGPORT -k $D -c listen_addresses=127.0.0.1 -c fsync=on"
pg_ctl_ -l "$D/log" -w -o "$PGOPTS" start >/dev/null
as_pg "$PGBIN/createdb" -h 127.0.0.1 -p "$PGPORT" colloquy

export COLLOQUY_TEST_PG_URL="postgres://postgres@127.0.0.1:$PGPORT/colloquy"
export COLLOQUY_REQUIRE_PG=1
# tests/fleet.rs stops and starts this PostgreSQL (same port, same data).
export COLLOQUY_FLEET_PG_STOP="runuser -u postgres -- $PGBIN/pg_ctl -D $D/data -m fast -w stop"
export COLLOQUY_FLEET_PG_START="runuser -u postgres -- $PGBIN/pg_ctl -D $D/data -l $D/log -w -o '$PGOPTS' start"
export COLLOQUY_FLEET_DEPLOY_DOC="$PWD/docs/deploy.md"

printf '\n==> journal tests on SQLite and PostgreSQL, then two instances behind HAProxy\n'
cargo test --release --locked --test journal_store --test journal_cli --test ws_journal --test fleet -- --nocapture

printf '\n==> the talk page through HAProxy: a reload lands on the other instance (headless Chromium)\n'
chromium_bin=${CHROMIUM:-/usr/bin/chromium}
missing=""
for need in "$chromium_bin" node npm sox; do
  command -v "$need" >/dev/null || missing="$missing $need"
done
if [ -n "$missing" ]; then
  if [ "${CI:-}" = true ]; then
    echo "error: the fleet browser test needs$missing (scripts/setup.sh --test installs them)" >&2
    exit 1
  fi
  echo "skipped: missing$missing (scripts/setup.sh --test installs them)"
  exit 0
fi
as_pg "$PGBIN/createdb" -h 127.0.0.1 -p "$PGPORT" colloquy_browser
# The microphone: one question, then silence (Chromium starts the file again
# for the reloaded page's new capture stream).
sox assets/speech/q-france.wav -r 16000 -c 1 -b 16 "$D/q.wav"
sox -n -r 16000 -c 1 -b 16 "$D/tail.wav" trim 0 8
sox "$D/q.wav" "$D/tail.wav" "$D/mic.wav"
mkdir -p "$D/browser"
root=$PWD
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error &&
  node fleet.test.mjs --bin "$COLLOQUY_BIN" --mic "$D/mic.wav" --out "$D/browser" \
    --pg "postgres://postgres@127.0.0.1:$PGPORT/colloquy_browser" \
    --deploy-doc "$root/docs/deploy.md" --chromium "$chromium_bin")
