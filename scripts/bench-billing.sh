#!/usr/bin/env bash
# Benchmarks the monthly billing run (issue 7, item 7) on a release build: DEVICES devices
# (default 10,000) of 100 clinics under 10 distributors in five time zones, in service over
# October 2026, one in ten moved to another clinic on the 15th; half the distributors invoiced
# for their clinics' cuffs. Times `vitalbridge bill --month 2026-10` and its re-run (which finds
# every invoice issued and changes nothing), on each backend, with a fresh database each time.
#
#   scripts/bench-billing.sh
#   BACKENDS=postgres DEVICES=20000 scripts/bench-billing.sh
set -euo pipefail
cd "$(dirname "$0")/.."

BACKENDS=${BACKENDS:-"postgres sqlite"}
DEVICES=${DEVICES:-10000}
PORT=${PORT:-18093}

source scripts/bench-lib.sh

for backend in $BACKENDS; do
  # The scheduler would bill October itself (it has ended): the bench runs it by hand.
  bench_start "$backend" VB_BILLING=off
  python3 - "$PORT" "$BENCH_SECRET" "$DEVICES" <<'PY'
import base64, json, sys, urllib.error, urllib.request
port, secret, devices = sys.argv[1], sys.argv[2], int(sys.argv[3])
origin = f"http://127.0.0.1:{port}"
req = urllib.request.Request(f"{origin}/auth/token", data=b"grant_type=client_credentials",
    headers={"Authorization": "Basic " + base64.b64encode(f"bench:{secret}".encode()).decode(),
             "Content-Type": "application/x-www-form-urlencoded"})
token = json.load(urllib.request.urlopen(req))["access_token"]

def call(method, path, body):
    r = urllib.request.Request(f"{origin}/fhir/{path}", method=method, data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"})
    try:
        return json.load(urllib.request.urlopen(r))
    except urllib.error.HTTPError as e:
        sys.exit(f"{method} {path}: {e.code} {e.read().decode()[:500]}")

MDC, EXT = "urn:iso:std:iso:11073:10101", "https://vitalbridge.dev/fhir/StructureDefinition/"
zones = ["America/New_York", "Europe/Berlin", "Asia/Tokyo", "UTC", "America/Los_Angeles"]
def org(i, name, part_of=None):
    o = {"resourceType": "Organization", "id": i, "name": name, "extension": [
        {"url": "http://hl7.org/fhir/StructureDefinition/timezone", "valueCode": zones[sum(map(ord, i)) % 5]}]}
    if part_of:
        o["partOf"] = {"reference": f"Organization/{part_of}"}
    call("PUT", f"Organization/{i}", o)
for d in range(10):
    org(f"dist-{d}", f"Distributor {d}")
for c in range(100):
    org(f"clinic-{c}", f"Clinic {c}", f"dist-{c % 10}")

serial = iter(range(1, 1000))
def price(code, value, currency, proration, extra=()):
    return {"resourceType": "ChargeItemDefinition",
            "meta": {"profile": ["https://vitalbridge.dev/fhir/StructureDefinition/vb-catalog-entry"]},
            "url": f"https://platform.example/price/{next(serial)}",
            "status": "active", "code": {"coding": [{"system": MDC, "code": code}]},
            "propertyGroup": [{"priceComponent": [{"type": "base", "amount": {"value": value, "currency": currency}},
                                                  {"type": "tax", "factor": 0.0725}]}],
            "extension": [{"url": f"{EXT}billing-proration", "valueCode": proration}, *extra]}
call("POST", "ChargeItemDefinition", price("528391", 25, "USD", "any-day"))
call("POST", "ChargeItemDefinition", price("528399", 29, "USD", "pro-rata"))
for d in range(5):
    call("POST", "ChargeItemDefinition", price("528391", 20, "EUR", "pro-rata", [
        {"url": f"{EXT}billing-distributor", "valueReference": {"reference": f"Organization/dist-{d}"}},
        {"url": f"{EXT}billing-invoice-to", "valueCode": "distributor"}]))

def device(i, clinic):
    return {"resourceType": "Device", "status": "active",
            "owner": {"reference": f"Organization/clinic-{clinic}"},
            "type": {"coding": [{"system": MDC, "code": "528391" if i % 2 else "528399"}]},
            "serialNumber": f"SN{i:06d}"}
def transaction(entries):
    return call("POST", "", {"resourceType": "Bundle", "type": "transaction", "entry": entries})["entry"]
ids = []
for start in range(0, devices, 500):
    batch = [{"resource": device(i, i % 100), "request": {"method": "POST", "url": "Device"}}
             for i in range(start, min(start + 500, devices))]
    ids += [e["response"]["location"].split("/")[1] for e in transaction(batch)]
moved = [(i, d) for i, d in enumerate(ids) if i % 10 == 0]
for start in range(0, len(moved), 500):
    transaction([{"resource": dict(device(i, (i + 1) % 100), id=d), "request": {"method": "PUT", "url": f"Device/{d}"}}
                 for i, d in moved[start:start + 500]])
print(f"seeded {len(ids)} devices ({len(moved)} moved) of 100 clinics under 10 distributors")
PY
  # The store stamps versions with its clock: put the devices' history in October, as a month
  # of service would have left it (first versions on 20 September, moves on the 15th).
  backdate="update resource_history set last_updated = case version_id
    when 1 then 1789862400000000 else 1792065600000000 end where res_type = 'Device'"
  case $backend in
    postgres) psql "$bench_url" -qc "$backdate" ;;
    sqlite) python3 -c 'import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(sys.argv[2]); c.commit()' \
      "${bench_url#sqlite://}" "$backdate" ;;
  esac
  for run in first again; do
    echo "-- $run run"
    /usr/bin/time -f "   (wall %e s, max RSS %M KB)" "$bin" bill --month 2026-10 --database-url "$bench_url"
  done
  bench_stop "$backend"
done
