#!/usr/bin/env bash
# Payments per second (issue 7): `POST /v1/payments` through the sandbox connector on PostgreSQL,
# against pgbench's TPC-B on the same cluster, on the same machine, in the same run, with the
# same client concurrency and duration.
#
# One throw-away PostgreSQL cluster (normal durability: fsync and synchronous_commit on) holds two
# databases. First `pgbench`: `pgbench -i -s $BENCH_PGBENCH_SCALE`, then the built-in TPC-B script
# with `-c $BENCH_CONNECTIONS -j 2 -T $BENCH_DURATION` over TCP (warm-up first), latency p50/p99
# from its per-transaction log. Then `azotte_bench`: a release `azotte serve`, set up through the
# HTTP API in the `development` (test) environment of tenant `bench` — a storefront, a sandbox PSP
# account, $BENCH_CUSTOMERS customers each with a `tok_sandbox_success` payment method, an API key
# with only `payment.create` and `payment.read` — one checked payment, then wrk POSTs payments
# cycling through the customers (warm-up, then the measured run). A CHECKPOINT separates each
# warm-up from its measured run, and the pgbench tables are vacuumed after their run, so neither
# workload pays for the other's writes.
#
# The azotte database is made minutes before the measured run, before autovacuum's first pass
# (about a minute after a database is made), so the planner would have no statistics, unlike an
# installation in service; it is therefore ANALYZEd after the warm-up. BENCH_ANALYZE=no skips
# that and shows a fresh installation's first minutes instead (on young tables some lookups by
# primary key are planned as scans of the whole environment; docs/benchmarks.md).
#
# It prints the machine, one table (rate, p50/p99, errors, CPU split: azotte, PostgreSQL, the
# client, other), the ratio payments/s ÷ TPC-B tps, CPU time and WAL bytes per payment and per
# TPC-B transaction, journal entries per payment. Then, with BENCH_PROFILE > 0, a separate short
# load run with pg_stat_statements tracking on (off during the measured runs): statements and
# transactions per payment and the statements taking the most database time. Last, correctness:
# every payment of the environment must be `captured`, and at least as many as wrk saw 2xx answers.
#
# Environment:
#   BENCH_DURATION       seconds per measured run (default 10)
#   BENCH_CONNECTIONS    concurrent clients: wrk connections and pgbench clients (default 16;
#                        wrk threads and pgbench -j are fixed at 2)
#   BENCH_WARMUP         seconds of warm-up before each measured run (default 2)
#   BENCH_CUSTOMERS      customers (one payment method each) the load cycles through (default 16)
#   BENCH_PGBENCH_SCALE  pgbench scale (default: the larger of 10 and BENCH_CONNECTIONS; pgbench's
#                        manual advises at least one branch per client, else TPC-B measures
#                        contention on the branch rows)
#   BENCH_PROFILE        seconds of the statement-profile run (default 5; 0: none)
#   BENCH_ANALYZE        "no": do not ANALYZE the azotte database after the payments warm-up
#                        (default yes)
#   BENCH_AZOTTE_BIN     run this azotte binary instead of building target/release/azotte, e.g.
#                        a release build of a committed revision while the working tree is being
#                        edited (the output then names the binary, not the working tree's commit)
#
# Only 127.0.0.1 is targeted. Every process and temporary directory made here is removed on exit,
# including on error or Ctrl-C. Exits non-zero if wrk saw non-2xx/3xx responses or socket errors,
# if pgbench reported failed transactions, or if a payment is not `captured` or missing (after
# printing the tables).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${BENCH_DURATION:-10}
CONNECTIONS=${BENCH_CONNECTIONS:-16}
WARMUP=${BENCH_WARMUP:-2}
CUSTOMERS=${BENCH_CUSTOMERS:-16}
PROFILE=${BENCH_PROFILE:-5}
ANALYZE=${BENCH_ANALYZE:-yes}
THREADS=2
WRK_TIMEOUT=5s

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

for v in DURATION CONNECTIONS WARMUP CUSTOMERS PROFILE; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "BENCH_$v must be a whole number, got '${!v}'"
done
SCALE=${BENCH_PGBENCH_SCALE:-$((CONNECTIONS > 10 ? CONNECTIONS : 10))}
[[ $SCALE =~ ^[0-9]+$ ]] && [ "$SCALE" -ge 1 ] && [ "$SCALE" -le 1000 ] \
  || die "BENCH_PGBENCH_SCALE must be between 1 and 1000, got '$SCALE'"
# Bounded: setup and runs must finish well inside the 15-minute access token lifetime.
[ "$DURATION" -ge 1 ] && [ "$DURATION" -le 300 ] || die "BENCH_DURATION must be between 1 and 300 seconds"
[ "$WARMUP" -le 60 ] || die "BENCH_WARMUP must be at most 60 seconds"
[ "$PROFILE" -le 60 ] || die "BENCH_PROFILE must be at most 60 seconds"
[ "$CONNECTIONS" -ge "$THREADS" ] || die "BENCH_CONNECTIONS must be at least $THREADS"
[ "$CUSTOMERS" -ge 1 ] && [ "$CUSTOMERS" -le 1000 ] || die "BENCH_CUSTOMERS must be between 1 and 1000"
case $ANALYZE in yes | no) ;; *) die "BENCH_ANALYZE must be yes or no, got '$ANALYZE'" ;; esac

# Nothing from the caller's environment may point the server elsewhere.
while read -r v; do unset "$v"; done < <(compgen -e | grep '^AZOTTE_' || true)

bench_init
ensure_tools

azotte_binary

# pg_stat_statements is loaded, but tracks nothing outside the profile run.
PG_EXTRA_OPTIONS="-c shared_preload_libraries=pg_stat_statements"
start_postgres
pg_profile_off

print_machine
echo "PostgreSQL $PG_VERSION (fsync on, synchronous_commit on, shared_buffers=256MB); $("$PG_BIN/pgbench" --version)"
echo "wrk: $(wrk -v 2>&1 | head -n 1 | awk '{print $1, $2}'); -t$THREADS -c$CONNECTIONS --latency --timeout $WRK_TIMEOUT; pgbench -c$CONNECTIONS -j$THREADS, scale $SCALE; ${WARMUP}s warm-up, ${DURATION}s measured each; ANALYZE after the payments warm-up: $ANALYZE"
echo "azotte: $BIN_ORIGIN; client, server and database share this machine"
echo

wal_lsn() { sql postgres "SELECT pg_current_wal_lsn()"; }
wal_since() { sql postgres "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$1')"; }

# ---------------------------------------------------------------------------------------------
# Baseline: pgbench TPC-B in its own database of the same cluster.

pgbench_tpcb "$SCALE" "$CONNECTIONS"
ROWS=("| pgbench TPC-B (scale $SCALE) | $(printf '%.0f' "$PGB_TPS") tps | $PGB_P50 | $PGB_P99 | $PGB_TXNS | $PGB_FAILED | - | $M_CPU_AZ | $M_CPU_PG | $M_CPU_WRK | $M_CPU_OTHER |")
PGB_S_PG=$M_S_PG
PGB_S_CLIENT=$M_S_WRK
PGB_WALL=$M_WALL

# ---------------------------------------------------------------------------------------------
# Payments: setup through the HTTP API, in the development (test) environment.

log "payments: starting azotte"
start_azotte payments "$WORK/payments" "AZOTTE_DATABASE_URL=postgres://azotte@127.0.0.1:$PG_PORT/azotte_bench"
bootstrap_tenant payments
TENANT=$(grep -oE '"id":"ten_[^"]+"' "$WORK/payments.tenant.json" | head -n 1 | cut -d'"' -f4 || true)
[ -n "$TENANT" ] || die "no tenant id in $(cat "$WORK/payments.tenant.json")"

call POST /v1/storefronts '{"name":"Bench","type":"web","default_currency":"EUR","default_language":"en",
  "countries":["DE"],"tax":{"kind":"inclusive","rate_bp":1900}}' 201
SF=$(json_id sfr)
call POST "/v1/storefronts/$SF/psp-accounts" '{"connector":"sandbox","display_name":"Sandbox","mode":"test"}' 201
PSP=$(json_id psp)
log "payments: $CUSTOMERS customers with a tok_sandbox_success payment method each"
PAIRS=()
for i in $(seq 1 "$CUSTOMERS"); do
  call PUT "/v1/customers/by-external-id/bench-$i" "{\"email\":\"bench$i@example.org\",\"country\":\"DE\"}" 201
  cus=$(json_id cus)
  call POST "/v1/customers/$cus/payment-methods" \
    "{\"storefront_id\":\"$SF\",\"psp_account_id\":\"$PSP\",\"token\":\"tok_sandbox_success\"}" 201
  PAIRS+=("$cus $(json_id pm)")
done

# Least privilege: the load's key may create and read payments, nothing else.
mfa_enrol payments
create_api_key payments development '{"description":"bench payments","permissions":["payment.create","payment.read"]}'
case $APIKEY in az_test_*) ;; *) die "expected a test-environment key (az_test_…)" ;; esac
KEY=(-H "x-api-key: $APIKEY" -H 'x-tn: bench' -H 'content-type: application/json')

read -r cus pm <<<"${PAIRS[0]}"
code=$(curl -sS --max-time 30 -o "$WORK/check.json" -w '%{http_code}' -XPOST "$BASE/v1/payments" "${KEY[@]}" \
  -d "{\"customer_id\":\"$cus\",\"payment_method_id\":\"$pm\",\"amount\":1499,\"currency\":\"EUR\"}")
[ "$code" = 201 ] && grep -q '"status":"captured"' "$WORK/check.json" \
  || die "the checked payment answered $code: $(cat "$WORK/check.json")"

# The load: each wrk thread starts at a random customer and cycles through all of them.
{
  echo "local bodies = {"
  for p in "${PAIRS[@]}"; do
    read -r cus pm <<<"$p"
    printf "  '{\"customer_id\":\"%s\",\"payment_method_id\":\"%s\",\"amount\":1499,\"currency\":\"EUR\"}',\n" "$cus" "$pm"
  done
  cat <<'LUA'
}
local f = assert(io.open("/proc/sys/kernel/random/uuid", "r"))
local i = tonumber(f:read("*l"):sub(1, 6), 16) % #bodies
f:close()
function request()
  i = i % #bodies + 1
  return wrk.format("POST", nil, nil, bodies[i])
end
LUA
} >"$WORK/payments.lua"

# ---------------------------------------------------------------------------------------------
# Payments: the measured run.

WARM_REQS=0
if [ "$WARMUP" -gt 0 ]; then
  run_wrk "$WARMUP" /v1/payments -s "$WORK/payments.lua" "${KEY[@]}" >"$WORK/payments.warmup" 2>&1 \
    || { cat "$WORK/payments.warmup" >&2; die "payments: wrk warm-up failed"; }
  WARM_REQS=$(awk '/requests in/ {r = $1} /Non-2xx or 3xx responses:/ {n = $NF} END {print r - n}' "$WORK/payments.warmup")
fi
if [ "$ANALYZE" = yes ]; then
  sql azotte_bench "ANALYZE" >/dev/null
fi
sql postgres "CHECKPOINT" >/dev/null
lsn0=$(wal_lsn)
warmup=$WARMUP
WARMUP=0 # done above
measure postgres payments /v1/payments -s "$WORK/payments.lua" "${KEY[@]}"
WARMUP=$warmup
PAY_WAL=$(wal_since "$lsn0")
PAY_RPS=$RPS
ROWS+=("| POST /v1/payments (sandbox) | $(printf '%.0f' "$RPS")/s | $M_P50 | $M_P99 | $M_REQS | $M_NON2XX | $M_SOCK | $M_CPU_AZ | $M_CPU_PG | $M_CPU_WRK | $M_CPU_OTHER |")
PAY_REQS=$((M_REQS - M_NON2XX))
# Payments and journal entries committed during the measured window, by the database's clock.
window="tenant_id = '$TENANT' AND environment = 'development'"
IN_WINDOW=$(sql azotte_bench "SELECT count(*) FROM payments WHERE $window
  AND created_at BETWEEN to_timestamp($M_T0) AND to_timestamp($M_T1)")
ENTRIES=$(sql azotte_bench "SELECT count(*) FROM journal_entries WHERE $window
  AND occurred_at BETWEEN to_timestamp($M_T0) AND to_timestamp($M_T1)")
# The payment's own entries, by type (the first 1,000 payments of the window).
ENTRY_TYPES=$(sql azotte_bench "SELECT string_agg(type || ' ' || n, ', ' ORDER BY type) FROM (
  SELECT e.type, round(count(*)::numeric / count(DISTINCT p.id), 2) AS n
  FROM (SELECT id FROM payments WHERE $window AND created_at >= to_timestamp($M_T0) ORDER BY id LIMIT 1000) p
  JOIN journal_entries e ON $window AND e.resource_type = 'payment' AND e.resource_id = p.id
  GROUP BY e.type) x" 2>/dev/null || echo "-")
PAY_S_AZ=$M_S_AZ
PAY_S_PG=$M_S_PG
PAY_S_CLIENT=$M_S_WRK
PAY_WALL=$M_WALL

# ---------------------------------------------------------------------------------------------
# Profile: statements and transactions per payment, with pg_stat_statements tracking on.

PROFILE_OUT=""
PROF_REQS=0
if [ "$PROFILE" -gt 0 ]; then
  log "profile: ${PROFILE}s of load with pg_stat_statements tracking on"
  n0=$(sql azotte_bench "SELECT count(*) FROM payments WHERE $window")
  pg_profile_begin
  run_wrk "$PROFILE" /v1/payments -s "$WORK/payments.lua" "${KEY[@]}" >"$WORK/profile.wrk" 2>&1 \
    || { cat "$WORK/profile.wrk" >&2; die "profile: wrk failed"; }
  sleep 0.5 # the sealer's pass for the last entries
  n1=$(sql azotte_bench "SELECT count(*) FROM payments WHERE $window")
  PROF_REQS=$(awk '/requests in/ {r = $1} /Non-2xx or 3xx responses:/ {n = $NF} END {print r - n}' "$WORK/profile.wrk")
  n=$((n1 - n0))
  [ "$n" -gt 0 ] || die "profile: no payment was made"
  PROFILE_OUT=$(
    echo "Profile: $n payments in ${PROFILE}s with pg_stat_statements on (all statements of azotte_bench,"
    echo "including the sealer's and the worker's). Execution time is the statements' own: it leaves out"
    echo "waiting for the WAL flush at commit (done after COMMIT's execution) and the round trips."
    echo
    pg_profile_end azotte_bench "$n" payment
  )
fi

# ---------------------------------------------------------------------------------------------
# Correctness: every payment of the environment captured, none missing.

STATUSES=$(sql azotte_bench "SELECT string_agg(status || ' ' || n, ', ' ORDER BY status)
  FROM (SELECT status, count(*) AS n FROM payments WHERE $window GROUP BY status) x")
CAPTURED=$(sql azotte_bench "SELECT count(*) FROM payments WHERE $window AND status = 'captured'")
TOTAL=$(sql azotte_bench "SELECT count(*) FROM payments WHERE $window")
EXPECTED=$((1 + WARM_REQS + PAY_REQS + PROF_REQS))
LOG_SUMMARY=$(log_summary payments)
stop_azotte

# ---------------------------------------------------------------------------------------------
# Report

echo "| workload | rate | p50 ms | p99 ms | transactions / requests | failed / non-2xx | socket errors | azotte CPU | postgres CPU | client CPU | other CPU |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
echo
echo "payments/s ÷ pgbench TPC-B tps = $(awk -v a="$PAY_RPS" -v b="$PGB_TPS" 'BEGIN {printf "%.2f", a / b}')"
echo
echo "| per unit | azotte CPU µs | PostgreSQL CPU µs | client CPU µs | WAL bytes |"
echo "|---|---:|---:|---:|---:|"
awk -v pg="$PGB_S_PG" -v cl="$PGB_S_CLIENT" -v w="$PGB_WAL" -v n="$(awk -v t="$PGB_TPS" -v d="$PGB_WALL" 'BEGIN {print t * d}')" \
  'BEGIN {printf "| TPC-B transaction | - | %.0f | %.0f | %.0f |\n", pg / n * 1e6, cl / n * 1e6, w / n}'
awk -v az="$PAY_S_AZ" -v pg="$PAY_S_PG" -v cl="$PAY_S_CLIENT" -v w="$PAY_WAL" -v n="$(awk -v t="$PAY_RPS" -v d="$PAY_WALL" 'BEGIN {print t * d}')" \
  'BEGIN {printf "| payment | %.0f | %.0f | %.0f | %.0f |\n", az / n * 1e6, pg / n * 1e6, cl / n * 1e6, w / n}'
echo
echo "Measured window: $IN_WINDOW payments committed ($(awk -v n="$IN_WINDOW" -v d="$PAY_WALL" 'BEGIN {printf "%.0f", n / d}')/s by the database's clock), $ENTRIES journal entries ($(awk -v e="$ENTRIES" -v n="$IN_WINDOW" 'BEGIN {printf "%.2f", (n > 0 ? e / n : 0)}') per payment; by type per payment: $ENTRY_TYPES)."
echo "WAL bytes and CPU per unit: over the measured run, divided by the completed units; the payment's include the sealer's work."
echo
if [ -n "$PROFILE_OUT" ]; then
  printf '%s\n\n' "$PROFILE_OUT"
fi
echo "Correctness: payments in the environment by status: $STATUSES; captured $CAPTURED of $TOTAL; 2xx answers seen by clients: $EXPECTED (1 check + $WARM_REQS warm-up + $PAY_REQS measured + $PROF_REQS profile)."
if [ "$CAPTURED" != "$TOTAL" ]; then
  FAILED=1
  log "WARNING: $((TOTAL - CAPTURED)) payments are not captured"
fi
if [ "$CAPTURED" -lt "$EXPECTED" ]; then
  FAILED=1
  log "WARNING: fewer captured payments ($CAPTURED) than 2xx answers ($EXPECTED)"
fi
echo
echo "Server log errors and warnings (AZOTTE_LOG_LEVEL=warn), by count:"
printf '%s\n' "${LOG_SUMMARY:-  none}"
echo
echo "CPU columns: CPU time used during the measured run / wall time ($(nproc) CPUs = $(($(nproc) * 100))%)."
echo "\"other\" is the rest of the machine's busy time: unattributed kernel (softirq) work and any unrelated load."
[ "$CONTENDED" = 0 ] || echo "WARNING: other processes (or the hypervisor) took CPU during at least one run; see the warnings above."

if [ "$FAILED" != 0 ]; then
  die "non-2xx/3xx responses, socket errors, failed pgbench transactions or missing/uncaptured payments (see the warnings above)"
fi
