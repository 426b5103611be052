#!/usr/bin/env bash
# A/B throughput of several vitalbridge release binaries on PostgreSQL, on the same machine in
# the same minutes: each binary in turn on a fresh database, driven by its own `vitalbridge
# bench`, for ROUNDS rounds. This VM's speed drifts by tens of percent over a day, so a target
# stated against an earlier build is checked against that build measured alongside, not against
# a figure from another day.
#
#   git worktree add /tmp/base <commit> && (cd /tmp/base && cargo build --release)
#   scripts/bench-ab.sh /tmp/base/target/release/vitalbridge target/release/vitalbridge
#   SCENARIOS=create,read ROUNDS=3 scripts/bench-ab.sh A B C
#
# An argument `NAME=VALUE:BINARY` runs BINARY with that variable set, to compare settings of
# one build, e.g. what the audit trail costs:
#   SCENARIOS=read,create scripts/bench-ab.sh VB_AUDIT=off:target/release/vitalbridge \
#     VB_AUDIT=on:target/release/vitalbridge
set -uo pipefail

SCENARIOS=${SCENARIOS:-create}
ROUNDS=${ROUNDS:-2}
CLIENTS=${CLIENTS:-32}
DURATION=${DURATION:-10}
PG_ADMIN=${VB_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
PORT=${PORT:-18095}
SECRET=ab-$RANDOM$RANDOM

[ $# -ge 1 ] || { echo "usage: $0 BINARY..." >&2; exit 2; }
for round in $(seq "$ROUNDS"); do
  for arg in "$@"; do
    setting=()
    bin=$arg
    if [[ $arg == *=*:* ]]; then setting=("${arg%%:*}"); bin=${arg#*:}; fi
    db=vb_ab_$$_$round
    psql "$PG_ADMIN" -qc "drop database if exists $db" -c "create database $db" >/dev/null 2>&1
    # Builds before the authorization server ignore the bootstrap variables.
    env "${setting[@]}" VB_LOG=warn VB_BOOTSTRAP_CLIENT_ID=ab VB_BOOTSTRAP_CLIENT_SECRET=$SECRET \
      DATABASE_URL="${PG_ADMIN%/*}/$db" "$bin" serve --listen "127.0.0.1:$PORT" &
    pid=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
    auth=()
    if "$bin" bench --help | grep -q -- --client-id; then
      auth=(--client-id ab --client-secret "$SECRET")
    fi
    echo "== ${setting[*]} $bin, round $round"
    "$bin" bench --base-url "http://127.0.0.1:$PORT/fhir" --clients "$CLIENTS" \
      --duration "$DURATION" --scenarios "$SCENARIOS" "${auth[@]}" | grep -E '^[a-z-]+ +[0-9]+ +[0-9.]+ +[0-9.]+ '
    kill $pid; wait $pid 2>/dev/null
    psql "$PG_ADMIN" -qc "drop database if exists $db" >/dev/null 2>&1
  done
done
