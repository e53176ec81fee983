# Shared helpers of the wrk benchmarks (bench/http.sh, bench/journal_write.sh, bench/payments.sh);
# source it after `cd` to the repository root with ROOT set, then call bench_init. It defines
# functions only, apart from what bench_init sets up.
#
# State (set by bench_init and the helpers): WORK (temporary directory, removed on exit), AZ_PID,
# AZ_NAME and BASE of the running server, AZ_EXTRA_PIDS (further azotte processes the caller
# started, e.g. bench/renewals.sh's extra workers: stopped with the server, their CPU counted as
# azotte's), PG_DIR, PG_BIN, PG_PORT of the throw-away PostgreSQL
# cluster, BIN (the azotte binary start_azotte runs; the caller sets it), THREADS, CONNECTIONS,
# WRK_TIMEOUT, WARMUP and DURATION (the caller sets them), FAILED and CONTENDED (set by measure
# and cpu_end).

BENCH_SCRIPT=bench/$(basename "$0")

die() { echo "$BENCH_SCRIPT: $*" >&2; exit 1; }
log() { echo "$BENCH_SCRIPT: $*" >&2; }

# ---------------------------------------------------------------------------------------------
# State and cleanup

# bench_init: makes WORK and installs the cleanup trap (every server, cluster and file made here
# is removed on exit, including on error or Ctrl-C).
bench_init() {
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/azotte-bench.XXXXXX")
  AZ_PID=""
  AZ_EXTRA_PIDS=""
  AZ_NAME=""
  PG_DIR=""
  PG_BIN=""
  as_pg=()
  FAILED=0
  CONTENDED=0
  CLK_TCK=$(getconf CLK_TCK)
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

stop_azotte() {
  local pid=$AZ_PID extra=$AZ_EXTRA_PIDS p
  AZ_EXTRA_PIDS=""
  for p in $extra; do
    AZ_PID=$p
    stop_azotte
  done
  AZ_PID=$pid
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

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# ---------------------------------------------------------------------------------------------
# Tools and machine

# ensure_tools: installs wrk with apt when missing; checks for curl and python3.
ensure_tools() {
  if ! command -v wrk >/dev/null 2>&1; then
    log "installing wrk"
    if ! timeout 600 apt-get install -y wrk >"$WORK/apt.log" 2>&1; then
      timeout 600 apt-get update >>"$WORK/apt.log" 2>&1 || true
      timeout 600 apt-get install -y wrk >>"$WORK/apt.log" 2>&1 || { cat "$WORK/apt.log" >&2; die "cannot install wrk"; }
    fi
  fi
  command -v curl >/dev/null 2>&1 || die "curl is required"
  command -v python3 >/dev/null 2>&1 || die "python3 is required (free port lookup)"
}

# print_machine: the machine line (CPUs, model, RAM, kernel).
print_machine() {
  local cpu_model mem_total
  cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
  [ -n "$cpu_model" ] || cpu_model=$(lscpu 2>/dev/null | awk -F': +' '/^Model name/ {print $2; exit}')
  mem_total=$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
  echo "Machine: $(nproc) CPUs ($(nproc --all) online), ${cpu_model:-unknown CPU}, $mem_total RAM, $(uname -sr)"
}

# commit_id: the checked-out commit (with -dirty when the tree has changes).
commit_id() { git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown; }

# azotte_binary: sets BIN and BIN_ORIGIN. BENCH_AZOTTE_BIN (an absolute or relative path) runs
# that binary; otherwise target/release/azotte is built and copied into WORK (other scripts may
# rebuild it meanwhile).
azotte_binary() {
  if [ -n "${BENCH_AZOTTE_BIN:-}" ]; then
    BIN=$(realpath "$BENCH_AZOTTE_BIN" 2>/dev/null || echo "$BENCH_AZOTTE_BIN")
    [ -x "$BIN" ] || die "BENCH_AZOTTE_BIN=$BENCH_AZOTTE_BIN is not an executable"
    BIN_ORIGIN="binary $BIN (given, not built here; working tree at $(commit_id))"
  else
    log "building the release binary"
    timeout 3600 cargo build --release -p azotte >&2 || die "cargo build --release -p azotte failed"
    [ -x "$ROOT/target/release/azotte" ] || die "target/release/azotte not found after the build"
    BIN=$WORK/azotte
    cp "$ROOT/target/release/azotte" "$BIN"
    BIN_ORIGIN="$(commit_id) (release build)"
  fi
}

# ---------------------------------------------------------------------------------------------
# Server, bootstrap, measurement

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# CPU ticks (user + system) of one process, or 0 if it is gone.
proc_ticks() { awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# CPU ticks of azotte: the server (AZ_PID) and AZ_EXTRA_PIDS.
az_ticks() {
  local total p
  total=$(proc_ticks "$AZ_PID")
  for p in $AZ_EXTRA_PIDS; do
    total=$((total + $(proc_ticks "$p")))
  done
  echo "$total"
}

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
  AZ_NAME=$name
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

# bootstrap NAME [ROLE]: bootstrap_tenant, then api_key NAME ROLE (default read_only).
bootstrap() {
  bootstrap_tenant "$1"
  api_key "$1" "${2:-read_only}"
}

# bootstrap_tenant NAME: exchanges the printed secret for a bearer token (TOKEN), creates the
# tenant `bench` and checks that one tenant read answers 200.
bootstrap_tenant() {
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

# api_key NAME [ROLE]: mfa_enrol, then an API key with ROLE (default read_only) for the
# production environment of `bench` (APIKEY).
api_key() {
  mfa_enrol "$1"
  create_api_key "$1" production "{\"description\":\"bench\",\"role\":\"${2:-read_only}\"}"
}

# mfa_enrol NAME: enrols the administrator (TOKEN) in TOTP; key management needs fresh MFA.
mfa_enrol() {
  local name=$1 resp secret code
  resp=$(curl -sS --max-time 30 -XPOST "$BASE/v1/auth/mfa/totp" -H "authorization: Bearer $TOKEN")
  secret=$(printf '%s' "$resp" | grep -oE '"secret":"[^"]+"' | cut -d'"' -f4 || true)
  [ -n "$secret" ] || die "$name: TOTP enrolment failed: $resp"
  code=$(totp "$secret")
  resp=$(curl -sS --max-time 30 -XPOST "$BASE/v1/auth/mfa/totp/confirm" -H "authorization: Bearer $TOKEN" \
    -H 'content-type: application/json' -d "{\"code\":\"$code\"}")
  printf '%s' "$resp" | grep -q recovery_codes || die "$name: TOTP confirmation failed: $resp"
}

# create_api_key NAME ENVIRONMENT BODY: creates an API key of `bench` in ENVIRONMENT from the JSON
# BODY of POST /v1/api-keys (role and/or permissions); sets APIKEY (az_live_… or az_test_…).
create_api_key() {
  local name=$1 environment=$2 body=$3 resp
  resp=$(curl -sS --max-time 30 -XPOST "$BASE/v1/api-keys" -H "authorization: Bearer $TOKEN" -H 'x-tn: bench' \
    -H "x-env: $environment" -H 'content-type: application/json' -d "$body")
  APIKEY=$(printf '%s' "$resp" | grep -oE '"secret":"az_(live|test)_[^"]+"' | cut -d'"' -f4 || true)
  [ -n "$APIKEY" ] || die "$name: creating the API key failed: $resp"
}

# run_wrk SECONDS PATH [wrk args...]
run_wrk() {
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

# cpu_begin: snapshots the CPU counters before a measured run: azotte (if AZ_PID is set), the
# PostgreSQL cluster (if PG_DIR is set), the machine and this shell's finished children; then
# the start time. Call it in this shell (not in a $(…) subshell), then run the client in the
# foreground, then cpu_end.
cpu_begin() {
  C_AZ0=0
  [ -z "$AZ_PID" ] || C_AZ0=$(az_ticks)
  C_PG0=0
  [ -z "$PG_DIR" ] || C_PG0=$(pg_ticks)
  C_M0=$(machine_ticks)
  times >"$WORK/times.0"
  C_T0=$EPOCHREALTIME
}

# cpu_end LABEL: the CPU shares of wall time since cpu_begin (200% = two cores fully busy):
# M_CPU_AZ (azotte; "-" without a server), M_CPU_PG (PostgreSQL; "-" without a cluster),
# M_CPU_WRK (the client: this shell's children that finished meanwhile), M_CPU_OTHER (everything
# else on the machine: kernel softirq work not charged to a process, and any unrelated load,
# which makes the figures unreliable and is warned about, as is CPU stolen by the hypervisor);
# the same in CPU seconds as M_S_AZ, M_S_PG, M_S_WRK, M_S_OTHER; M_T0/M_T1 (epoch seconds) and
# M_WALL. Sets CONTENDED on a warning.
cpu_end() {
  local label=$1 t1 m1 az1=0 pg1=0 m0=$C_M0
  t1=$EPOCHREALTIME
  times >"$WORK/times.1"
  m1=$(machine_ticks)
  [ -z "$AZ_PID" ] || az1=$(az_ticks)
  [ -z "$PG_DIR" ] || pg1=$(pg_ticks)
  local wall az pg wrk machine other stolen
  wall=$(awk -v a="$C_T0" -v b="$t1" 'BEGIN {print b - a}')
  stolen=$(awk -v a="${m0#* }" -v b="${m1#* }" -v t="$CLK_TCK" 'BEGIN {print (b - a) / t}')
  m0=${m0% *}
  m1=${m1% *}
  if awk -v x="$stolen" -v d="$wall" -v n="$(nproc)" 'BEGIN {exit !(x / d > 0.05 * n)}'; then
    CONTENDED=1
    log "WARNING: $label: the hypervisor stole $(pct "$stolen" "$wall") CPU during the run"
  fi
  az=$(awk -v a="$C_AZ0" -v b="$az1" -v t="$CLK_TCK" 'BEGIN {print (b - a) / t}')
  pg=$(awk -v a="$C_PG0" -v b="$pg1" -v t="$CLK_TCK" 'BEGIN {print (b - a) / t}')
  wrk=$(awk -v a="$(children_cpu "$WORK/times.0")" -v b="$(children_cpu "$WORK/times.1")" 'BEGIN {print b - a}')
  machine=$(awk -v a="$m0" -v b="$m1" -v t="$CLK_TCK" 'BEGIN {print (b - a) / t}')
  other=$(awk -v m="$machine" -v a="$az" -v p="$pg" -v w="$wrk" 'BEGIN {o = m - a - p - w; print (o < 0 ? 0 : o)}')
  if awk -v o="$other" -v d="$wall" -v n="$(nproc)" 'BEGIN {exit !(o / d > 0.15 * n)}'; then
    CONTENDED=1
    log "WARNING: $label: other processes used $(pct "$other" "$wall") CPU during the run; the machine was not quiet:"
    top -b -n 2 -d 0.5 -w 120 | awk '/^top -/ {n++} n == 2' | sed -n '7,12p' | sed 's/^/    /' >&2
  fi
  M_CPU_AZ="-"
  [ -z "$AZ_PID" ] || M_CPU_AZ=$(pct "$az" "$wall")
  M_CPU_PG="-"
  [ -z "$PG_DIR" ] || M_CPU_PG=$(pct "$pg" "$wall")
  M_CPU_WRK=$(pct "$wrk" "$wall")
  M_CPU_OTHER=$(pct "$other" "$wall")
  M_S_AZ=$az
  M_S_PG=$pg
  M_S_WRK=$wrk
  M_S_OTHER=$other
  M_T0=$C_T0
  M_T1=$t1
  M_WALL=$wall
}

# measure BACKEND LABEL PATH [wrk args...]: warm-up, measured run, parse. Sets RPS, M_P50 and
# M_P99 (ms), M_REQS, M_NON2XX, M_SOCK, and what cpu_end sets (the CPU shares M_CPU_AZ,
# M_CPU_PG ("-" on SQLite), M_CPU_WRK, M_CPU_OTHER, M_T0/M_T1 around the measured run, …).
# Any non-2xx answer fails the run unless EXPECT_NON2XX=yes.
measure() {
  local backend=$1 label=$2 path=$3
  shift 3
  local out=$WORK/$backend.$label.wrk
  if [ "$WARMUP" -gt 0 ]; then
    run_wrk "$WARMUP" "$path" "$@" >"$out.warmup" 2>&1 || { cat "$out.warmup" >&2; die "$backend $label: wrk warm-up failed"; }
  fi
  cpu_begin
  run_wrk "$DURATION" "$path" "$@" >"$out" 2>&1 || { cat "$out" >&2; die "$backend $label: wrk failed"; }
  cpu_end "$backend $label"
  kill -0 "$AZ_PID" 2>/dev/null || { tail -n 50 "$WORK/$AZ_NAME.stderr" >&2; die "$backend: azotte died under load"; }
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
  # EXPECT_NON2XX=yes: the caller's Lua script checks the statuses itself (e.g. expected 404s).
  if { [ "$non2xx" != 0 ] && [ "${EXPECT_NON2XX:-no}" != yes ]; } || [ "$sock" != 0 ]; then
    FAILED=1
    log "WARNING: $backend $label: $non2xx non-2xx/3xx responses and $sock socket errors out of $reqs requests"
    log "  wrk: $(grep 'Socket errors' "$out" || echo 'no socket errors')"
    log "  server log errors and warnings so far (count, level, message):"
    log_summary "$AZ_NAME" | sed 's/^/    /' >&2
  fi
  RPS=$rps
  M_P50=$(to_ms "$p50")
  M_P99=$(to_ms "$p99")
  M_REQS=$reqs
  M_NON2XX=$non2xx
  M_SOCK=$sock
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL: a throw-away cluster on a free loopback port, normal durability (fsync on).

# start_postgres: the cluster and its database azotte_bench. PG_EXTRA_OPTIONS (the caller may
# set it, e.g. "-c shared_preload_libraries=pg_stat_statements") is added to the server's options.
start_postgres() {
  local extra=${PG_EXTRA_OPTIONS:-}
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
    -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c shared_buffers=256MB${extra:+ $extra}" \
    >/dev/null || { cat "$PG_DIR/server.log" >&2; die "PostgreSQL did not start"; }
  timeout 60 "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U azotte azotte_bench || die "createdb failed"
  PG_VERSION=$("$PG_BIN/postgres" --version | awk '{print $3}')
  log "PostgreSQL $PG_VERSION on 127.0.0.1:$PG_PORT (fsync on, synchronous_commit on, shared_buffers=256MB${extra:+ $extra})"
}

# ---------------------------------------------------------------------------------------------
# SQL, percentiles and pgbench (bench/payments.sh, bench/checkout.sh)

# sql DATABASE QUERY: one query as the throw-away cluster's superuser, unaligned output.
sql() {
  timeout 120 "$PG_BIN/psql" -X -At -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U azotte -d "$1" -c "$2" \
    || die "psql on $1 failed: $2"
}

# Nearest-rank percentiles (ms) of the microsecond values in a file, as "p50 p99".
percentiles_ms() {
  sort -n "$1" | awk '{ v[NR] = $1 }
    function rank(p,  i) { i = int(p * NR); if (i < p * NR) i++; return i < 1 ? 1 : i }
    END { if (NR == 0) { print "- -"; exit } printf "%.2f %.2f\n", v[rank(0.5)] / 1000, v[rank(0.99)] / 1000 }'
}

# pgbench_backends_gone: waits (up to 5 s) until the backends of pgbench's connections have
# exited and the postmaster has reaped them. pgbench returns as soon as it has closed its
# connections; a backend still exiting then is neither a live child nor in the postmaster's
# children's CPU (cutime), so its whole run's CPU would go uncounted (it showed as "other").
pgbench_backends_gone() {
  local pm i
  pm=$(head -n 1 "$PG_DIR/data/postmaster.pid" 2>/dev/null) || return 0
  for i in $(seq 50); do
    if ! pgrep -P "$pm" -f '^postgres: [^ ]+ pgbench ' >/dev/null \
      && ! ps -o stat= --ppid "$pm" | grep -q '^Z'; then
      return 0
    fi
    sleep 0.1
  done
  log "WARNING: pgbench's backends had not exited 5 s after it ended; their CPU may be missing"
}

# pgbench_tpcb SCALE CLIENTS: pgbench's built-in TPC-B in its own database `pgbench` of the
# cluster: initialise at SCALE, warm up for WARMUP s, CHECKPOINT, then DURATION s measured with
# CLIENTS clients over TCP (-j THREADS) between cpu_begin and cpu_end; the tables are vacuumed
# afterwards so later runs do not pay for its dead tuples. Sets PGB_TPS, PGB_TXNS, PGB_FAILED,
# PGB_P50 and PGB_P99 (ms, from the per-transaction log), PGB_WAL (bytes of WAL written during
# the measured run) and what cpu_end sets; FAILED on failed transactions.
pgbench_tpcb() {
  local scale=$1 clients=$2 pgbench=$PG_BIN/pgbench
  [ -x "$pgbench" ] || die "$pgbench not found (it ships with the PostgreSQL server binaries)"
  sql postgres "CREATE DATABASE pgbench" >/dev/null
  log "pgbench: initializing (scale $scale)"
  timeout 1800 "$pgbench" -h 127.0.0.1 -p "$PG_PORT" -U azotte -i -q -s "$scale" pgbench >"$WORK/pgbench.init" 2>&1 \
    || { cat "$WORK/pgbench.init" >&2; die "pgbench -i failed"; }
  local run=("$pgbench" -h 127.0.0.1 -p "$PG_PORT" -U azotte -c "$clients" -j "$THREADS")
  if [ "$WARMUP" -gt 0 ]; then
    timeout $((WARMUP + 120)) "${run[@]}" -T "$WARMUP" pgbench >"$WORK/pgbench.warmup" 2>&1 \
      || { cat "$WORK/pgbench.warmup" >&2; die "pgbench warm-up failed"; }
  fi
  sql postgres "CHECKPOINT" >/dev/null
  mkdir -p "$WORK/pgbench-log"
  local lsn0
  lsn0=$(sql postgres "SELECT pg_current_wal_lsn()")
  cpu_begin
  timeout $((DURATION + 120)) "${run[@]}" -T "$DURATION" -l --log-prefix="$WORK/pgbench-log/tx" pgbench \
    >"$WORK/pgbench.out" 2>&1 || { cat "$WORK/pgbench.out" >&2; die "pgbench failed"; }
  pgbench_backends_gone
  cpu_end pgbench
  PGB_WAL=$(sql postgres "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn0')")
  sed "s/^/    [pgbench] /" "$WORK/pgbench.out" >&2
  PGB_TPS=$(awk '/^tps = / {print $3; exit}' "$WORK/pgbench.out")
  PGB_TXNS=$(awk '/actually processed:/ {print $NF}' "$WORK/pgbench.out")
  PGB_FAILED=$(awk '/number of failed transactions:/ {print $5}' "$WORK/pgbench.out")
  PGB_FAILED=${PGB_FAILED:-0}
  [ -n "$PGB_TPS" ] && [ -n "$PGB_TXNS" ] || die "cannot parse pgbench output ($WORK/pgbench.out)"
  if [ "$PGB_FAILED" != 0 ]; then
    FAILED=1
    log "WARNING: pgbench: $PGB_FAILED failed transactions"
  fi
  # Per-transaction log: client, transaction, latency in µs (or "failed"), script, epoch s, µs.
  cat "$WORK"/pgbench-log/tx.* | awk '$3 ~ /^[0-9]+$/ {print $3}' >"$WORK/pgbench.latency"
  read -r PGB_P50 PGB_P99 < <(percentiles_ms "$WORK/pgbench.latency")
  sql pgbench "VACUUM" >/dev/null
}

# ---------------------------------------------------------------------------------------------
# Setup through the HTTP API (bench/payments.sh, bench/checkout.sh, bench/entitlements.sh)

# call METHOD PATH BODY STATUS: the request with the administrator's session (TOKEN) in the
# development environment of `bench`; dies unless it answers STATUS; the body is left in
# $WORK/call.json.
call() {
  local code
  code=$(curl -sS --max-time 30 -o "$WORK/call.json" -w '%{http_code}' -X "$1" "$BASE$2" \
    -H "authorization: Bearer $TOKEN" -H 'x-tn: bench' -H 'x-env: development' -H 'content-type: application/json' \
    -d "$3")
  [ "$code" = "$4" ] || die "$1 $2 answered $code (expected $4): $(cat "$WORK/call.json")"
}

# json_id PREFIX: the first id with that prefix in $WORK/call.json.
json_id() {
  local id
  id=$(grep -oE "\"id\":\"$1_[^\"]+\"" "$WORK/call.json" | head -n 1 | cut -d'"' -f4 || true)
  [ -n "$id" ] || die "no $1_ id in $(cat "$WORK/call.json")"
  echo "$id"
}

# subscription_catalog: in the development environment, a storefront (EUR, DE, 19 % VAT
# included) with a sandbox PSP account, entitlements `hd`, `screens` (quantity) and `downloads`
# in the active bundle `premium` (family `video`), EUR 9.99 a month without trial, and the
# entitlement `uhd` in no bundle. Sets SF, PSP, PRICE.
subscription_catalog() {
  call POST /v1/storefronts '{"name":"Bench","type":"web","default_currency":"EUR","default_language":"en",
    "countries":["DE"],"tax":{"kind":"inclusive","rate_bp":1900}}' 201
  SF=$(json_id sfr)
  call POST "/v1/storefronts/$SF/psp-accounts" '{"connector":"sandbox","display_name":"Sandbox","mode":"test"}' 201
  PSP=$(json_id psp)
  call POST /v1/entitlements '{"key":"hd","name":"HD","kind":"boolean"}' 201
  call POST /v1/entitlements '{"key":"screens","name":"Screens","kind":"quantity","unit":"screens"}' 201
  call POST /v1/entitlements '{"key":"downloads","name":"Downloads","kind":"boolean"}' 201
  call POST /v1/entitlements '{"key":"uhd","name":"UHD","kind":"boolean"}' 201
  call POST /v1/bundles '{"key":"premium","name":"Premium","type":"subscription","status":"active","family":"video",
    "entitlements":[{"key":"hd"},{"key":"screens","quantity":4},{"key":"downloads"}]}' 201
  local bundle
  bundle=$(json_id bnd)
  call POST /v1/prices "{\"bundle_id\":\"$bundle\",\"storefront_id\":\"$SF\",\"currency\":\"EUR\",\"amount\":999,
    \"billing_period\":{\"unit\":\"month\",\"count\":1}}" 201
  PRICE=$(json_id prc)
}

# checkout_load ARGS...: bench/checkout_load.py against this server with APIKEY and the catalog
# of subscription_catalog (its summary line on stdout; see the script).
checkout_load() {
  python3 "$ROOT/bench/checkout_load.py" --base "$BASE" --key "$APIKEY" --storefront "$SF" --psp "$PSP" \
    --price "$PRICE" "$@"
}

# summary_field NAME LINE: a field of checkout_load's summary line.
summary_field() { printf '%s\n' "$2" | tr ' ' '\n' | awk -F= -v k="$1" '$1 == k {print $2}'; }

# ---------------------------------------------------------------------------------------------
# Statement profile (PostgreSQL): start the cluster with
# PG_EXTRA_OPTIONS="-c shared_preload_libraries=pg_stat_statements" and call pg_profile_off
# once; then pg_profile_begin, the load, pg_profile_end.

# pg_profile_off: loads pg_stat_statements with tracking off (set with ALTER SYSTEM, which a
# command-line setting would override), so measured runs do not pay for it.
pg_profile_off() {
  sql postgres "ALTER SYSTEM SET pg_stat_statements.track = 'none'" >/dev/null
  sql postgres "SELECT pg_reload_conf()" >/dev/null
}

# pg_profile_begin: clears the statistics and turns tracking on.
pg_profile_begin() {
  sql postgres "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null
  sql postgres "ALTER SYSTEM SET pg_stat_statements.track = 'top'" >/dev/null
  sql postgres "SELECT pg_reload_conf()" >/dev/null
  sleep 1
  sql postgres "SELECT pg_stat_statements_reset()" >/dev/null
}

# pg_profile_end DATABASE N UNIT [ROWS]: turns tracking off and prints, per UNIT (N of them were
# done meanwhile), the statements, transactions, database execution time and WAL, then the ROWS
# (default 25) statements of DATABASE taking the most time. Execution time is the statements'
# own: it leaves out waiting for the WAL flush at commit and the round trips.
pg_profile_end() {
  local db="dbid = (SELECT oid FROM pg_database WHERE datname = '$1')" n=$2 unit=$3 rows=${4:-25}
  pg_profile_off
  echo "statements per $unit: $(sql postgres "SELECT round(sum(calls)::numeric / $n, 1)
      || ' (BEGIN ' || round(coalesce(sum(calls) FILTER (WHERE query ~* '^\\s*(BEGIN|START)'), 0)::numeric / $n, 2)
      || ', COMMIT ' || round(coalesce(sum(calls) FILTER (WHERE query ~* '^\\s*(COMMIT|END)'), 0)::numeric / $n, 2)
      || ', ROLLBACK ' || round(coalesce(sum(calls) FILTER (WHERE query ~* '^\\s*ROLLBACK'), 0)::numeric / $n, 2)
      || '); database execution time per $unit: ' || round((sum(total_exec_time) / $n * 1000)::numeric, 0)
      || ' µs; WAL per $unit: ' || pg_size_pretty((sum(wal_bytes) / $n)::bigint)
      FROM pg_stat_statements WHERE $db")"
  echo
  echo "| calls per $unit | µs per $unit | µs per call | rows per call | buffers per call | statement |"
  echo "|---:|---:|---:|---:|---:|---|"
  sql postgres "SELECT '| ' || round(calls::numeric / $n, 2) || ' | ' || round((total_exec_time / $n * 1000)::numeric, 0)
      || ' | ' || round((mean_exec_time * 1000)::numeric, 0) || ' | ' || round(rows::numeric / greatest(calls, 1), 1)
      || ' | ' || round((shared_blks_hit + shared_blks_read)::numeric / greatest(calls, 1), 0)
      || ' | \`' || left(regexp_replace(regexp_replace(query, '\\s+', ' ', 'g'), '[|\`]', '/', 'g'), 140) || '\` |'
      FROM pg_stat_statements WHERE $db ORDER BY total_exec_time DESC LIMIT $rows"
}

# build_journal_binaries: builds the release binary with --features bench-unjournaled, then the
# normal one (last, so target/release/azotte stays the normal build), and copies them to
# BIN_U=$WORK/azotte-unjournaled and BIN_J=$WORK/azotte-journaled.
build_journal_binaries() {
  log "building the release binary with --features bench-unjournaled"
  timeout 3600 cargo build --release -p azotte --features bench-unjournaled >&2 \
    || die "cargo build --release -p azotte --features bench-unjournaled failed"
  BIN_U=$WORK/azotte-unjournaled
  cp "$ROOT/target/release/azotte" "$BIN_U"
  log "building the normal release binary"
  timeout 3600 cargo build --release -p azotte >&2 || die "cargo build --release -p azotte failed"
  BIN_J=$WORK/azotte-journaled
  cp "$ROOT/target/release/azotte" "$BIN_J"
  cmp -s "$BIN_J" "$BIN_U" && die "the two builds are identical: the feature did not take effect"
  return 0
}

# roles_lua FILE: writes the wrk script of the journaled mutation, POST /v1/roles with a custom
# role; each wrk thread draws a random run id, so names never repeat across runs or threads.
roles_lua() {
  cat >"$1" <<'LUA'
local f = assert(io.open("/proc/sys/kernel/random/uuid", "r"))
local run = f:read("*l"):gsub("-", ""):sub(1, 12)
f:close()
local counter = 0
function request()
  counter = counter + 1
  local body = string.format('{"name":"r%s_%d","permissions":["audit.read"]}', run, counter)
  return wrk.format("POST", nil, nil, body)
end
LUA
}
