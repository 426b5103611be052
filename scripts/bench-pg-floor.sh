#!/usr/bin/env bash
# What PostgreSQL alone can write on this machine (issue 5, item 9): pgbench, no vitalbridge
# server, both cores for the database. Each transaction stores what one hub batch of 100
# blood-pressure readings stores: 200 Observations (the pulse is its own), each as a `resource`
# row, a `resource_history` row with a real 2 KB Observation and a `change_log` row, then the
# 22 search-index rows such an Observation has (10 token, 4 reference, 1 date, 2 quantity,
# 3 composite, 3 uri), in the schema `vitalbridge migrate` creates. Variants:
#   none      the versioned resource only, no search-index rows
#   full      the index rows with the lookup and owner B-trees (what the server writes)
#   lookup    the index rows with the lookup B-trees only
#   heap      the index rows with no B-tree at all (unsearchable)
#
#   scripts/bench-pg-floor.sh                   # every variant, 8 clients, 15 s each
#   VARIANTS="none full" CLIENTS=8 DURATION=15 scripts/bench-pg-floor.sh
set -euo pipefail
cd "$(dirname "$0")/.."

VARIANTS=${VARIANTS:-"none full lookup heap"}
CLIENTS=${CLIENTS:-8}
DURATION=${DURATION:-15}
export PGOPTIONS="-c client_min_messages=warning"
PG_ADMIN=${VB_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
[ -n "${NO_BUILD:-}" ] || cargo build --release --quiet
bin=target/release/vitalbridge
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

content=$(sed "s/'/''/g" scripts/pg-floor/observation.json)
cat >"$work/none.sql" <<SQL
with ids as (select 'floor-' || lpad(nextval('floor_seq')::text, 12, '0') as id,
                    (extract(epoch from clock_timestamp()) * 1e6)::int8 as u,
                    'p' || (random() * 800)::int as pat
             from generate_series(1, 200)),
r as (insert into resource (res_type, res_id, version_id, last_updated, deleted)
      select 'Observation', id, 1, u, false from ids),
h as (insert into resource_history (res_type, res_id, version_id, last_updated, method, content)
      select 'Observation', id, 1, u, 'POST', '$content' from ids),
c as (insert into change_log (res_type, res_id, version_id, method, recorded_at)
      select 'Observation', id, 1, 'POST', u from ids)
SQL
cp "$work/none.sql" "$work/index.sql"
echo "select 1;" >>"$work/none.sql"
cat >>"$work/index.sql" <<'SQL'
, t as (insert into search_token (res_type, res_id, param, system, code, text)
      select 'Observation', id, p, 'http://loinc.org', case when p = 'identifier' then id else v end, null
      from ids, (values ('_tag', 'o-1'), ('category', 'vital-signs'), ('category', 'phd'),
                        ('code', '85354-9'), ('code', '150020'), ('component-code', '8480-6'),
                        ('component-code', '8462-4'), ('component-code', '150021'),
                        ('identifier', ''), ('status', 'final')) as x(p, v)),
rf as (insert into search_reference (res_type, res_id, param, target_type, target_id, url,
                                     date_lo, date_hi, code_system, code, date_exact, categories, version_id)
      select 'Observation', id, p, t, case when t = 'Patient' then pat else 'd' || pat end, 'x', u, u,
             'http://loinc.org', v, true, 'vital-signs', 1
      from ids, (values ('subject', 'Patient', '85354-9'), ('subject', 'Patient', '150020'),
                        ('subject', 'Patient', ''), ('device', 'Device', null)) as x(p, t, v)),
d as (insert into search_date (res_type, res_id, param, lo, hi) select 'Observation', id, 'date', u, u from ids),
q as (insert into search_quantity (res_type, res_id, param, value, system, code, cvalue, ccode)
      select 'Observation', id, p, 100 + random() * 60, 'http://unitsofmeasure.org', 'mm[Hg]', random(), 'g.m-1.s-2'
      from ids, (values ('value-quantity'), ('component-value-quantity')) as x(p)),
cp as (insert into search_composite (res_type, res_id, param, c1_system, c1_code, c2_system, c2_code,
                                     c2_lo, c2_hi, c2_cvalue, c2_ccode, c3)
      select 'Observation', id, 'component-code-value-quantity', 'http://loinc.org', v,
             'http://unitsofmeasure.org', 'mm[Hg]', 120, 120, 120, 'g.m-1.s-2', null
      from ids, (values ('8480-6'), ('8462-4'), ('150021')) as x(v)),
ur as (insert into search_uri (res_type, res_id, param, value)
      select 'Observation', id, '_profile', v
      from ids, (values ('http://hl7.org/fhir/StructureDefinition/bp'),
                        ('https://vitalbridge.dev/fhir/StructureDefinition/vb-blood-pressure'),
                        ('http://hl7.org/fhir/uv/phd/StructureDefinition/PhdCompoundNumericObservation')) as x(v))
select 1;
SQL

echo "== PostgreSQL alone: $CLIENTS clients, transactions of 200 Observations ($(nproc) cores, $(git rev-parse --short HEAD))"
for variant in $VARIANTS; do
  db=vb_floor_$$
  psql "$PG_ADMIN" -qc "drop database if exists $db" -c "create database $db" >/dev/null
  url="${PG_ADMIN%/*}/$db"
  DATABASE_URL="$url" "$bin" migrate >/dev/null
  psql "$url" -qc "create sequence floor_seq" >/dev/null
  script=$work/index.sql
  case $variant in
    none) script=$work/none.sql ;;
    full) ;;
    lookup) psql "$url" -qc "drop index search_token_owner, search_reference_owner, search_date_owner,
                 search_quantity_owner, search_composite_owner, search_uri_owner" ;;
    heap) psql "$url" -qc "drop index search_token_owner, search_reference_owner, search_date_owner,
                 search_quantity_owner, search_composite_owner, search_uri_owner, search_token_lookup,
                 search_reference_lookup, search_date_lookup, search_quantity_lookup,
                 search_composite_lookup, search_uri_lookup" ;;
    *) echo "unknown variant $variant" >&2; exit 2 ;;
  esac
  tps=$(pgbench "$url" -n -c "$CLIENTS" -j 2 -T "$DURATION" -f "$script" 2>/dev/null |
    sed -n 's/^tps = \([0-9.]*\).*/\1/p')
  awk -v v="$variant" -v t="$tps" 'BEGIN { printf "%-7s %7.1f transactions/s = %6.0f Observations/s = %6.0f readings/s\n", v, t, t * 200, t * 100 }'
  psql "$PG_ADMIN" -qc "drop database if exists $db" >/dev/null
done
