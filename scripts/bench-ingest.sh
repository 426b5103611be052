#!/usr/bin/env bash
# Benchmarks hub ingestion (issue 5, item 9) on a release build: HUBS hubs posting batches of
# BATCH blood-pressure readings to /ingest/hub back to back, on each backend, with server,
# PostgreSQL and load generator on this machine and a fresh database each time.
#
#   scripts/bench-ingest.sh                        # both backends, 8 hubs × 100, 10 s
#   BACKENDS=postgres HUBS=8 BATCH=100 DURATION=20 scripts/bench-ingest.sh
set -euo pipefail
cd "$(dirname "$0")/.."

BACKENDS=${BACKENDS:-"postgres sqlite"}
HUBS=${HUBS:-8}
BATCH=${BATCH:-100}
DURATION=${DURATION:-10}
PG_ADMIN=${VB_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
PORT=${PORT:-18091}

[ -n "${NO_BUILD:-}" ] || cargo build --release --quiet
export VB_BENCH_CLIENT_ID=bench VB_BENCH_CLIENT_SECRET="${BENCH_SECRET:=bench-$RANDOM$RANDOM}"
bin=target/release/vitalbridge

for backend in $BACKENDS; do
  case $backend in
    postgres)
      db=vb_bench_ingest_$$
      psql "$PG_ADMIN" -qc "drop database if exists $db" -c "create database $db" >/dev/null
      url="${PG_ADMIN%/*}/$db" ;;
    sqlite)
      dir=$(mktemp -d)
      url="sqlite://$dir/bench.db" ;;
    *) echo "unknown backend $backend" >&2; exit 2 ;;
  esac
  VB_LOG=warn VB_BOOTSTRAP_CLIENT_ID=bench VB_BOOTSTRAP_CLIENT_SECRET="$BENCH_SECRET" DATABASE_URL="$url" "$bin" serve --listen "127.0.0.1:$PORT" &
  pid=$!
  trap 'kill $pid 2>/dev/null || true' EXIT
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
  echo "== $backend ($(nproc) cores, $(git rev-parse --short HEAD))"
  "$bin" bench-ingest --origin "http://127.0.0.1:$PORT" --hubs "$HUBS" --batch "$BATCH" --duration "$DURATION"
  kill $pid; wait $pid 2>/dev/null || true
  trap - EXIT
  if [ "$backend" = postgres ]; then psql "$PG_ADMIN" -qc "drop database if exists $db" >/dev/null; fi
done
