#!/usr/bin/env bash
# Entitlement check benchmark (issue 8): requests/s and latency of the single-entitlement check
# `GET /v1/customers/{id}/entitlements/{key}` with an API key, against `GET /healthz` in the same
# run, on SQLite and on PostgreSQL, with wrk. Targets: at least 0.5 of /healthz's requests/s,
# p99 under 5 ms at that load.
#
# For each backend it starts a fresh release `azotte serve` on a free 127.0.0.1 port (SQLite in a
# temporary directory; PostgreSQL in a throw-away cluster with normal durability), bootstraps the
# tenant `bench` and, through the HTTP API in its `development` (test) environment, a catalog: a
# storefront with a sandbox PSP account, the bundle `premium` granting `hd`, `screens` (4) and
# `downloads`, a monthly price, and the entitlement `uhd` that no bundle grants. Then
# $BENCH_CUSTOMERS customers each buy `premium` the way a tenant integrates it (customer, offer,
# checkout with `tok_sandbox_success`, poll until `succeeded`; bench/checkout_load.py with a
# `service_account` key); every checkout must succeed. On PostgreSQL the database is then
# ANALYZEd (it is minutes old; autovacuum may not have analysed it yet).
#
# The checks use a `read_only` API key (it holds `subscription.read`; the environment is implied
# by the key: headers `x-api-key` and `x-tn` only). wrk's Lua script picks a random customer of
# the seeded ones for every request. Measured runs, each after a warm-up:
#   1. GET /healthz (no database; the ceiling of this machine)
#   2. GET …/entitlements/hd: a key every customer holds (all answers 200) — the target's figure
#   3. the same with half the requests for `uhd`, which nobody holds (404 entitlement_not_found);
#      the script counts the statuses and fails on anything else
#   4. the held check again with only $BENCH_LIGHT_CONNECTIONS connections: latency below
#      saturation
# Then, on PostgreSQL, with BENCH_PROFILE > 0, a separate short run of held checks with
# pg_stat_statements tracking on (off during the measured runs): statements per check and the
# statements taking the most database time.
#
# It prints the machine, one table (requests/s, p50/p99, errors, CPU split: azotte, PostgreSQL,
# wrk, other; ratio to /healthz), the profile, and the server's log warnings.
#
# Environment:
#   BENCH_DURATION     seconds per measured run (default 10)
#   BENCH_CONNECTIONS  wrk connections (default 32; wrk threads are fixed at 2)
#   BENCH_WARMUP       seconds of warm-up before each measured run (default 2)
#   BENCH_LIGHT_CONNECTIONS  wrk connections of run 4 (default 4)
#   BENCH_CUSTOMERS    customers with an active subscription (default 1000)
#   BENCH_PROFILE      seconds of the statement-profile run on PostgreSQL (default 5; 0: none)
#   BENCH_BACKENDS     "sqlite postgres" (default), or one of them
#   BENCH_AZOTTE_BIN   run this azotte binary instead of building target/release/azotte
#
# Only 127.0.0.1 is targeted. Every process and temporary directory made here is removed on exit,
# including on error or Ctrl-C. Exits non-zero on unexpected statuses, socket errors or a failed
# seeding checkout (after printing the table).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${BENCH_DURATION:-10}
CONNECTIONS=${BENCH_CONNECTIONS:-32}
WARMUP=${BENCH_WARMUP:-2}
CUSTOMERS=${BENCH_CUSTOMERS:-1000}
LIGHT=${BENCH_LIGHT_CONNECTIONS:-4}
PROFILE=${BENCH_PROFILE:-5}
BACKENDS=${BENCH_BACKENDS:-sqlite postgres}
THREADS=2
WRK_TIMEOUT=5s

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

for v in DURATION CONNECTIONS WARMUP CUSTOMERS LIGHT PROFILE; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "BENCH_$v must be a whole number, got '${!v}'"
done
[ "$DURATION" -ge 1 ] && [ "$DURATION" -le 300 ] || die "BENCH_DURATION must be between 1 and 300 seconds"
[ "$WARMUP" -le 60 ] || die "BENCH_WARMUP must be at most 60 seconds"
[ "$CONNECTIONS" -ge "$THREADS" ] || die "BENCH_CONNECTIONS must be at least $THREADS"
[ "$LIGHT" -ge "$THREADS" ] || die "BENCH_LIGHT_CONNECTIONS must be at least $THREADS"
[ "$PROFILE" -le 60 ] || die "BENCH_PROFILE must be at most 60 seconds"
[ "$CUSTOMERS" -ge 1 ] && [ "$CUSTOMERS" -le 100000 ] || die "BENCH_CUSTOMERS must be between 1 and 100000"
for b in $BACKENDS; do
  case $b in sqlite | postgres) ;; *) die "unknown backend '$b' in BENCH_BACKENDS" ;; esac
done

# Nothing from the caller's environment may point the server elsewhere.
while read -r v; do unset "$v"; done < <(compgen -e | grep '^AZOTTE_' || true)

bench_init
ensure_tools

azotte_binary

print_machine
echo "wrk: $(wrk -v 2>&1 | head -n 1 | awk '{print $1, $2}'); -t$THREADS -c$CONNECTIONS --latency --timeout $WRK_TIMEOUT; ${WARMUP}s warm-up, ${DURATION}s measured per run; $CUSTOMERS customers, each with an active subscription"
echo "azotte: $BIN_ORIGIN; client, server and database share this machine"
echo

# entitlement_lua FILE MIXED: wrk's script over the seeded customers ($WORK/customers): a random
# customer per request, key `hd`; with MIXED=true half the requests ask for `uhd` instead and the
# statuses are counted (200, 404 entitlement_not_found, other) and printed by done().
entitlement_lua() {
  {
    echo "local ids = {"
    sed 's/.*/  "&",/' "$WORK/customers"
    echo "}"
    echo "local mixed = $2"
    cat <<'LUA'
local held, missing = {}, {}
for i, id in ipairs(ids) do
  held[i] = "/v1/customers/" .. id .. "/entitlements/hd"
  missing[i] = "/v1/customers/" .. id .. "/entitlements/uhd"
end
function init(args)
  local f = assert(io.open("/proc/sys/kernel/random/uuid", "r"))
  math.randomseed(tonumber(f:read("*l"):sub(1, 8), 16))
  f:close()
  n200, n404, nother = 0, 0, 0
end
function request()
  local i = math.random(#ids)
  if mixed and math.random(2) == 2 then
    return wrk.format(nil, missing[i])
  end
  return wrk.format(nil, held[i])
end
if mixed then
  local threads = {}
  function setup(thread)
    table.insert(threads, thread)
  end
  function response(status, headers, body)
    if status == 200 then
      n200 = n200 + 1
    elseif status == 404 and body:find("entitlement_not_found", 1, true) then
      n404 = n404 + 1
    else
      nother = nother + 1
    end
  end
  function done(summary, latency, requests)
    local a, b, c = 0, 0, 0
    for _, t in ipairs(threads) do
      a, b, c = a + t:get("n200"), b + t:get("n404"), c + t:get("nother")
    end
    io.write(string.format("statuses: 200=%d 404=%d other=%d\n", a, b, c))
  end
end
LUA
  } >"$1"
}

ROWS=()
LOG_SUMMARIES=()
PROFILE_OUT=""

# row BACKEND SHOWN [RATIO]: the table row of the last `measure`.
row() {
  ROWS+=("| $1 | $2 | $(printf '%.0f' "$RPS") | $M_P50 | $M_P99 | $M_REQS | $M_NON2XX | $M_SOCK | $M_CPU_AZ | $M_CPU_PG | $M_CPU_WRK | $M_CPU_OTHER | ${3:-} |")
}

for backend in $BACKENDS; do
  env_args=()
  if [ "$backend" = postgres ]; then
    # pg_stat_statements is loaded but tracks nothing outside the profile run.
    PG_EXTRA_OPTIONS="-c shared_preload_libraries=pg_stat_statements"
    start_postgres
    pg_profile_off
    env_args=("AZOTTE_DATABASE_URL=postgres://azotte@127.0.0.1:$PG_PORT/azotte_bench")
  fi
  log "$backend: starting azotte"
  start_azotte "$backend" "$WORK/$backend" "${env_args[@]}"
  bootstrap_tenant "$backend"
  subscription_catalog
  mfa_enrol "$backend"
  create_api_key "$backend" development '{"description":"bench seeding","role":"service_account"}'
  SEED_KEY=$APIKEY
  create_api_key "$backend" development '{"description":"bench checks","role":"read_only"}'
  READ_KEY=$APIKEY
  case $READ_KEY in az_test_*) ;; *) die "expected a test-environment key (az_test_…)" ;; esac

  log "$backend: $CUSTOMERS customers buy premium (offer, checkout with tok_sandbox_success, poll)"
  APIKEY=$SEED_KEY
  t0=$EPOCHREALTIME
  summary=$(checkout_load --prefix "seed-$backend" --clients 4 --count "$CUSTOMERS" --out "$WORK/seed.$backend") \
    || die "$backend: seeding failed"
  log "$backend: seeded in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.0f", b - a}') s: $summary"
  [ "$(summary_field completed "$summary")" = "$CUSTOMERS" ] && [ "$(summary_field errors "$summary")" = 0 ] \
    || die "$backend: not every seeding checkout succeeded: $summary"
  awk '{print $1}' "$WORK/seed.$backend" >"$WORK/customers"
  if [ "$backend" = postgres ]; then
    sql azotte_bench "ANALYZE" >/dev/null
  fi

  # One check of each answer before the load.
  KEY=(-H "x-api-key: $READ_KEY" -H 'x-tn: bench')
  cus=$(head -n 1 "$WORK/customers")
  body=$(curl -sS --max-time 30 -w ' %{http_code}' "$BASE/v1/customers/$cus/entitlements/hd" "${KEY[@]}")
  case $body in *'"key":"hd"'*'"access":"full"'*' 200') ;; *) die "$backend: the held entitlement answered: $body" ;; esac
  body=$(curl -sS --max-time 30 -w ' %{http_code}' "$BASE/v1/customers/$cus/entitlements/uhd" "${KEY[@]}")
  case $body in *entitlement_not_found*' 404') ;; *) die "$backend: the entitlement not held answered: $body" ;; esac
  entitlement_lua "$WORK/held.lua" false
  entitlement_lua "$WORK/mixed.lua" true

  measure "$backend" healthz /healthz
  healthz_rps=$RPS
  row "$backend" "GET /healthz"

  measure "$backend" held /v1/customers "${KEY[@]}" -s "$WORK/held.lua"
  row "$backend" "GET …/entitlements/hd (held)" "$(awk -v a="$RPS" -v b="$healthz_rps" 'BEGIN {printf "%.2f", a / b}')"

  EXPECT_NON2XX=yes measure "$backend" mixed /v1/customers "${KEY[@]}" -s "$WORK/mixed.lua"
  statuses=$(grep '^statuses:' "$WORK/$backend.mixed.wrk" || true)
  other=$(printf '%s' "$statuses" | grep -oE 'other=[0-9]+' | cut -d= -f2)
  n404=$(printf '%s' "$statuses" | grep -oE '404=[0-9]+' | cut -d= -f2)
  if [ "${other:-1}" != 0 ] || [ "${n404:-x}" != "$M_NON2XX" ]; then
    FAILED=1
    log "WARNING: $backend mixed: unexpected statuses ($statuses; wrk counted $M_NON2XX non-2xx)"
  fi
  row "$backend" "GET …/entitlements/{hd,uhd} (half 404)" "$(awk -v a="$RPS" -v b="$healthz_rps" 'BEGIN {printf "%.2f", a / b}')"

  connections=$CONNECTIONS
  CONNECTIONS=$LIGHT
  measure "$backend" light /v1/customers "${KEY[@]}" -s "$WORK/held.lua"
  CONNECTIONS=$connections
  row "$backend" "GET …/entitlements/hd (held), $LIGHT connections" "$(awk -v a="$RPS" -v b="$healthz_rps" 'BEGIN {printf "%.2f", a / b}')"

  if [ "$backend" = postgres ] && [ "$PROFILE" -gt 0 ]; then
    log "profile: ${PROFILE}s of held checks with pg_stat_statements tracking on"
    pg_profile_begin
    run_wrk "$PROFILE" /v1/customers "${KEY[@]}" -s "$WORK/held.lua" >"$WORK/profile.wrk" 2>&1 \
      || { cat "$WORK/profile.wrk" >&2; die "profile: wrk failed"; }
    n=$(awk '/requests in/ {print $1}' "$WORK/profile.wrk")
    PROFILE_OUT=$(
      echo "Profile (PostgreSQL): $n held checks in ${PROFILE}s with pg_stat_statements on (all statements of"
      echo "azotte_bench, the sealer's and the worker's included)."
      echo
      pg_profile_end azotte_bench "$n" check 12
    )
  fi

  LOG_SUMMARIES+=("$backend:" "$(log_summary "$backend" | sed 's/^/  /')")
  stop_azotte
  if [ "$backend" = postgres ]; then stop_postgres; fi
done

echo "| backend | endpoint | requests/s | p50 ms | p99 ms | requests | non-2xx | socket errors | azotte CPU | postgres CPU | wrk CPU | other CPU | ratio to /healthz |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
echo
echo "Targets: held check ≥ 0.5 of /healthz's requests/s, p99 < 5 ms at that load."
echo "The half-404 run's non-2xx are the expected 404 entitlement_not_found answers (counted by its Lua script)."
echo
if [ -n "$PROFILE_OUT" ]; then
  printf '%s\n\n' "$PROFILE_OUT"
fi
echo "Server log errors and warnings (AZOTTE_LOG_LEVEL=warn), by count:"
printf '%s\n' "${LOG_SUMMARIES[@]}"
echo
echo "CPU columns: CPU time used during the measured run / wall time ($(nproc) CPUs = $(($(nproc) * 100))%)."
echo "\"other\" is the rest of the machine's busy time: unattributed kernel (softirq) work and any unrelated load."
[ "$CONTENDED" = 0 ] || echo "WARNING: other processes (or the hypervisor) took CPU during at least one run; see the warnings above."

if [ "$FAILED" != 0 ]; then
  die "unexpected statuses or socket errors (see the warnings above)"
fi
