#!/usr/bin/env bash
# Stop the cluster started by scripts/start-postgres.sh: signals only the PID in DIR/pid
# (SIGINT: PostgreSQL's fast shutdown), then SIGKILL if it lingers.
#   bash scripts/stop-postgres.sh DIR [--purge]   # DIR defaults to $BERTH_TEST_POSTGRES_DIR; --purge deletes DIR
set -euo pipefail
DIR=${1:-${BERTH_TEST_POSTGRES_DIR:-}}
[[ -n "$DIR" ]] || { echo "usage: $0 DIR [--purge]" >&2; exit 2; }
PIDFILE="$DIR/pid"
if [[ -f "$PIDFILE" ]]; then
  PID=$(cat "$PIDFILE")
  if [[ "$PID" =~ ^[0-9]+$ ]] && kill -0 "$PID" 2>/dev/null; then
    kill -INT "$PID"
    for _ in $(seq 1 300); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done   # up to 30 s
    if kill -0 "$PID" 2>/dev/null; then echo "stop-postgres: $PID ignored INT, sending KILL" >&2; kill -KILL "$PID" 2>/dev/null || true; fi
    echo "stop-postgres: stopped pid $PID" >&2
  else
    echo "stop-postgres: pid ${PID:-?} not running" >&2
  fi
  rm -f "$PIDFILE"
else
  echo "stop-postgres: no $PIDFILE" >&2
fi
if [[ "${2:-}" == "--purge" ]]; then rm -rf "$DIR"; echo "stop-postgres: removed $DIR" >&2; fi
