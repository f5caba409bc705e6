#!/usr/bin/env bash
# TLS benchmark for slipway (issue 11): requests/s and latency of one web dyno reached over HTTPS
# through slipway's router (its own TLS listener, `https_addr`) and through a tuned nginx TLS
# proxy in front of the very same dyno, with HTTP/1.1 and with HTTP/2 (ALPN), plus the plain-HTTP
# paths again (direct, router, nginx) so the cost of TLS and of the router's hardening is
# visible in the same run.
#
#   cargo build --release && bash bench/tls.sh > section.md
#
# Progress goes to stderr; the Markdown results go to stdout (a `###` section, for under
# `## Router` in docs/BENCHMARKS.md). Same set-up and clean-up as bench/router.sh: a fresh
# temporary SLIPWAY_HOME with its own daemon (router on 127.0.0.1:PORT, HTTPS on
# SLIPWAY_HTTPS_ADDR), the dyno is nginx itself (1 worker, `return 200 "Hello, world\n"`), one
# nginx proxy (plain and TLS ports, `access_log off`), all torn down on exit.
#
# The certificate: a self-signed ECDSA P-256 certificate for APP.localhost made with `openssl
# req -x509`, given to nginx as cert + key and to the router with `slipway certs:add` (which stores
# it as `certs/APP/manual-APP.localhost.pem` and rewrites `certs/.changed` so a running router
# re-reads its certificates).
# The router's half is measured only if the router answers HTTPS there (a build without
# `https_addr` does not): otherwise those paths are left out of the report, which says so, unless
# BENCH_REQUIRE_ROUTER_TLS=1 (then the script fails).
#
# Load: h2load (Debian's nghttp2-client; installed with apt-get if missing, with nginx): HTTP/1.1
# (`--h1`, ALPN http/1.1 on TLS) and HTTP/2 (ALPN h2) alike, with `-c CONNECTIONS` and, for h2,
# `-m STREAMS` concurrent streams per connection. Latency percentiles come from h2load's
# per-request log (`--log-file`). SNI and Host/`:authority` are APP.localhost
# (`--connect-to 127.0.0.1:PORT`).
#
# Knobs (environment):
#   SLIPWAY_BIN          binary to test (default: target/release/slipway of this checkout)
#   SLIPWAY_BENCH_PORTS  port range (default 27000-27999): its last port is the router's HTTP,
#                        the one before it the router's HTTPS, the two before those nginx's
#                        plain and TLS ports; the rest the dynos' PORT range
#   BENCH_MODES          "shared pinned" (default), as in bench/router.sh: pinned puts h2load
#                        (1 thread) on CPU 0 and everything that answers (1 nginx worker) on CPU 1
#   BENCH_DURATION       seconds per measured run (default 8)
#   BENCH_WARMUP         seconds of h2load warm-up inside each run (default 1)
#   BENCH_RUNS           measured runs per path and mode, interleaved (default 2; best reported)
#   BENCH_CONNECTIONS    h2load -c (default 32)
#   BENCH_THREADS        h2load -t in the shared mode (default 2)
#   BENCH_H2_STREAMS     h2load -m for HTTP/2 (default 1: the same 32 requests in flight as h1)
#   BENCH_PATHS          paths to measure (default: all of direct router nginx router-tls
#                        nginx-tls router-h2 nginx-h2)
#   BENCH_REQUIRE_ROUTER_TLS  1: fail if the router does not answer HTTPS (default 0: skip it)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SRC_BIN=${SLIPWAY_BIN:-$ROOT/target/release/slipway}
PORTS=${SLIPWAY_BENCH_PORTS:-27000-27999}
MODES=${BENCH_MODES:-shared pinned}
DURATION=${BENCH_DURATION:-8}
WARMUP=${BENCH_WARMUP:-1}
RUNS=${BENCH_RUNS:-2}
CONNS=${BENCH_CONNECTIONS:-32}
THREADS=${BENCH_THREADS:-2}
STREAMS=${BENCH_H2_STREAMS:-1}
PATHS_WANTED=${BENCH_PATHS:-direct router nginx router-tls nginx-tls router-h2 nginx-h2}
REQUIRE_ROUTER_TLS=${BENCH_REQUIRE_ROUTER_TLS:-0}
APP=bench-tls
HOST=$APP.localhost
NGINX=/usr/sbin/nginx

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

[[ -x $SRC_BIN ]] || die "no slipway binary at $SRC_BIN (run: cargo build --release)"
for tool in git python3 openssl; do command -v "$tool" >/dev/null || die "$tool is required"; done
[[ $DURATION =~ ^[0-9]+$ && $DURATION -ge 1 && $DURATION -le 120 ]] || die "BENCH_DURATION must be 1..120"
[[ $WARMUP =~ ^[0-9]+$ && $WARMUP -le 60 ]] || die "BENCH_WARMUP must be 0..60"
[[ $RUNS =~ ^[0-9]+$ && $RUNS -ge 1 && $RUNS -le 10 ]] || die "BENCH_RUNS must be 1..10"
[[ $CONNS =~ ^[0-9]+$ && $CONNS -ge 1 && $CONNS -le 1000 ]] || die "BENCH_CONNECTIONS must be 1..1000"
[[ $THREADS =~ ^[0-9]+$ && $THREADS -ge 1 && $THREADS -le $CONNS ]] || die "BENCH_THREADS must be 1..BENCH_CONNECTIONS"
[[ $STREAMS =~ ^[0-9]+$ && $STREAMS -ge 1 && $STREAMS -le 100 ]] || die "BENCH_H2_STREAMS must be 1..100"
[[ $REQUIRE_ROUTER_TLS =~ ^[01]$ ]] || die "BENCH_REQUIRE_ROUTER_TLS must be 0 or 1"
read -r -a MODE_LIST <<<"$MODES"
((${#MODE_LIST[@]} >= 1)) || die "BENCH_MODES is empty"
PIN=0
for m in "${MODE_LIST[@]}"; do
    case $m in
        shared) ;;
        pinned) PIN=1 ;;
        *) die "BENCH_MODES: unknown mode '$m' (shared, pinned)" ;;
    esac
done
read -r -a PATH_LIST <<<"$PATHS_WANTED"
((${#PATH_LIST[@]} >= 1)) || die "BENCH_PATHS is empty"
for p in "${PATH_LIST[@]}"; do
    case $p in
        direct | router | nginx | router-tls | nginx-tls | router-h2 | nginx-h2) ;;
        *) die "BENCH_PATHS: unknown path '$p'" ;;
    esac
done

# ----- h2load and nginx, from Debian ---------------------------------------------------------------
if ! command -v h2load >/dev/null || [[ ! -x $NGINX ]]; then
    ((EUID == 0)) || die "h2load or nginx is missing; run as root, or: apt-get install nghttp2-client nginx"
    log "installing nghttp2-client and nginx with apt-get"
    bench_apt_install nghttp2-client nginx
fi
command -v h2load >/dev/null || die "h2load is required"
[[ -x $NGINX ]] || die "nginx is required at $NGINX"
if ((PIN)); then
    command -v taskset >/dev/null || die "the pinned mode needs taskset (util-linux)"
    (($(nproc) >= 2)) || die "the pinned mode needs at least 2 CPUs (BENCH_MODES=shared)"
fi

bench_workdir
export SLIPWAY_STOP_TIMEOUT=5 SLIPWAY_LOG_MAX_MB=100000 SLIPWAY_LOG_FILES=5
unset SLIPWAY_HOME SLIPWAY_DOMAIN SLIPWAY_ROUTER_TIMEOUT

# shellcheck source=bench/nginx.sh
source "$ROOT/bench/nginx.sh"
bench_prepare

# ----- the Python half: h2load runs with CPU sampling, the report ---------------------------------
cat >"$PY" <<'PYEOF'
import json, os, re, subprocess, sys, time

from benchlib import cmd_wait_web, cpu_ns, cmd_ports_free, cmd_set, load, ps, run_ns, save, say

BIN, HOME, RESULTS = sys.argv[1], sys.argv[2], sys.argv[3]
CMD, ARGS = sys.argv[4], sys.argv[5:]


def percentile(sorted_us, p):
    if not sorted_us:
        return float("nan")
    i = min(len(sorted_us) - 1, max(0, int(round(p / 100 * len(sorted_us) + 0.5)) - 1))
    return sorted_us[i] / 1000


def cmd_h2load(mode, label, cpus, server_pids, proxy_pids, log_path, *args):
    """One h2load run; latencies from its per-request log (start µs, status, response µs)."""
    servers = [int(p) for p in server_pids.split(",") if p]
    proxies = [int(p) for p in proxy_pids.split(",") if p]
    cmd = ["h2load", f"--log-file={log_path}", *args]
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    s0, p0, t0 = cpu_ns(servers), cpu_ns(proxies), time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    s1, p1, wall = cpu_ns(servers), cpu_ns(proxies), time.monotonic() - t0
    if out.returncode != 0:
        say(f"h2load failed ({out.returncode}): {out.stderr.strip()} {out.stdout.strip()[-500:]}")
        sys.exit(1)
    text = out.stdout
    m = re.search(r"finished in ([\d.]+)(ms|s), ([\d.]+) req/s", text)
    r = {"rps": float(m.group(3))}
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", text)
    r["requests"], r["succeeded"], r["failed"], r["errored"] = int(m.group(3)), int(m.group(4)), int(m.group(5)), int(m.group(6))
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    r["non2xx"] = int(m.group(2)) + int(m.group(3)) + int(m.group(4)) if m else 0
    m = re.search(r"^TLS Protocol: (\S+)", text, re.M)
    r["tls"] = m.group(1) if m else ""
    m = re.search(r"^Application protocol: (\S+)", text, re.M)
    r["proto"] = m.group(1) if m else ""
    lat = []
    with open(log_path) as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 3:
                lat.append(int(fields[2]))
    os.remove(log_path)
    lat.sort()
    for p in (50, 90, 99):
        r[f"p{p}"] = percentile(lat, p)
    r["max"] = lat[-1] / 1000 if lat else float("nan")
    r["server_cpu_ms"] = (s1 - s0) / 1e6
    r["proxy_cpu_ms"] = (p1 - p0) / 1e6
    r["wall_s"] = wall
    d = load()
    d.setdefault("runs", {}).setdefault(mode, {}).setdefault(label, []).append(r)
    save(runs=d["runs"])
    flag = f", {r['failed']} failed, {r['errored']} errored, {r['non2xx']} non-2xx" if r["failed"] or r["errored"] or r["non2xx"] else ""
    say(f"{mode} {label} ({r['proto']}{' ' + r['tls'] if r['tls'] else ''}): {r['rps']:.0f} req/s, p50 {r['p50']:.3f} ms, "
        f"p99 {r['p99']:.3f} ms, server CPU {r['server_cpu_ms'] / max(r['requests'], 1) * 1000:.1f} us/req{flag}")


PATHS = [
    ("direct", "plain HTTP/1.1, direct to the dyno"),
    ("router", "plain HTTP/1.1, slipway's router"),
    ("nginx", "plain HTTP/1.1, nginx"),
    ("router-tls", "HTTPS HTTP/1.1, slipway's router"),
    ("nginx-tls", "HTTPS HTTP/1.1, nginx"),
    ("router-h2", "HTTPS HTTP/2, slipway's router"),
    ("nginx-h2", "HTTPS HTTP/2, nginx"),
]


def fmt_n(x):
    return f"{x:,.0f}"


def cmd_report():
    d = load()
    modes = d["modes"]
    w = print
    w(f"### TLS benchmark — {d['date']}")
    w("")
    w(f"Machine: {d['nproc']} cores, {d['cpu_model']}, {d['kernel']}; {d['version']}; {d['nginx']}; {d['h2load']}. "
      f"Dyno: nginx with 1 worker answering `return 200 \"Hello, world\\n\"`. Certificate: self-signed ECDSA P-256 "
      f"for `{d['host']}`, the same file for both proxies. Load: `h2load -c{d['conns']} -t{d['threads']} "
      f"-D {d['duration']} --warm-up-time={d['warmup']}` per run (`--h1` for HTTP/1.1; `-m{d['streams']}` for h2; "
      f"`-t1` in the pinned mode), {d['nruns']} runs per path interleaved; each path's best run by requests/s "
      f"(percentiles from h2load's per-request log of that run). nginx: `worker_processes auto` (1 pinned), "
      f"`access_log off`, `ssl_session_cache`, `listen … ssl http2`, upstream `keepalive 64`. "
      f"Script run time: {d['runtime_s'] / 60:.1f} min.")
    if d.get("router_tls_skipped"):
        w("")
        w(f"**The router's HTTPS paths were not measured**: {d['router_tls_skipped']}")
    for mode in modes:
        runs = d["runs"].get(mode, {})
        w("")
        w(f"#### {mode.capitalize()}")
        w("")
        w("| path | protocol | requests/s | p50 | p90 | p99 | max | server-side CPU per request | of which the proxy | failed / non-2xx |")
        w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for k, label in PATHS:
            if k not in runs:
                continue
            r = max(runs[k], key=lambda r: r["rps"])
            per = lambda ms: f"{ms / r['requests'] * 1000:.1f} µs" if r["requests"] else "–"
            w(f"| {label} | {r['proto']}{' / ' + r['tls'] if r['tls'] else ''} | {fmt_n(r['rps'])} | {r['p50']:.3f} ms | "
              f"{r['p90']:.3f} ms | {r['p99']:.3f} ms | {r['max']:.2f} ms | {per(r['server_cpu_ms'])} | "
              f"{per(r['proxy_cpu_ms']) if k != 'direct' else '–'} | {r['failed'] + r['errored']} / {r['non2xx']} |")
        pairs = [("router", "nginx", "plain HTTP/1.1"), ("router-tls", "nginx-tls", "HTTPS HTTP/1.1"),
                 ("router-h2", "nginx-h2", "HTTPS HTTP/2")]
        lines = []
        for a, b, what in pairs:
            if a in runs and b in runs:
                ra, rb = max(runs[a], key=lambda r: r["rps"]), max(runs[b], key=lambda r: r["rps"])
                ok = " ✅" if ra["rps"] >= 0.8 * rb["rps"] else " ❌"
                lines.append(f"| {what} | {ra['rps'] / rb['rps'] * 100:.1f} %{ok} | {ra['p99'] - rb['p99']:+.3f} ms |")
        if lines:
            w("")
            w("| router vs nginx (goal ≥ 80 % of nginx's requests/s) | requests/s | p99 difference |")
            w("|---|---:|---:|")
            for line in lines:
                w(line)
    w("")
    w("All runs: requests/s (p50 / p99 in ms)")
    w("")
    w("| mode | path | " + " | ".join(f"run {i + 1}" for i in range(d["nruns"])) + " |")
    w("|---|---|" + "---:|" * d["nruns"])
    for mode in modes:
        for k, _ in PATHS:
            if k in d["runs"].get(mode, {}):
                cells = [f"{fmt_n(r['rps'])} ({r['p50']:.3f} / {r['p99']:.3f})" for r in d["runs"][mode][k]]
                w(f"| {mode} | {k} | " + " | ".join(cells) + " |")
    w("")
    w(f"Load average (1 min) before / after: {d['load_before']} / {d['load_after']}.")


COMMANDS = {"ports-free": cmd_ports_free, "wait-web": cmd_wait_web, "h2load": cmd_h2load,
            "set": cmd_set, "report": cmd_report}
COMMANDS[CMD](*ARGS)
PYEOF


# ----- preflight ---------------------------------------------------------------------------------
[[ $PORTS =~ ^([0-9]+)-([0-9]+)$ ]] || die "SLIPWAY_BENCH_PORTS must be START-END"
PORT_LO=${BASH_REMATCH[1]} PORT_HI=${BASH_REMATCH[2]}
((PORT_HI - PORT_LO >= 6 && PORT_HI <= 65535)) || die "SLIPWAY_BENCH_PORTS needs at least 7 ports"
py ports-free "$PORT_LO" "$PORT_HI" || die "port range $PORTS is in use; set SLIPWAY_BENCH_PORTS"
ROUTER_PORT=$PORT_HI
ROUTER_TLS_PORT=$((PORT_HI - 1))
NGINX_PORT=$((PORT_HI - 2))
NGINX_TLS_PORT=$((PORT_HI - 3))
export SLIPWAY_PORTS=$PORT_LO-$((PORT_HI - 4))
export SLIPWAY_ROUTER_ADDR=127.0.0.1:$ROUTER_PORT
export SLIPWAY_HTTPS_ADDR=127.0.0.1:$ROUTER_TLS_PORT

CPU_MODEL=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -z $(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]] || REV="$REV + uncommitted src changes"
VERSION="$("$BIN" --version) (binary built $(date -u -r "$SRC_BIN" '+%Y-%m-%d %H:%M UTC'), checkout $REV)"
set_result date "\"$(date -u +%Y-%m-%d)\""
set_result nproc "$(nproc)"
set_result cpu_model "$(json "${CPU_MODEL:-unknown}")"
set_result kernel "\"Linux $(uname -r)\""
set_result version "$(json "$VERSION")"
set_result nginx "$(json "$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')")"
set_result h2load "$(json "$(h2load --version 2>&1 | head -1)")"
set_result host "\"$HOST\""
set_result duration "$DURATION"
set_result warmup "$WARMUP"
set_result nruns "$RUNS"
set_result conns "$CONNS"
set_result threads "$THREADS"
set_result streams "$STREAMS"
set_result load_before "$(json "$(cut -d' ' -f1 /proc/loadavg)")"
log "$VERSION; $(nproc) cores; home $H; router http $SLIPWAY_ROUTER_ADDR https $SLIPWAY_HTTPS_ADDR; modes: ${MODE_LIST[*]}"

# ----- the certificate ---------------------------------------------------------------------------
mkdir -p "$WORK/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
    -keyout "$WORK/tls/key.pem" -out "$WORK/tls/cert.pem" -subj "/CN=$HOST" \
    -addext "subjectAltName=DNS:$HOST" 2>/dev/null || die "openssl could not make a certificate"

# ----- the app: nginx as the web dyno (bench/nginx.sh) -------------------------------------------
nginx_dyno_app

# ----- the nginx proxy: plain and TLS, HTTP/1.1 and h2 ---------------------------------------------
proxy_conf() { # DIR WORKERS DYNO_PORT
    mkdir -p "$1"
    cat >"$1/nginx.conf" <<EOF
worker_processes $2;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $1/client_body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:bench_tls:10m;
    ssl_session_timeout 1h;
    upstream dyno {
        server 127.0.0.1:$3;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        listen 127.0.0.1:$NGINX_TLS_PORT ssl http2;
        server_name $HOST;
        ssl_certificate $WORK/tls/cert.pem;
        ssl_certificate_key $WORK/tls/key.pem;
        location / {
            proxy_pass http://dyno;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Port \$server_port;
            proxy_set_header X-Request-Id \$request_id;
        }
    }
}
EOF
}

start_proxy() { # DIR CPUS
    "$NGINX" -t -q -p "$1" -e "$1/error.log" -c "$1/nginx.conf" || die "nginx -t failed for $1/nginx.conf"
    taskset -c "$2" "$NGINX" -p "$1" -e "$1/error.log" -c "$1/nginx.conf" -g 'daemon off;' </dev/null &
    PROXY_MASTERS+=("$!")
    local i
    for i in $(seq 1 50); do
        [[ -s $1/nginx.pid ]] && break
        sleep 0.1
    done
    [[ -s $1/nginx.pid ]] || die "nginx wrote no pid file in $1"
    [[ $(tr -dc 0-9 <"$1/nginx.pid") == "$!" ]] || die "nginx in $1: pid file does not name the process started"
}


https_get() { # PORT: the body of GET https://$HOST:PORT/ (SNI $HOST, certificate not checked), or fails
    python3 - "$HOST" "$1" <<'EOF'
import http.client, ssl, sys
host, port = sys.argv[1], int(sys.argv[2])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
class Conn(http.client.HTTPSConnection):
    def connect(self):
        import socket
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock = ctx.wrap_socket(sock, server_hostname=host)
c = Conn(host, port, context=ctx, timeout=5)
c.request("GET", "/", headers={"Host": host})
r = c.getresponse()
assert r.status == 200, r.status
sys.stdout.write(r.read().decode())
EOF
}


# ----- daemon, app, dyno, the router's certificate -----------------------------------------------
start_nginx_app

# The certificate through `certs:add`, as an operator adds one (it stores it where the router
# reads it, with the modes and group the router needs, and tells the router).
sw certs:add "$APP" "$WORK/tls/cert.pem" "$WORK/tls/key.pem" >&2 || die "certs:add refused the bench's certificate"

want=$'Hello, world\n'
ROUTER_TLS=0
deadline=$(($(date +%s) + 5))
while (($(date +%s) <= deadline)); do
    if [[ $(https_get "$ROUTER_TLS_PORT" 2>/dev/null; echo x) == "${want}x" ]]; then
        ROUTER_TLS=1
        break
    fi
    sleep 0.2
done
if ((ROUTER_TLS == 0)); then
    ((REQUIRE_ROUTER_TLS == 0)) || die "the router does not answer HTTPS on $SLIPWAY_HTTPS_ADDR"
    why="this build's router did not answer HTTPS on \`SLIPWAY_HTTPS_ADDR\` ($SLIPWAY_HTTPS_ADDR) within 5 s of its certificate being written (no \`https_addr\` yet?)."
    log "skipping the router's HTTPS paths: $why"
    set_result router_tls_skipped "$(json "$why")"
fi

ALL_CPUS=0-$(($(nproc) - 1))

run_path() { # MODE LABEL
    local args=() proxies="" threads=$H2_THREADS
    case $2 in
        direct) args=(--h1 "http://127.0.0.1:$DYNO_PORT/") ;;
        router) args=(--h1 --connect-to="127.0.0.1:$ROUTER_PORT" "http://$HOST/") proxies=$ROUTER_PID ;;
        nginx) args=(--h1 --connect-to="127.0.0.1:$NGINX_PORT" "http://$HOST/") proxies=$NGINX_PIDS ;;
        router-tls) args=(--h1 --connect-to="127.0.0.1:$ROUTER_TLS_PORT" "https://$HOST/") proxies=$ROUTER_PID ;;
        nginx-tls) args=(--h1 --connect-to="127.0.0.1:$NGINX_TLS_PORT" "https://$HOST/") proxies=$NGINX_PIDS ;;
        router-h2) args=(-m "$STREAMS" --connect-to="127.0.0.1:$ROUTER_TLS_PORT" "https://$HOST/") proxies=$ROUTER_PID ;;
        nginx-h2) args=(-m "$STREAMS" --connect-to="127.0.0.1:$NGINX_TLS_PORT" "https://$HOST/") proxies=$NGINX_PIDS ;;
    esac
    local servers=$DYNO_PIDS${proxies:+,$proxies}
    py h2load "$1" "$2" "$CLIENT_CPU" "$servers" "$proxies" "$WORK/h2load.log" \
        -c "$CONNS" -t "$threads" -D "$DURATION" --warm-up-time="$WARMUP" "${args[@]}"
}

PATHS=()
for p in "${PATH_LIST[@]}"; do
    if [[ $p == router-* ]] && ((ROUTER_TLS == 0)); then continue; fi
    PATHS+=("$p")
done
((${#PATHS[@]} >= 1)) || die "no path left to measure"
modes_json=()
for mode in "${MODE_LIST[@]}"; do
    modes_json+=("\"$mode\"")
    if [[ $mode == pinned ]]; then
        CLIENT_CPU=0 SERVER_CPU=1 WORKERS=1 WORKER_COUNT=1 H2_THREADS=1
    else
        CLIENT_CPU="" SERVER_CPU=$ALL_CPUS WORKERS=auto WORKER_COUNT=$(nproc) H2_THREADS=$THREADS
    fi
    proxy_conf "$WORK/proxy" "$WORKERS" "$DYNO_PORT"
    start_proxy "$WORK/proxy" "$SERVER_CPU"
    NGINX_PIDS=$(pids_of_nginx "$WORK/proxy/nginx.pid" "$WORKER_COUNT")
    set_affinity "$SERVER_CPU" ${DYNO_PIDS//,/ } "$DAEMON_PID" "$ROUTER_PID"
    log "mode $mode: server side on CPUs $SERVER_CPU, h2load on ${CLIENT_CPU:-any CPU}; nginx pids $NGINX_PIDS"
    [[ $(http_get "http://127.0.0.1:$DYNO_PORT/"; echo x) == "${want}x" ]] || die "the dyno does not answer 'Hello, world'"
    [[ $(http_get "http://127.0.0.1:$ROUTER_PORT/" "$HOST"; echo x) == "${want}x" ]] || die "the router does not answer 'Hello, world'"
    [[ $(http_get "http://127.0.0.1:$NGINX_PORT/" "$HOST"; echo x) == "${want}x" ]] || die "nginx does not answer 'Hello, world'"
    [[ $(https_get "$NGINX_TLS_PORT"; echo x) == "${want}x" ]] || die "nginx does not answer 'Hello, world' over HTTPS"
    for r in $(seq 1 "$RUNS"); do
        log "mode $mode, run $r/$RUNS: ${DURATION} s per path"
        for p in "${PATHS[@]}"; do run_path "$mode" "$p"; done
    done
    stop_proxies
done
set_result modes "[$(IFS=,; echo "${modes_json[*]}")]"

timeout 60 "$BIN" --home "$H" ps:stop --all >/dev/null
set_result load_after "$(json "$(cut -d' ' -f1 /proc/loadavg)")"
set_result runtime_s "$(( $(date +%s) - BENCH_START ))"
py report
log "done in $(( $(date +%s) - BENCH_START )) s"
