#!/usr/bin/env bash
# The statement floor (issues 8 and 9): how fast PostgreSQL on this machine runs a unit of work
# with the *shape* of a renewal or a checkout — its number of transactions and statements — when
# every statement is as cheap as a statement can be, against pgbench's TPC-B on the same cluster
# in the same run. It answers one question: can work of that shape reach the issues' target
# (≥ 0.5 × TPC-B tps) at all here, whatever the code around it does?
#
# One throw-away PostgreSQL cluster (fsync and synchronous_commit on, bench/lib.sh). First the
# built-in TPC-B, exactly as the other scripts run it (`pgbench -i -s $BENCH_PGBENCH_SCALE`,
# `-c $BENCH_CONNECTIONS -j 2 -T $BENCH_DURATION`, simple protocol, warm-up first). Then, in the
# same database and with the same clients and duration, one custom pgbench script per shape
# (`-M prepared`: each statement parsed once per connection, as sqlx does; `--max-tries=10`: a
# deadlock between two clients' set-based updates is retried, as an application would). One script run is one
# unit (one "renewal"); its statements are spread evenly over its transactions, and each is one
# of:
#   - a read: `SELECT … FROM pgbench_accounts WHERE aid = random` (primary-key lookup);
#   - an update: `UPDATE pgbench_accounts … WHERE aid = random` (one row, primary key, no
#     contention: 1.6 million rows at scale 16);
#   - an insert: one 300-byte row into `floor_rows` (identity primary key, one secondary index).
# Nothing else: no foreign keys, checks, triggers, row-level security, JSON, hashing, network
# client work or application CPU — everything a real renewal also pays for. The result is
# therefore an upper bound for any implementation of that shape on this machine.
#
# Shapes (statements counted as pg_stat_statements does, BEGIN and COMMIT included; measured in
# docs/benchmarks.md):
#   renewal   3.6 transactions and 44 statements per renewal (c1b4573): 4 transactions, 36 other
#             statements — 20 reads, 8 updates, 8 inserts
#   checkout  12 transactions and 96 statements per purchase (c9ae6d1): 12 transactions, 72
#             other statements — 40 reads, 16 updates, 16 inserts
#   checkout1 the checkout alone as it is at 5a33dbf (POST /v1/checkouts with a new token to
#             succeeded; pg_stat_statements, the customer's and offer's statements taken out):
#             5 transactions, 27 other statements — 11 reads, 5 updates, 11 inserts
#   checkout8, checkout16
#             checkout1's statements for 8 (16) concurrent checkouts coalesced, each statement
#             set-based over their rows, in 2 transactions (before and after the PSP calls; the
#             idempotency claim and completion in them): what a design that gathers the
#             checkouts in flight at once could reach at best; one script run counts as 8 (16)
#   batch50   the renewal's rows for 50 renewals at once, as set-based statements of 50 rows
#             each: 2 transactions (before and after the PSP calls), 20 reads, 8 updates and 8
#             inserts of 50 rows each; one script run counts as 50 units
#   shared50  the renewal's 36 statements per renewal, one row each as in `renewal`, for 50
#             renewals sharing 2 transactions (before and after the PSP calls): 1,800 statements
#             in 2 transactions; one script run counts as 50 units
# BENCH_SHAPES picks them (default: all of them).
#
# Output: one table (rate, units/s ÷ TPC-B tps, CPU split, WAL per unit). Everything made here is
# removed on exit.
#
# Environment:
#   BENCH_DURATION       seconds per measured run (default 20)
#   BENCH_WARMUP         seconds of warm-up before each measured run (default 3)
#   BENCH_CONNECTIONS    pgbench clients (default 16, as the other scripts)
#   BENCH_PGBENCH_SCALE  pgbench scale (default 16)
#   BENCH_SHAPES         "renewal checkout batch50 shared50 checkout1 checkout8 checkout16"
#                        (default) or a subset
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=bench/lib.sh
source bench/lib.sh

DURATION=${BENCH_DURATION:-20}
WARMUP=${BENCH_WARMUP:-3}
CONNECTIONS=${BENCH_CONNECTIONS:-16}
SCALE=${BENCH_PGBENCH_SCALE:-16}
SHAPES=${BENCH_SHAPES:-renewal checkout batch50 shared50 checkout1 checkout8 checkout16}
THREADS=2

bench_init
print_machine
start_postgres
pgbench_tpcb "$SCALE" "$CONNECTIONS"
TPCB_TPS=$PGB_TPS
TPCB_CPU_PG=$M_CPU_PG
TPCB_CPU_CLIENT=$M_CPU_WRK
TPCB_WAL=$PGB_WAL
TPCB_TXNS=$PGB_TXNS

sql pgbench "CREATE TABLE floor_rows (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, k text NOT NULL, v text NOT NULL)" >/dev/null
sql pgbench "CREATE INDEX floor_rows_k ON floor_rows (k)" >/dev/null

ACCOUNTS=$((100000 * SCALE))

# shape_script NAME TRANSACTIONS READS UPDATES INSERTS: a pgbench script of one unit, the
# statements dealt round-robin (reads, then updates, then inserts) over the transactions.
shape_script() {
  local name=$1 txs=$2 reads=$3 updates=$4 inserts=$5 file=$WORK/$1.sql i t
  local -a stmts=()
  for ((i = 0; i < reads; i++)); do
    stmts+=("SELECT abalance FROM pgbench_accounts WHERE aid = :r$i;")
  done
  for ((i = 0; i < updates; i++)); do
    stmts+=("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :u$i;")
  done
  for ((i = 0; i < inserts; i++)); do
    stmts+=("INSERT INTO floor_rows (k, v) VALUES (:client_id || '-' || :r0 || '-$i', repeat('x', 300));")
  done
  {
    for ((i = 0; i < reads; i++)); do echo "\\set r$i random(1, $ACCOUNTS)"; done
    for ((i = 0; i < updates; i++)); do echo "\\set u$i random(1, $ACCOUNTS)"; done
    local n=${#stmts[@]}
    for ((t = 0; t < txs; t++)); do
      echo "BEGIN;"
      for ((i = t; i < n; i += txs)); do echo "${stmts[$i]}"; done
      echo "END;"
    done
  } >"$file"
  echo "$file"
}

# batch_script NAME ROWS TRANSACTIONS READS UPDATES INSERTS: a unit's statements as set-based
# statements of ROWS rows each, dealt round-robin over TRANSACTIONS (batch50: the renewal's 20
# reads, 8 updates and 8 inserts over 50 renewals, in 2 transactions, before and after the PSP
# calls).
batch_script() {
  local name=$1 rows=$2 txs=$3 reads=$4 updates=$5 inserts=$6 file=$WORK/$1.sql i
  local -a stmts=()
  for ((i = 0; i < reads; i++)); do
    stmts+=("SELECT sum(abalance) FROM pgbench_accounts WHERE aid IN (SELECT (:r$i + g * 9973) % $ACCOUNTS + 1 FROM generate_series(0, $((rows - 1))) g);")
  done
  for ((i = 0; i < updates; i++)); do
    stmts+=("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid IN (SELECT (:u$i + g * 9973) % $ACCOUNTS + 1 FROM generate_series(0, $((rows - 1))) g);")
  done
  for ((i = 0; i < inserts; i++)); do
    stmts+=("INSERT INTO floor_rows (k, v) SELECT :client_id || '-' || :r0 || '-$i-' || g, repeat('x', 300) FROM generate_series(1, $rows) g;")
  done
  {
    for ((i = 0; i < reads; i++)); do echo "\\set r$i random(1, $ACCOUNTS)"; done
    for ((i = 0; i < updates; i++)); do echo "\\set u$i random(1, $ACCOUNTS)"; done
    local n=${#stmts[@]} t
    for ((t = 0; t < txs; t++)); do
      echo "BEGIN;"
      for ((i = t; i < n; i += txs)); do echo "${stmts[$i]}"; done
      echo "END;"
    done
  } >"$file"
  echo "$file"
}

# shared_script: shared50 (see the header): 50 renewals' single-row statements (20 reads, 8
# updates, 8 inserts each) in 2 transactions of 25 renewals each.
shared_script() {
  local file=$WORK/shared50.sql i k t
  {
    for ((i = 0; i < 20; i++)); do echo "\\set r$i random(1, $ACCOUNTS)"; done
    for ((i = 0; i < 8; i++)); do echo "\\set u$i random(1, $ACCOUNTS)"; done
    for ((t = 0; t < 2; t++)); do
      echo "BEGIN;"
      for ((k = 0; k < 25; k++)); do
        for ((i = 0; i < 20; i++)); do
          echo "SELECT abalance FROM pgbench_accounts WHERE aid = (:r$i + $((t * 25 + k)) * 9973) % $ACCOUNTS + 1;"
        done
        for ((i = 0; i < 8; i++)); do
          echo "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = (:u$i + $((t * 25 + k)) * 9973) % $ACCOUNTS + 1;"
        done
        for ((i = 0; i < 8; i++)); do
          echo "INSERT INTO floor_rows (k, v) VALUES (:client_id || '-' || :r0 || '-$t-$k-$i', repeat('x', 300));"
        done
      done
      echo "END;"
    done
  } >"$file"
  echo "$file"
}

declare -A RATE UNIT_RATE CPU_PG CPU_CLIENT WAL_PER
for shape in $SHAPES; do
  per=1
  case $shape in
    renewal) script=$(shape_script renewal 4 20 8 8) ;;
    checkout) script=$(shape_script checkout 12 40 16 16) ;;
    batch50) script=$(batch_script batch50 50 2 20 8 8); per=50 ;;
    checkout1) script=$(shape_script checkout1 5 11 5 11) ;;
    checkout8) script=$(batch_script checkout8 8 2 11 5 11); per=8 ;;
    checkout16) script=$(batch_script checkout16 16 2 11 5 11); per=16 ;;
    shared50) script=$(shared_script); per=50 ;;
    *) die "unknown shape $shape" ;;
  esac
  run=("$PG_BIN/pgbench" -h 127.0.0.1 -p "$PG_PORT" -U azotte -c "$CONNECTIONS" -j "$THREADS" -M prepared -n --max-tries=10 -f "$script")
  log "$shape: warm-up"
  timeout $((WARMUP + 120)) "${run[@]}" -T "$WARMUP" pgbench >"$WORK/$shape.warmup" 2>&1 \
    || { cat "$WORK/$shape.warmup" >&2; die "$shape warm-up failed"; }
  sql postgres "CHECKPOINT" >/dev/null
  lsn0=$(sql postgres "SELECT pg_current_wal_lsn()")
  cpu_begin
  timeout $((DURATION + 120)) "${run[@]}" -T "$DURATION" pgbench >"$WORK/$shape.out" 2>&1 \
    || { cat "$WORK/$shape.out" >&2; die "$shape failed"; }
  cpu_end "$shape"
  wal=$(sql postgres "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn0')")
  sed "s/^/    [$shape] /" "$WORK/$shape.out" >&2
  tps=$(awk '/^tps = / {print $3; exit}' "$WORK/$shape.out")
  runs=$(awk '/actually processed:/ {print $NF}' "$WORK/$shape.out")
  [ -n "$tps" ] && [ -n "$runs" ] || die "cannot parse pgbench output ($WORK/$shape.out)"
  RATE[$shape]=$tps
  UNIT_RATE[$shape]=$(awk -v t="$tps" -v p="$per" 'BEGIN {printf "%.0f", t * p}')
  CPU_PG[$shape]=$M_CPU_PG
  CPU_CLIENT[$shape]=$M_CPU_WRK
  WAL_PER[$shape]=$(awk -v w="$wal" -v n="$runs" -v p="$per" 'BEGIN {printf "%.1f", w / n / p / 1024}')
  sql pgbench "TRUNCATE floor_rows" >/dev/null
  sql pgbench "VACUUM pgbench_accounts" >/dev/null
done

echo
echo "Statement floor, $(date -u +%Y-%m-%dT%H:%MZ), PostgreSQL $PG_VERSION, $CONNECTIONS clients, ${DURATION} s each, scale $SCALE"
echo
echo "| workload | script runs/s | units/s | ÷ TPC-B tps | PostgreSQL CPU | client CPU | WAL / unit |"
echo "|---|---:|---:|---:|---:|---:|---:|"
printf '| TPC-B (built-in, simple protocol) | %.0f | %.0f | 1.00 | %s | %s | %.1f kB |\n' \
  "$TPCB_TPS" "$TPCB_TPS" "$TPCB_CPU_PG" "$TPCB_CPU_CLIENT" "$(awk -v w="$TPCB_WAL" -v n="$TPCB_TXNS" 'BEGIN {print w / n / 1024}')"
for shape in $SHAPES; do
  printf '| %s | %.0f | %s | **%.2f** | %s | %s | %s kB |\n' "$shape" "${RATE[$shape]}" "${UNIT_RATE[$shape]}" \
    "$(awk -v u="${UNIT_RATE[$shape]}" -v t="$TPCB_TPS" 'BEGIN {print u / t}')" "${CPU_PG[$shape]}" \
    "${CPU_CLIENT[$shape]}" "${WAL_PER[$shape]}"
done
[ "$CONTENDED" = 0 ] || log "WARNING: the machine was not quiet during at least one run; see the warnings above"
