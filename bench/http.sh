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

die() { echo "bench/http.sh: $*" >&2; exit 1; }
log() { echo "bench/http.sh: $*" >&2; }

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
# State and cleanup

WORK=$(mktemp -d "${TMPDIR:-/tmp}/azotte-bench.XXXXXX")
AZ_PID=""
PG_DIR=""
PG_BIN=""
as_pg=()

stop_azotte() {
  local pid=$AZ_PID
  [ -n "$pid" ] || return 0
  AZ_PID=""
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

stop_postgres() {
  [ -n "$PG_DIR" ] || return 0
  if [ -f "$PG_DIR/data/postmaster.pid" ]; then
    timeout 60 "${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w -t 30 stop >/dev/null 2>&1 \
      || timeout 30 "${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 \
      || true
  fi
  rm -rf "$PG_DIR"
  PG_DIR=""
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_azotte
  stop_postgres
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# ---------------------------------------------------------------------------------------------
# Tools and binary

if ! command -v wrk >/dev/null 2>&1; then
  log "installing wrk"
  if ! timeout 600 apt-get install -y wrk >"$WORK/apt.log" 2>&1; then
    timeout 600 apt-get update >>"$WORK/apt.log" 2>&1 || true
    timeout 600 apt-get install -y wrk >>"$WORK/apt.log" 2>&1 || { cat "$WORK/apt.log" >&2; die "cannot install wrk"; }
  fi
fi
command -v curl >/dev/null 2>&1 || die "curl is required"
command -v python3 >/dev/null 2>&1 || die "python3 is required (free port lookup)"

log "building the release binary"
timeout 3600 cargo build --release -p azotte >&2 || die "cargo build --release -p azotte failed"
BIN=$ROOT/target/release/azotte
[ -x "$BIN" ] || die "$BIN not found after the build"

# ---------------------------------------------------------------------------------------------
# Machine

CLK_TCK=$(getconf CLK_TCK)
cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
[ -n "$cpu_model" ] || cpu_model=$(lscpu 2>/dev/null | awk -F': +' '/^Model name/ {print $2; exit}')
mem_total=$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
commit=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)

echo "Machine: $(nproc) CPUs ($(nproc --all) online), ${cpu_model:-unknown CPU}, $mem_total RAM, $(uname -sr)"
echo "wrk: $(wrk -v 2>&1 | head -n 1 | awk '{print $1, $2}'); -t$THREADS -c$CONNECTIONS --latency --timeout $WRK_TIMEOUT; ${WARMUP}s warm-up, ${DURATION}s measured per endpoint"
echo "azotte: $commit (release build); client, server and database share this machine"
echo

# ---------------------------------------------------------------------------------------------
# Helpers

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# CPU ticks (user + system) of one process, or 0 if it is gone.
proc_ticks() { awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# CPU ticks of the throw-away PostgreSQL cluster: the postmaster including its exited children
# (backends of connections closed during the run), plus its live children.
pg_ticks() {
  local pm total p
  pm=$(head -n 1 "$PG_DIR/data/postmaster.pid" 2>/dev/null) || { echo 0; return; }
  total=$(awk '{sub(/.*\) /, ""); print $12 + $13 + $14 + $15}' "/proc/$pm/stat" 2>/dev/null || echo 0)
  for p in $(pgrep -P "$pm" || true); do
    total=$((total + $(proc_ticks "$p")))
  done
  echo "$total"
}

# Latency as printed by wrk (e.g. 812.00us, 1.23ms, 2.01s) in milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
    printf "%.2f", n }'
}

# start_azotte NAME WORKDIR [ENV...]: starts the server, waits for /healthz, sets AZ_PID and BASE.
start_azotte() {
  local name=$1 dir=$2
  shift 2
  local port
  port=$(free_port)
  BASE="http://127.0.0.1:$port"
  mkdir -p "$dir"
  (cd "$dir" && exec env AZOTTE_LOG_LEVEL=warn "$@" "$BIN" serve --listen "127.0.0.1:$port") \
    >"$WORK/$name.stdout" 2>"$WORK/$name.stderr" &
  AZ_PID=$!
  local i
  for i in $(seq 1 600); do
    if ! kill -0 "$AZ_PID" 2>/dev/null; then
      cat "$WORK/$name.stderr" >&2
      die "$name: azotte exited during start-up"
    fi
    curl -fsS --max-time 2 "$BASE/healthz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  cat "$WORK/$name.stderr" >&2
  die "$name: azotte did not answer /healthz within 60 s"
}

# bootstrap NAME: exchanges the printed secret for a bearer token (TOKEN), creates the tenant
# `bench` and checks that one tenant read answers 200.
bootstrap() {
  local name=$1 secret="" resp code i
  for i in $(seq 1 100); do
    secret=$(grep -o 'azboot_[A-Za-z0-9_-]*' "$WORK/$name.stdout" | head -n 1 || true)
    [ -n "$secret" ] && break
    sleep 0.1
  done
  [ -n "$secret" ] || die "$name: no bootstrap secret on azotte's stdout"
  resp=$(curl -sS --max-time 30 -XPOST "$BASE/v1/auth/bootstrap" -H 'content-type: application/json' \
    -d "{\"bootstrap_secret\":\"$secret\",\"email\":\"bench@example.com\",\"password\":\"benchmark password 123\"}")
  # A JWT access token (`access_token`, valid 15 minutes) or, in older builds, a session `token`.
  TOKEN=$(printf '%s' "$resp" | grep -oE '"(access_token|token)":"[^"]+"' | head -n 1 | cut -d'"' -f4 || true)
  [ -n "$TOKEN" ] || die "$name: bootstrap failed: $resp"
  code=$(curl -sS --max-time 30 -o "$WORK/$name.tenant.json" -w '%{http_code}' -XPOST "$BASE/v1/platform/tenants" \
    -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' -d '{"slug":"bench","name":"Bench"}')
  [ "$code" = 201 ] || die "$name: creating the tenant returned $code: $(cat "$WORK/$name.tenant.json")"
  code=$(curl -sS --max-time 30 -o "$WORK/$name.read.json" -w '%{http_code}' "$BASE/v1/tenant" \
    -H "authorization: Bearer $TOKEN" -H 'x-tn: bench' -H 'x-env: production')
  [ "$code" = 200 ] || die "$name: GET /v1/tenant returned $code: $(cat "$WORK/$name.read.json")"
  api_key "$name"
}

# totp BASE32: the current RFC 6238 code (SHA-1, 6 digits, 30 s).
totp() {
  python3 - "$1" <<'PY'
import base64, hashlib, hmac, struct, sys, time
s = sys.argv[1]
key = base64.b32decode(s + "=" * (-len(s) % 8))
h = hmac.new(key, struct.pack(">Q", int(time.time()) // 30), hashlib.sha1).digest()
o = h[-1] & 15
print("%06d" % ((struct.unpack(">I", h[o:o + 4])[0] & 0x7FFFFFFF) % 1000000))
PY
}

# api_key NAME: enrols the administrator in TOTP (key management needs fresh MFA) and creates a
# read-only API key for the production environment of `bench` (APIKEY).
api_key() {
  local name=$1 resp secret code
  resp=$(curl -sS --max-time 30 -XPOST "$BASE/v1/auth/mfa/totp" -H "authorization: Bearer $TOKEN")
  secret=$(printf '%s' "$resp" | grep -oE '"secret":"[^"]+"' | cut -d'"' -f4 || true)
  [ -n "$secret" ] || die "$name: TOTP enrolment failed: $resp"
  code=$(totp "$secret")
  resp=$(curl -sS --max-time 30 -XPOST "$BASE/v1/auth/mfa/totp/confirm" -H "authorization: Bearer $TOKEN" \
    -H 'content-type: application/json' -d "{\"code\":\"$code\"}")
  printf '%s' "$resp" | grep -q recovery_codes || die "$name: TOTP confirmation failed: $resp"
  resp=$(curl -sS --max-time 30 -XPOST "$BASE/v1/api-keys" -H "authorization: Bearer $TOKEN" -H 'x-tn: bench' \
    -H 'x-env: production' -H 'content-type: application/json' -d '{"description":"bench","role":"read_only"}')
  APIKEY=$(printf '%s' "$resp" | grep -oE '"secret":"az_live_[^"]+"' | cut -d'"' -f4 || true)
  [ -n "$APIKEY" ] || die "$name: creating the API key failed: $resp"
}

run_wrk() { # run_wrk SECONDS PATH [wrk args...]
  local secs=$1 path=$2
  shift 2
  timeout $((secs + 60)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"${secs}s" --timeout "$WRK_TIMEOUT" --latency "$@" "$BASE$path"
}

# Busy CPU ticks of the whole machine (user, nice, system, irq, softirq) and ticks stolen by the
# hypervisor, read without forking.
machine_ticks() {
  local _cpu u n s _idle _iow irq sirq steal _rest
  read -r _cpu u n s _idle _iow irq sirq steal _rest </proc/stat
  echo "$((u + n + s + irq + sirq)) ${steal:-0}"
}

# CPU seconds (user + system) of this shell's finished children, from the output of `times`
# (which must run in this shell, not in a $(…) subshell, so the caller writes it to a file).
children_cpu() {
  awk 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); t += a[1] * 60 + a[2] } print t }' "$1"
}

# Errors and warnings in the server's (JSON) log, counted by level, message and error.
log_summary() {
  grep -E '"level":"(ERROR|WARN)"' "$WORK/$1.stderr" \
    | sed -E 's/^.*"level":"([A-Z]+)".*"message":"([^"]*)"(.*"error":"([^"]*)")?.*$/\1 \2 \4/' \
    | sort | uniq -c | sort -rn | head -n 10 || true
  grep -v '^{' "$WORK/$1.stderr" | head -n 5 || true
}

pct() { awk -v v="$1" -v d="$2" 'BEGIN {printf "%.0f%%", 100 * v / d}'; }

ROWS=()      # markdown table rows
RSS_ROWS=()
LOG_SUMMARIES=()
FAILED=0
CONTENDED=0

# measure BACKEND LABEL PATH [wrk args...]: warm-up, measured run, parse; sets RPS and LAST_ROW.
measure() {
  local backend=$1 label=$2 path=$3
  shift 3
  local out=$WORK/$backend.$label.wrk
  if [ "$WARMUP" -gt 0 ]; then
    run_wrk "$WARMUP" "$path" "$@" >"$out.warmup" 2>&1 || { cat "$out.warmup" >&2; die "$backend $label: wrk warm-up failed"; }
  fi
  local az0 pg0 m0 t0 az1 pg1 m1 t1
  az0=$(proc_ticks "$AZ_PID")
  pg0=0
  [ "$backend" = postgres ] && pg0=$(pg_ticks)
  m0=$(machine_ticks)
  times >"$WORK/times.0"
  t0=$EPOCHREALTIME
  run_wrk "$DURATION" "$path" "$@" >"$out" 2>&1 || { cat "$out" >&2; die "$backend $label: wrk failed"; }
  t1=$EPOCHREALTIME
  times >"$WORK/times.1"
  m1=$(machine_ticks)
  az1=$(proc_ticks "$AZ_PID")
  pg1=0
  [ "$backend" = postgres ] && pg1=$(pg_ticks)
  kill -0 "$AZ_PID" 2>/dev/null || { tail -n 50 "$WORK/$backend.stderr" >&2; die "$backend: azotte died under load"; }
  sed "s/^/    [$backend $label] /" "$out" >&2

  local rps p50 p99 reqs non2xx sock
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
  p50=$(awk '$1 == "50%" {print $2}' "$out")
  p99=$(awk '$1 == "99%" {print $2}' "$out")
  reqs=$(awk '/requests in/ {print $1}' "$out")
  non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$out")
  sock=$(awk '/Socket errors:/ {gsub(/,/, ""); print $4 + $6 + $8 + $10}' "$out")
  non2xx=${non2xx:-0}
  sock=${sock:-0}
  [ -n "$rps" ] && [ -n "$p50" ] && [ -n "$p99" ] || die "$backend $label: cannot parse wrk output ($out)"
  if [ "$non2xx" != 0 ] || [ "$sock" != 0 ]; then
    FAILED=1
    log "WARNING: $backend $label: $non2xx non-2xx/3xx responses and $sock socket errors out of $reqs requests"
    log "  wrk: $(grep 'Socket errors' "$out" || echo 'no socket errors')"
    log "  server log errors and warnings so far (count, level, message):"
    log_summary "$backend" | sed 's/^/    /' >&2
  fi

  # CPU shares of wall time (200% = two cores fully busy): azotte, PostgreSQL, the wrk client,
  # and everything else on the machine (kernel softirq work not charged to a process, and any
  # unrelated load, which would make the figures unreliable).
  local wall az pg wrk machine other stolen
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')
  stolen=$(awk -v a="${m0#* }" -v b="${m1#* }" -v t="$CLK_TCK" 'BEGIN {print (b - a) / t}')
  m0=${m0% *}
  m1=${m1% *}
  if awk -v x="$stolen" -v d="$wall" -v n="$(nproc)" 'BEGIN {exit !(x / d > 0.05 * n)}'; then
    CONTENDED=1
    log "WARNING: $backend $label: the hypervisor stole $(pct "$stolen" "$wall") CPU during the run"
  fi
  az=$(awk -v a="$az0" -v b="$az1" -v t="$CLK_TCK" 'BEGIN {print (b - a) / t}')
  pg=$(awk -v a="$pg0" -v b="$pg1" -v t="$CLK_TCK" 'BEGIN {print (b - a) / t}')
  wrk=$(awk -v a="$(children_cpu "$WORK/times.0")" -v b="$(children_cpu "$WORK/times.1")" 'BEGIN {print b - a}')
  machine=$(awk -v a="$m0" -v b="$m1" -v t="$CLK_TCK" 'BEGIN {print (b - a) / t}')
  other=$(awk -v m="$machine" -v a="$az" -v p="$pg" -v w="$wrk" 'BEGIN {o = m - a - p - w; print (o < 0 ? 0 : o)}')
  if awk -v o="$other" -v d="$wall" -v n="$(nproc)" 'BEGIN {exit !(o / d > 0.15 * n)}'; then
    CONTENDED=1
    log "WARNING: $backend $label: other processes used $(pct "$other" "$wall") CPU during the run; the machine was not quiet:"
    top -b -n 2 -d 0.5 -w 120 | awk '/^top -/ {n++} n == 2' | sed -n '7,12p' | sed 's/^/    /' >&2
  fi
  local cpu_pg="-"
  [ "$backend" = postgres ] && cpu_pg=$(pct "$pg" "$wall")
  RPS=$rps
  local shown="GET $path"
  case "$label" in tenant) shown="$shown (JWT)" ;; tenant-apikey) shown="$shown (API key)" ;; esac
  LAST_ROW="| $backend | $shown | $(printf '%.0f' "$rps") | $(to_ms "$p50") | $(to_ms "$p99") | $reqs | $non2xx | $sock | $(pct "$az" "$wall") | $cpu_pg | $(pct "$wrk" "$wall") | $(pct "$other" "$wall")"
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL: a throw-away cluster on a free loopback port, normal durability (fsync on).

start_postgres() {
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
    PG_BIN=$(pg_config --bindir)
  else
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$PG_BIN" ] && [ -x "$PG_BIN/initdb" ] || PG_BIN=$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/x)")
  fi
  [ -x "$PG_BIN/initdb" ] || die "PostgreSQL server binaries (initdb, pg_ctl) not found; install postgresql"
  PG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/azotte-bench-pg.XXXXXX")
  PG_PORT=$(free_port)
  if [ "$(id -u)" = 0 ]; then
    local pg_user=postgres
    id "$pg_user" >/dev/null 2>&1 || pg_user=nobody
    chown "$pg_user" "$PG_DIR"
    as_pg=(runuser -u "$pg_user" --)
  fi
  # --no-sync only skips initdb's own final flush; the server below runs with fsync on.
  timeout 300 "${as_pg[@]}" "$PG_BIN/initdb" -D "$PG_DIR/data" -U azotte -A trust -E UTF8 --no-sync \
    >"$PG_DIR/initdb.log" 2>&1 || { cat "$PG_DIR/initdb.log" >&2; die "initdb failed"; }
  timeout 120 "${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 start \
    -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c shared_buffers=256MB" \
    >/dev/null || { cat "$PG_DIR/server.log" >&2; die "PostgreSQL did not start"; }
  timeout 60 "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U azotte azotte_bench || die "createdb failed"
  PG_VERSION=$("$PG_BIN/postgres" --version | awk '{print $3}')
  log "PostgreSQL $PG_VERSION on 127.0.0.1:$PG_PORT (fsync on, synchronous_commit on, shared_buffers=256MB)"
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

  measure "$backend" healthz /healthz
  healthz_rps=$RPS
  ROWS+=("$LAST_ROW | |")

  measure "$backend" tenant /v1/tenant -H "Authorization: Bearer $TOKEN" -H "x-tn: bench" -H "x-env: production"
  ratio=$(awk -v a="$RPS" -v b="$healthz_rps" 'BEGIN {printf "%.2f", a / b}')
  ROWS+=("$LAST_ROW | $ratio |")

  # The same read authenticated by an API key (issue 3): one HMAC, no argon2 on the hot path.
  measure "$backend" tenant-apikey /v1/tenant -H "x-api-key: $APIKEY" -H "x-tn: bench"
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
