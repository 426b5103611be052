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
#
# Each run also prints the CPU time the server and PostgreSQL spent during it, per request, to
# tell which side a difference comes from.
set -uo pipefail

# CPU time (clock ticks) of the processes given, and of every PostgreSQL process.
ticks() { awk '{ s += $14 + $15 } END { print s + 0 }' "${@/#//proc/}" 2>/dev/null; }
pg_pids() { for p in $(pgrep -x postgres); do printf '%s/stat ' "$p"; done; }

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
    # shellcheck disable=SC2046
    server0=$(ticks "$pid/stat"); pg0=$(ticks $(pg_pids))
    "$bin" bench --base-url "http://127.0.0.1:$PORT/fhir" --clients "$CLIENTS" \
      --duration "$DURATION" --scenarios "$SCENARIOS" "${auth[@]}" | tee /tmp/bench-ab.$$ \
      | grep -E '^[a-z-]+ +[0-9]+ +[0-9.]+ +[0-9.]+ '
    # shellcheck disable=SC2046
    server1=$(ticks "$pid/stat"); pg1=$(ticks $(pg_pids))
    requests=$(awk '/^[a-z-]+ +[0-9]+ +[0-9.]+ +[0-9.]+ / { n += $2 } END { print n + 0 }' /tmp/bench-ab.$$)
    hz=$(getconf CLK_TCK)
    awk -v s=$((server1 - server0)) -v p=$((pg1 - pg0)) -v n="$requests" -v hz="$hz" 'BEGIN {
      printf "cpu: server %.1f s, postgres %.1f s; per request: server %.1f us, postgres %.1f us\n",
        s / hz, p / hz, n ? s / hz / n * 1e6 : 0, n ? p / hz / n * 1e6 : 0 }'
    kill $pid; wait $pid 2>/dev/null
    psql "$PG_ADMIN" -qc "drop database if exists $db" >/dev/null 2>&1
  done
done
