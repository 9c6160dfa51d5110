#!/usr/bin/env bash
# WebSocket sessions held by one `colloquy serve` with the journal on SQLite
# versus PostgreSQL (issue 15): starts a temporary PostgreSQL from Debian's
# packages (initdb as `postgres` in a temporary directory, loopback, a free
# port; stopped and removed at the end, by its own pg_ctl), then runs the
# ws_load bench twice, the same steps each time: the journal in a temporary
# SQLite file, then in that PostgreSQL (WS_LOAD_JOURNAL).
#
#   scripts/ws-load-journals.sh                       # steps 10,50,100; 10 s each
#   WS_LOAD_SESSIONS=10,50,100,200 WS_LOAD_SECS=12 scripts/ws-load-journals.sh
#
# Needs root (initdb runs as `postgres`) and `scripts/setup.sh --test`
# (PostgreSQL). A benchmark, not a test: CI does not run it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
export WS_LOAD_SESSIONS="${WS_LOAD_SESSIONS:-10,50,100}" WS_LOAD_SECS="${WS_LOAD_SECS:-10}"

PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
[ -n "$PGBIN" ] || { echo "error: PostgreSQL missing; run scripts/setup.sh --test" >&2; exit 1; }
PGPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
D=$(mktemp -d /tmp/colloquy-wsload-pg.XXXXXX)
chown postgres "$D"
chmod 755 "$D"
as_pg() { runuser -u postgres -- "$@"; }
cleanup() {
  if [ -f "$D/data/postmaster.pid" ]; then
    as_pg "$PGBIN/pg_ctl" -D "$D/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$D"
}
trap cleanup EXIT
as_pg "$PGBIN/initdb" -D "$D/data" -A trust -U postgres >"$D/initdb.log" 2>&1 || { cat "$D/initdb.log" >&2; exit 1; }
as_pg "$PGBIN/pg_ctl" -D "$D/data" -l "$D/log" -w \
  -o "-p $PGPORT -k $D -c listen_addresses=127.0.0.1" start >/dev/null
as_pg "$PGBIN/createdb" -h 127.0.0.1 -p "$PGPORT" colloquy

cargo bench --locked --bench ws_load --no-run
printf '\n==> journal on SQLite\n'
env -u WS_LOAD_JOURNAL cargo bench --locked --bench ws_load
printf '\n==> journal on PostgreSQL (same machine, loopback)\n'
WS_LOAD_JOURNAL="postgres://postgres@127.0.0.1:$PGPORT/colloquy" cargo bench --locked --bench ws_load
