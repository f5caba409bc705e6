#!/usr/bin/env bash
# Router benchmark for slipway (issue 6): requests/s and latency of one web dyno reached three
# ways in one run — directly on its PORT, through slipway's router (`Host: APP.localhost`), and
# through a tuned nginx reverse proxy (with its access log off, and on) — so the router's cost is
# measured against a known-good proxy in front of the very same backend.
#
#   cargo build --release && bash bench/router.sh > section.md
#
# Progress goes to stderr; the Markdown results go to stdout (a `###` section, for under
# `## Router` in docs/BENCHMARKS.md).
# Everything runs in a fresh temporary SLIPWAY_HOME with its own daemon, and is torn down on
# exit (ps:stop --all, daemon --stop, the reverse-proxy nginxes stopped by pid, then SIGKILL to
# anything still mentioning the temp dir or holding one of its nginx pid files).
#
# Needs wrk and nginx (Debian packages; installed with apt-get if missing, without letting the
# package start the system nginx), git and python3.
#
# The dyno is nginx itself (1 worker, `return 200 "Hello, world\n"`, access log off), so the
# backend is not the bottleneck. The reverse proxy is a tuned nginx: an `upstream` with
# `keepalive 64`, `proxy_http_version 1.1`, `proxy_set_header Connection ""`, plus the headers
# slipway's router also sets (X-Forwarded-For/-Proto, X-Request-Id). slipway's router writes one
# `router[web.1]` line per request to the app's log; nginx runs once with `access_log off` and
# once with its stock unbuffered access log to a file.
#
# Knobs (environment):
#   SLIPWAY_BIN          binary to test (default: target/release/slipway of this checkout);
#                        it is copied into the temp dir so a concurrent rebuild cannot swap it
#   SLIPWAY_BENCH_PORTS  port range (default 24000-24999, below the kernel's ephemeral range): its
#                        last port is the router's, the two before it the nginx proxies', the
#                        rest the dynos' PORT range
#   BENCH_MODES          CPU set-ups to measure, in this order (default "shared pinned"):
#                          shared  no pinning: wrk, the dyno, the daemon and the proxy share both
#                                  cores; the proxy nginx has `worker_processes auto` (2)
#                          pinned  wrk (1 thread) on CPU 0; the dyno, the daemon, the router (all their threads)
#                                  and the proxy nginx on CPU 1; the proxy nginx has 1 worker
#   BENCH_DURATION       seconds per measured wrk run (default 8)
#   BENCH_WARMUP         seconds of warm-up per path and mode before its first run (default 2)
#   BENCH_RUNS           measured runs per path and mode, interleaved across the paths
#                        (default 2); the report takes each path's best run by requests/s and
#                        lists all of them
#   BENCH_CONNECTIONS    wrk -c (default 32)
#   BENCH_THREADS        wrk -t in the shared mode (default 2; the pinned mode uses 1: two wrk
#                        threads on one core preempt each other and add ~4 ms to the p99)
#   BENCH_PACED_RATE     after the throughput runs, latency runs per path and mode at about this
#                        many requests/s in total (default 5000; 0 skips them): wrk -t1 with a
#                        Lua delay() per connection, so no path is saturated
#   BENCH_PACED_RUNS     paced runs per path and mode, interleaved (default 2); the report takes
#                        each path's run with the lowest p99 and lists all of them
#   BENCH_PACED_DURATION seconds of each paced run (default 4)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SRC_BIN=${SLIPWAY_BIN:-$ROOT/target/release/slipway}
PORTS=${SLIPWAY_BENCH_PORTS:-24000-24999}
MODES=${BENCH_MODES:-shared pinned}
DURATION=${BENCH_DURATION:-8}
WARMUP=${BENCH_WARMUP:-2}
RUNS=${BENCH_RUNS:-2}
CONNS=${BENCH_CONNECTIONS:-32}
THREADS=${BENCH_THREADS:-2}
PACED_RATE=${BENCH_PACED_RATE:-5000}
PACED_DURATION=${BENCH_PACED_DURATION:-4}
PACED_RUNS=${BENCH_PACED_RUNS:-2}
APP=bench-router
NGINX=/usr/sbin/nginx

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

[[ -x $SRC_BIN ]] || die "no slipway binary at $SRC_BIN (run: cargo build --release)"
command -v git >/dev/null || die "git is required"
command -v python3 >/dev/null || die "python3 is required"
[[ $DURATION =~ ^[0-9]+$ && $DURATION -ge 1 && $DURATION -le 120 ]] || die "BENCH_DURATION must be 1..120"
[[ $WARMUP =~ ^[0-9]+$ && $WARMUP -le 60 ]] || die "BENCH_WARMUP must be 0..60"
[[ $RUNS =~ ^[0-9]+$ && $RUNS -ge 1 && $RUNS -le 10 ]] || die "BENCH_RUNS must be 1..10"
[[ $CONNS =~ ^[0-9]+$ && $CONNS -ge 1 && $CONNS -le 1000 ]] || die "BENCH_CONNECTIONS must be 1..1000"
[[ $THREADS =~ ^[0-9]+$ && $THREADS -ge 1 && $THREADS -le $CONNS ]] || die "BENCH_THREADS must be 1..BENCH_CONNECTIONS"
[[ $PACED_RATE =~ ^[0-9]+$ && $PACED_RATE -le 100000 ]] || die "BENCH_PACED_RATE must be 0..100000"
[[ $PACED_RUNS =~ ^[0-9]+$ && $PACED_RUNS -ge 1 && $PACED_RUNS -le 10 ]] || die "BENCH_PACED_RUNS must be 1..10"
[[ $PACED_DURATION =~ ^[0-9]+$ && $PACED_DURATION -ge 1 && $PACED_DURATION -le 60 ]] || die "BENCH_PACED_DURATION must be 1..60"
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

# ----- wrk and nginx, from Debian, like a fresh CI machine would need ---------------------------
if ! command -v wrk >/dev/null || [[ ! -x $NGINX ]]; then
    ((EUID == 0)) || die "wrk and nginx are missing; run as root, or: apt-get install wrk nginx"
    log "installing wrk and nginx with apt-get"
    bench_apt_install wrk nginx
fi
command -v wrk >/dev/null || die "wrk is required"
[[ -x $NGINX ]] || die "nginx is required at $NGINX"
if ((PIN)); then
    command -v taskset >/dev/null || die "the pinned mode needs taskset (util-linux)"
    (($(nproc) >= 2)) || die "the pinned mode needs at least 2 CPUs (BENCH_MODES=shared)"
fi

bench_workdir

# Nothing that names $WORK is exported (see bench_workdir).
# No log rotation: every router line of the run has to stay countable (~230 bytes per request,
# some 300-400 MB in all).
export SLIPWAY_STOP_TIMEOUT=5 SLIPWAY_LOG_MAX_MB=100000 SLIPWAY_LOG_FILES=5
unset SLIPWAY_HOME SLIPWAY_DOMAIN SLIPWAY_ROUTER_TIMEOUT

# shellcheck source=bench/nginx.sh
source "$ROOT/bench/nginx.sh"
bench_prepare

# ----- the Python half: ports, wrk runs with CPU sampling, the log check, the report -------------
cat >"$PY" <<'PYEOF'
import json, os, re, resource, subprocess, sys, time

from benchlib import cmd_wait_web, cpu_ns, cmd_ports_free, cmd_set, load, ps, run_ns, save, say

BIN, HOME, RESULTS = sys.argv[1], sys.argv[2], sys.argv[3]
CMD, ARGS = sys.argv[4], sys.argv[5:]


def thread_ns(pids, comm):
    """On-CPU nanoseconds of the threads of PIDS named COMM (e.g. the router's `router-log`)."""
    total = 0
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/comm") as f:
                    if f.read().strip() != comm:
                        continue
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except OSError:
                pass
    return total


def busy_ticks():
    """user+nice+system ticks of all CPUs (irq/softirq left out: not charged to any task)."""
    with open("/proc/stat") as f:
        v = f.readline().split()[1:]
    return int(v[0]) + int(v[1]) + int(v[2])


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def to_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(f"latency {text!r}")
    return float(m.group(1)) * UNITS[m.group(2)]


def parse_wrk(out):
    r = {}
    m = re.search(r"^\s*(\d+) requests in ([\d.]+)(ms|s|m)", out, re.M)
    r["requests"] = int(m.group(1))
    r["seconds"] = float(m.group(2)) * {"ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(3)]
    r["rps"] = float(re.search(r"^Requests/sec:\s*([\d.]+)", out, re.M).group(1))
    for p in ("50", "75", "90", "99"):
        r[f"p{p}"] = to_ms(re.search(rf"^\s*{p}(?:\.000)?%\s+(\S+)", out, re.M).group(1))
    m = re.search(r"^\s*Latency\s+(\S+)\s+(\S+)\s+(\S+)", out, re.M)
    r["avg"], r["max"] = to_ms(m.group(1)), to_ms(m.group(3))
    m = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    r["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    return r


# ----- commands -------------------------------------------------------------------------------


def cmd_wrk(mode, label, measured, cpus, server_pids, proxy_pids, *wrk_args):
    """One wrk run. server_pids / proxy_pids: comma-separated pids whose CPU time is sampled
    (everything on the server side / the proxy alone). measured=0: warm-up, only counted."""
    servers = [int(p) for p in server_pids.split(",") if p]
    proxies = [int(p) for p in proxy_pids.split(",") if p]
    cmd = ["wrk", *wrk_args]
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    ru0, b0 = resource.getrusage(resource.RUSAGE_CHILDREN), busy_ticks()
    l0, s0, p0, t0 = thread_ns(proxies, "router-log"), cpu_ns(servers), cpu_ns(proxies), time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    s1, p1, l1, wall = cpu_ns(servers), cpu_ns(proxies), thread_ns(proxies, "router-log"), time.monotonic() - t0
    ru1, b1 = resource.getrusage(resource.RUSAGE_CHILDREN), busy_ticks()
    if out.returncode != 0:
        say(f"wrk failed ({out.returncode}): {out.stderr.strip()}")
        sys.exit(1)
    r = parse_wrk(out.stdout)
    r["server_cpu_ms"] = (s1 - s0) / 1e6
    r["proxy_cpu_ms"] = (p1 - p0) / 1e6
    r["logwriter_cpu_ms"] = (l1 - l0) / 1e6
    r["wall_s"] = wall
    r["wrk_cpu_ms"] = ((ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)) * 1000
    r["all_cpu_ms"] = (b1 - b0) * 1000 / os.sysconf("SC_CLK_TCK")
    # CPU the machine spent on anything but wrk and the server side: other sessions, builds...
    r["foreign_pct"] = max(0.0, r["all_cpu_ms"] - r["wrk_cpu_ms"] - r["server_cpu_ms"]) / (wall * 1000) * 100
    d = load()
    key = {"1": "runs", "0": "warmups", "p": "paced"}[measured]
    d.setdefault(key, {}).setdefault(mode, {}).setdefault(label, []).append(r)
    save(**{key: d[key]})
    flag = ""
    if r["non2xx"] or r["socket_errors"]:
        flag = f", {r['non2xx']} non-2xx/3xx, {r['socket_errors']} socket errors"
    say(f"{mode} {label}{ {'1': '', '0': ' (warm-up)', 'p': ' (paced)'}[measured]}: {r['rps']:.0f} req/s, p50 {r['p50']:.3f} ms, "
        f"p99 {r['p99']:.3f} ms, server CPU {r['server_cpu_ms'] / max(r['requests'], 1) * 1000:.1f} us/req, "
        f"wrk CPU {r['wrk_cpu_ms'] / wall / 10:.0f} %, other processes {r['foreign_pct']:.0f} % of a core{flag}")


def count_router_lines(logdir, dyno):
    total = ok = 0
    tag = f" router[{dyno}]: at=info ".encode()
    for name in os.listdir(logdir):
        if not re.fullmatch(r"app\.log(\.\d+)?", name):
            continue
        with open(os.path.join(logdir, name), "rb") as f:
            for line in f:
                if tag in line:
                    total += 1
                    if b" status=200 " in line:
                        ok += 1
    return total, ok


def cmd_log_check(app, dyno):
    """Counts the router's lines once they stop growing (the writer gathers for 25 ms)."""
    logdir = os.path.join(HOME, "logs", app)
    last, t0 = None, time.monotonic()
    while True:
        n = count_router_lines(logdir, dyno)
        if n == last or time.monotonic() - t0 > 30:
            break
        last = n
        time.sleep(1)
    other = 0
    with open(os.path.join(logdir, "app.log"), "rb") as f:
        for line in f:
            if b" router[" in line and f" router[{dyno}]: at=info ".encode() not in line:
                other += 1
    size = sum(os.path.getsize(os.path.join(logdir, n)) for n in os.listdir(logdir))
    d = load()
    wrk_total = sum(r["requests"] for r in all_runs(d, "router"))
    save(log_check={"lines": n[0], "status_200": n[1], "other_router_lines": other,
                    "wrk_requests": wrk_total, "log_bytes": size})
    say(f"router lines: {n[0]} ({n[1]} with status=200, {other} other router lines); wrk counted {wrk_total} responses")


def all_runs(d, label=None):
    return [r for k in ("runs", "warmups", "paced") for m in d.get(k, {}).values() for l, v in m.items()
            if label in (None, l) for r in v]


def best(runs):
    return max(runs, key=lambda r: r["rps"])


def calm(runs):
    """The paced run with the lowest p99 (interference on a shared machine only adds latency)."""
    return min(runs, key=lambda r: r["p99"])


def fmt_n(x):
    return f"{x:,.0f}"


def cmd_report():
    d = load()
    paths = [
        ("direct", "direct to the dyno (`127.0.0.1:PORT`)"),
        ("router", "slipway's router (`Host: APP.localhost`), one log line per request"),
        ("nginx", "nginx reverse proxy, `access_log off`"),
        ("nginx-log", "nginx reverse proxy, access log on (unbuffered, to a file)"),
    ]
    modes = d["modes"]
    explain = {
        "shared": "no CPU pinning: wrk, the dyno, the daemon and the proxy share both cores; the proxy nginx has "
                  "`worker_processes auto` (2 workers)",
        "pinned": "wrk (1 thread) pinned to CPU 0; the dyno's nginx, the slipway daemon and router (all threads) and the "
                  "proxy nginx (1 worker) pinned to CPU 1, so whatever answers has exactly one core",
    }
    out = []
    w = out.append
    w(f"### Router benchmark — {d['date']}")
    w("")
    w(f"Machine: {d['nproc']} cores, {d['cpu_model']}, {d['kernel']}; {d['version']}; {d['nginx']}, {d['wrk']}. "
      f"Dyno: nginx with 1 worker answering `return 200 \"Hello, world\\n\"` (13 bytes), access log off. "
      f"Load: `wrk -t{d['threads']} -c{d['conns']} -d{d['duration']}s --latency` per run (`-t1` in the pinned mode). "
      f"Per CPU mode: each path warmed up {d['warmup']} s, then {d['nruns']} measured runs per path, "
      f"interleaved across the paths; the tables show each path's best run by requests/s "
      f"(latencies from that same run). Script run time: {d['runtime_s'] / 60:.1f} min.")
    best_of = {}
    for mode in modes:
        runs = d["runs"][mode]
        b = best_of[mode] = {k: best(runs[k]) for k, _ in paths}
        w("")
        w(f"#### {mode.capitalize()}: {explain[mode]}")
        w("")
        w("| path | requests/s | p50 | p75 | p90 | p99 | max | server-side CPU per request | of which the proxy | non-2xx / socket errors |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for k, label in paths:
            r = b[k]
            per = lambda ms: f"{ms / r['requests'] * 1000:.1f} µs" if r["requests"] else "–"
            w(f"| {label} | {fmt_n(r['rps'])} | {r['p50']:.3f} ms | {r['p75']:.3f} ms | {r['p90']:.3f} ms | "
              f"{r['p99']:.3f} ms | {r['max']:.2f} ms | {per(r['server_cpu_ms'])} | "
              f"{per(r['proxy_cpu_ms']) if k != 'direct' else '–'} | {r['non2xx']} / {r['socket_errors']} |")
        if d.get("paced", {}).get(mode):
            pr = d["paced"][mode]
            w("")
            w(f"Paced, about {fmt_n(d['paced_rate'])} requests/s (`wrk -t1 -c{d['conns']} -d{d['paced_duration']}s`, "
              f"each connection waiting {d['paced_delay_ms']} ms before each request), so that no path is saturated; "
              f"{d['paced_runs']} runs per path, interleaved; each path's run with the lowest p99:")
            w("")
            w("| path | requests/s | p50 | p75 | p90 | p99 | max | server-side CPU per request |")
            w("|---|---:|---:|---:|---:|---:|---:|---:|")
            for k, label in paths:
                r = calm(pr[k])
                w(f"| {k} | {fmt_n(r['rps'])} | {r['p50']:.3f} ms | {r['p75']:.3f} ms | {r['p90']:.3f} ms | "
                  f"{r['p99']:.3f} ms | {r['max']:.2f} ms | {r['server_cpu_ms'] / r['requests'] * 1000:.1f} µs |")
    w("")
    w("#### Against the goal (router ≥ 80 % of nginx's requests/s, p99 overhead < 1 ms)")
    w("")
    w("| comparison | " + " | ".join(modes) + " |")
    w("|---|" + "---:|" * len(modes))

    def row(label, f):
        w(f"| {label} | " + " | ".join(f(best_of[m]) for m in modes) + " |")

    mark = lambda ok: " ✅" if ok else " ❌"
    row("router requests/s as % of nginx, `access_log off` (goal ≥ 80 %)",
        lambda b: f"{b['router']['rps'] / b['nginx']['rps'] * 100:.1f} %" + mark(b['router']['rps'] >= 0.8 * b['nginx']['rps']))
    row("router requests/s as % of nginx, access log on",
        lambda b: f"{b['router']['rps'] / b['nginx-log']['rps'] * 100:.1f} %")
    row("router requests/s as % of direct", lambda b: f"{b['router']['rps'] / b['direct']['rps'] * 100:.1f} %")
    if d.get("paced"):
        paced = {m: {k: calm(v) for k, v in d["paced"][m].items()} for m in modes}
        prow = lambda label, f: w(f"| {label} | " + " | ".join(f(paced[m]) for m in modes) + " |")
        rate = fmt_n(d["paced_rate"])
        prow(f"paced (~{rate} req/s): router p99 − direct p99 (goal < 1 ms)",
             lambda b: f"{b['router']['p99'] - b['direct']['p99']:+.3f} ms" + mark(b['router']['p99'] - b['direct']['p99'] < 1))
        prow(f"paced (~{rate} req/s): nginx `access_log off` p99 − direct p99",
             lambda b: f"{b['nginx']['p99'] - b['direct']['p99']:+.3f} ms")
        prow(f"paced (~{rate} req/s): router p50 − direct p50",
             lambda b: f"{b['router']['p50'] - b['direct']['p50']:+.3f} ms")
        prow(f"paced (~{rate} req/s): nginx `access_log off` p50 − direct p50",
             lambda b: f"{b['nginx']['p50'] - b['direct']['p50']:+.3f} ms")
    row("saturated: router p99 − direct p99",
        lambda b: f"{b['router']['p99'] - b['direct']['p99']:+.3f} ms")
    row("saturated: nginx `access_log off` p99 − direct p99", lambda b: f"{b['nginx']['p99'] - b['direct']['p99']:+.3f} ms")
    row("saturated: nginx access log on p99 − direct p99", lambda b: f"{b['nginx-log']['p99'] - b['direct']['p99']:+.3f} ms")
    row("saturated: router p50 − nginx `access_log off` p50", lambda b: f"{b['router']['p50'] - b['nginx']['p50']:+.3f} ms")
    row("proxy CPU per request: router / nginx `access_log off`",
        lambda b: f"{b['router']['proxy_cpu_ms'] / b['router']['requests'] * 1000:.1f} / "
                  f"{b['nginx']['proxy_cpu_ms'] / b['nginx']['requests'] * 1000:.1f} µs")
    row("of the router's: its log writer thread (`router-log`)",
        lambda b: f"{b['router']['logwriter_cpu_ms'] / b['router']['requests'] * 1000:.2f} µs")
    w("")
    w("All runs: requests/s (p50 / p99 in ms) [CPU used by other processes on the machine during the run, "
      "% of one core: /proc/stat user+nice+system minus wrk and the server side]")
    w("")
    w("| mode | path | " + " | ".join(f"run {i + 1}" for i in range(d["nruns"])) + " |")
    w("|---|---|" + "---:|" * d["nruns"])
    for mode in modes:
        for k, _ in paths:
            cells = [f"{fmt_n(r['rps'])} ({r['p50']:.3f} / {r['p99']:.3f}) [{r['foreign_pct']:.0f} %]"
                     for r in d["runs"][mode][k]]
            w(f"| {mode} | {k} | " + " | ".join(cells) + " |")
    if d.get("paced"):
        w("")
        w(f"Paced runs (~{fmt_n(d['paced_rate'])} requests/s): requests/s (p50 / p99 in ms) [other processes' CPU]")
        w("")
        w("| mode | path | " + " | ".join(f"run {i + 1}" for i in range(d["paced_runs"])) + " |")
        w("|---|---|" + "---:|" * d["paced_runs"])
        for mode in modes:
            for k, _ in paths:
                cells = [f"{fmt_n(r['rps'])} ({r['p50']:.3f} / {r['p99']:.3f}) [{r['foreign_pct']:.0f} %]"
                         for r in d["paced"][mode][k]]
                w(f"| {mode} | {k} | " + " | ".join(cells) + " |")
    w("")
    lc = d["log_check"]
    every = all_runs(d)
    diff = lc["lines"] - lc["wrk_requests"]
    nginx_log_total = sum(r["requests"] for r in all_runs(d, "nginx-log"))
    w(f"Checks: {fmt_n(lc['lines'])} `router[web.1]: at=info` lines in `logs/{d['app']}/app.log` "
      f"({fmt_n(lc['status_200'])} with `status=200`; {lc['other_router_lines']} other router lines) for "
      f"{fmt_n(lc['wrk_requests'])} responses counted by wrk on the router path, warm-ups included "
      f"(difference {diff:+d}; wrk does not count the requests still in flight when it stops, up to "
      f"{d['conns']} per run); the log grew to {lc['log_bytes'] / 2**20:.0f} MiB. "
      f"nginx's access log: {fmt_n(d['nginx_access_lines'])} lines for {fmt_n(nginx_log_total)} responses "
      f"counted by wrk. Non-2xx responses / socket errors over every run and warm-up: "
      f"{sum(r['non2xx'] for r in every)} / {sum(r['socket_errors'] for r in every)}. "
      f"WARN/ERROR lines in the daemon's own log: {d.get('daemon_log_warnings', '?')}. "
      f"*Server-side CPU* is the `/proc/PID/task/*/schedstat` delta over the run of every process answering: "
      f"the dyno's nginx (master and worker) plus, on the proxied paths, the proxy — the slipway router process "
      f"(all threads, its log writer included) or the proxy nginx's master and workers — divided by "
      f"the requests wrk counted (kernel work done in softirq context is not in it). "
      f"Load average (1 min) before / after: {d['load_before']} / {d['load_after']}.")
    print("\n".join(out))


COMMANDS = {"ports-free": cmd_ports_free, "wait-web": cmd_wait_web, "wrk": cmd_wrk,
            "log-check": cmd_log_check, "set": cmd_set, "report": cmd_report}
COMMANDS[CMD](*ARGS)
PYEOF


# ----- preflight ---------------------------------------------------------------------------------
[[ $PORTS =~ ^([0-9]+)-([0-9]+)$ ]] || die "SLIPWAY_BENCH_PORTS must be START-END"
PORT_LO=${BASH_REMATCH[1]} PORT_HI=${BASH_REMATCH[2]}
((PORT_HI - PORT_LO >= 4 && PORT_HI <= 65535)) || die "SLIPWAY_BENCH_PORTS needs at least 5 ports"
py ports-free "$PORT_LO" "$PORT_HI" || die "port range $PORTS is in use; set SLIPWAY_BENCH_PORTS"
ROUTER_PORT=$PORT_HI
PROXY_PORT=$((PORT_HI - 1))     # nginx, access_log off
PROXY_LOG_PORT=$((PORT_HI - 2)) # nginx, access log on
export SLIPWAY_PORTS=$PORT_LO-$((PORT_HI - 3))
export SLIPWAY_ROUTER_ADDR=127.0.0.1:$ROUTER_PORT

CLIENT_CPU="" SERVER_CPU="" PROXY_WORKERS=auto # set per mode below
CPU_MODEL=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -z $(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]] || REV="$REV + uncommitted src changes"
VERSION="$("$BIN" --version) (binary built $(date -u -r "$SRC_BIN" '+%Y-%m-%d %H:%M UTC'), checkout $REV)"
NGINX_VERSION=$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')
WRK_VERSION=$(wrk -v 2>&1 | head -1 | awk '{print $1, $2}' || true)
set_result date "\"$(date -u +%Y-%m-%d)\""
set_result nproc "$(nproc)"
set_result cpu_model "$(json "${CPU_MODEL:-unknown}")"
set_result kernel "\"Linux $(uname -r)\""
set_result version "$(json "$VERSION")"
set_result nginx "$(json "$NGINX_VERSION")"
set_result wrk "$(json "${WRK_VERSION:-wrk}")"
set_result duration "$DURATION"
set_result warmup "$WARMUP"
set_result nruns "$RUNS"
set_result conns "$CONNS"
set_result threads "$THREADS"
set_result app "\"$APP\""
set_result load_before "$(json "$(cut -d' ' -f1 /proc/loadavg)")"
log "$VERSION; $NGINX_VERSION; $(nproc) cores; home $H; router $SLIPWAY_ROUTER_ADDR; modes: ${MODE_LIST[*]}"

# ----- the app: nginx as the web dyno (bench/nginx.sh) -------------------------------------------
nginx_dyno_app

# ----- the two reverse-proxy nginxes (started once the dyno's port is known) ---------------------
proxy_conf() { # DIR LISTEN_PORT ACCESS_LOG DYNO_PORT
    mkdir -p "$1"
    cat >"$1/nginx.conf" <<EOF
worker_processes $PROXY_WORKERS;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
http {
    access_log $3;
    client_body_temp_path $1/client_body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream dyno {
        server 127.0.0.1:$4;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$2;
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
}

start_proxy() { # DIR: nginx in the foreground as this script's child (so it is reaped here)
    "$NGINX" -t -q -p "$1" -e "$1/error.log" -c "$1/nginx.conf" || die "nginx -t failed for $1/nginx.conf"
    taskset -c "$SERVER_CPU" "$NGINX" -p "$1" -e "$1/error.log" -c "$1/nginx.conf" -g 'daemon off;' </dev/null &
    PROXY_MASTERS+=("$!")
    local i
    for i in $(seq 1 50); do
        [[ -s $1/nginx.pid ]] && break
        sleep 0.1
    done
    [[ -s $1/nginx.pid ]] || die "nginx wrote no pid file in $1"
    [[ $(tr -dc 0-9 <"$1/nginx.pid") == "$!" ]] || die "nginx in $1: pid file does not name the process started"
}




# ----- daemon, app, dyno -------------------------------------------------------------------------
start_nginx_app
log "dyno nginx: pids $DYNO_PIDS"

# Every path must answer the same 13 bytes before anything is measured.
want=$'Hello, world\n'
check_paths() {
    [[ $(http_get "http://127.0.0.1:$DYNO_PORT/"; echo x) == "${want}x" ]] || die "the dyno does not answer 'Hello, world'"
    [[ $(http_get "http://127.0.0.1:$ROUTER_PORT/" "$APP.localhost"; echo x) == "${want}x" ]] || die "the router does not answer 'Hello, world'"
    [[ $(http_get "http://127.0.0.1:$PROXY_PORT/"; echo x) == "${want}x" ]] || die "nginx (access_log off) does not answer 'Hello, world'"
    [[ $(http_get "http://127.0.0.1:$PROXY_LOG_PORT/"; echo x) == "${want}x" ]] || die "nginx (access log on) does not answer 'Hello, world'"
}

ALL_CPUS=0-$(($(nproc) - 1))

run_path() { # MODE LABEL MEASURED(1|0|p) SECONDS
    local url=() proxies="" threads=$WRK_THREADS extra=()
    if [[ $3 == p ]]; then
        threads=1 extra=(-s "$WORK/pace.lua")
    fi
    case $2 in
        direct) url=("http://127.0.0.1:$DYNO_PORT/") ;;
        router) url=(-H "Host: $APP.localhost" "http://127.0.0.1:$ROUTER_PORT/") proxies=$ROUTER_PID ;;
        nginx) url=("http://127.0.0.1:$PROXY_PORT/") proxies=$NGINX_PIDS ;;
        nginx-log) url=("http://127.0.0.1:$PROXY_LOG_PORT/") proxies=$NGINX_LOG_PIDS ;;
    esac
    local servers=$DYNO_PIDS${proxies:+,$proxies}
    py wrk "$1" "$2" "$3" "$CLIENT_CPU" "$servers" "$proxies" \
        "-t$threads" "-c$CONNS" "-d${4}s" --timeout 5s --latency "${extra[@]}" "${url[@]}"
}

PATHS=(direct router nginx nginx-log)
WRK_THREADS=$THREADS
# Paced runs: each connection waits DELAY ms before each request (wrk's delay() hook; whole ms),
# so CONNS connections make about CONNS * 1000 / (DELAY + latency) requests/s.
if ((PACED_RATE > 0)); then
    PACED_DELAY=$(((CONNS * 1000 + PACED_RATE / 2) / PACED_RATE))
    ((PACED_DELAY >= 1)) || die "BENCH_PACED_RATE is too high for $CONNS connections (delay under 1 ms)"
    printf 'function delay()\n    return %d\nend\n' "$PACED_DELAY" >"$WORK/pace.lua"
    set_result paced_delay_ms "$PACED_DELAY"
fi
set_result paced_rate "$PACED_RATE"
set_result paced_duration "$PACED_DURATION"
set_result paced_runs "$PACED_RUNS"
modes_json=()
for mode in "${MODE_LIST[@]}"; do
    modes_json+=("\"$mode\"")
    if [[ $mode == pinned ]]; then
        CLIENT_CPU=0 SERVER_CPU=1 PROXY_WORKERS=1 PROXY_WORKER_COUNT=1 WRK_THREADS=1
    else
        CLIENT_CPU="" SERVER_CPU=$ALL_CPUS PROXY_WORKERS=auto PROXY_WORKER_COUNT=$(nproc) WRK_THREADS=$THREADS
    fi
    proxy_conf "$WORK/proxy-off" "$PROXY_PORT" off "$DYNO_PORT"
    proxy_conf "$WORK/proxy-log" "$PROXY_LOG_PORT" "$WORK/proxy-log/access.log" "$DYNO_PORT"
    start_proxy "$WORK/proxy-off"
    start_proxy "$WORK/proxy-log"
    NGINX_PIDS=$(pids_of_nginx "$WORK/proxy-off/nginx.pid" "$PROXY_WORKER_COUNT")
    NGINX_LOG_PIDS=$(pids_of_nginx "$WORK/proxy-log/nginx.pid" "$PROXY_WORKER_COUNT")
    set_affinity "$SERVER_CPU" ${DYNO_PIDS//,/ } "$DAEMON_PID" "$ROUTER_PID"
    log "mode $mode: server side on CPUs $SERVER_CPU, wrk on ${CLIENT_CPU:-any CPU}; proxy nginx pids $NGINX_PIDS (access_log off), $NGINX_LOG_PIDS (access log on)"
    check_paths
    if ((WARMUP > 0)); then
        for p in "${PATHS[@]}"; do run_path "$mode" "$p" 0 "$WARMUP"; done
    fi
    for r in $(seq 1 "$RUNS"); do
        log "mode $mode, run $r/$RUNS: ${DURATION} s per path"
        for p in "${PATHS[@]}"; do run_path "$mode" "$p" 1 "$DURATION"; done
    done
    if ((PACED_RATE > 0)); then
        for r in $(seq 1 "$PACED_RUNS"); do
            log "mode $mode, paced run $r/$PACED_RUNS: ~$PACED_RATE req/s for ${PACED_DURATION} s per path"
            for p in "${PATHS[@]}"; do run_path "$mode" "$p" p "$PACED_DURATION"; done
        done
    fi
    stop_proxies
    for p in ${NGINX_PIDS//,/ } ${NGINX_LOG_PIDS//,/ }; do
        if alive "$p"; then die "proxy nginx process $p still running after its master quit"; fi
    done
done
set_result modes "[$(IFS=,; echo "${modes_json[*]}")]"

py log-check "$APP" web.1
access_lines=$(wc -l <"$WORK/proxy-log/access.log")
set_result nginx_access_lines "$access_lines"
log "nginx access log: $access_lines lines"

# ----- teardown check ------------------------------------------------------------------------------
timeout 60 "$BIN" --home "$H" ps:stop --all >/dev/null
sleep 0.5
left=$(pgrep -f -- "-shim --log $H/" | paste -sd' ' - || true)
for p in ${DYNO_PIDS//,/ }; do
    if alive "$p"; then left+=" $p"; fi
done
[[ -z ${left// /} ]] || die "dyno processes still running after ps:stop --all: $left"
warn=$(grep -cE '\b(WARN|ERROR)\b' "$H/logs/slipway.log" 2>/dev/null || true)
((${warn:-0} == 0)) || { log "WARN/ERROR lines in the daemon's log:"; grep -E '\b(WARN|ERROR)\b' "$H/logs/slipway.log" | head -10 >&2; }
set_result daemon_log_warnings "${warn:-0}"
set_result load_after "$(json "$(cut -d' ' -f1 /proc/loadavg)")"
set_result runtime_s "$(( $(date +%s) - BENCH_START ))"
py report
log "done in $(( $(date +%s) - BENCH_START )) s"
