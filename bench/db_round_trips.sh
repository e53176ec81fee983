#!/usr/bin/env bash
# Socket system calls of azotte per request (PostgreSQL), counted by strace: a deterministic
# measure of round trips to the database, for changes too small for the timed benchmarks' noise.
# For each azotte binary given (default: a release build of the working tree) it starts a
# throw-away PostgreSQL cluster (bench/lib.sh) and `azotte serve` on it, bootstraps the tenant
# `bench` with a read-only API key, warms up with 200 reads, then counts azotte's `sendto`,
# `recvfrom`, `write`, `writev` and `read` calls (every thread) over $BENCH_REQUESTS sequential
# `GET /v1/tenant` with the API key, one curl each, and prints them per request. `sendto` is
# azotte writing to PostgreSQL (the HTTP answers go out through `write`/`writev`): one per round
# trip to the database.
#
# Usage: bench/db_round_trips.sh [AZOTTE_BINARY...]
# Environment: BENCH_REQUESTS (default 1000). Only 127.0.0.1 is targeted; everything made here
# is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
REQUESTS=${BENCH_REQUESTS:-1000}
[[ $REQUESTS =~ ^[0-9]+$ ]] && [ "$REQUESTS" -gt 0 ] || { echo "BENCH_REQUESTS must be a positive number" >&2; exit 1; }
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
bench_init
command -v strace >/dev/null || die "strace is needed"
BINS=("$@")
if [ ${#BINS[@]} = 0 ]; then
  azotte_binary
  BINS=("$BIN")
fi
print_machine
read_tenant() { curl -fsS -o /dev/null "$BASE/v1/tenant" -H "x-api-key: $APIKEY" -H "x-tn: bench"; }
echo "| binary | sendto | recvfrom | write | writev | read | all (per request, $REQUESTS requests) |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for b in "${BINS[@]}"; do
  BIN=$(realpath "$b")
  [ -x "$BIN" ] || die "$b is not an executable"
  start_postgres
  start_azotte pg "$WORK/pg-$RANDOM" "AZOTTE_DATABASE_URL=postgres://azotte@127.0.0.1:$PG_PORT/azotte_bench"
  bootstrap pg
  for _ in $(seq 1 200); do read_tenant; done
  strace -f -c -e trace=sendto,write,writev,recvfrom,read -p "$AZ_PID" -o "$WORK/strace.txt" 2>/dev/null &
  ST=$!
  sleep 1
  for _ in $(seq 1 "$REQUESTS"); do read_tenant; done
  sleep 0.5
  kill -INT "$ST" 2>/dev/null || true
  wait "$ST" 2>/dev/null || true
  awk -v n="$REQUESTS" -v bin="$b" '$NF ~ /^(sendto|recvfrom|write|writev|read|total)$/ {c[$NF] = $4}
    END {printf "| %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |\n", bin, c["sendto"] / n, c["recvfrom"] / n,
      c["write"] / n, c["writev"] / n, c["read"] / n, c["total"] / n}' "$WORK/strace.txt"
  stop_azotte
  stop_postgres
done
