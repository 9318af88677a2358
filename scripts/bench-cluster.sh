#!/usr/bin/env bash
# How a Berth cluster scales with its node count: for N = 1, 2, 3 (or the counts given),
# start N release `berth` nodes sharing one SeaweedFS bucket (../shared/s3) and one
# PostgreSQL database (scripts/start-postgres.sh) behind nginx (round-robin), and run the
# project's benchmark (`berth-bench run`) against nginx. Prints each run's figures and a
# summary line per N. Needs nginx, psql, curl, python3 (scripts/install-test-deps.sh).
#
#   cargo build --release -p berth -p berth-bench
#   bash scripts/bench-cluster.sh [COUNTS...]        # default: 1 2 3
#
# On a 2-core machine the client, nginx, the nodes, SeaweedFS and PostgreSQL share the
# cores: the curve shows how far they allow, not a cluster of real machines.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNTS=("${@:-1 2 3}")
# shellcheck disable=SC2206
COUNTS=(${COUNTS[*]})
BERTH=${BERTH:-target/release/berth}
BENCH=${BENCH:-target/release/berth-bench}
[ -x "$BERTH" ] && [ -x "$BENCH" ] || { echo "bench-cluster: build first: cargo build --release -p berth -p berth-bench" >&2; exit 1; }
SHARED_S3="$(cd .. && pwd)/shared/s3"
WORK=$(mktemp -d /tmp/berth-bench-cluster.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    bash "$SHARED_S3/stop-seaweedfs.sh" "$WORK/s3" --purge >/dev/null 2>&1 || true
    bash scripts/stop-postgres.sh "$WORK/pg" --purge >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

eval "$(bash "$SHARED_S3/start-seaweedfs.sh" "$WORK/s3")"
eval "$(bash scripts/start-postgres.sh "$WORK/pg")"
unset AWS_CA_BUNDLE

for n in "${COUNTS[@]}"; do
    db="bench_cluster_$n"
    psql "$BERTH_TEST_POSTGRES_URL" -q -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
    dsn="${BERTH_TEST_POSTGRES_URL%/*}/$db"
    upstreams=""
    node_pids=()
    for i in $(seq 1 "$n"); do
        port=$(free_port)
        cat > "$WORK/node-$n-$i.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  s3:
    accesskey: $S3_ACCESS_KEY_ID
    secretkey: $S3_SECRET_ACCESS_KEY
    region: $S3_REGION
    regionendpoint: $S3_ENDPOINT
    bucket: $S3_BUCKET
    rootdirectory: /cluster-$n
  delete:
    enabled: true
database:
  driver: postgres
  dsn: $dsn
http:
  addr: 127.0.0.1:$port
EOF
        "$BERTH" serve "$WORK/node-$n-$i.yml" > "$WORK/node-$n-$i.log" 2>&1 &
        PIDS+=($!)
        node_pids+=($!)
        upstreams+="    server 127.0.0.1:$port;"$'\n'
        for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
    done
    lb=$(free_port)
    user=""; [ "$(id -u)" -eq 0 ] && user="user root;"
    cat > "$WORK/nginx.conf" <<EOF
$user
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/body; proxy_temp_path $WORK/proxy;
  fastcgi_temp_path $WORK/fastcgi; uwsgi_temp_path $WORK/uwsgi; scgi_temp_path $WORK/scgi;
  upstream berth {
$upstreams    keepalive 64;
  }
  server {
    listen 127.0.0.1:$lb;
    client_max_body_size 0;
    location / {
      proxy_pass http://berth;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$http_host;
      proxy_request_buffering off;
      proxy_buffering off;
      proxy_read_timeout 900s;
    }
  }
}
EOF
    nginx -c "$WORK/nginx.conf" -p "$WORK"
    for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$lb/v2/" >/dev/null && break; sleep 0.1; done
    echo "== $n node(s) behind nginx at 127.0.0.1:$lb" >&2
    "$BENCH" run --url "http://127.0.0.1:$lb" | tee "$WORK/run-$n.txt"
    kill "$(cat "$WORK/nginx.pid")"; rm -f "$WORK/nginx.pid"
    for p in "${node_pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    sleep 0.5
done

echo
echo "nodes  manifest_get req/s  manifest_get p99 ms  pull MB/s  push MB/s"
for n in "${COUNTS[@]}"; do
    f="$WORK/run-$n.txt"
    mg=$(grep -E '^manifest_get ' "$f" | sed -E 's/.*req_per_s=([0-9.]+).*/\1/')
    p99=$(grep -E '^manifest_get ' "$f" | sed -E 's/.*p99_ms=([0-9.]+).*/\1/')
    pull=$(grep -E '^pull ' "$f" | sed -E 's/.*mb_per_s=([0-9.]+).*/\1/')
    push=$(grep -E '^push ' "$f" | sed -E 's/.*mb_per_s=([0-9.]+).*/\1/')
    printf '%5s  %18s  %19s  %9s  %9s\n' "$n" "$mg" "$p99" "$pull" "$push"
done
