# shellcheck shell=bash
# Sourced by the proxy benchmarks (bench/router.sh, bench/tls.sh) after bench/lib.sh: the
# helpers around the script's Python half, the nginx dyno app, the reverse-proxy nginxes this
# script starts (PROXY_MASTERS) and the cleanup that stops them.

PROXY_MASTERS=() # the reverse-proxy nginxes this script started (its children)

# The script's Python half, in the background + wait, so INT/TERM run the cleanup at once (it
# kills the helper too); the CLI of the bench's home; one result key.
py() { python3 "$PY" "$BIN" "$H" "$RESULTS" "$@" & wait "$!"; }
sw() { timeout 60 "$BIN" --home "$H" "$@"; }
set_result() { py set "$1" "$2"; }
json() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1"; }

# nginx masters of this run (dyno and proxies): nginx rewrites its workers' argv and environment
# (`nginx: worker process`, environment cleared), so the /proc scan of bench_cleanup cannot find a worker
# whose master died; their pid files can.
nginx_pids() {
    local f pid
    while IFS= read -r -d '' f; do
        pid=$(tr -dc 0-9 <"$f" 2>/dev/null || true)
        [[ -n $pid ]] && printf '%s\n' "$pid" && pgrep -P "$pid" || true
    done < <(find "$WORK" -name nginx.pid -print0 2>/dev/null)
}

stop_proxies() { # graceful quit, bounded; SIGKILL to what is left (the cleanup's scan gets workers)
    local pid i left
    for pid in "${PROXY_MASTERS[@]}"; do kill -QUIT "$pid" 2>/dev/null || true; done
    for i in $(seq 1 50); do
        left=0
        for pid in "${PROXY_MASTERS[@]}"; do
            if alive "$pid"; then left=1; fi
        done
        ((left)) || break
        sleep 0.1
    done
    for pid in "${PROXY_MASTERS[@]}"; do
        if alive "$pid"; then
            log "nginx $pid did not quit within 5 s: SIGKILL"
            kill -9 "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    PROXY_MASTERS=()
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    local ngx pid nginxes=()
    ngx=$(nginx_pids | sort -u)
    ((${#PROXY_MASTERS[@]} == 0)) || stop_proxies
    for pid in $ngx; do
        # Still an nginx? (a pid is only reused after the process is gone)
        [[ $(cat "/proc/$pid/comm" 2>/dev/null) == nginx ]] && nginxes+=("$pid")
    done
    # 1 s of grace: the dyno's nginx (QUIT, TERM) may still be finishing.
    bench_cleanup 1 "${nginxes[@]}"
    exit "$rc"
}

pids_of_nginx() { # PIDFILE WORKERS -> master,worker,... (comma-separated), once all workers run
    local m i workers=""
    m=$(tr -dc 0-9 <"$1")
    for i in $(seq 1 50); do
        workers=$(pgrep -P "$m" || true)
        (($(wc -w <<<"$workers") >= $2)) && break
        sleep 0.1
    done
    (($(wc -w <<<"$workers") == $2)) || die "nginx $m ($1): expected $2 workers, found: ${workers:-none}"
    { echo "$m"; echo "$workers"; } | paste -sd, -
}

http_get() { # URL [HOST]: prints the body; fails on anything but 200
    python3 - "$@" <<'EOF'
import sys, urllib.request
req = urllib.request.Request(sys.argv[1], headers={"Host": sys.argv[2]} if len(sys.argv) > 2 else {})
with urllib.request.urlopen(req, timeout=5) as r:
    assert r.status == 200, r.status
    sys.stdout.write(r.read().decode())
EOF
}

set_affinity() { # CPUS PID...: every thread of each PID
    local cpus=$1 pid
    shift
    for pid in "$@"; do
        taskset -a -p -c "$cpus" "$pid" >/dev/null || die "taskset -a -p -c $cpus $pid failed"
    done
}

# The app: nginx as the web dyno, committed in $WORK/src. No .py file, so the build is generic.
# The dyno's HOME is its release directory (in $WORK), so its config, pid file and temp dirs live
# there; nginx stays in the foreground (daemon off), so slipway's SIGTERM to the process group
# stops master and worker alike.
nginx_dyno_app() {
(
    cd "$WORK/src"
    git init -q -b main
    cat >dyno.sh <<'DYNOEOF'
#!/bin/sh
# slipway benchmark dyno: nginx answering 13 bytes on $PORT.
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
    git -c user.name=bench -c user.email=bench@localhost commit -q -m 'nginx bench app'
)
}

# The daemon, app $APP pushed from $WORK/src, its web.1 up: sets DAEMON_PID, ROUTER_PID (the
# router is a process of its own: run/router holds PID START VERSION CONFIG), DYNO_PORT, DYNO_PID
# and DYNO_PIDS (the dyno's nginx master and worker, comma-separated).
# shellcheck disable=SC2034 # the sourcing script uses them
start_nginx_app() {
    sw daemon >/dev/null
    [[ -s $H/run/slipway.pid ]] || die "daemon did not write $H/run/slipway.pid"
    DAEMON_PID=$(awk 'NR == 1 {print $1}' "$H/run/slipway.pid")
    [[ -d /proc/$DAEMON_PID ]] || die "no daemon process $DAEMON_PID"
    # The router is a process of its own (run/router: PID START VERSION CONFIG); it is the proxy
    # measured on the router path.
    [[ -s $H/run/router ]] || die "the daemon did not start a router ($H/run/router)"
    ROUTER_PID=$(awk 'NR == 1 {print $1}' "$H/run/router")
    [[ -d /proc/$ROUTER_PID ]] || die "no router process $ROUTER_PID"
    sw apps:create "$APP" >/dev/null
    out=$(cd "$WORK/src" && timeout 120 git push -q "$H/repos/$APP.git" main 2>&1) || { printf '%s\n' "$out" >&2; die "push failed"; }
    grep -q 'Launching... done, v1' <<<"$out" || { printf '%s\n' "$out" >&2; die "push: no 'Launching... done, v1'"; }
    py wait-web "$APP" 30 "$WORK/web"
    read -r DYNO_PORT DYNO_PID <"$WORK/web"
    DYNO_PIDFILE=$(find "$H" -path "*/nginx-web.1/nginx.pid" -print -quit)
    [[ -n $DYNO_PIDFILE ]] || die "no nginx pid file of web.1 under $H"
    [[ $(tr -dc 0-9 <"$DYNO_PIDFILE") == "$DYNO_PID" ]] || die "slipway's pid of web.1 ($DYNO_PID) is not its nginx master ($(cat "$DYNO_PIDFILE"))"
    DYNO_PIDS=$(pids_of_nginx "$DYNO_PIDFILE" 1)
}
