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
PORT=${PORT:-18091}

source scripts/bench-lib.sh

for backend in $BACKENDS; do
  bench_start "$backend"
  "$bin" bench-ingest --origin "http://127.0.0.1:$PORT" --hubs "$HUBS" --batch "$BATCH" --duration "$DURATION"
  bench_stop "$backend"
done
