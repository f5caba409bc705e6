#!/usr/bin/env bash
# HTTPS benchmark for slipway (issue 11): requests/s and latency of one web dyno through
# slipway's router and through a tuned nginx TLS reverse proxy to the very same dyno, over
# HTTP/1.1 on TLS (wrk), HTTP/2 (h2load) and plain HTTP (wrk), in one run.
#
#   cargo build --release && bash bench/https.sh > section.md
#
# Progress goes to stderr; a Markdown section (for docs/BENCHMARKS.md) to stdout. Everything runs
# in a fresh temporary SLIPWAY_HOME with its own daemon and is torn down on exit.
#
# The dyno is nginx (1 worker, `return 200 "Hello, world\n"`), as in bench/router.sh. The proxy
# nginx: `worker_processes auto`, `access_log off`, TLS 1.2/1.3 with the same ECDSA P-256
# certificate (made with openssl) as the router, `listen … ssl http2`, session cache, an upstream with
# `keepalive 64`, and the headers slipway's router sets. No CPU pinning: the load generator, the
# dyno and the proxy share the machine's cores.
#
# Needs wrk, h2load (nghttp2-client), nginx and openssl (Debian packages), git and python3.
#
# Knobs (environment):
#   SLIPWAY_BIN          binary to test (default: target/release/slipway of this checkout)
#   SLIPWAY_BENCH_PORTS  port range (default 25000-25999): its last four ports are the router's
#                        (HTTP, HTTPS) and the proxy's (HTTP, HTTPS), the rest the dynos'
#   BENCH_DURATION       seconds per measured run (default 6)
#   BENCH_RUNS           measured runs per path, interleaved (default 2; the best is reported)
#   BENCH_CONNECTIONS    client connections (default 32)
#   BENCH_STREAMS        HTTP/2 streams per connection at once (h2load -m, default 10)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SRC_BIN=${SLIPWAY_BIN:-$ROOT/target/release/slipway}
PORTS=${SLIPWAY_BENCH_PORTS:-25000-25999}
DURATION=${BENCH_DURATION:-6}
RUNS=${BENCH_RUNS:-2}
CONNS=${BENCH_CONNECTIONS:-32}
STREAMS=${BENCH_STREAMS:-10}
APP=bench-https
NGINX=/usr/sbin/nginx

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

[[ -x $SRC_BIN ]] || die "no slipway binary at $SRC_BIN (run: cargo build --release)"
for tool in wrk h2load openssl git python3; do
    command -v "$tool" >/dev/null || die "$tool is required (apt-get install wrk nghttp2-client openssl git python3)"
done
[[ -x $NGINX ]] || die "nginx is required at $NGINX"
[[ $DURATION =~ ^[0-9]+$ && $DURATION -ge 1 && $DURATION -le 120 ]] || die "BENCH_DURATION must be 1..120"
[[ $RUNS =~ ^[0-9]+$ && $RUNS -ge 1 && $RUNS -le 10 ]] || die "BENCH_RUNS must be 1..10"
[[ $CONNS =~ ^[0-9]+$ && $CONNS -ge 1 && $CONNS -le 1000 ]] || die "BENCH_CONNECTIONS must be 1..1000"
[[ $STREAMS =~ ^[0-9]+$ && $STREAMS -ge 1 && $STREAMS -le 100 ]] || die "BENCH_STREAMS must be 1..100"
[[ $PORTS =~ ^([0-9]+)-([0-9]+)$ ]] || die "SLIPWAY_BENCH_PORTS must be START-END"
PORT_LO=${BASH_REMATCH[1]} PORT_HI=${BASH_REMATCH[2]}
((PORT_HI - PORT_LO >= 8 && PORT_HI <= 65535)) || die "SLIPWAY_BENCH_PORTS needs at least 9 ports"

bench_workdir
export SLIPWAY_STOP_TIMEOUT=5 SLIPWAY_LOG_MAX_MB=100 SLIPWAY_LOG_FILES=2
unset SLIPWAY_HOME SLIPWAY_DOMAIN SLIPWAY_ROUTER_TIMEOUT
ROUTER_PORT=$PORT_HI ROUTER_TLS_PORT=$((PORT_HI - 1)) PROXY_PORT=$((PORT_HI - 2)) PROXY_TLS_PORT=$((PORT_HI - 3))
export SLIPWAY_PORTS=$PORT_LO-$((PORT_HI - 4))
export SLIPWAY_ROUTER_ADDR=127.0.0.1:$ROUTER_PORT SLIPWAY_HTTPS_ADDR=127.0.0.1:$ROUTER_TLS_PORT
PROXY_MASTER=""

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    local pids=()
    if [[ -n $PROXY_MASTER ]]; then
        kill -QUIT "$PROXY_MASTER" 2>/dev/null
        pids+=("$PROXY_MASTER" $(pgrep -P "$PROXY_MASTER"))
    fi
    local f
    for f in $(find "$WORK" -name nginx.pid 2>/dev/null); do
        pids+=("$(tr -dc 0-9 <"$f")")
    done
    bench_cleanup 1 "${pids[@]}"
    exit "$rc"
}
bench_prepare
sw() { timeout 60 "$BIN" --home "$H" "$@"; }

# ----- the certificate: one for the app's host, in the router's layout and for nginx ------------
HOST=$APP.localhost
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj "/CN=$HOST" \
    -addext "subjectAltName=DNS:$HOST" -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null ||
    die "openssl could not make a certificate"

# ----- daemon, app (nginx as the dyno) ---------------------------------------------------------
(
    cd "$WORK/src"
    git init -q -b main
    cat >dyno.sh <<'DYNOEOF'
#!/bin/sh
set -e
d="$HOME/nginx-$DYNO"
mkdir -p "$d"
cat >"$d/nginx.conf" <<EOF
worker_processes 1;
pid $d/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $d/client_body;
    proxy_temp_path $d/proxy;
    fastcgi_temp_path $d/fastcgi;
    uwsgi_temp_path $d/uwsgi;
    scgi_temp_path $d/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    server {
        listen 127.0.0.1:$PORT;
        default_type text/plain;
        location / { return 200 "Hello, world\n"; }
    }
}
EOF
exec /usr/sbin/nginx -p "$d" -e stderr -c "$d/nginx.conf" -g 'daemon off;'
DYNOEOF
    printf 'web: sh dyno.sh\n' >Procfile
    git add Procfile dyno.sh
    git -c user.name=bench -c user.email=bench@localhost commit -q -m 'https bench app'
)
sw daemon >/dev/null
sw apps:create "$APP" >/dev/null
out=$(cd "$WORK/src" && timeout 120 git push -q "$H/repos/$APP.git" main 2>&1) || { printf '%s\n' "$out" >&2; die "push failed"; }
mkdir -p "$H/certs/$APP"
chmod 700 "$H/certs" "$H/certs/$APP"
cat "$WORK/key.pem" "$WORK/cert.pem" >"$H/certs/$APP/manual-$HOST.pem"
chmod 600 "$H/certs/$APP/manual-$HOST.pem"
date +%s%N >"$H/certs/.changed"
DYNO_PORT=""
for _ in $(seq 1 150); do
    DYNO_PORT=$(sw ps "$APP" --json 2>/dev/null | python3 -c '
import json, sys
rows = json.load(sys.stdin)
rows = rows.get("dynos", rows) if isinstance(rows, dict) else rows
up = [r for r in rows if r.get("state") == "up" and r.get("port")]
print(up[0]["port"] if up else "")' || true)
    [[ -n $DYNO_PORT ]] && break
    sleep 0.2
done
[[ -n $DYNO_PORT ]] || die "the app's web dyno did not come up"
ROUTER_PID=$(awk 'NR == 1 {print $1}' "$H/run/router")
log "dyno on $DYNO_PORT, router pid $ROUTER_PID (HTTP $ROUTER_PORT, HTTPS $ROUTER_TLS_PORT)"

# ----- the nginx TLS proxy -----------------------------------------------------------------------
P=$WORK/proxy
mkdir -p "$P"
cat >"$P/nginx.conf" <<EOF
worker_processes auto;
pid $P/nginx.pid;
error_log $P/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $P/client_body;
    proxy_temp_path $P/proxy;
    fastcgi_temp_path $P/fastcgi;
    uwsgi_temp_path $P/uwsgi;
    scgi_temp_path $P/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    upstream dyno {
        server 127.0.0.1:$DYNO_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$PROXY_PORT;
        listen 127.0.0.1:$PROXY_TLS_PORT ssl http2;
        ssl_certificate $WORK/cert.pem;
        ssl_certificate_key $WORK/key.pem;
        location / {
            proxy_pass http://dyno;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Request-Id \$request_id;
        }
    }
}
EOF
"$NGINX" -t -q -p "$P" -e "$P/error.log" -c "$P/nginx.conf" || die "nginx -t failed"
"$NGINX" -p "$P" -e "$P/error.log" -c "$P/nginx.conf" -g 'daemon off;' </dev/null &
PROXY_MASTER=$!

check() { # URL: 200 with the dyno's body over curl (h2 where offered)
    local body
    body=$(curl -sS --max-time 5 --cacert "$WORK/cert.pem" --resolve "$HOST:$ROUTER_TLS_PORT:127.0.0.1" \
        --resolve "$HOST:$PROXY_TLS_PORT:127.0.0.1" --resolve "$HOST:$ROUTER_PORT:127.0.0.1" \
        --resolve "$HOST:$PROXY_PORT:127.0.0.1" "$@") || return 1
    [[ $body == "Hello, world" ]]
}
ready=0
for _ in $(seq 1 100); do
    if check "https://$HOST:$ROUTER_TLS_PORT/" && check --http2 "https://$HOST:$PROXY_TLS_PORT/" &&
        check "http://$HOST:$ROUTER_PORT/" && check "http://$HOST:$PROXY_PORT/"; then
        ready=1
        break
    fi
    sleep 0.2
done
((ready)) || { cat "$P/error.log" >&2; die "not every path answers 'Hello, world'"; }

# ----- runs --------------------------------------------------------------------------------------
RES=$WORK/runs.tsv
: >"$RES"
run() { # LABEL TOOL(wrk|h1|h2) PORT
    local out rps p99
    if [[ $2 == wrk ]]; then
        out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency -H "Host: $HOST" "http://127.0.0.1:$3/" 2>&1) ||
            die "wrk failed: $out"
        rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
        p99="p99 $(awk '$1 == "99%" {print $2}' <<<"$out")"
    else
        # TLS: h2load, which takes SNI and :authority from the URL and connects to --connect-to
        # (wrk sends the URL's IP address as SNI, which the router refuses, having no
        # certificate for it). -D runs for a duration; --h1 speaks HTTP/1.1, one request at a
        # time per connection, as wrk does.
        local proto=(-m"$STREAMS") want=h2
        [[ $2 == h1 ]] && proto=(--h1 -m1) want=http/1.1
        out=$(h2load -t2 -c"$CONNS" "${proto[@]}" -D"$DURATION" --connect-to="127.0.0.1:$3" \
            "https://$HOST:$3/" 2>&1) || die "h2load failed: $out"
        grep -q "Application protocol: $want" <<<"$out" || die "h2load did not negotiate $want: $out"
        rps=$(awk '/^finished in/ {gsub(",", "", $4); print $4}' <<<"$out")
        # requests: N total, N started, N done, N succeeded, N failed, ...
        local failed
        failed=$(awk '/^requests:/ {print $10}' <<<"$out")
        [[ $failed == 0 ]] || log "$1: $failed failed requests"
        p99=$(awk '/^time for request:/ {print "mean " $6 ", max " $5}' <<<"$out")
    fi
    printf '%s\t%s\t%s\n' "$1" "$rps" "$p99" >>"$RES"
    log "$1: $rps req/s, $p99"
}
for r in $(seq 1 "$RUNS"); do
    log "run $r/$RUNS"
    run router-http wrk "$ROUTER_PORT"
    run nginx-http wrk "$PROXY_PORT"
    run router-tls-h1 h1 "$ROUTER_TLS_PORT"
    run nginx-tls-h1 h1 "$PROXY_TLS_PORT"
    run router-h2 h2 "$ROUTER_TLS_PORT"
    run nginx-h2 h2 "$PROXY_TLS_PORT"
done

# ----- report ------------------------------------------------------------------------------------
python3 - "$RES" "$CONNS" "$STREAMS" "$DURATION" "$RUNS" "$("$BIN" --version)" "$("$NGINX" -v 2>&1)" <<'EOF'
import sys
res, conns, streams, duration, runs, version, nginx = sys.argv[1:8]
best = {}
for line in open(res):
    label, rps, p99 = line.rstrip("\n").split("\t")
    if label not in best or float(rps) > float(best[label][0]):
        best[label] = (rps, p99)
print(f"### HTTPS benchmark\n")
print(f"{version}; {nginx.replace('nginx version: ', '')}. One nginx dyno answering 13 bytes; the proxy nginx "
      f"`worker_processes auto`, `access_log off`, HTTP/2 on its TLS port. Plain HTTP/1.1: `wrk -t2 -c{conns} -d{duration}s` "
      f"(latency: p99); HTTPS: `h2load -t2 -c{conns} -D{duration}`, `--h1 -m1` for HTTP/1.1 and `-m{streams}` for HTTP/2 "
      f"(h2load reports no percentiles: latency is its mean and max request time). "
      f"Best of {runs} interleaved runs; no CPU pinning.\n")
print("| protocol | router requests/s | nginx requests/s | router / nginx | router latency | nginx latency |")
print("|---|---:|---:|---:|---:|---:|")
for name, r, n in [("plain HTTP/1.1", "router-http", "nginx-http"), ("HTTPS, HTTP/1.1", "router-tls-h1", "nginx-tls-h1"),
                   ("HTTPS, HTTP/2", "router-h2", "nginx-h2")]:
    rr, nn = best[r], best[n]
    print(f"| {name} | {float(rr[0]):,.0f} | {float(nn[0]):,.0f} | {float(rr[0]) / float(nn[0]) * 100:.0f} % | {rr[1]} | {nn[1]} |")
EOF
