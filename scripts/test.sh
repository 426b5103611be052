#!/usr/bin/env bash
# Runs every test of vitalbridge, on a fresh Debian machine with Rust and nothing else.
#
# It brings up what the tests need:
#   - PostgreSQL: uses the server at $VB_TEST_PG_URL (default postgres://postgres@127.0.0.1:5432/postgres)
#     when it answers; otherwise starts the distribution's cluster, or a private cluster in a
#     temporary directory (initdb/pg_ctl, as the postgres user when run as root), installing the
#     distribution package first when no PostgreSQL is installed at all. It never skips.
#   - the official FHIR R4 examples (npm package hl7.fhir.r4.examples) for the round-trip test;
#   - npm oidc-provider (tests/oidc), the real OpenID provider of the federation tests;
#   - PyPI aiosmtpd (in target/pyenv), the real SMTP server of the Subscription email tests;
#   - Debian chromium and chromium-driver, the browser of the API explorer test;
#   - PyPI schemathesis (in target/stenv), run against the OpenAPI document;
#   - dbus-daemon and python-dbusmock (Debian packages), the simulated BlueZ of the gateway tests
#     (tests/ble/bluez_sim.py).
# Then it checks formatting and lints and runs the whole test suite on both backends.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

export VB_TEST_PG_URL="${VB_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

pg_answers() {
  command -v psql >/dev/null 2>&1 && psql "$VB_TEST_PG_URL" -Atqc 'select 1' >/dev/null 2>&1
}

find_pg_bin() {
  for d in /usr/lib/postgresql/*/bin /usr/local/pgsql/bin /usr/local/bin /usr/bin; do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
  done
  return 1
}

start_private_cluster() {
  local bin=$1 port=54329
  local dir
  dir=$(mktemp -d /tmp/vb-pg.XXXXXX)
  local run=()
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    chown postgres "$dir"
    run=(runuser -u postgres --)
  fi
  log "starting a private PostgreSQL cluster in $dir on port $port"
  "${run[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust >/dev/null
  "${run[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=300" start >/dev/null
  export VB_TEST_PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
  # Stop and remove it when the tests end (expanded now: these locals are gone by then).
  trap "${run[*]} $bin/pg_ctl -D $dir/data -m fast stop >/dev/null 2>&1 || true; rm -rf $dir" EXIT
}

ensure_postgres() {
  if pg_answers; then log "PostgreSQL answers at $VB_TEST_PG_URL"; return; fi
  if command -v pg_ctlcluster >/dev/null 2>&1 && ls /etc/postgresql/*/main >/dev/null 2>&1; then
    log "starting the distribution's PostgreSQL cluster"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
    sleep 1
    if pg_answers; then return; fi
  fi
  local bin
  if ! bin=$(find_pg_bin); then
    log "no PostgreSQL installed: installing the distribution package"
    [ "$(id -u)" = 0 ] || die "PostgreSQL is not installed and this user cannot install it; install postgresql or set VB_TEST_PG_URL"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq postgresql postgresql-client >/dev/null \
      || die "could not install PostgreSQL"
    bin=$(find_pg_bin) || die "PostgreSQL installed but initdb not found"
  fi
  start_private_cluster "$bin"
  pg_answers || die "PostgreSQL did not come up at $VB_TEST_PG_URL"
}

ensure_examples() {
  local dir=target/fhir-examples
  if [ -f "$dir/package/package.json" ]; then return; fi
  if ! command -v npm >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || die "npm is needed to fetch the official FHIR examples; install npm"
    log "installing npm (the official FHIR examples come from the npm registry)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq npm >/dev/null || die "could not install npm"
  fi
  log "fetching the official FHIR R4 examples (npm hl7.fhir.r4.examples)"
  mkdir -p "$dir"
  (cd "$dir" && npm pack --silent hl7.fhir.r4.examples >/dev/null && tar xzf hl7.fhir.r4.examples-*.tgz && rm -f hl7.fhir.r4.examples-*.tgz)
}

# A real OpenID provider for the federation tests (tests/oidc, npm oidc-provider, locked).
ensure_oidc_provider() {
  if [ -d tests/oidc/node_modules/oidc-provider ]; then return; fi
  command -v npm >/dev/null 2>&1 || die "npm is needed for the OpenID provider of the federation tests"
  log "installing the test OpenID provider (npm oidc-provider)"
  npm ci --silent --no-audit --no-fund --prefix tests/oidc >/dev/null || die "could not install oidc-provider"
}

# A real SMTP server for the Subscription email tests (tests/smtp/server.py, PyPI aiosmtpd) in a
# virtual environment of its own under target/.
ensure_smtp_server() {
  local venv=target/pyenv
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import aiosmtpd' 2>/dev/null; then return; fi
  command -v python3 >/dev/null 2>&1 || die "python3 is needed for the SMTP server of the email tests"
  log "installing the test SMTP server (PyPI aiosmtpd) into $venv"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || die "python3 cannot create a virtual environment; install python3-venv"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null || die "could not install python3-venv"
    python3 -m venv "$venv" || die "could not create $venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check 'aiosmtpd==1.4.6' || die "could not install aiosmtpd"
}

# A private D-Bus with a simulated BlueZ for the gateway tests (tests/ble/README.md): Debian's
# python3-dbus cannot be built by pip without C headers, so the distribution's packages.
ensure_ble_simulator() {
  if command -v dbus-daemon >/dev/null 2>&1 &&
    /usr/bin/python3 -c 'import dbus, gi, dbusmock' 2>/dev/null; then return; fi
  [ "$(id -u)" = 0 ] || die "the gateway tests need dbus-daemon, python3-dbus, python3-gi and python3-dbusmock"
  log "installing the simulated BlueZ's packages (dbus-daemon, python3-dbusmock)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq dbus-daemon python3-dbus python3-gi python3-dbusmock >/dev/null ||
    die "could not install dbus-daemon and python3-dbusmock"
}

# Headless Chromium and ChromeDriver for the API explorer test (tests/api/explorer.rs).
ensure_chromium() {
  if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then return; fi
  [ "$(id -u)" = 0 ] || die "the explorer test needs /usr/bin/chromium and /usr/bin/chromedriver (Debian chromium, chromium-driver)"
  log "installing Chromium and ChromeDriver (Debian chromium, chromium-driver)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null ||
    die "could not install chromium and chromium-driver"
}

# PyPI schemathesis, run against the OpenAPI document (tests/api/openapi.rs), in a virtual
# environment of its own under target/.
ensure_schemathesis() {
  local venv=target/stenv
  if [ -x "$venv/bin/schemathesis" ]; then return; fi
  log "installing schemathesis (PyPI) into $venv"
  python3 -m venv "$venv" >/dev/null 2>&1 || die "could not create $venv (python3-venv)"
  "$venv/bin/pip" install -q --disable-pip-version-check 'schemathesis==4.32.5' ||
    die "could not install schemathesis"
}

ensure_postgres
ensure_chromium
ensure_schemathesis
ensure_ble_simulator
ensure_examples
ensure_oidc_provider
ensure_smtp_server
export VB_FHIR_EXAMPLES="$PWD/target/fhir-examples/package"

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
# The explorer test drives a real browser, whose every step is slow on a loaded 2-core machine;
# run alongside the other tests (schemathesis among them) it once took longer than an access
# token lives. So it runs after them, on its own; the build is shared, nothing is compiled twice.
explorer=explorer::a_developer_tries_a_request_in_the_explorer
log "cargo test"
cargo test --all-targets -- --test-threads="${VB_TEST_THREADS:-4}" --skip "$explorer"
log "cargo test: the API explorer in Chromium, on its own"
cargo test --test api -- --exact "$explorer"
