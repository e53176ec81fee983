#!/usr/bin/env bash
# HTTP benchmark (issue 2): unauthenticated GET /healthz against the authenticated tenant read
# GET /v1/tenant (with a session JWT and with an API key), on SQLite and on PostgreSQL, with wrk.
#
# For each backend it starts a fresh `azotte serve` on a free 127.0.0.1 port (SQLite in a temporary
# directory; PostgreSQL in a throw-away cluster made here with normal durability settings),
# bootstraps the first administrator, creates the tenant `bench`, warms up, then runs
# `wrk -t2 -c$BENCH_CONNECTIONS --latency` for $BENCH_DURATION seconds against each endpoint.
# It prints the machine, one table of figures (markdown), the server's RSS idle and after load, and
# where the CPU went during each measured run: azotte, PostgreSQL, the wrk client, and the rest of
# the machine ("other": unattributed kernel work, or unrelated load, which is warned about because
# client, server and database share the machine and other load skews the figures).
#
# Environment:
#   BENCH_DURATION     seconds per measured run (default 10)
#   BENCH_CONNECTIONS  wrk connections (default 32; wrk threads are fixed at 2)
#   BENCH_WARMUP       seconds of warm-up before each measured run (default 2)
#   BENCH_BACKENDS     "sqlite postgres" (default), or one of them
#
# Only 127.0.0.1 is targeted. Every process and temporary directory made here is removed on exit,
# including on error or Ctrl-C. Exits non-zero if wrk saw non-2xx/3xx responses or socket errors
# (after printing the table), so such runs cannot be mistaken for clean ones.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${BENCH_DURATION:-10}
CONNECTIONS=${BENCH_CONNECTIONS:-32}
WARMUP=${BENCH_WARMUP:-2}
BACKENDS=${BENCH_BACKENDS:-sqlite postgres}
THREADS=2
WRK_TIMEOUT=5s

# Shared helpers: die, log, bench_init (temporary directory, cleanup trap), start_azotte, bootstrap,
# measure, start_postgres, …
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

for v in DURATION CONNECTIONS WARMUP; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "BENCH_$v must be a whole number, got '${!v}'"
done
# Bounded: each backend's runs must also finish well inside the 15-minute access token lifetime.
[ "$DURATION" -ge 1 ] && [ "$DURATION" -le 300 ] || die "BENCH_DURATION must be between 1 and 300 seconds"
[ "$WARMUP" -le 60 ] || die "BENCH_WARMUP must be at most 60 seconds"
[ "$CONNECTIONS" -ge "$THREADS" ] || die "BENCH_CONNECTIONS must be at least $THREADS"
for b in $BACKENDS; do
  case $b in sqlite | postgres) ;; *) die "unknown backend '$b' in BENCH_BACKENDS" ;; esac
done

# Nothing from the caller's environment may point the server elsewhere.
while read -r v; do unset "$v"; done < <(compgen -e | grep '^AZOTTE_' || true)

# ---------------------------------------------------------------------------------------------
# State, tools and binary

bench_init
ensure_tools

log "building the release binary"
timeout 3600 cargo build --release -p azotte >&2 || die "cargo build --release -p azotte failed"
BIN=$ROOT/target/release/azotte
[ -x "$BIN" ] || die "$BIN not found after the build"

# ---------------------------------------------------------------------------------------------
# Machine

print_machine
echo "wrk: $(wrk -v 2>&1 | head -n 1 | awk '{print $1, $2}'); -t$THREADS -c$CONNECTIONS --latency --timeout $WRK_TIMEOUT; ${WARMUP}s warm-up, ${DURATION}s measured per endpoint"
echo "azotte: $(commit_id) (release build); client, server and database share this machine"
echo

# ---------------------------------------------------------------------------------------------
# Measurement

ROWS=()      # markdown table rows
RSS_ROWS=()
LOG_SUMMARIES=()

# measure_endpoint BACKEND LABEL PATH [wrk args...]: `measure`, then the table row (LAST_ROW).
measure_endpoint() {
  local backend=$1 label=$2 path=$3
  measure "$@"
  local shown="GET $path"
  case "$label" in tenant) shown="$shown (JWT)" ;; tenant-apikey) shown="$shown (API key)" ;; esac
  LAST_ROW="| $backend | $shown | $(printf '%.0f' "$RPS") | $M_P50 | $M_P99 | $M_REQS | $M_NON2XX | $M_SOCK | $M_CPU_AZ | $M_CPU_PG | $M_CPU_WRK | $M_CPU_OTHER"
}

# ---------------------------------------------------------------------------------------------
# Runs

for backend in $BACKENDS; do
  env_args=()
  if [ "$backend" = postgres ]; then
    start_postgres
    env_args=("AZOTTE_DATABASE_URL=postgres://azotte@127.0.0.1:$PG_PORT/azotte_bench")
  fi
  log "$backend: starting azotte"
  start_azotte "$backend" "$WORK/$backend" "${env_args[@]}"
  bootstrap "$backend"
  rss_idle=$(rss_kb "$AZ_PID")

  measure_endpoint "$backend" healthz /healthz
  healthz_rps=$RPS
  ROWS+=("$LAST_ROW | |")

  measure_endpoint "$backend" tenant /v1/tenant -H "Authorization: Bearer $TOKEN" -H "x-tn: bench" -H "x-env: production"
  ratio=$(awk -v a="$RPS" -v b="$healthz_rps" 'BEGIN {printf "%.2f", a / b}')
  ROWS+=("$LAST_ROW | $ratio |")

  # The same read authenticated by an API key (issue 3): one HMAC, no argon2 on the hot path.
  measure_endpoint "$backend" tenant-apikey /v1/tenant -H "x-api-key: $APIKEY" -H "x-tn: bench"
  ratio=$(awk -v a="$RPS" -v b="$healthz_rps" 'BEGIN {printf "%.2f", a / b}')
  ROWS+=("$LAST_ROW | $ratio |")

  rss_after=$(rss_kb "$AZ_PID")
  LOG_SUMMARIES+=("$backend:" "$(log_summary "$backend" | sed 's/^/  /')")
  RSS_ROWS+=("| $backend | $(awk -v k="$rss_idle" 'BEGIN {printf "%.1f", k / 1024}') | $(awk -v k="$rss_after" 'BEGIN {printf "%.1f", k / 1024}') |")

  stop_azotte
  if [ "$backend" = postgres ]; then stop_postgres; fi
done

echo "| backend | endpoint | requests/s | p50 ms | p99 ms | requests | non-2xx | socket errors | azotte CPU | postgres CPU | wrk CPU | other CPU | tenant/healthz |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
echo
echo "| backend | azotte RSS idle (MiB) | azotte RSS after load (MiB) |"
echo "|---|---:|---:|"
printf '%s\n' "${RSS_ROWS[@]}"
echo
echo "Server log errors and warnings (AZOTTE_LOG_LEVEL=warn), by count:"
printf '%s\n' "${LOG_SUMMARIES[@]}"
echo
echo "CPU columns: CPU time used during the measured run / wall time ($(nproc) CPUs = $(($(nproc) * 100))%)."
echo "\"other\" is the rest of the machine's busy time: unattributed kernel (softirq) work and any unrelated load."
[ "$CONTENDED" = 0 ] || echo "WARNING: other processes (or the hypervisor) took CPU during at least one run; see the warnings above."

if [ "$FAILED" != 0 ]; then
  die "wrk reported non-2xx/3xx responses or socket errors (see the warnings above)"
fi
