#!/usr/bin/env bash
# Several azotte builds served at once on SQLite (or PostgreSQL), hit in turn with short bursts of the journaled
# mutation of bench/journal_write.sh (`POST /v1/roles`, a unique name per request): per build,
# requests/s and azotte's CPU time per request.
#
# Why: on a virtual machine whose hypervisor steals CPU, one build's throughput can move by 2x
# between runs a minute apart, which hides effects of a few percent. Serving every build for the
# whole run and rotating which goes first in each round exposes them all to the same conditions;
# CPU time per request (from /proc, utime + stime) is moved by the steal far less than requests/s.
# bench/journal_write.sh stays the reference figure (fresh server per run, seal lag, PostgreSQL);
# this script is for comparing builds, e.g. a change against its parent commit.
#
# Usage:
#   bench/journal_interleave.sh NAME=BINARY[:VAR=VALUE[,VAR=VALUE…]] …
# Each argument names a build, its azotte binary and, optionally, environment variables for its
# server (a `bench-unjournaled` build needs AZOTTE_BENCH_UNJOURNALED=yes). With no argument, it
# builds the normal and the `bench-unjournaled` release binaries of the working tree (normal last,
# so target/release/azotte stays the normal build) and compares those two. Example:
#   cp target/release/azotte /tmp/azotte-new      # after building each variant
#   bench/journal_interleave.sh new=/tmp/azotte-new old=/tmp/azotte-old \
#     unjournaled=/tmp/azotte-u:AZOTTE_BENCH_UNJOURNALED=yes
#
# Environment:
#   BENCH_ROUNDS       rounds (default 10); each round runs every build once, in rotated order
#   BENCH_DURATION     seconds per burst (default 8)
#   BENCH_CONNECTIONS  wrk connections (default 16; wrk threads are fixed at 2)
#   BENCH_BACKEND      sqlite (default) or postgres: one throw-away cluster, a database per build;
#                      PostgreSQL's CPU during a build's burst (every server process, the shared
#                      ones included) is counted to that build
#   BENCH_PROFILE      PostgreSQL only: after the rounds, one more burst per build with
#                      pg_stat_statements on, and its statements per request (default off: 0)
#
# Only 127.0.0.1 is targeted; every server and temporary directory is removed on exit. Exits
# non-zero if a burst saw a non-2xx response or a socket error.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ROUNDS=${BENCH_ROUNDS:-10}
DURATION=${BENCH_DURATION:-8}
CONNECTIONS=${BENCH_CONNECTIONS:-16}
BACKEND=${BENCH_BACKEND:-sqlite}
PROFILE=${BENCH_PROFILE:-0}
THREADS=2
WRK_TIMEOUT=5s

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

for v in ROUNDS DURATION CONNECTIONS; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "BENCH_$v must be a whole number, got '${!v}'"
done
[ "$ROUNDS" -ge 1 ] && [ "$ROUNDS" -le 100 ] || die "BENCH_ROUNDS must be between 1 and 100"
[ "$DURATION" -ge 1 ] && [ "$DURATION" -le 300 ] || die "BENCH_DURATION must be between 1 and 300 seconds"
[ "$CONNECTIONS" -ge "$THREADS" ] || die "BENCH_CONNECTIONS must be at least $THREADS"
case $BACKEND in sqlite | postgres) ;; *) die "BENCH_BACKEND must be sqlite or postgres, got '$BACKEND'" ;; esac

# Nothing from the caller's environment may point the servers elsewhere.
while read -r v; do unset "$v"; done < <(compgen -e | grep '^AZOTTE_' || true)

bench_init
ensure_tools

specs=("$@")
if [ ${#specs[@]} -eq 0 ]; then
  build_journal_binaries
  specs=("journaled=$BIN_J" "unjournaled=$BIN_U:AZOTTE_BENCH_UNJOURNALED=yes")
fi

roles_lua "$WORK/roles.lua"
if [ "$BACKEND" = postgres ]; then
  [ "$PROFILE" = 0 ] || PG_EXTRA_OPTIONS="-c shared_preload_libraries=pg_stat_statements"
  start_postgres
  [ "$PROFILE" = 0 ] || pg_profile_off
fi

names=()
declare -A B K P REQ TICKS PGTICKS
for spec in "${specs[@]}"; do
  [[ $spec == *=* ]] || die "'$spec' is not NAME=BINARY[:VAR=VALUE,…]"
  name=${spec%%=*}
  rest=${spec#*=}
  bin=${rest%%:*}
  [[ $name =~ ^[A-Za-z0-9_-]+$ ]] || die "build name '$name' must be letters, digits, - or _"
  [ -z "${B[$name]:-}" ] || die "build name '$name' given twice"
  [ -x "$bin" ] || die "$name: '$bin' is not an executable"
  env=()
  if [[ $rest == *:* ]]; then
    IFS=, read -ra env <<<"${rest#*:}"
    for e in "${env[@]}"; do [[ $e =~ ^[A-Z_][A-Z0-9_]*=.*$ ]] || die "$name: '$e' is not VAR=VALUE"; done
  fi
  if [ "$BACKEND" = postgres ]; then
    timeout 60 "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U azotte "bench_$name" || die "createdb bench_$name failed"
    env+=("AZOTTE_DATABASE_URL=postgres://azotte@127.0.0.1:$PG_PORT/bench_$name")
  fi
  BIN=$bin
  start_azotte "$name" "$WORK/$name" "${env[@]}"
  bootstrap "$name" tenant_admin
  B[$name]=$BASE
  K[$name]=$APIKEY
  P[$name]=$AZ_PID
  AZ_EXTRA_PIDS="$AZ_EXTRA_PIDS $AZ_PID"
  AZ_PID=""
  names+=("$name")
  REQ[$name]=0
  TICKS[$name]=0
  PGTICKS[$name]=0
  log "$name: $bin ${env[*]:-} on $BASE"
done

n=${#names[@]}
for r in $(seq 1 "$ROUNDS"); do
  line="round $r:"
  for i in $(seq 0 $((n - 1))); do
    name=${names[$(((i + r) % n))]}
    BASE=${B[$name]}
    t0=$(proc_ticks "${P[$name]}")
    g0=0
    [ "$BACKEND" = postgres ] && g0=$(pg_ticks)
    out=$(run_wrk "$DURATION" /v1/roles -s "$WORK/roles.lua" -H "x-api-key: ${K[$name]}" -H 'x-tn: bench' \
      -H 'content-type: application/json')
    t1=$(proc_ticks "${P[$name]}")
    g1=0
    [ "$BACKEND" = postgres ] && g1=$(pg_ticks)
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    bad=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out")
    [ -z "$bad" ] || die "$name, round $r: $bad"
    REQ[$name]=$((REQ[$name] + reqs))
    TICKS[$name]=$((TICKS[$name] + t1 - t0))
    PGTICKS[$name]=$((PGTICKS[$name] + g1 - g0))
    line="$line $name=${rps%.*}"
  done
  echo "$line"
done

echo
echo "| build | requests | requests/s | azotte CPU µs/request | PostgreSQL CPU µs/request |"
echo "|---|---:|---:|---:|---:|"
for name in "${names[@]}"; do
  awk -v n="$name" -v r="${REQ[$name]}" -v t="${TICKS[$name]}" -v g="${PGTICKS[$name]}" -v hz="$CLK_TCK" \
    -v s="$DURATION" -v R="$ROUNDS" -v b="$BACKEND" \
    'BEGIN {printf "| %s | %d | %.0f | %.0f | %s |\n", n, r, r / (s * R), t / hz * 1e6 / r,
      (b == "postgres" ? sprintf("%.0f", g / hz * 1e6 / r) : "-")}'
done

if [ "$BACKEND" = postgres ] && [ "$PROFILE" != 0 ]; then
  for name in "${names[@]}"; do
    BASE=${B[$name]}
    pg_profile_begin
    out=$(run_wrk "$DURATION" /v1/roles -s "$WORK/roles.lua" -H "x-api-key: ${K[$name]}" -H 'x-tn: bench' \
      -H 'content-type: application/json')
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    echo
    echo "### $name: pg_stat_statements over one burst of $reqs requests"
    echo
    pg_profile_end "bench_$name" "$reqs" request 12
  done
fi
