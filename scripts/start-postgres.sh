#!/usr/bin/env bash
# Start a throwaway PostgreSQL cluster on 127.0.0.1 for Berth's tests (meta::postgres).
#
#   eval "$(bash scripts/start-postgres.sh [DIR])"   # DIR defaults to a new mktemp dir
#   cargo test -p berth --lib meta::postgres          # uses BERTH_TEST_POSTGRES_URL
#   bash scripts/stop-postgres.sh "$BERTH_TEST_POSTGRES_DIR" [--purge]
#
# stdout carries only `export ...` lines (also saved to DIR/env): BERTH_TEST_POSTGRES_URL,
# BERTH_TEST_POSTGRES_PID, BERTH_TEST_POSTGRES_DIR, BERTH_TEST_POSTGRES_CA. Progress goes to
# stderr, the server's log to DIR/postgres.log. The cluster trusts every connection from
# 127.0.0.1 (and the socket in DIR), listens on 127.0.0.1 only, on a free port (PGPORT to
# fix it), with fsync off: test data only. It also speaks TLS (ssl = on) with a server
# certificate for 127.0.0.1 and localhost from a throwaway CA (DIR/ca.crt), and its role
# `tlsonly` may log in over TLS only (the TLS tests of meta::postgres). Re-running with the same DIR restarts the same cluster on
# the same port; when DIR already runs a server its exports are printed again.
#
# PostgreSQL refuses to run as root: as root, the cluster belongs to the `postgres`
# user (Debian's package creates it) and runs as that user. Finds initdb/postgres in
# $PG_BIN, /usr/lib/postgresql/<newest>/bin or PATH; scripts/install-test-deps.sh
# installs them.
set -euo pipefail

log() { echo "start-postgres: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

DIR=${1:-$(mktemp -d -t berth-pg.XXXXXX)}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
DATA="$DIR/data"

if [[ -f "$DIR/pid" && -f "$DIR/env" ]] && kill -0 "$(cat "$DIR/pid")" 2>/dev/null; then
  log "already running (pid $(cat "$DIR/pid")) in $DIR"
  cat "$DIR/env"; exit 0
fi

find_bin() {
  local c
  for c in "${PG_BIN:-}" $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r) \
           "$(dirname "$(command -v postgres 2>/dev/null || echo /nonexistent/x)")"; do
    [[ -n "$c" && -x "$c/postgres" && -x "$c/initdb" && -x "$c/pg_isready" ]] && { echo "$c"; return 0; }
  done
  return 1
}
BIN=$(find_bin) || die "no PostgreSQL server binaries (initdb, postgres, pg_isready) found; run scripts/install-test-deps.sh (Debian package postgresql)"
log "using $BIN ($("$BIN/postgres" --version))"

# As root: everything in DIR belongs to, and runs as, the postgres user.
if [[ "$(id -u)" -eq 0 ]]; then
  id postgres >/dev/null 2>&1 || die "running as root, but there is no postgres user to run the server as"
  chown postgres: "$DIR"
  as_owner() { runuser -u postgres -- "$@"; }
  # Every directory above DIR must be traversable by that user (mktemp -d makes 0700 ones
  # only for DIR itself, which is now the user's).
  p=$(dirname "$DIR")
  while [[ "$p" != / ]]; do
    runuser -u postgres -- test -x "$p" || die "the postgres user cannot enter $p (above $DIR): pick a DIR it can reach, e.g. under /tmp"
    p=$(dirname "$p")
  done
else
  as_owner() { "$@"; }
fi

free_port() { python3 - <<'PY'
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])
PY
}

NEW=0
if [[ ! -f "$DATA/PG_VERSION" ]]; then
  NEW=1
  PORT=${PGPORT:-$(free_port)}
  log "initdb in $DATA (port $PORT)"
  as_owner "$BIN/initdb" -D "$DATA" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >"$DIR/initdb.log" 2>&1 \
    || { tail -20 "$DIR/initdb.log" >&2; die "initdb failed (log: $DIR/initdb.log)"; }
  as_owner tee -a "$DATA/postgresql.conf" >/dev/null <<CONF
# berth test cluster (scripts/start-postgres.sh)
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$DIR'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 300
shared_buffers = 64MB
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
CONF
  as_owner tee "$DATA/pg_hba.conf" >/dev/null <<'HBA'
local     all all     trust
hostnossl all tlsonly 127.0.0.1/32 reject
host      all all     127.0.0.1/32 trust
HBA
  command -v openssl >/dev/null || die "openssl is needed for the test cluster's TLS certificate (Debian package openssl)"
  log "TLS: a throwaway CA ($DIR/ca.crt) and a server certificate for 127.0.0.1 and localhost"
  as_owner openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=berth test PostgreSQL CA" \
    -keyout "$DIR/ca.key" -out "$DIR/ca.crt" >"$DIR/openssl.log" 2>&1 || die "openssl failed (log: $DIR/openssl.log)"
  as_owner openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$DATA/server.key" -out "$DIR/server.csr" >>"$DIR/openssl.log" 2>&1 || die "openssl failed (log: $DIR/openssl.log)"
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' | as_owner tee "$DIR/san.ext" >/dev/null
  as_owner openssl x509 -req -in "$DIR/server.csr" -CA "$DIR/ca.crt" -CAkey "$DIR/ca.key" -CAcreateserial \
    -days 30 -extfile "$DIR/san.ext" -out "$DATA/server.crt" >>"$DIR/openssl.log" 2>&1 || die "openssl failed (log: $DIR/openssl.log)"
  as_owner chmod 600 "$DATA/server.key"
  as_owner chmod 644 "$DIR/ca.crt"
fi
PORT=$(sed -n 's/^port = \([0-9]*\)$/\1/p' "$DATA/postgresql.conf" | tail -1)
[[ -n "$PORT" ]] || die "no port in $DATA/postgresql.conf"

# Start in its own session; only the PID in DIR/pid is ever stopped.
as_owner touch "$DIR/postgres.log" 2>/dev/null || true
if [[ "$(id -u)" -eq 0 ]]; then
  setsid runuser -u postgres -- "$BIN/postgres" -D "$DATA" </dev/null >>"$DIR/postgres.log" 2>&1 &
else
  setsid "$BIN/postgres" -D "$DATA" </dev/null >>"$DIR/postgres.log" 2>&1 &
fi
LAUNCHER=$!
ok=0
for _ in $(seq 1 300); do   # up to ~30 s
  kill -0 "$LAUNCHER" 2>/dev/null || { tail -30 "$DIR/postgres.log" >&2; die "postgres exited during start-up (log: $DIR/postgres.log)"; }
  if "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -U postgres; then ok=1; break; fi
  sleep 0.1
done
(( ok )) || { kill "$LAUNCHER" 2>/dev/null || true; die "postgres did not become ready on 127.0.0.1:$PORT (log: $DIR/postgres.log)"; }
# The postmaster's own PID (runuser forks it as a child): the first line of postmaster.pid.
PID=$(head -1 "$DATA/postmaster.pid")
echo "$PID" >"$DIR/pid"
if (( NEW )); then
  as_owner "$BIN/psql" -h "$DIR" -p "$PORT" -U postgres -d postgres -qAt -v ON_ERROR_STOP=1 \
    -c "CREATE ROLE tlsonly LOGIN SUPERUSER" >/dev/null || die "cannot create the role tlsonly"
fi
{
  echo "export BERTH_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:$PORT/postgres"
  echo "export BERTH_TEST_POSTGRES_PID=$PID"
  echo "export BERTH_TEST_POSTGRES_DIR=$DIR"
  if [[ -f "$DIR/ca.crt" ]]; then echo "export BERTH_TEST_POSTGRES_CA=$DIR/ca.crt"; fi
} >"$DIR/env"
log "ready on 127.0.0.1:$PORT (pid $PID, dir $DIR)"
cat "$DIR/env"
