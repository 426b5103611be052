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
PORT=${PORT:-18090}

source scripts/bench-lib.sh
out=target/bench
mkdir -p "$out"

for backend in $BACKENDS; do
  bench_start "$backend"
  "$bin" bench --base-url "http://127.0.0.1:$PORT/fhir" --clients "$CLIENTS" --duration "$DURATION" \
    --scenarios "$SCENARIOS" --json "$out/$backend.json"
  bench_stop "$backend"
done
