#!/usr/bin/env bash
# Benchmarks Subscription notification latency (issue 6, item 5) on a release build: SUBS active
# rest-hook subscriptions, RATE Observation writes per second, from the write to the receiver
# having the notification, on each backend, with server, PostgreSQL, receiver and load generator
# on this machine and a fresh database each time.
#
#   scripts/bench-subscriptions.sh                        # both backends, 1,000 subs, 200/s, 30 s
#   BACKENDS=postgres SUBS=2000 RATE=200 DURATION=30 scripts/bench-subscriptions.sh
set -euo pipefail
cd "$(dirname "$0")/.."

BACKENDS=${BACKENDS:-"postgres sqlite"}
SUBS=${SUBS:-1000}
RATE=${RATE:-200}
DURATION=${DURATION:-30}
PORT=${PORT:-18092}

source scripts/bench-lib.sh

for backend in $BACKENDS; do
  bench_start "$backend" \
    VB_SUBSCRIPTION_ALLOW_NETWORKS=127.0.0.1 # the bench's receiver listens on the loopback
  "$bin" bench-subscriptions --origin "http://127.0.0.1:$PORT" --subscriptions "$SUBS" --rate "$RATE" \
    --duration "$DURATION"
  bench_stop "$backend"
done
