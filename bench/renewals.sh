#!/usr/bin/env bash
# Renewal run (issue 9): renewals per second of the background workers over a large set of due
# subscriptions, on PostgreSQL (against pgbench's TPC-B on the same cluster, in the same run;
# target: renewals/s ≥ 0.5 × TPC-B tps) and on SQLite; peak memory; then proof in SQL that every
# subscription was renewed exactly once and that the sandbox PSP's ledger matches the invoices.
#
# Per backend: a release `azotte serve` is set up through the HTTP API in the `development`
# (test) environment of tenant `bench` (bench/lib.sh subscription_catalog: a storefront with a
# sandbox PSP account, the bundle `premium` granting three entitlements, EUR 9.99 a month), and
# $BENCH_TEMPLATES customers buy it through offers and checkouts (tok_sandbox_success), so the
# rows have the product's own shapes. The server is stopped and the database is bulk-seeded in
# one statement per table, copying the first real customer, payment method, subscription and its
# entitlement grants N times with new ids (`…seeded…` in the id, UUIDv7-shaped), external ids
# `seed-N`, no email or phone hash, the same sealed personal-data blobs (the renewal path never
# opens them), and one month ago as anchor: every seeded subscription is `active`, in its first
# period, which ended an hour ago (T0). Seeded rows get no history (no checkout, payment, invoice
# or journal entry); the renewals write theirs as in service. PostgreSQL: INSERT … SELECT over
# generate_series, then VACUUM ANALYZE and a CHECKPOINT; SQLite (sqlite3 CLI): the same over a
# recursive CTE.
#
# The measured run: $BENCH_WORKERS `azotte serve` processes (SQLite: one) start on the seeded
# database with housekeeping_interval_secs = 1 (the renewal scheduler and workers run in the
# housekeeping pass: each pass enqueues up to 1,000 due renewals per tenant environment, claims
# jobs 100 at a time and renews them as batches (decision 0007, "Renewal batches"), and goes on
# while renewals are due, up to 10 s) and the system clock, so every seeded subscription is due
# at once. Progress is read every 2 s from the database: the storefront's invoice series counter
# (each renewal's invoice takes the next gapless number). The run ends when N renewals committed (fails after $BENCH_STALL s without progress or
# $BENCH_TIMEOUT s in all). Reported: the overall rate (N ÷ time from the first process's launch
# to the last invoice's payment, i.e. the last renewal's settling commit), the steady rate (between 10 % and 90 % of N, from the samples),
# CPU split (azotte, PostgreSQL, other), azotte's peak RSS (VmHWM, per process) and the largest
# PostgreSQL backend's. The tables the run fills (payments, invoices, their lines and payments,
# renewal jobs, journal entries) start (nearly) empty, unlike an installation in service, and the
# planner's statistics say so: on PostgreSQL a payment's lookup by id was then planned as a scan
# of every payment of the environment until autovacuum's next ANALYZE (up to a minute later), so
# the script ANALYZEs them once 1 % of N (at least 500) renewals are done, before the steady
# window (BENCH_ANALYZE=no shows the cold start instead). With BENCH_PROFILE > 0 (PostgreSQL), pg_stat_statements tracks the first
# BENCH_PROFILE s after 90 % (outside the steady window): statements and database time per
# renewal. pgbench TPC-B (bench/lib.sh pgbench_tpcb: its own database, warm-up, CHECKPOINT,
# -c $BENCH_CONNECTIONS -j 2 -T $BENCH_DURATION) runs before the seeding.
#
# Correctness, in SQL after the workers stopped (each writes the sandbox's in-memory ledger on
# exit: AZOTTE_BENCH_SANDBOX_LEDGER, loaded into the database): every seeded subscription is
# `active` with periods = 2, period_start = T0 and the same new period_end (advanced by exactly
# one month); exactly one renewal job (done), one renewal payment (captured, request key
# `renewal-{subscription}-{T0}-a0-r0`, amount 999) and one invoice (paid, total = amount_paid =
# 999, line period from T0) per subscription, the invoice paid by that payment; no other payment
# of a seeded customer; the invoice numbers of the series gapless; the ledger holds exactly one
# authorization and one capture of 999 for each renewal payment and nothing else, and its capture
# total equals the renewal invoices' amount_paid total; one `subscription.renewed` journal
# outcome per subscription. Exits non-zero on any mismatch.
#
# Environment:
#   BENCH_BACKENDS               "postgres sqlite" (default) or either one
#   BENCH_SUBSCRIPTIONS          due subscriptions seeded on PostgreSQL (default 1000000)
#   BENCH_SQLITE_SUBSCRIPTIONS   due subscriptions seeded on SQLite (default 100000)
#   BENCH_WORKERS                azotte processes renewing on PostgreSQL (default 4; the product
#                                has no in-process worker concurrency setting: each process runs
#                                one batch at a time, several processes claim jobs safely)
#   BENCH_TEMPLATES              real checkouts through the API before seeding (default 3)
#   BENCH_CONNECTIONS            pgbench clients (default 16, as bench/payments.sh)
#   BENCH_DURATION, BENCH_WARMUP pgbench's measured and warm-up seconds (default 30 and 5)
#   BENCH_PGBENCH_SCALE          pgbench scale (default: the larger of 10 and BENCH_CONNECTIONS)
#   BENCH_PROFILE                seconds of the statement profile after 90 % (default 10; 0: none)
#   BENCH_ANALYZE                "no": do not ANALYZE the tables the run writes once it has done
#                                1 % of N (at least 500) renewals (default yes; see below)
#   BENCH_STALL, BENCH_TIMEOUT   give up after this many seconds without progress (default 300)
#                                or in all (default 7200)
#   BENCH_AZOTTE_BIN             run this azotte binary instead of building target/release/azotte
#   BENCH_PG_OPTIONS             more PostgreSQL server options, e.g. "-c max_wal_size=16GB -c
#                                shared_buffers=2GB" for the 1,000,000 run (the defaults of a small
#                                machine checkpoint every 1 GB of WAL once the database outgrows
#                                256 MB of buffers; see docs/benchmarks.md). pgbench runs on the same
#                                cluster, so the ratio compares like with like.
#
# Only 127.0.0.1 is used. Every process and temporary directory made here is removed on exit,
# including on error or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

BACKENDS=${BENCH_BACKENDS:-postgres sqlite}
PG_SUBS=${BENCH_SUBSCRIPTIONS:-1000000}
SQLITE_SUBS=${BENCH_SQLITE_SUBSCRIPTIONS:-100000}
WORKERS=${BENCH_WORKERS:-4}
TEMPLATES=${BENCH_TEMPLATES:-3}
CONNECTIONS=${BENCH_CONNECTIONS:-16}
DURATION=${BENCH_DURATION:-30}
WARMUP=${BENCH_WARMUP:-5}
PROFILE=${BENCH_PROFILE:-10}
ANALYZE=${BENCH_ANALYZE:-yes}
STALL=${BENCH_STALL:-300}
TIMEOUT=${BENCH_TIMEOUT:-7200}
THREADS=2
SAMPLE_EVERY=2

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

for v in PG_SUBS SQLITE_SUBS WORKERS TEMPLATES CONNECTIONS DURATION WARMUP PROFILE STALL TIMEOUT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v (BENCH_…) must be a whole number, got '${!v}'"
done
for b in $BACKENDS; do
  case $b in sqlite | postgres) ;; *) die "unknown backend '$b' in BENCH_BACKENDS" ;; esac
done
[ -n "$BACKENDS" ] || die "BENCH_BACKENDS is empty"
# Seeded ids carry the number in 6 base32 characters.
[ "$PG_SUBS" -ge 1 ] && [ "$PG_SUBS" -le 100000000 ] || die "BENCH_SUBSCRIPTIONS must be between 1 and 100000000"
[ "$SQLITE_SUBS" -ge 1 ] && [ "$SQLITE_SUBS" -le 100000000 ] || die "BENCH_SQLITE_SUBSCRIPTIONS must be between 1 and 100000000"
[ "$WORKERS" -ge 1 ] && [ "$WORKERS" -le 16 ] || die "BENCH_WORKERS must be between 1 and 16"
[ "$TEMPLATES" -ge 1 ] && [ "$TEMPLATES" -le 100 ] || die "BENCH_TEMPLATES must be between 1 and 100"
[ "$DURATION" -ge 1 ] && [ "$DURATION" -le 300 ] || die "BENCH_DURATION must be between 1 and 300 seconds"
[ "$WARMUP" -le 60 ] || die "BENCH_WARMUP must be at most 60 seconds"
[ "$CONNECTIONS" -ge "$THREADS" ] || die "BENCH_CONNECTIONS must be at least $THREADS"
[ "$PROFILE" -le 120 ] || die "BENCH_PROFILE must be at most 120 seconds"
[ "$STALL" -ge 10 ] || die "BENCH_STALL must be at least 10 seconds"
[ "$TIMEOUT" -ge 10 ] || die "BENCH_TIMEOUT must be at least 10 seconds"
case $ANALYZE in yes | no) ;; *) die "BENCH_ANALYZE must be yes or no, got '$ANALYZE'" ;; esac
SCALE=${BENCH_PGBENCH_SCALE:-$((CONNECTIONS > 10 ? CONNECTIONS : 10))}
[[ $SCALE =~ ^[0-9]+$ ]] && [ "$SCALE" -ge 1 ] && [ "$SCALE" -le 1000 ] \
  || die "BENCH_PGBENCH_SCALE must be between 1 and 1000, got '$SCALE'"
if [[ " $BACKENDS " == *" sqlite "* ]]; then
  command -v sqlite3 >/dev/null 2>&1 || die "the sqlite3 command-line shell is required for SQLite (apt-get install sqlite3)"
fi

# Nothing from the caller's environment may point the server elsewhere.
while read -r v; do unset "$v"; done < <(compgen -e | grep '^AZOTTE_' || true)

bench_init
command -v curl >/dev/null 2>&1 || die "curl is required"
command -v python3 >/dev/null 2>&1 || die "python3 is required (the template checkouts, time arithmetic)"

azotte_binary

print_machine
echo "azotte: $BIN_ORIGIN; workers and database share this machine"
echo

# ---------------------------------------------------------------------------------------------
# Helpers

# q SQL: one statement on the current backend's database ($BACKEND, $DB), rows as a|b|c.
q() {
  if [ "$BACKEND" = postgres ]; then
    timeout 3600 "$PG_BIN/psql" -X -At -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U azotte -d azotte_bench \
      -c "$1" || die "psql failed: $1"
  else
    timeout 600 sqlite3 -batch -bail -noheader -list -cmd '.timeout 60000' "$DB" "$1" \
      || die "sqlite3 failed: $1"
  fi
}

# ts EXPR: a comparable form of a timestamp column or literal (SQLite stores text).
ts() {
  if [ "$BACKEND" = postgres ]; then echo "($1)::timestamptz"; else echo "julianday($1)"; fi
}

# columns TABLE: the table's columns in order, one per line.
columns() {
  if [ "$BACKEND" = postgres ]; then
    local schema=public table=$1
    case $1 in *.*) schema=${1%%.*} table=${1#*.} ;; esac
    q "SELECT column_name FROM information_schema.columns
      WHERE table_schema = '$schema' AND table_name = '$table' ORDER BY ordinal_position"
  else
    q "SELECT name FROM pragma_table_info('${1#*.}') ORDER BY cid"
  fi
}

# seed_insert TABLE TEMPLATE_WHERE REPLACEMENTS...: INSERT INTO TABLE (every column) SELECT the
# template rows (alias t, WHERE TEMPLATE_WHERE) once per seed row (alias s: s.i, s.k), each column
# copied unless a replacement `column=expression` names it. Columns others add later are copied.
seed_insert() {
  local table=$1 where=$2 col expr list="" select="" r
  shift 2
  local -A repl=()
  for r in "$@"; do repl[${r%%=*}]=${r#*=}; done
  while read -r col; do
    [ -n "$col" ] || continue
    expr="t.$col"
    [ -z "${repl[$col]+x}" ] || { expr=${repl[$col]}; unset "repl[$col]"; }
    list+="${list:+, }$col"
    select+="${select:+, }$expr"
  done < <(columns "$table")
  [ ${#repl[@]} = 0 ] || die "seed_insert $table: no column ${!repl[*]}"
  local from
  from=$(table_name "$table")
  echo "INSERT INTO $from ($list) SELECT $select FROM seed s CROSS JOIN $from t WHERE $where;"
}

# table_name TABLE: as the backend names it (SQLite has no customer_data schema).
table_name() { if [ "$BACKEND" = postgres ]; then echo "$1"; else echo "${1#*.}"; fi; }

# nid COLUMN PREFIX_LENGTH: the seeded id derived from a template id: the template's prefix and
# first 14 characters of its body, `seeded`, then the seed number in 6 base32 characters.
nid() { echo "substr($1, 1, $(($2 + 14))) || 'seeded' || s.k"; }

A="'0123456789abcdefghjkmnpqrstvwxyz'"
B32="substr($A, ((i >> 25) & 31) + 1, 1) || substr($A, ((i >> 20) & 31) + 1, 1) || substr($A, ((i >> 15) & 31) + 1, 1) || substr($A, ((i >> 10) & 31) + 1, 1) || substr($A, ((i >> 5) & 31) + 1, 1) || substr($A, (i & 31) + 1, 1)"

# t0_strings EPOCH: T0 and the anchor (one month earlier) as the backend writes timestamps.
t0_strings() {
  python3 - "$1" "$BACKEND" <<'PY'
import datetime, sys
t0 = datetime.datetime.fromtimestamp(int(sys.argv[1]), datetime.timezone.utc)
m = t0.month - 1 or 12
y = t0.year - (1 if t0.month == 1 else 0)
anchor = t0.replace(year=y, month=m)
fmt = "%Y-%m-%d %H:%M:%S+00" if sys.argv[2] == "postgres" else "%Y-%m-%dT%H:%M:%S+00:00"
print(t0.strftime(fmt) + "|" + anchor.strftime(fmt))
PY
}

progress() { q "SELECT coalesce(sum(last_number), 0) FROM invoice_series WHERE storefront_id = '$SF'"; }

vmhwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# PostgreSQL's largest peak RSS among the cluster's processes (kB; includes the shared buffers
# each touched).
pg_vmhwm_kb() {
  local pm max=0 p v
  pm=$(head -n 1 "$PG_DIR/data/postmaster.pid" 2>/dev/null) || { echo 0; return; }
  for p in "$pm" $(pgrep -P "$pm" || true); do
    v=$(vmhwm_kb "$p")
    [ "${v:-0}" -le "$max" ] || max=$v
  done
  echo "$max"
}

# stop_workers: SIGTERM to every azotte process, then wait (up to 10 minutes) for each to finish
# its pass and write its ledger.
stop_workers() {
  local p
  for p in "${WORKER_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${WORKER_PIDS[@]}"; do
    for _ in $(seq 1 6000); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$p" 2>/dev/null && die "azotte process $p did not stop within 10 minutes"
    wait "$p" 2>/dev/null || true
  done
  AZ_PID=""
  AZ_EXTRA_PIDS=""
}

mb() { awk -v k="$1" 'BEGIN {printf "%.0f", k / 1024}'; }

ROWS=()
CHECKS=()
NOTES=()

# ---------------------------------------------------------------------------------------------
# Baseline: pgbench TPC-B in its own database of the cluster the renewals then use.

if [[ " $BACKENDS " == *" postgres "* ]]; then
  PG_EXTRA_OPTIONS="-c shared_preload_libraries=pg_stat_statements${BENCH_PG_OPTIONS:+ $BENCH_PG_OPTIONS}"
  start_postgres
  pg_profile_off
  echo "PostgreSQL $PG_VERSION (fsync on, synchronous_commit on, shared_buffers=256MB${BENCH_PG_OPTIONS:+, then $BENCH_PG_OPTIONS}); $("$PG_BIN/pgbench" --version); pgbench -c$CONNECTIONS -j$THREADS, scale $SCALE, ${WARMUP}s warm-up, ${DURATION}s measured"
  pgbench_tpcb "$SCALE" "$CONNECTIONS"
  PGB_ROW="| pgbench TPC-B (scale $SCALE, $CONNECTIONS clients) | postgres | - | $(printf '%.0f' "$PGB_TPS") tps | - | ${DURATION} s | - | $M_CPU_PG | $M_CPU_OTHER | - | - |"
fi

# ---------------------------------------------------------------------------------------------
# Per backend: templates through the API, bulk seed, the measured run, correctness.

for BACKEND in $BACKENDS; do
  if [ "$BACKEND" = postgres ]; then N=$PG_SUBS; W=$WORKERS; else N=$SQLITE_SUBS; W=1; fi
  dir=$WORK/$BACKEND
  env_args=("AZOTTE_HOUSEKEEPING_INTERVAL_SECS=1")
  if [ "$BACKEND" = postgres ]; then
    env_args+=("AZOTTE_DATABASE_URL=postgres://azotte@127.0.0.1:$PG_PORT/azotte_bench")
  else
    DB=$dir/azotte-data/azotte.db
  fi

  log "$BACKEND: starting azotte; $TEMPLATES checkouts through the API"
  start_azotte "$BACKEND-setup" "$dir" "${env_args[@]}"
  bootstrap_tenant "$BACKEND-setup"
  subscription_catalog
  mfa_enrol "$BACKEND-setup"
  create_api_key "$BACKEND-setup" development '{"description":"bench templates","role":"service_account"}'
  summary=$(checkout_load --prefix "template-$BACKEND" --clients 1 --count "$TEMPLATES" --out "$WORK/templates.$BACKEND") \
    || die "$BACKEND: template checkouts failed"
  [ "$(summary_field completed "$summary")" = "$TEMPLATES" ] && [ "$(summary_field errors "$summary")" = 0 ] \
    || die "$BACKEND: not every template checkout succeeded: $summary"
  stop_azotte
  [ -f "$dir/azotte-data/azotte.db" ] || [ "$BACKEND" = postgres ] || die "no SQLite database at $DB"

  # The template: the first real subscription, its customer and payment method.
  read -r TSUB TCUS TPM < <(q "SELECT id, customer_id, payment_method_id FROM subscriptions
    WHERE storefront_id = '$SF' AND status = 'active' ORDER BY id LIMIT 1" | tr '|' ' ')
  [ -n "${TPM:-}" ] || die "$BACKEND: no template subscription"
  [ "$(q "SELECT count(*) FROM entitlement_grants WHERE subscription_id = '$TSUB'")" -ge 1 ] \
    || die "$BACKEND: the template subscription has no entitlement grants"
  [ "$(q "SELECT period_unit || period_count || '/' || periods || '/' || amount FROM subscriptions WHERE id = '$TSUB'")" = "month1/1/999" ] \
    || die "$BACKEND: unexpected template subscription shape"

  T0_EPOCH=$(($(date +%s) - 3600))
  IFS="|" read -r T0 ANCHOR < <(t0_strings "$T0_EPOCH")
  SERIES0=$(progress)

  log "$BACKEND: seeding $N due subscriptions (customer, payment method, subscription, grants each)"
  if [ "$BACKEND" = postgres ]; then
    seed_rows="CREATE TEMP TABLE seed AS SELECT i, $B32 AS k FROM generate_series(1, $N) AS g(i);"
    prelude="SET synchronous_commit = off; SET maintenance_work_mem = '256MB';"
  else
    seed_rows="CREATE TEMP TABLE seed AS WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < $N) SELECT i, $B32 AS k FROM g;"
    prelude="PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY; PRAGMA cache_size = -262144;"
  fi
  {
    echo "$prelude"
    echo "BEGIN;"
    echo "$seed_rows"
    seed_insert customer_data.customers "t.id = '$TCUS'" \
      "id=$(nid t.id 4)" "external_id='seed-' || s.i" "email_hash=NULL" "phone_hash=NULL" \
      "created_at='$ANCHOR'" "updated_at='$ANCHOR'"
    # Statistics before each table is referenced: the foreign key checks are planned on first use,
    # and a table believed empty is checked by scanning it, once per inserted row.
    echo "ANALYZE $(table_name customer_data.customers);"
    pm_repl=("id=$(nid t.id 3)" "customer_id=$(nid t.customer_id 4)" "created_at='$ANCHOR'" "updated_at='$ANCHOR'")
    columns customer_data.payment_methods | grep -qx psp_customer_id \
      && pm_repl+=("psp_customer_id='sbxcus_' || $(nid t.customer_id 4)")
    seed_insert customer_data.payment_methods "t.id = '$TPM'" "${pm_repl[@]}"
    seed_insert subscriptions "t.id = '$TSUB'" \
      "id=$(nid t.id 4)" "customer_id=$(nid t.customer_id 4)" "payment_method_id=$(nid t.payment_method_id 3)" \
      "checkout_id=$(nid t.checkout_id 4)" "status='active'" "anchor='$ANCHOR'" "period_start='$ANCHOR'" \
      "period_end='$T0'" "periods=1" "created_at='$ANCHOR'" "updated_at='$ANCHOR'"
    echo "ANALYZE subscriptions;"
    seed_insert entitlement_grants "t.subscription_id = '$TSUB'" \
      "subscription_id=$(nid t.subscription_id 4)" "customer_id=$(nid t.customer_id 4)"
    echo "COMMIT;"
  } >"$WORK/seed.$BACKEND.sql"
  t0=$EPOCHREALTIME
  if [ "$BACKEND" = postgres ]; then
    timeout 7200 "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U azotte -d azotte_bench \
      -f "$WORK/seed.$BACKEND.sql" >"$WORK/seed.$BACKEND.log" 2>&1 \
      || { cat "$WORK/seed.$BACKEND.log" >&2; die "$BACKEND: seeding failed"; }
    seed_s=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.0f", b - a}')
    log "$BACKEND: seeded in $seed_s s; VACUUM ANALYZE and CHECKPOINT"
    q "VACUUM ANALYZE" >/dev/null
    q "CHECKPOINT" >/dev/null
    size=$(sql azotte_bench "SELECT pg_size_pretty(pg_database_size('azotte_bench'))")
  else
    timeout 7200 sqlite3 -batch -bail "$DB" <"$WORK/seed.$BACKEND.sql" >"$WORK/seed.$BACKEND.log" 2>&1 \
      || { cat "$WORK/seed.$BACKEND.log" >&2; die "$BACKEND: seeding failed"; }
    seed_s=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.0f", b - a}')
    log "$BACKEND: seeded in $seed_s s; ANALYZE"
    q "ANALYZE; PRAGMA wal_checkpoint(TRUNCATE);" >/dev/null
    size="$(du -sh "$dir/azotte-data" | cut -f1)B"
  fi
  SEEDED=$(q "SELECT count(*) FROM subscriptions WHERE id LIKE 'sub\_%seeded%' ESCAPE '\\'")
  [ "$SEEDED" = "$N" ] || die "$BACKEND: $SEEDED seeded subscriptions, expected $N"
  DUE=$(q "SELECT count(*) FROM subscriptions WHERE status = 'active' AND $(ts period_end) <= $(ts "'$T0'")")
  [ "$DUE" = "$N" ] || die "$BACKEND: $DUE due subscriptions after seeding, expected $N"
  NOTES+=("$BACKEND: seeded $N subscriptions (with customers, payment methods, $(q "SELECT count(*) FROM entitlement_grants WHERE subscription_id = '$TSUB'") grants each) in $seed_s s; database $size before the run")

  # -------------------------------------------------------------------------------------------
  # The measured run.

  log "$BACKEND: starting $W azotte process(es); $N renewals due"
  WORKER_PIDS=()
  RUN_T0=$EPOCHREALTIME
  cpu_begin_done=0
  for w in $(seq 1 "$W"); do
    start_azotte "$BACKEND-w$w" "$dir" "${env_args[@]}" "AZOTTE_BENCH_SANDBOX_LEDGER=$WORK/ledger.$BACKEND.$w.tsv"
    WORKER_PIDS+=("$AZ_PID")
    if [ "$cpu_begin_done" = 0 ]; then
      cpu_begin
      cpu_begin_done=1
    fi
  done
  AZ_PID=${WORKER_PIDS[0]}
  AZ_EXTRA_PIDS="${WORKER_PIDS[*]:1}"
  : >"$WORK/samples.$BACKEND"
  last_n=-1
  last_change=$EPOCHREALTIME
  profiling=0
  PROFILE_OUT=""
  analyzed=0
  ANALYZE_AT=$((N / 100 > 500 ? N / 100 : 500))
  [ "$ANALYZE_AT" -lt "$N" ] || ANALYZE_AT=$N
  while :; do
    sleep "$SAMPLE_EVERY"
    for p in "${WORKER_PIDS[@]}"; do
      kill -0 "$p" 2>/dev/null || { tail -n 30 "$WORK"/"$BACKEND"-w*.stderr >&2; die "$BACKEND: azotte process $p died"; }
    done
    now=$EPOCHREALTIME
    n=$(($(progress) - SERIES0))
    echo "$now $n" >>"$WORK/samples.$BACKEND"
    elapsed=$(awk -v a="$RUN_T0" -v b="$now" 'BEGIN {printf "%.0f", b - a}')
    if [ "$n" != "$last_n" ]; then
      last_n=$n
      last_change=$now
      [ $((elapsed % 30)) -ge $SAMPLE_EVERY ] || log "$BACKEND: ${elapsed}s: $n of $N renewed"
    fi
    if [ "$ANALYZE" = yes ] && [ "$analyzed" = 0 ] && [ "$n" -ge "$ANALYZE_AT" ]; then
      q "ANALYZE payments; ANALYZE invoices; ANALYZE invoice_lines; ANALYZE invoice_payments; ANALYZE renewal_jobs; ANALYZE journal_entries" >/dev/null
      analyzed=1
      log "$BACKEND: ${elapsed}s: $n renewed; the tables the run writes ANALYZEd"
    fi
    if [ "$BACKEND" = postgres ] && [ "$PROFILE" -gt 0 ]; then
      if [ "$profiling" = 0 ] && [ $((n * 10)) -ge $((N * 9)) ] && [ "$n" -lt "$N" ]; then
        pg_profile_begin
        profiling=1
        prof_t0=$EPOCHREALTIME
        prof_n0=$(($(progress) - SERIES0))
      elif [ "$profiling" = 1 ] && { [ "$n" -ge "$N" ] || awk -v a="$prof_t0" -v b="$now" -v p="$PROFILE" 'BEGIN {exit !(b - a >= p)}'; }; then
        prof_n=$(($(progress) - SERIES0 - prof_n0))
        profiling=2
        if [ "$prof_n" -gt 0 ]; then
          PROFILE_OUT=$(
            echo "Profile (PostgreSQL): $prof_n renewals in $(awk -v a="$prof_t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f", b - a}') s after 90 % with pg_stat_statements on (every statement of azotte_bench: the scheduler's, the sealer's, …)."
            echo
            pg_profile_end azotte_bench "$prof_n" renewal 20
          )
        else
          pg_profile_off
        fi
      fi
    fi
    [ "$n" -lt "$N" ] || break
    awk -v a="$last_change" -v b="$now" -v s="$STALL" 'BEGIN {exit !(b - a > s)}' \
      && die "$BACKEND: no renewal for $STALL s ($n of $N renewed)"
    awk -v a="$RUN_T0" -v b="$now" -v s="$TIMEOUT" 'BEGIN {exit !(b - a > s)}' \
      && die "$BACKEND: $n of $N renewed after $TIMEOUT s (BENCH_TIMEOUT)"
  done
  # The counter moves when a renewal's invoice is numbered, which may be before its charge
  # settles: wait for the last subscriptions to advance.
  for _ in $(seq 1 120); do
    [ "$(q "SELECT count(*) FROM subscriptions WHERE id LIKE 'sub\_%seeded%' ESCAPE '\' AND periods = 2")" -lt "$N" ] || break
    sleep 1
  done
  cpu_end "$BACKEND renewals"
  [ "$profiling" != 1 ] || pg_profile_off
  AZ_HWM=()
  for p in "${WORKER_PIDS[@]}"; do AZ_HWM+=("$(mb "$(vmhwm_kb "$p")")"); done
  PG_HWM="-"
  [ "$BACKEND" != postgres ] || PG_HWM="$(mb "$(pg_vmhwm_kb)") MB"
  LOGS=$(for w in $(seq 1 "$W"); do log_summary "$BACKEND-w$w"; done | grep -v 'unknown environment variable AZOTTE_BENCH_SANDBOX_LEDGER' || true)
  log "$BACKEND: all renewed; stopping the workers (each writes its sandbox ledger)"
  stop_workers

  # Rates: overall from the first launch to the last renewal's commit (database clock = this
  # machine's), steady between the samples at 10 % and 90 %.
  LAST=$(q "SELECT $([ "$BACKEND" = postgres ] && echo "extract(epoch FROM max(paid_at))" || echo "(max(julianday(paid_at)) - 2440587.5) * 86400") FROM invoices WHERE customer_id LIKE 'cus\_%seeded%' ESCAPE '\\'")
  OVERALL_S=$(awk -v a="$RUN_T0" -v b="$LAST" 'BEGIN {printf "%.1f", b - a}')
  OVERALL=$(awk -v n="$N" -v s="$OVERALL_S" 'BEGIN {printf "%.0f", n / s}')
  read -r STEADY STEADY_WINDOW < <(awk -v n="$N" '
    { t[NR] = $1; c[NR] = $2 }
    END {
      for (i = 1; i <= NR; i++) { if (!a && c[i] >= 0.1 * n) a = i; if (!b && c[i] >= 0.9 * n) b = i }
      if (a && b && b > a) printf "%.0f %.0f-%.0f%%\n", (c[b] - c[a]) / (t[b] - t[a]), 100 * c[a] / n, 100 * c[b] / n
      else print "- -"
    }' "$WORK/samples.$BACKEND")
  RATIO="-"
  if [ "$BACKEND" = postgres ] && [ "$STEADY" != "-" ]; then
    RATIO=$(awk -v a="$STEADY" -v b="$PGB_TPS" 'BEGIN {printf "%.2f", a / b}')
  fi
  ROWS+=("| renewals ($N due) | $BACKEND | $W | ${STEADY}/s ($STEADY_WINDOW) | ${OVERALL}/s | ${OVERALL_S} s | $(IFS=/; echo "${AZ_HWM[*]}") MB | $M_CPU_AZ | $M_CPU_PG | $M_CPU_OTHER | $PG_HWM | $RATIO |")
  # Logged at once too: the correctness checks of a large run take minutes.
  log "$BACKEND: run: ${ROWS[-1]}"
  [ -z "$PROFILE_OUT" ] || NOTES+=("$PROFILE_OUT")
  NOTES+=("$BACKEND server log errors and warnings (AZOTTE_LOG_LEVEL=warn), by count: ${LOGS:-none}")

  # -------------------------------------------------------------------------------------------
  # Correctness.

  log "$BACKEND: correctness"
  ledger_files=("$WORK"/ledger."$BACKEND".*.tsv)
  [ "${#ledger_files[@]}" = "$W" ] && [ -f "${ledger_files[0]}" ] || die "$BACKEND: expected $W sandbox ledger files"
  cat "${ledger_files[@]}" >"$WORK/ledger.$BACKEND.tsv"
  LEDGER_LINES=$(wc -l <"$WORK/ledger.$BACKEND.tsv")
  ddl="CREATE TABLE bench_ledger (seq BIGINT, account TEXT, kind TEXT, payment TEXT, refund TEXT, psp_id TEXT, amount BIGINT, currency TEXT, idempotency_key TEXT)"
  if [ "$BACKEND" = postgres ]; then
    q "$ddl" >/dev/null
    timeout 600 "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U azotte -d azotte_bench \
      -c "\\copy bench_ledger FROM '$WORK/ledger.$BACKEND.tsv'" || die "loading the ledger failed"
    q "CREATE INDEX ON bench_ledger (payment); ANALYZE bench_ledger" >/dev/null
  else
    timeout 600 sqlite3 -batch -bail "$DB" "$ddl" ".mode tabs" ".import '$WORK/ledger.$BACKEND.tsv' bench_ledger" \
      "CREATE INDEX bench_ledger_payment ON bench_ledger (payment)" || die "loading the ledger failed"
  fi

  seeded_sub="s.id LIKE 'sub\\_%seeded%' ESCAPE '\\'"
  renewal_pay="p.request_key LIKE 'renewal-sub\\_%seeded%' ESCAPE '\\'"
  # check NAME EXPECTED SQL: one correctness figure.
  check() {
    local got
    got=$(q "$3")
    if [ "$got" = "$2" ]; then
      CHECKS+=("| $BACKEND | $1 | $got | ok |")
      log "$BACKEND: ok: $1: $got"
    else
      CHECKS+=("| $BACKEND | $1 | $got (expected $2) | FAILED |")
      FAILED=1
      log "WARNING: $BACKEND: $1: $got, expected $2"
    fi
  }
  NEW_END=$(q "SELECT min(period_end) FROM subscriptions s WHERE $seeded_sub")
  check "seeded subscriptions renewed once: active, periods = 2, period from T0 to one new end" "$N" \
    "SELECT count(*) FROM subscriptions s WHERE $seeded_sub AND s.status = 'active' AND s.periods = 2
       AND s.dunning_attempts = 0 AND $(ts s.period_start) = $(ts "'$T0'") AND $(ts s.period_end) = $(ts "'$NEW_END'")"
  check "new period end one month after T0 ($T0 → $NEW_END)" "$N" \
    "SELECT count(*) FROM subscriptions s WHERE $seeded_sub AND s.period_end = '$NEW_END'
       AND $(ts s.period_end) > $(ts "'$T0'") + $([ "$BACKEND" = postgres ] && echo "interval '27 days'" || echo 27)
       AND $(ts s.period_end) < $(ts "'$T0'") + $([ "$BACKEND" = postgres ] && echo "interval '32 days'" || echo 32)"
  check "renewal jobs: one per seeded subscription, all done" "$N|$N|$N" \
    "SELECT count(*), count(DISTINCT j.subscription_id), coalesce(sum(CASE WHEN j.status = 'done' THEN 1 ELSE 0 END), 0)
       FROM renewal_jobs j WHERE j.subscription_id LIKE 'sub\\_%seeded%' ESCAPE '\\'"
  check "renewal payments: one captured 999 per subscription, key …-a0-r0" "$N|$N|$N" \
    "SELECT count(*), count(DISTINCT substr(p.request_key, 9, 30)),
            coalesce(sum(CASE WHEN p.status = 'captured' AND p.captured_amount = 999 AND p.attempts = 1
                              AND p.request_key LIKE '%-a0-r0' THEN 1 ELSE 0 END), 0)
       FROM payments p WHERE $renewal_pay"
  check "payments of seeded customers other than their renewal" 0 \
    "SELECT count(*) FROM payments p WHERE p.customer_id LIKE 'cus\\_%seeded%' ESCAPE '\\' AND NOT ($renewal_pay)"
  check "renewal invoices: one paid (total = amount_paid = 999) per subscription" "$N|$N|$N" \
    "SELECT count(*), count(DISTINCT i.subscription_id),
            coalesce(sum(CASE WHEN i.status = 'paid' AND i.total = 999 AND i.amount_paid = 999 THEN 1 ELSE 0 END), 0)
       FROM invoices i WHERE i.subscription_id LIKE 'sub\\_%seeded%' ESCAPE '\\'"
  check "invoice lines for the new period (from T0)" "$N" \
    "SELECT count(*) FROM invoice_lines l JOIN invoices i ON i.tenant_id = l.tenant_id AND i.environment = l.environment
       AND i.id = l.invoice_id WHERE i.subscription_id LIKE 'sub\\_%seeded%' ESCAPE '\\'
       AND $(ts l.period_start) = $(ts "'$T0'") AND l.period_end = '$NEW_END'"
  check "each renewal invoice paid by its subscription's renewal payment" "$N" \
    "SELECT count(*) FROM invoices i
       JOIN invoice_payments ip ON ip.tenant_id = i.tenant_id AND ip.environment = i.environment AND ip.invoice_id = i.id
       JOIN payments p ON p.tenant_id = ip.tenant_id AND p.environment = ip.environment AND p.id = ip.payment_id
       WHERE i.subscription_id LIKE 'sub\\_%seeded%' ESCAPE '\\' AND $renewal_pay
         AND substr(p.request_key, 9, 30) = i.subscription_id AND ip.amount = i.amount_paid"
  check "invoice numbers of the series gapless (count = last - first + 1)" 1 \
    "SELECT CASE WHEN count(*) = max(sequence) - min(sequence) + 1 AND count(DISTINCT number) = count(*) THEN 1 ELSE 0 END
       FROM invoices WHERE storefront_id = '$SF' AND number IS NOT NULL"
  check "sandbox ledger: an authorization and a capture of 999 per renewal payment" "$N|$N|$N" \
    "SELECT count(*), coalesce(sum(CASE WHEN a.n = 1 AND c.n = 1 AND c.amount = 999 THEN 1 ELSE 0 END), 0),
            count(DISTINCT c.payment)
       FROM payments p
       LEFT JOIN (SELECT payment, count(*) AS n FROM bench_ledger WHERE kind = 'authorization' GROUP BY payment) a ON a.payment = p.id
       LEFT JOIN (SELECT payment, count(*) AS n, sum(amount) AS amount FROM bench_ledger WHERE kind = 'capture' GROUP BY payment) c ON c.payment = p.id
       WHERE $renewal_pay"
  # A join, not NOT EXISTS per entry: payments' key leads with the tenant, so a lookup by id
  # alone is a scan of every payment (at 1,000,000 renewals: 2,000,000 scans of 1,000,000 rows).
  check "sandbox ledger entries of no renewal payment, or other kinds (the $TEMPLATES template checkouts ran in another process)" 0 \
    "SELECT count(*) FROM bench_ledger l LEFT JOIN (SELECT p.id FROM payments p WHERE $renewal_pay) r ON r.id = l.payment
       WHERE l.kind NOT IN ('authorization', 'capture') OR r.id IS NULL"
  check "sandbox ledger captures total = renewal invoices' amount_paid total" 1 \
    "SELECT CASE WHEN (SELECT sum(amount) FROM bench_ledger WHERE kind = 'capture')
                    = (SELECT sum(amount_paid) FROM invoices WHERE subscription_id LIKE 'sub\\_%seeded%' ESCAPE '\\')
                  AND (SELECT sum(amount_paid) FROM invoices WHERE subscription_id LIKE 'sub\\_%seeded%' ESCAPE '\\') = 999 * $N
            THEN 1 ELSE 0 END"
  check "journal: one subscription.renewed outcome per subscription" "$N|$N" \
    "SELECT count(*), count(DISTINCT resource_id) FROM journal_entries
       WHERE type = 'subscription.renewed' AND resource_id LIKE 'sub\\_%seeded%' ESCAPE '\\'"
  check "template subscriptions (not due) untouched: periods = 1" "$TEMPLATES" \
    "SELECT count(*) FROM subscriptions s WHERE s.storefront_id = '$SF' AND s.id NOT LIKE 'sub\\_%seeded%' ESCAPE '\\' AND s.periods = 1"
  NOTES+=("$BACKEND: sandbox ledger: $LEDGER_LINES entries from $W process(es)")
done

# ---------------------------------------------------------------------------------------------
# Report

echo
echo "| workload | backend | azotte processes | steady rate (window) | overall rate | run time | azotte peak RSS | azotte CPU | postgres CPU | other CPU | PostgreSQL peak RSS (largest process) | ÷ TPC-B tps |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
[ -z "${PGB_ROW:-}" ] || echo "$PGB_ROW"
printf '%s\n' "${ROWS[@]}"
echo
echo "steady rate: renewals committed between the samples (every ${SAMPLE_EVERY} s) at 10 % and 90 % of the run; overall: all of them ÷ the time from the first process's launch (start-up included) to the last renewal's commit. CPU columns: over the whole run ($(nproc) CPUs = $(($(nproc) * 100))%)."
[ -z "${PGB_ROW:-}" ] || echo "Target (issue 9): steady renewals/s ÷ pgbench TPC-B tps ≥ 0.5."
echo
printf '%s\n\n' "${NOTES[@]}"
echo "Correctness:"
echo
echo "| backend | check | result | |"
echo "|---|---|---|---|"
printf '%s\n' "${CHECKS[@]}"
echo
[ "$CONTENDED" = 0 ] || echo "WARNING: other processes (or the hypervisor) took CPU during at least one run; see the warnings above."

if [ "$FAILED" != 0 ]; then
  die "a correctness check failed or pgbench reported failed transactions (see above)"
fi
