#!/usr/bin/env bash
# Checkouts per second end to end (issue 8) on PostgreSQL, against pgbench's TPC-B on the same
# cluster, on the same machine, in the same run, with the same number of concurrent clients and
# the same duration. Target: checkouts/s ≥ 0.5 × TPC-B tps.
#
# One throw-away PostgreSQL cluster (normal durability: fsync and synchronous_commit on) holds two
# databases. First `pgbench` (bench/lib.sh pgbench_tpcb): `pgbench -i -s $BENCH_PGBENCH_SCALE`, a
# warm-up, then the built-in TPC-B script with `-c $BENCH_CLIENTS -j 2 -T $BENCH_DURATION` over
# TCP. Then `azotte_bench`: a release `azotte serve`, set up through the HTTP API in the
# `development` (test) environment of tenant `bench` (a storefront with a sandbox PSP account,
# the bundle `premium` granting three entitlements, EUR 9.99 a month without trial; an API key
# with role `service_account`), one checked checkout, then bench/checkout_load.py with
# $BENCH_CLIENTS clients, each looping over the whole purchase:
#
#   PUT /v1/customers/by-external-id/… (a new customer) → POST /v1/offers →
#   POST /v1/checkouts (Idempotency-Key; a new tok_sandbox_success token, attached by the
#   checkout; `Prefer: wait=$BENCH_WAIT`) → GET /v1/checkouts/{id} while it is `processing`
#
# With the wait preference the server answers 201 with the job's result when the job finishes in
# time, so a checkout normally needs no poll; BENCH_WAIT=0 measures the plain 202-and-poll flow
# (first poll 25 ms after the 202, then doubling, capped at the server's Retry-After of 1 s).
# The unit is the whole purchase of a new customer: the customer's creation is counted in it
# (DESIGN.md's "checkout-to-active-subscription" arguably starts at the offer; counting the
# customer too makes the figure a little lower, never higher).
# A warm-up, ANALYZE (the database is minutes old) and a CHECKPOINT, then the measured run:
# iterations start for $BENCH_DURATION s; a checkout counts when the client saw it `succeeded`
# before the deadline. End-to-end time is from the customer's creation to that answer, checkout
# time from POST /v1/checkouts to it.
# Then a second measured run of the checkout alone, DESIGN.md's "checkout-to-active-subscription"
# read literally: customers with an offer each are made first (4 × the first run's rate ×
# duration + 500 of them; not measured), then the same clients check them out for
# $BENCH_DURATION s, each iteration starting at POST /v1/checkouts (an error if they run out).
#
# It prints the machine, one table (rate, p50/p99, failures, CPU split: azotte, PostgreSQL, the
# client, other), the ratios, CPU time and WAL bytes per checkout and per TPC-B transaction. Then,
# with BENCH_PROFILE > 0, a separate short load run with pg_stat_statements tracking on (off during
# the measured runs): statements and transactions per checkout and the statements taking the most
# database time. Last, correctness, over every checkout of the run (check, warm-up, measured,
# checkout only, profile): each `succeeded`, with
# one subscription (active, three grants) and one payment, `captured` once by the sandbox (one
# attempt, its own PSP payment id, request key `checkout-{id}`), and no other payment; one
# invoice paid in full by that payment; its customer's one payment method (the checkout's token,
# active, the default); every numbered invoice series without a gap or a repeat. It also prints
# how many customers and offers the server created and made together, how many checkouts it read,
# wrote and settled together, and in how many transactions.
#
# Environment:
#   BENCH_DURATION       seconds of the measured runs (default 10)
#   BENCH_CLIENTS        concurrent clients: checkout loops and pgbench clients (default 16)
#   BENCH_WARMUP         seconds of warm-up before each measured run (default 3)
#   BENCH_PGBENCH_SCALE  pgbench scale (default: the larger of 10 and BENCH_CLIENTS)
#   BENCH_WAIT           Prefer: wait=N seconds on the checkout (default 5; 0: poll from the 202)
#   BENCH_POLL_MS        first poll after this many ms (default 25)
#   BENCH_PROFILE        seconds of the statement-profile run (default 5; 0: none)
#   BENCH_PROFILE_ROWS   statements listed by the profile, most database time first (default 25)
#   BENCH_AZOTTE_BIN     run this azotte binary instead of building target/release/azotte
#
# Only 127.0.0.1 is targeted. Every process and temporary directory made here is removed on exit,
# including on error or Ctrl-C. Exits non-zero on failed pgbench transactions, client errors, or
# a checkout or payment that is not as described above (after printing the tables).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${BENCH_DURATION:-10}
CLIENTS=${BENCH_CLIENTS:-16}
WARMUP=${BENCH_WARMUP:-3}
POLL_MS=${BENCH_POLL_MS:-25}
WAIT=${BENCH_WAIT:-5}
PROFILE=${BENCH_PROFILE:-5}
PROFILE_ROWS=${BENCH_PROFILE_ROWS:-25}
THREADS=2

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

for v in DURATION CLIENTS WARMUP POLL_MS WAIT PROFILE PROFILE_ROWS; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "BENCH_$v must be a whole number, got '${!v}'"
done
SCALE=${BENCH_PGBENCH_SCALE:-$((CLIENTS > 10 ? CLIENTS : 10))}
[[ $SCALE =~ ^[0-9]+$ ]] && [ "$SCALE" -ge 1 ] && [ "$SCALE" -le 1000 ] \
  || die "BENCH_PGBENCH_SCALE must be between 1 and 1000, got '$SCALE'"
# Bounded: setup and runs must finish well inside the 15-minute access token lifetime.
[ "$DURATION" -ge 1 ] && [ "$DURATION" -le 300 ] || die "BENCH_DURATION must be between 1 and 300 seconds"
[ "$WARMUP" -le 60 ] || die "BENCH_WARMUP must be at most 60 seconds"
[ "$PROFILE" -le 60 ] || die "BENCH_PROFILE must be at most 60 seconds"
[ "$CLIENTS" -ge "$THREADS" ] && [ "$CLIENTS" -le 256 ] || die "BENCH_CLIENTS must be between $THREADS and 256"

# Nothing from the caller's environment may point the server elsewhere.
while read -r v; do unset "$v"; done < <(compgen -e | grep '^AZOTTE_' || true)

bench_init
ensure_tools

azotte_binary

# pg_stat_statements is loaded but tracks nothing outside the profile run.
PG_EXTRA_OPTIONS="-c shared_preload_libraries=pg_stat_statements"
start_postgres
pg_profile_off
print_machine
echo "PostgreSQL $PG_VERSION (fsync on, synchronous_commit on, shared_buffers=256MB); $("$PG_BIN/pgbench" --version)"
echo "pgbench -c$CLIENTS -j$THREADS, scale $SCALE; checkout clients: $CLIENTS (python3 bench/checkout_load.py, Prefer: wait=$WAIT, first poll after ${POLL_MS} ms, doubling); ${WARMUP}s warm-up, ${DURATION}s measured each"
echo "azotte: $BIN_ORIGIN; client, server and database share this machine"
echo

wal_lsn() { sql postgres "SELECT pg_current_wal_lsn()"; }
wal_since() { sql postgres "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$1')"; }
ROWS=()

# ---------------------------------------------------------------------------------------------
# Baseline: pgbench TPC-B in its own database of the same cluster.

lsn0=$(wal_lsn)
pgbench_tpcb "$SCALE" "$CLIENTS"
PGB_WAL=$(wal_since "$lsn0") # includes the VACUUM after the run; small next to the run
ROWS+=("| pgbench TPC-B (scale $SCALE) | $(printf '%.0f' "$PGB_TPS") tps | $PGB_P50 | $PGB_P99 | - | - | $PGB_TXNS | $PGB_FAILED | $M_CPU_AZ | $M_CPU_PG | $M_CPU_WRK | $M_CPU_OTHER |")
PGB_S_PG=$M_S_PG
PGB_S_CLIENT=$M_S_WRK
PGB_WALL=$M_WALL

# ---------------------------------------------------------------------------------------------
# Checkouts: setup through the HTTP API, in the development (test) environment.

log "checkouts: starting azotte"
start_azotte checkouts "$WORK/checkouts" "AZOTTE_DATABASE_URL=postgres://azotte@127.0.0.1:$PG_PORT/azotte_bench"
bootstrap_tenant checkouts
TENANT=$(grep -oE '"id":"ten_[^"]+"' "$WORK/checkouts.tenant.json" | head -n 1 | cut -d'"' -f4 || true)
[ -n "$TENANT" ] || die "no tenant id in $(cat "$WORK/checkouts.tenant.json")"
subscription_catalog
mfa_enrol checkouts
create_api_key checkouts development '{"description":"bench checkouts","role":"service_account"}'
case $APIKEY in az_test_*) ;; *) die "expected a test-environment key (az_test_…)" ;; esac

# load LABEL SECONDS: one run of the client (stdout: its summary line; per checkout: $WORK/LABEL).
load() {
  checkout_load --prefix "$1" --clients "$CLIENTS" --duration "$2" --poll-ms "$POLL_MS" --wait "$WAIT" --out "$WORK/$1"
}

summary=$(checkout_load --prefix check --clients 1 --count 1 --out "$WORK/check")
[ "$(summary_field completed "$summary")" = 1 ] || die "the checked checkout did not succeed: $summary"
if [ "$WARMUP" -gt 0 ]; then
  summary=$(load warmup "$WARMUP")
  log "warm-up: $summary"
fi
sql azotte_bench "ANALYZE" >/dev/null
sql postgres "CHECKPOINT" >/dev/null
lsn0=$(wal_lsn)
cpu_begin
summary=$(load measured "$DURATION")
cpu_end checkouts
CHK_WAL=$(wal_since "$lsn0")
log "measured: $summary"
CHK_S_AZ=$M_S_AZ
CHK_S_PG=$M_S_PG
CHK_S_CLIENT=$M_S_WRK
# in_env [ALIAS]: the condition for rows of the benchmark's tenant environment.
in_env() { echo "${1:+$1.}tenant_id = '$TENANT' AND ${1:+$1.}environment = 'development'"; }
window=$(in_env)
# finish_run LABEL WHAT: after a measured run ($summary, cpu_end done): checks azotte is still
# alive, warns about client errors and checkouts not succeeded, adds the table row, and sets
# RUN_RATE and RUN_IN_WINDOW (checkouts that became `succeeded` during the measured window, by
# the database's clock).
finish_run() {
  kill -0 "$AZ_PID" 2>/dev/null || { tail -n 50 "$WORK/checkouts.stderr" >&2; die "azotte died under load"; }
  RUN_RATE=$(summary_field rate "$summary")
  local errors not_succeeded
  errors=$(summary_field errors "$summary")
  not_succeeded=$(summary_field failed "$summary")
  if [ "$errors" != 0 ] || [ "$not_succeeded" != 0 ]; then
    FAILED=1
    log "WARNING: $2: $errors client errors, $not_succeeded checkouts not succeeded"
  fi
  ROWS+=("| $1 | $RUN_RATE/s | $(summary_field e2e_p50 "$summary") | $(summary_field e2e_p99 "$summary") | $(summary_field checkout_p50 "$summary") | $(summary_field checkout_p99 "$summary") | $(summary_field completed "$summary") | $((errors + not_succeeded)) | $M_CPU_AZ | $M_CPU_PG | $M_CPU_WRK | $M_CPU_OTHER |")
  RUN_IN_WINDOW=$(sql azotte_bench "SELECT count(*) FROM checkouts WHERE $window AND status = 'succeeded'
    AND updated_at BETWEEN to_timestamp($M_T0) AND to_timestamp($M_T1)")
}
finish_run "checkout, end to end (customer → succeeded)" "measured run"
RATE=$RUN_RATE
IN_WINDOW=$RUN_IN_WINDOW
POLLS=$(summary_field polls "$summary")

# ---------------------------------------------------------------------------------------------
# Checkout only (DESIGN.md's "checkout-to-active-subscription"): customers with an offer each
# made beforehand, not measured; then the same clients check them out for $DURATION s.

PAIRS=$(awk -v r="$RATE" -v d="$DURATION" 'BEGIN {printf "%d", r * d * 4 + 500}')
summary=$(checkout_load --prefix only --clients "$CLIENTS" --count "$PAIRS" --prepare-only "$WORK/only.pairs")
log "checkout only: prepared $(summary_field prepared "$summary") customers with an offer in $(summary_field seconds "$summary") s"
[ "$(summary_field errors "$summary")" = 0 ] || die "checkout only: preparing failed: $summary"
sql postgres "CHECKPOINT" >/dev/null
lsn0=$(wal_lsn)
cpu_begin
summary=$(checkout_load --prefix only --clients "$CLIENTS" --duration "$DURATION" --poll-ms "$POLL_MS" --wait "$WAIT" \
  --pairs "$WORK/only.pairs" --out "$WORK/only")
cpu_end checkouts
ONLY_WAL=$(wal_since "$lsn0")
log "checkout only: $summary"
ONLY_S_AZ=$M_S_AZ
ONLY_S_PG=$M_S_PG
ONLY_S_CLIENT=$M_S_WRK
finish_run "checkout only (POST checkout → succeeded; customer and offer made before)" "checkout-only run"
ONLY_RATE=$RUN_RATE
ONLY_IN_WINDOW=$RUN_IN_WINDOW
[ "$ONLY_IN_WINDOW" -gt 0 ] || die "checkout only: no checkout succeeded during the measured run"

# ---------------------------------------------------------------------------------------------
# Profile: statements and transactions per checkout, with pg_stat_statements tracking on.

PROFILE_OUT=""
if [ "$PROFILE" -gt 0 ]; then
  log "profile: ${PROFILE}s of checkouts with pg_stat_statements tracking on"
  pg_profile_begin
  summary=$(load profile "$PROFILE")
  sleep 0.5 # the sealer's pass for the last entries
  n=$(summary_field all "$summary")
  [ "$n" -gt 0 ] || die "profile: no checkout finished: $summary"
  PROFILE_OUT=$(
    echo "Profile: $n checkouts in ${PROFILE}s with pg_stat_statements on (all statements of azotte_bench,"
    echo "the sealer's and the worker's included)."
    echo
    pg_profile_end azotte_bench "$n" checkout "$PROFILE_ROWS"
  )
fi

# ---------------------------------------------------------------------------------------------
# Correctness: every checkout of the run, its subscription and its one captured payment.

cat "$WORK/check" "$WORK/measured" "$WORK/only" >"$WORK/all"
[ "$WARMUP" = 0 ] || cat "$WORK/warmup" >>"$WORK/all"
[ "$PROFILE" = 0 ] || cat "$WORK/profile" >>"$WORK/all"
CLIENT_SEEN=$(wc -l <"$WORK/all")
CHECKOUTS=$(sql azotte_bench "SELECT string_agg(status || ' ' || n, ', ' ORDER BY status)
  FROM (SELECT status, count(*) AS n FROM checkouts WHERE $window GROUP BY status) x")
TOTAL=$(sql azotte_bench "SELECT count(*) FROM checkouts WHERE $window")
# A succeeded checkout whose subscription, grants or payment is not exactly as expected.
BAD=$(sql azotte_bench "SELECT count(*) FROM checkouts c WHERE $(in_env c) AND NOT (
  c.status = 'succeeded'
  AND (SELECT count(*) FROM subscriptions s WHERE $(in_env s) AND s.checkout_id = c.id AND s.id = c.subscription_id
       AND s.status = 'active') = 1
  AND (SELECT count(*) FROM entitlement_grants g WHERE $(in_env g) AND g.subscription_id = c.subscription_id) = 3
  AND (SELECT count(*) FROM payments p WHERE $(in_env p) AND p.request_key = 'checkout-' || c.id) = 1
  AND EXISTS (SELECT 1 FROM payments p WHERE $(in_env p) AND p.id = c.payment_id AND p.request_key = 'checkout-' || c.id
       AND p.status = 'captured' AND p.attempts = 1 AND p.captured_amount = p.amount AND p.psp_payment_id IS NOT NULL)
  AND EXISTS (SELECT 1 FROM customer_data.payment_methods m WHERE $(in_env m) AND m.id = c.payment_method_id
       AND m.customer_id = c.customer_id AND m.state = 'active' AND m.is_default)
  AND (SELECT count(*) FROM customer_data.payment_methods m WHERE $(in_env m) AND m.customer_id = c.customer_id) = 1)")
PAYMENTS=$(sql azotte_bench "SELECT count(*) || ' payments (' || count(*) FILTER (WHERE status = 'captured') || ' captured, '
  || count(DISTINCT psp_payment_id) || ' distinct PSP payment ids, ' || coalesce(sum(attempts), 0) || ' attempts)'
  FROM payments WHERE $window")
CAPTURED=$(sql azotte_bench "SELECT count(*) FROM payments WHERE $window AND status = 'captured'")
SANDBOX_IDS=$(sql azotte_bench "SELECT count(DISTINCT psp_payment_id) FROM payments WHERE $window")
SUBS=$(sql azotte_bench "SELECT count(*) FROM subscriptions WHERE $window")
# A succeeded checkout without exactly one invoice of its subscription paid in full by its payment
# (numbered, or queued for the numbering pass).
BAD_INVOICES=$(sql azotte_bench "SELECT count(*) FROM checkouts c WHERE $(in_env c) AND c.status = 'succeeded' AND
  (SELECT count(*) FROM invoices i JOIN invoice_payments ip ON ip.tenant_id = i.tenant_id
     AND ip.environment = i.environment AND ip.invoice_id = i.id
   WHERE $(in_env i) AND i.subscription_id = c.subscription_id AND i.amount_paid = i.total
     AND ip.payment_id = c.payment_id) <> 1")
# Every series gapless: its numbers run from 1 to how many it has, each once.
SERIES=$(sql azotte_bench "SELECT count(*) || ' invoices in ' || count(DISTINCT series) || ' series; gaps or repeats: '
  || (SELECT count(*) FROM (SELECT series FROM invoices WHERE $(in_env invoices) AND series IS NOT NULL GROUP BY series
      HAVING max(sequence) <> count(*) OR count(DISTINCT sequence) <> count(*)) g)
  FROM invoices WHERE $(in_env invoices) AND series IS NOT NULL")
GAPS=${SERIES##*: }
# Work done in shared transactions (decision 0007): items, the transactions, the mean batch.
METRICS=$(curl -sf "$BASE/metrics")
together() { # items-counter transactions-counter "what" "transactions' name"
  awk -v items="$1" -v txs="$2" -v what="$3" -v name="$4" '$1 == items {c = $2} $1 == txs {t = $2}
    END {if (t > 0) printf "%d %s in %d %s transactions (%.1f per transaction)", c, what, t, name, c / t; else print "none"}' <<<"$METRICS"
}
CREATED_TOGETHER=$(together azotte_customers_created_together_total azotte_customer_create_transactions_total "new customers" creating)
MADE_TOGETHER=$(together azotte_offers_made_together_total azotte_offer_make_transactions_total offers making)
READ_TOGETHER=$(together azotte_checkouts_read_together_total azotte_checkout_read_transactions_total "checkout requests" reading)
WRITTEN_TOGETHER=$(together azotte_checkouts_written_together_total azotte_checkout_write_transactions_total checkouts writing)
SETTLED_TOGETHER=$(together azotte_checkouts_settled_together_total azotte_checkout_settle_transactions_total checkouts settling)
# Idempotency claims and kept responses written in shared transactions (decision 0006).
IDEM_TOGETHER=$(awk '/^azotte_idempotency_records_gathered_total/ {split($1, a, "\""); n[a[2]] = $2}
  /^azotte_idempotency_gathered_transactions_total/ {split($1, a, "\""); t[a[2]] = $2}
  END {for (w in n) {printf "%s%d %ss in %d transactions (%.1f per transaction)", sep, n[w], w, t[w], (t[w] > 0 ? n[w] / t[w] : 0); sep = "; "}
    if (length(n) == 0) print "none"}' <<<"$METRICS")
IDEM_TXS=$(awk '$1 == "azotte_idempotency_record_transactions_total" {print $2}' <<<"$METRICS")
LOG_SUMMARY=$(log_summary checkouts)
stop_azotte

# ---------------------------------------------------------------------------------------------
# Report

echo "| workload | rate | p50 ms | p99 ms | checkout p50 ms | checkout p99 ms | completed | failed | azotte CPU | postgres CPU | client CPU | other CPU |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
echo
echo "checkouts/s ÷ pgbench TPC-B tps = $(awk -v a="$RATE" -v b="$PGB_TPS" 'BEGIN {printf "%.2f", a / b}') (target ≥ 0.5);" \
  "checkout only: $(awk -v a="$ONLY_RATE" -v b="$PGB_TPS" 'BEGIN {printf "%.2f", a / b}')"
echo
echo "| per unit | azotte CPU µs | PostgreSQL CPU µs | client CPU µs | WAL bytes |"
echo "|---|---:|---:|---:|---:|"
awk -v pg="$PGB_S_PG" -v cl="$PGB_S_CLIENT" -v w="$PGB_WAL" -v n="$(awk -v t="$PGB_TPS" -v d="$PGB_WALL" 'BEGIN {print t * d}')" \
  'BEGIN {printf "| TPC-B transaction | - | %.0f | %.0f | %.0f |\n", pg / n * 1e6, cl / n * 1e6, w / n}'
awk -v az="$CHK_S_AZ" -v pg="$CHK_S_PG" -v cl="$CHK_S_CLIENT" -v w="$CHK_WAL" -v n="$IN_WINDOW" \
  'BEGIN {printf "| checkout (all its requests and its job) | %.0f | %.0f | %.0f | %.0f |\n", az / n * 1e6, pg / n * 1e6, cl / n * 1e6, w / n}'
awk -v az="$ONLY_S_AZ" -v pg="$ONLY_S_PG" -v cl="$ONLY_S_CLIENT" -v w="$ONLY_WAL" -v n="$ONLY_IN_WINDOW" \
  'BEGIN {printf "| checkout only (its request and its job) | %.0f | %.0f | %.0f | %.0f |\n", az / n * 1e6, pg / n * 1e6, cl / n * 1e6, w / n}'
echo
echo "Requests per checkout: 3 (customer, offer, checkout) + $POLLS polls on average. Checkouts that became succeeded"
echo "during the measured run by the database's clock: $IN_WINDOW (CPU and WAL per checkout are divided by that)."
echo "p50/p99: TPC-B transaction latency; checkout end to end from PUT customer to the poll that saw"
echo "succeeded (\"checkout\": from POST /v1/checkouts), as the client saw it, polls included."
echo
if [ -n "$PROFILE_OUT" ]; then
  printf '%s\n\n' "$PROFILE_OUT"
fi
echo "Correctness: checkouts by status: $CHECKOUTS ($TOTAL in all, $CLIENT_SEEN seen by the clients); $SUBS subscriptions;"
echo "$PAYMENTS; checkouts without exactly one active subscription, three grants, one captured single-attempt payment"
echo "and their customer's one payment method (active, default): $BAD."
echo "Invoices: $SERIES; succeeded checkouts without exactly one invoice paid by their payment: $BAD_INVOICES."
echo "Created together: $CREATED_TOGETHER."
echo "Made together: $MADE_TOGETHER."
echo "Read together: $READ_TOGETHER."
echo "Written together: $WRITTEN_TOGETHER."
echo "Settled together: $SETTLED_TOGETHER."
echo "Idempotency records gathered: $IDEM_TOGETHER; ${IDEM_TXS:-0} transactions in all (one may write claims and responses)."
if [ "$BAD" != 0 ] || [ "$TOTAL" != "$CLIENT_SEEN" ] || [ "$CAPTURED" != "$TOTAL" ] || [ "$SANDBOX_IDS" != "$TOTAL" ] \
  || [ "$SUBS" != "$TOTAL" ] || [ "$BAD_INVOICES" != 0 ] || [ "$GAPS" != 0 ]; then
  FAILED=1
  log "WARNING: checkouts, subscriptions and captured payments do not match one to one (see above)"
fi
echo
echo "Server log errors and warnings (AZOTTE_LOG_LEVEL=warn), by count:"
printf '%s\n' "${LOG_SUMMARY:-  none}"
echo
echo "CPU columns: CPU time used during the measured run / wall time ($(nproc) CPUs = $(($(nproc) * 100))%)."
echo "\"other\" is the rest of the machine's busy time: unattributed kernel (softirq) work and any unrelated load."
[ "$CONTENDED" = 0 ] || echo "WARNING: other processes (or the hypervisor) took CPU during at least one run; see the warnings above."

if [ "$FAILED" != 0 ]; then
  die "failed pgbench transactions, client errors, or checkouts and payments that do not match (see the warnings above)"
fi
