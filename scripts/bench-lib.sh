# Shared by the bench scripts (sourced): a fresh database of a backend, a release server on it
# with the bench's admin client, and its teardown.
#   bench_start BACKEND [VAR=value …]   # sets $bin, $pid, $bench_url; extra environment for the server
#   bench_stop BACKEND
PG_ADMIN=${VB_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
[ -n "${NO_BUILD:-}" ] || cargo build --release --quiet
# The server creates this admin client at start; the bench obtains its tokens with it.
export VB_BENCH_CLIENT_ID=bench VB_BENCH_CLIENT_SECRET="${BENCH_SECRET:=bench-$RANDOM$RANDOM}"
bin=target/release/vitalbridge

bench_start() {
  local backend=$1 url
  shift
  case $backend in
    postgres)
      bench_db=vb_bench_$$
      psql "$PG_ADMIN" -qc "drop database if exists $bench_db" -c "create database $bench_db" >/dev/null
      url="${PG_ADMIN%/*}/$bench_db" ;;
    sqlite)
      url="sqlite://$(mktemp -d)/bench.db" ;;
    *) echo "unknown backend $backend" >&2; exit 2 ;;
  esac
  bench_url=$url
  env "$@" VB_LOG=warn VB_BOOTSTRAP_CLIENT_ID=bench VB_BOOTSTRAP_CLIENT_SECRET="$BENCH_SECRET" \
    DATABASE_URL="$url" "$bin" serve --listen "127.0.0.1:$PORT" &
  pid=$!
  trap 'kill $pid 2>/dev/null || true' EXIT
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
  echo "== $backend ($(nproc) cores, $(git rev-parse --short HEAD))"
}

bench_stop() {
  kill "$pid"; wait "$pid" 2>/dev/null || true
  trap - EXIT
  if [ "$1" = postgres ]; then psql "$PG_ADMIN" -qc "drop database if exists $bench_db" >/dev/null; fi
}
