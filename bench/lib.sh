# Shared helpers of the wrk benchmarks (bench/http.sh, bench/journal_write.sh); source it after
# `cd` to the repository root with ROOT set, then call bench_init. It defines functions only,
# apart from what bench_init sets up.
#
# State (set by bench_init and the helpers): WORK (temporary directory, removed on exit), AZ_PID,
# AZ_NAME and BASE of the running server, PG_DIR, PG_BIN, PG_PORT of the throw-away PostgreSQL
# cluster, BIN (the azotte binary start_azotte runs; the caller sets it), THREADS, CONNECTIONS,
# WRK_TIMEOUT, WARMUP and DURATION (the caller sets them), FAILED and CONTENDED (set by measure).

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

# ---------------------------------------------------------------------------------------------
# Server, bootstrap, measurement

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

# bootstrap NAME [ROLE]: exchanges the printed secret for a bearer token (TOKEN), creates the
# tenant `bench`, checks that one tenant read answers 200 and creates an API key. ROLE is the API key's role (default
# read_only).
bootstrap() {
  local name=$1 role=${2:-read_only} secret="" resp code i
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
  api_key "$name" "$role"
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

# api_key NAME [ROLE]: enrols the administrator in TOTP (key management needs fresh MFA) and
# creates an API key with ROLE (default read_only) for the production environment of `bench`
# (APIKEY).
api_key() {
  local name=$1 role=${2:-read_only} resp secret code
  resp=$(curl -sS --max-time 30 -XPOST "$BASE/v1/auth/mfa/totp" -H "authorization: Bearer $TOKEN")
  secret=$(printf '%s' "$resp" | grep -oE '"secret":"[^"]+"' | cut -d'"' -f4 || true)
  [ -n "$secret" ] || die "$name: TOTP enrolment failed: $resp"
  code=$(totp "$secret")
  resp=$(curl -sS --max-time 30 -XPOST "$BASE/v1/auth/mfa/totp/confirm" -H "authorization: Bearer $TOKEN" \
    -H 'content-type: application/json' -d "{\"code\":\"$code\"}")
  printf '%s' "$resp" | grep -q recovery_codes || die "$name: TOTP confirmation failed: $resp"
  resp=$(curl -sS --max-time 30 -XPOST "$BASE/v1/api-keys" -H "authorization: Bearer $TOKEN" -H 'x-tn: bench' \
    -H 'x-env: production' -H 'content-type: application/json' -d "{\"description\":\"bench\",\"role\":\"$role\"}")
  APIKEY=$(printf '%s' "$resp" | grep -oE '"secret":"az_live_[^"]+"' | cut -d'"' -f4 || true)
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

# measure BACKEND LABEL PATH [wrk args...]: warm-up, measured run, parse. Sets RPS, M_P50 and
# M_P99 (ms), M_REQS, M_NON2XX, M_SOCK, the CPU shares M_CPU_AZ, M_CPU_PG ("-" on SQLite),
# M_CPU_WRK, M_CPU_OTHER, and M_T0/M_T1 (epoch seconds around the measured run).
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
  if [ "$non2xx" != 0 ] || [ "$sock" != 0 ]; then
    FAILED=1
    log "WARNING: $backend $label: $non2xx non-2xx/3xx responses and $sock socket errors out of $reqs requests"
    log "  wrk: $(grep 'Socket errors' "$out" || echo 'no socket errors')"
    log "  server log errors and warnings so far (count, level, message):"
    log_summary "$AZ_NAME" | sed 's/^/    /' >&2
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
  M_P50=$(to_ms "$p50")
  M_P99=$(to_ms "$p99")
  M_REQS=$reqs
  M_NON2XX=$non2xx
  M_SOCK=$sock
  M_CPU_AZ=$(pct "$az" "$wall")
  M_CPU_PG=$cpu_pg
  M_CPU_WRK=$(pct "$wrk" "$wall")
  M_CPU_OTHER=$(pct "$other" "$wall")
  M_T0=$t0
  M_T1=$t1
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
