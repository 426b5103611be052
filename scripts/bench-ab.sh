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
# Each run also prints the CPU time spent per request inside the timed phase of its first
# scenario (after seeding and warm-up; give one scenario per run for these figures): the whole
# machine's, the server's and PostgreSQL's.
# On this 2-core VM throughput drifts by ±15 % from round to round, more than the few percent a
# setting costs; CPU time per request is steadier, and while both cores are busy throughput is
# its inverse, so a setting's cost is the difference of the machine's CPU per request.
set -uo pipefail

# CPU time (clock ticks) of the processes given, and of every PostgreSQL process.
ticks() { awk '{ s += $14 + $15 } END { print s + 0 }' "${@/#//proc/}" 2>/dev/null; }
# Busy CPU time of the whole machine (clock ticks): user, nice, system, irq and softirq (not
# idle, iowait or the time the hypervisor gave to other guests).
busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8; exit }' /proc/stat; }
pg_pids() { for p in $(pgrep -x postgres); do printf '%s/stat ' "$p"; done; }

SCENARIOS=${SCENARIOS:-create}
ROUNDS=${ROUNDS:-2}
CLIENTS=${CLIENTS:-32}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
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
    # The CPU counters are read at the start and the end of the timed phase: the bench says on
    # stderr when a scenario starts its warm-up.
    "$bin" bench --base-url "http://127.0.0.1:$PORT/fhir" --clients "$CLIENTS" \
      --duration "$DURATION" --warmup "$WARMUP" --scenarios "$SCENARIOS" "${auth[@]}" \
      > /tmp/bench-ab.$$ 2> /tmp/bench-ab-err.$$ &
    bench=$!
    until grep -q '^running' /tmp/bench-ab-err.$$ || ! kill -0 $bench 2>/dev/null; do sleep 0.05; done
    sleep "$WARMUP.2"
    pgs=$(pg_pids)
    # shellcheck disable=SC2086
    read -r b0 s0 p0 <<< "$(busy) $(ticks "$pid/stat") $(ticks $pgs)"
    sleep "$((DURATION - 1)).6"
    # shellcheck disable=SC2086
    read -r b1 s1 p1 <<< "$(busy) $(ticks "$pid/stat") $(ticks $pgs)"
    wait $bench
    grep -E '^[a-z-]+ +[0-9]+ +[0-9.]+ +[0-9.]+ ' /tmp/bench-ab.$$
    # Requests in the sampled window, from the rate of the timed phase it lies in (the first
    # scenario's).
    rate=$(awk '/^[a-z-]+ +[0-9]+ +[0-9.]+ +[0-9.]+ / { print $3; exit }' /tmp/bench-ab.$$)
    awk -v b=$((b1 - b0)) -v s=$((s1 - s0)) -v p=$((p1 - p0)) -v rate="$rate" \
      -v secs="$((DURATION - 1)).6" -v hz="$(getconf CLK_TCK)" 'BEGIN {
      n = rate * secs
      printf "cpu per request: machine %.1f us, server %.1f us, postgres %.1f us (%.1f s window)\n",
        b / hz / n * 1e6, s / hz / n * 1e6, p / hz / n * 1e6, secs }'
    kill $pid; wait $pid 2>/dev/null
    psql "$PG_ADMIN" -qc "drop database if exists $db" >/dev/null 2>&1
  done
done
rm -f /tmp/bench-ab.$$ /tmp/bench-ab-err.$$
