#!/usr/bin/env bash
# Journaling write overhead and seal lag (issue 4): throughput of a journaled mutation against the
# same mutation in a benchmark-only build that writes no journal entries, in the same run, on
# SQLite and on PostgreSQL; and, at that write rate, how long entries wait for their seal.
#
# It builds two release binaries: the normal one and one with `--features bench-unjournaled`
# (journal entries are neither written nor queued for sealing; that build refuses to serve unless
# AZOTTE_BENCH_UNJOURNALED=yes, which is checked here too). Both are copied into a temporary
# directory; the normal build is made last, so target/release/azotte is the normal binary again
# afterwards. Then, for each backend and each of $BENCH_ROUNDS rounds, journaled and unjournaled
# alternately, each on a fresh server and a fresh database: bootstrap, tenant `bench`, an API key
# with role `tenant_admin`, then wrk drives `POST /v1/roles` (a custom role with a unique name per
# request, `{"permissions":["audit.read"]}`): warm-up, then a measured run.
#
# After each journaled run it waits until the sealer (every 200 ms) has sealed everything, then
# reads from the database, for the entries that occurred during the measured window, the seal lag
# journal_seals.sealed_at - journal_entries.occurred_at (count, mean, p50, p99, max) and the
# entries written per second. That lag includes the writer's own time to commit (occurred_at is
# taken before it); on PostgreSQL, whose cluster runs here with track_commit_timestamp on, it also
# reports the lag after commit (sealed_at - the commit time of the entry's transaction: p99, max),
# the part that is the sealer's. After each unjournaled run it checks that the window holds no entry.
#
# The summary gives, per backend, the overhead from the mean requests/s of each build (judged
# against the target), the median of the rounds' overheads (each journaled run against the
# unjournaled run right after it), and the server's CPU time per request of each build (azotte,
# plus PostgreSQL on that backend), which the hypervisor's steal moves far less than throughput,
# with the overhead it gives (1 - unjournaled µs / journaled µs; on a CPU-bound run the two
# overheads agree, on SQLite, where one writer connection bounds the rate, they need not).
#
# Environment:
#   BENCH_DURATION     seconds per measured run (default 10)
#   BENCH_CONNECTIONS  wrk connections (default 16; wrk threads are fixed at 2)
#   BENCH_WARMUP       seconds of warm-up before each measured run (default 2)
#   BENCH_ROUNDS       journaled/unjournaled pairs per backend (default 2, at most 20)
#   BENCH_BACKENDS     "sqlite postgres" (default), or one of them
#
# Only 127.0.0.1 is targeted. Every process and temporary directory made here is removed on exit,
# including on error or Ctrl-C. Exits non-zero if wrk saw non-2xx/3xx responses or socket errors
# (after printing the tables).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${BENCH_DURATION:-10}
CONNECTIONS=${BENCH_CONNECTIONS:-16}
WARMUP=${BENCH_WARMUP:-2}
ROUNDS=${BENCH_ROUNDS:-2}
BACKENDS=${BENCH_BACKENDS:-sqlite postgres}
THREADS=2
WRK_TIMEOUT=5s
SEAL_WAIT=60 # seconds the sealer gets to catch up after a measured run

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

for v in DURATION CONNECTIONS WARMUP ROUNDS; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "BENCH_$v must be a whole number, got '${!v}'"
done
[ "$DURATION" -ge 1 ] && [ "$DURATION" -le 300 ] || die "BENCH_DURATION must be between 1 and 300 seconds"
[ "$WARMUP" -le 60 ] || die "BENCH_WARMUP must be at most 60 seconds"
[ "$ROUNDS" -ge 1 ] && [ "$ROUNDS" -le 20 ] || die "BENCH_ROUNDS must be between 1 and 20"
[ "$CONNECTIONS" -ge "$THREADS" ] || die "BENCH_CONNECTIONS must be at least $THREADS"
for b in $BACKENDS; do
  case $b in sqlite | postgres) ;; *) die "unknown backend '$b' in BENCH_BACKENDS" ;; esac
done

# Nothing from the caller's environment may point the server elsewhere.
while read -r v; do unset "$v"; done < <(compgen -e | grep '^AZOTTE_' || true)

bench_init
ensure_tools

# ---------------------------------------------------------------------------------------------
# Binaries: the unjournaled one first, the normal one last (it stays in target/release).

build_journal_binaries

# The benchmark build must refuse to serve without the explicit opt-in.
mkdir -p "$WORK/refuse"
rc=0
(cd "$WORK/refuse" && exec timeout 30 "$BIN_U" serve --listen "127.0.0.1:$(free_port)") \
  >"$WORK/refuse.stdout" 2>"$WORK/refuse.stderr" || rc=$?
if [ "$rc" = 0 ] || [ "$rc" = 124 ] || ! grep -q 'bench-unjournaled' "$WORK/refuse.stderr"; then
  cat "$WORK/refuse.stderr" >&2
  die "the bench-unjournaled build did not refuse to serve without AZOTTE_BENCH_UNJOURNALED=yes (exit $rc)"
fi
[ ! -e "$WORK/refuse/azotte-data" ] || die "the bench-unjournaled build touched its data directory before refusing"

# ---------------------------------------------------------------------------------------------
# Machine

print_machine
echo "wrk: $(wrk -v 2>&1 | head -n 1 | awk '{print $1, $2}'); -t$THREADS -c$CONNECTIONS --latency --timeout $WRK_TIMEOUT; ${WARMUP}s warm-up, ${DURATION}s measured per run; $ROUNDS round(s) of journaled, unjournaled"
echo "azotte: $(commit_id) (release builds, normal and --features bench-unjournaled); client, server and database share this machine"
echo

# ---------------------------------------------------------------------------------------------
# The load: each wrk thread draws a random run id, so names never repeat across runs or threads.

roles_lua "$WORK/roles.lua"

# seal_stats BACKEND RUN TENANT_ID T0 T1: waits until every entry of the tenant is sealed, then
# prints "entries mean_ms p50_ms p99_ms max_ms unsealed" for the entries that occurred in [T0, T1].
seal_stats() {
  local backend=$1 run=$2 tenant=$3 t0=$4 t1=$5
  if [ "$backend" = sqlite ]; then
    timeout $((SEAL_WAIT + 30)) python3 - "$WORK/$run/azotte-data/azotte.db" "$tenant" "$t0" "$t1" "$SEAL_WAIT" <<'PY'
import math, re, sqlite3, sys, time
from datetime import datetime, timezone

db, tenant, t0, t1, wait = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
ts = re.compile(r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?\s*(Z|[+-]\d\d:?\d\d)?$")

def epoch(s):
    m = ts.match(s.strip())
    if not m:
        raise SystemExit("unparsable timestamp: %r" % s)
    y, mo, d, h, mi, se, frac, tz = m.groups()
    t = datetime(int(y), int(mo), int(d), int(h), int(mi), int(se), tzinfo=timezone.utc).timestamp()
    t += float("0." + frac) if frac else 0.0
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        t -= sign * (int(tz[1:3]) * 3600 + int(tz[-2:]) * 60)
    return t

con = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=30)
unsealed_q = """SELECT count(*) FROM journal_entries e WHERE e.tenant_id = ? AND NOT EXISTS
  (SELECT 1 FROM journal_seals s WHERE s.tenant_id = e.tenant_id AND s.environment = e.environment
   AND s.entry_id = e.id)"""
deadline = time.time() + wait
while True:
    unsealed = con.execute(unsealed_q, (tenant,)).fetchone()[0]
    if unsealed == 0 or time.time() > deadline:
        break
    time.sleep(0.2)
rows = con.execute("""SELECT e.occurred_at, s.sealed_at FROM journal_entries e
  LEFT JOIN journal_seals s ON s.tenant_id = e.tenant_id AND s.environment = e.environment
   AND s.entry_id = e.id WHERE e.tenant_id = ?""", (tenant,)).fetchall()
lags, missing = [], 0
for occurred, sealed in rows:
    o = epoch(occurred)
    if not (t0 <= o <= t1):
        continue
    if sealed is None:
        missing += 1
    else:
        lags.append((epoch(sealed) - o) * 1000)
lags.sort()
def pct(p):
    # Nearest rank, as PostgreSQL's percentile_disc.
    return lags[max(0, math.ceil(p * len(lags)) - 1)] if lags else 0
mean = sum(lags) / len(lags) if lags else 0
print("%d %.1f %.1f %.1f %.1f %d - -" % (len(lags) + missing, mean, pct(0.5), pct(0.99), lags[-1] if lags else 0, missing))
PY
  else
    local url="postgresql://azotte@127.0.0.1:$PG_PORT/$run" i unsealed
    for i in $(seq 1 $((SEAL_WAIT * 5))); do
      unsealed=$("$PG_BIN/psql" -X -At -d "$url" -c "SELECT count(*) FROM journal_entries e WHERE e.tenant_id = '$tenant'
        AND NOT EXISTS (SELECT 1 FROM journal_seals s WHERE s.tenant_id = e.tenant_id
        AND s.environment = e.environment AND s.entry_id = e.id)") || die "$run: psql failed"
      [ "$unsealed" = 0 ] && break
      sleep 0.2
    done
    "$PG_BIN/psql" -X -At -F ' ' -d "$url" -c "
      SELECT count(*),
             round(coalesce(avg(lag), 0)::numeric, 1),
             round(coalesce(percentile_disc(0.5) WITHIN GROUP (ORDER BY lag), 0)::numeric, 1),
             round(coalesce(percentile_disc(0.99) WITHIN GROUP (ORDER BY lag), 0)::numeric, 1),
             round(coalesce(max(lag), 0)::numeric, 1),
             count(*) - count(lag),
             round(coalesce(percentile_disc(0.99) WITHIN GROUP (ORDER BY after_commit), 0)::numeric, 1),
             round(coalesce(max(after_commit), 0)::numeric, 1)
      FROM (SELECT extract(epoch FROM s.sealed_at - e.occurred_at) * 1000 AS lag,
                   extract(epoch FROM s.sealed_at - pg_xact_commit_timestamp(e.xmin)) * 1000 AS after_commit
            FROM journal_entries e
            LEFT JOIN journal_seals s ON s.tenant_id = e.tenant_id AND s.environment = e.environment
                                     AND s.entry_id = e.id
            WHERE e.tenant_id = '$tenant'
              AND e.occurred_at BETWEEN to_timestamp($t0) AND to_timestamp($t1)) x" || die "$run: psql failed"
  fi
}

# ---------------------------------------------------------------------------------------------
# Runs

ROWS=()
SUMMARY_ROWS=()
LOG_SUMMARIES=()
declare -A RPS_SUM LAG_P99 LAG_MAX LAG_C99 LAG_CMAX RATE_SUM CPU_SUM REQ_SUM RPS_OF

# run_one BACKEND ROUND BUILD: a fresh server on a fresh database, the measured load, seal lag.
run_one() {
  local backend=$1 round=$2 build=$3
  local run="${backend}_${build}_${round}" env_args=() code tenant
  if [ "$backend" = postgres ]; then
    timeout 60 "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U azotte "$run" || die "createdb $run failed"
    env_args+=("AZOTTE_DATABASE_URL=postgres://azotte@127.0.0.1:$PG_PORT/$run")
  fi
  if [ "$build" = unjournaled ]; then
    BIN=$BIN_U
    env_args+=("AZOTTE_BENCH_UNJOURNALED=yes")
  else
    BIN=$BIN_J
  fi
  log "$run: starting azotte"
  start_azotte "$run" "$WORK/$run" "${env_args[@]}"
  if [ "$build" = unjournaled ]; then
    grep -q 'BENCHMARK BUILD' "$WORK/$run.stderr" || die "$run: no warning that this is the benchmark build"
  fi
  bootstrap "$run" tenant_admin
  tenant=$(grep -oE '"id":"ten_[^"]+"' "$WORK/$run.tenant.json" | head -n 1 | cut -d'"' -f4 || true)
  [ -n "$tenant" ] || die "$run: no tenant id in $(cat "$WORK/$run.tenant.json")"
  code=$(curl -sS --max-time 30 -o "$WORK/$run.role.json" -w '%{http_code}' -XPOST "$BASE/v1/roles" \
    -H "x-api-key: $APIKEY" -H 'x-tn: bench' -H 'content-type: application/json' \
    -d '{"name":"check","permissions":["audit.read"]}')
  [ "$code" = 201 ] || die "$run: POST /v1/roles returned $code: $(cat "$WORK/$run.role.json")"

  measure "$backend" "$build.$round" /v1/roles -s "$WORK/roles.lua" \
    -H "x-api-key: $APIKEY" -H 'x-tn: bench' -H 'content-type: application/json'
  RPS_SUM[$backend.$build]=$(awk -v a="${RPS_SUM[$backend.$build]:-0}" -v b="$RPS" 'BEGIN {print a + b}')
  RPS_OF[$backend.$build.$round]=$RPS
  # Server-side CPU (azotte, plus PostgreSQL's on that backend) per request: the hypervisor's
  # steal moves throughput from run to run far more than it moves this.
  CPU_SUM[$backend.$build]=$(awk -v a="${CPU_SUM[$backend.$build]:-0}" -v b="$M_S_AZ" -v c="$M_S_PG" \
    'BEGIN {print a + b + (c == "-" ? 0 : c)}')
  REQ_SUM[$backend.$build]=$(awk -v a="${REQ_SUM[$backend.$build]:-0}" -v b="$M_REQS" 'BEGIN {print a + b}')

  local stats entries mean p50 p99 max missing c99 cmax window rate lag
  stats=$(seal_stats "$backend" "$run" "$tenant" "$M_T0" "$M_T1") || die "$run: reading the seal lag failed"
  read -r entries mean p50 p99 max missing c99 cmax <<<"$stats"
  window=$(awk -v a="$M_T0" -v b="$M_T1" 'BEGIN {print b - a}')
  rate=$(awk -v n="$entries" -v w="$window" 'BEGIN {printf "%.0f", n / w}')
  if [ "$build" = unjournaled ]; then
    [ "$entries" = 0 ] || die "$run: the unjournaled build wrote $entries journal entries"
    lag="| - | - | - | - | - | - |"
  else
    [ "$missing" = 0 ] || { FAILED=1; log "WARNING: $run: $missing entries still unsealed after ${SEAL_WAIT}s"; }
    lag="| $mean | $p50 | $p99 | $max | $c99 | $cmax |"
    LAG_P99[$backend]=$(awk -v a="${LAG_P99[$backend]:-0}" -v b="$p99" 'BEGIN {print (b > a ? b : a)}')
    LAG_MAX[$backend]=$(awk -v a="${LAG_MAX[$backend]:-0}" -v b="$max" 'BEGIN {print (b > a ? b : a)}')
    if [ "$cmax" != - ]; then
      LAG_C99[$backend]=$(awk -v a="${LAG_C99[$backend]:-0}" -v b="$c99" 'BEGIN {print (b > a ? b : a)}')
      LAG_CMAX[$backend]=$(awk -v a="${LAG_CMAX[$backend]:-0}" -v b="$cmax" 'BEGIN {print (b > a ? b : a)}')
    fi
    RATE_SUM[$backend]=$(awk -v a="${RATE_SUM[$backend]:-0}" -v b="$rate" 'BEGIN {print a + b}')
  fi
  ROWS+=("| $backend | $round | $build | $(printf '%.0f' "$RPS") | $M_P50 | $M_P99 | $M_REQS | $M_NON2XX | $M_CPU_AZ | $M_CPU_PG | $M_CPU_WRK | $M_CPU_OTHER | $entries | $rate $lag")
  LOG_SUMMARIES+=("$run:" "$(log_summary "$run" | sed 's/^/  /')")
  # sqlx's slow-statement warnings (over 1 s), by statement: which side waited.
  if grep -q 'slow statement' "$WORK/$run.stderr"; then
    LOG_SUMMARIES+=("$(grep 'slow statement' "$WORK/$run.stderr" \
      | grep -oE '"(db\.statement|summary)":"[^"]{0,120}' | sed -E 's/^"[^"]+":"//; s/\\n/ /g; s/ +/ /g' \
      | sort | uniq -c | sort -rn | head -n 5 | sed 's/^/    slow: /')")
  fi
  stop_azotte
}

for backend in $BACKENDS; do
  # The commit time of every transaction, for the seal lag after commit.
  if [ "$backend" = postgres ]; then
    PG_EXTRA_OPTIONS="${PG_EXTRA_OPTIONS:+$PG_EXTRA_OPTIONS }-c track_commit_timestamp=on" start_postgres
  fi
  for round in $(seq 1 "$ROUNDS"); do
    run_one "$backend" "$round" journaled
    run_one "$backend" "$round" unjournaled
  done
  j=$(awk -v s="${RPS_SUM[$backend.journaled]}" -v n="$ROUNDS" 'BEGIN {print s / n}')
  u=$(awk -v s="${RPS_SUM[$backend.unjournaled]}" -v n="$ROUNDS" 'BEGIN {print s / n}')
  # The overhead of each round (journaled against the unjournaled run right after it), median.
  median=$(for round in $(seq 1 "$ROUNDS"); do
    awk -v j="${RPS_OF[$backend.journaled.$round]}" -v u="${RPS_OF[$backend.unjournaled.$round]}" \
      'BEGIN {print 100 * (1 - j / u)}'
  done | sort -g | awk '{v[NR] = $1} END {printf "%.0f%%", (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2)}')
  cpu=$(awk -v cj="${CPU_SUM[$backend.journaled]}" -v rj="${REQ_SUM[$backend.journaled]}" \
    -v cu="${CPU_SUM[$backend.unjournaled]}" -v ru="${REQ_SUM[$backend.unjournaled]}" \
    'BEGIN {printf "%.0f / %.0f | %.0f%%", 1e6 * cj / rj, 1e6 * cu / ru, 100 * (1 - (cu / ru) / (cj / rj))}')
  SUMMARY_ROWS+=("| $backend | $(printf '%.0f' "$j") | $(printf '%.0f' "$u") | $(awk -v j="$j" -v u="$u" 'BEGIN {printf "%.2f | %.0f%% | %s", u / j, 100 * (1 - j / u), (1 - j / u < 0.30 ? "met" : "MISSED")}') | $median | $cpu | $(awk -v s="${RATE_SUM[$backend]}" -v n="$ROUNDS" 'BEGIN {printf "%.0f", s / n}') | ${LAG_P99[$backend]} / ${LAG_MAX[$backend]} | $(awk -v m="${LAG_MAX[$backend]}" 'BEGIN {print (m < 1000 ? "met" : "MISSED")}') | $(if [ -n "${LAG_CMAX[$backend]:-}" ]; then echo "${LAG_C99[$backend]} / ${LAG_CMAX[$backend]} | $(awk -v m="${LAG_CMAX[$backend]}" 'BEGIN {print (m < 1000 ? "met" : "MISSED")}')"; else echo "- | -"; fi) |")
  if [ "$backend" = postgres ]; then stop_postgres; fi
done

echo "| backend | round | build | requests/s | p50 ms | p99 ms | requests | non-2xx | azotte CPU | postgres CPU | wrk CPU | other CPU | journal entries | entries/s | seal lag mean ms | p50 ms | p99 ms | max ms | after commit p99 ms | max ms |"
echo "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
echo
echo "| backend | journaled req/s (mean) | unjournaled req/s (mean) | unjournaled/journaled | overhead (1 - journaled/unjournaled) | target < 30% | overhead, median of rounds | server CPU µs/request journaled / unjournaled | overhead by CPU (1 - unjournaled/journaled µs) | journal entries/s (mean) | seal lag p99 / max ms (worst round) | target < 1 s | seal lag after commit p99 / max ms (worst round) | target < 1 s |"
echo "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---:|---|"
printf '%s\n' "${SUMMARY_ROWS[@]}"
echo
echo "Seal lag: journal_seals.sealed_at - journal_entries.occurred_at of the entries that occurred during the"
echo "measured window (target: under 1 s); entries/s = those entries / the window. It includes the writer's own"
echo "time to commit (occurred_at is taken before). After commit (PostgreSQL, track_commit_timestamp on):"
echo "journal_seals.sealed_at - the commit time of the entry's transaction, the part that is the sealer's."
echo
echo "Server log errors and warnings (AZOTTE_LOG_LEVEL=warn), by count:"
printf '%s\n' "${LOG_SUMMARIES[@]}"
echo
echo "CPU columns: CPU time used during the measured run / wall time ($(nproc) CPUs = $(($(nproc) * 100))%)."
[ "$CONTENDED" = 0 ] || echo "WARNING: other processes (or the hypervisor) took CPU during at least one run; see the warnings above."

cmp -s "$ROOT/target/release/azotte" "$BIN_J" || log "WARNING: target/release/azotte is not the normal build; run cargo build --release"
if [ "$FAILED" != 0 ]; then
  die "wrk reported non-2xx/3xx responses or socket errors, or entries stayed unsealed (see the warnings above)"
fi
