#!/usr/bin/env bash
# Benchmarks a release build of vitalbridge on both backends with the `bench` subcommand:
# server, PostgreSQL and load generator on this machine, fresh database each time.
#
#   scripts/bench.sh                       # both backends, all scenarios, 32 clients, 10 s each
#   BACKENDS=sqlite SCENARIOS=read,create DURATION=5 CLIENTS=32 scripts/bench.sh
#
# Searches over a large remote-monitoring data set kept between runs: scripts/bench-search.sh
set -euo pipefail
cd "$(dirname "$0")/.."

BACKENDS=${BACKENDS:-"postgres sqlite"}
SCENARIOS=${SCENARIOS:-read,create,update,delete,mixed}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-32}
PG_ADMIN=${VB_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
PORT=${PORT:-18090}

cargo build --release --quiet
# The server creates this admin client at start; the bench obtains its tokens with it.
export VB_BENCH_CLIENT_ID=bench VB_BENCH_CLIENT_SECRET="${BENCH_SECRET:=bench-$RANDOM$RANDOM}"
bin=target/release/vitalbridge
out=target/bench
mkdir -p "$out"

for backend in $BACKENDS; do
  case $backend in
    postgres)
      db=vb_bench_$$
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
  "$bin" bench --base-url "http://127.0.0.1:$PORT/fhir" --clients "$CLIENTS" --duration "$DURATION" \
    --scenarios "$SCENARIOS" --json "$out/$backend.json"
  kill $pid; wait $pid 2>/dev/null || true
  trap - EXIT
  if [ "$backend" = postgres ]; then psql "$PG_ADMIN" -qc "drop database if exists $db" >/dev/null; fi
done
