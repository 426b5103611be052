#!/usr/bin/env bash
# Search benchmark of a release build of vitalbridge on PostgreSQL, over a realistic
# remote-patient-monitoring data set written by `vitalbridge bench --scenarios rpm-seed`:
# 20 clinics, 1,000 Patients with 2-3 home devices each, and 1,000 vital-sign Observations
# per Patient (1M in all) over the last year. Then the search scenarios run with 16 clients.
#
# The database (vb_bench_rpm) is kept between runs because seeding 1M Observations takes
# minutes: rpm-seed does nothing when the server already has the complete data set for the
# same flags, and resumes where an interrupted seeding stopped. After a server change to
# what is indexed, reseed (RESEED=1) so the searches do not run on an index built by an
# older build.
#
#   scripts/bench-search.sh                    # seed if needed, then all search scenarios
#   RESEED=1 scripts/bench-search.sh           # drop the database and seed from scratch
#   PATIENTS=100 PER_PATIENT=100 SCENARIOS=search-pcd,lastn DURATION=5 scripts/bench-search.sh
#
# Results: target/bench/search-postgres.json (seeding: target/bench/rpm-seed.json).
set -euo pipefail
cd "$(dirname "$0")/.."

SCENARIOS=${SCENARIOS:-search-pcd,search-pc,lastn,code-total,search-org}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-16}
PATIENTS=${PATIENTS:-1000}
PER_PATIENT=${PER_PATIENT:-1000}
PG_ADMIN=${VB_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
PORT=${PORT:-18091}
DB=${DB:-vb_bench_rpm}

cargo build --release --quiet
# The server creates this admin client at start; the bench obtains its tokens with it.
export VB_BENCH_CLIENT_ID=bench VB_BENCH_CLIENT_SECRET="${BENCH_SECRET:=bench-$RANDOM$RANDOM}"
bin=target/release/vitalbridge
out=target/bench
mkdir -p "$out"

if [ "${RESEED:-0}" = 1 ]; then
  psql "$PG_ADMIN" -qc "drop database if exists $DB" >/dev/null
fi
if [ -z "$(psql "$PG_ADMIN" -Atqc "select 1 from pg_database where datname = '$DB'")" ]; then
  psql "$PG_ADMIN" -qc "create database $DB" >/dev/null
fi

VB_LOG=warn VB_BOOTSTRAP_CLIENT_ID=bench VB_BOOTSTRAP_CLIENT_SECRET="$BENCH_SECRET" DATABASE_URL="${PG_ADMIN%/*}/$DB" "$bin" serve --listen "127.0.0.1:$PORT" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
# Migrations of a kept database run before the server listens: allow more than bench.sh.
for _ in $(seq 300); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done

base="http://127.0.0.1:$PORT/fhir"
rpm=(--rpm-patients "$PATIENTS" --rpm-per-patient "$PER_PATIENT")
echo "== postgres search ($(nproc) cores, $(git rev-parse --short HEAD), database $DB)"
# Bundles of 500 resources can take seconds on a busy server: a generous per-request timeout.
"$bin" bench --base-url "$base" --scenarios rpm-seed "${rpm[@]}" --timeout 300 \
  --json "$out/rpm-seed.json"
# Plans need statistics: autovacuum has not analysed the tables minutes after a bulk load, and
# without them patient searches were planned from the wrong index (seconds per query).
psql "${PG_ADMIN%/*}/$DB" -qc "vacuum analyze" >/dev/null
# This VM's page cache drops cold pages (DAMON reclaim), so a freshly seeded or idle database
# answers from disk at first: load the relations the searches read (pg_prewarm, a contrib
# extension shipped with PostgreSQL) so the figures measure the server, not the disk.
psql "${PG_ADMIN%/*}/$DB" -Atqc "create extension if not exists pg_prewarm; \
  select sum(pg_prewarm(c.oid::regclass, 'read')) from pg_class c where relname in \
  ('search_reference', 'search_reference_lookup', 'search_token_owner', 'search_token_lookup', \
   'search_date_owner', 'resource', 'resource_pkey', 'resource_history', 'resource_history_pkey')" \
  >/dev/null || echo "pg_prewarm unavailable: the first requests read from disk" >&2
"$bin" bench --base-url "$base" --clients "$CLIENTS" --duration "$DURATION" \
  --scenarios "$SCENARIOS" "${rpm[@]}" --json "$out/search-postgres.json"
kill $pid; wait $pid 2>/dev/null || true
trap - EXIT
