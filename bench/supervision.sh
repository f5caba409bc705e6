#!/usr/bin/env bash
# Supervision benchmark for slipway: crash-to-replacement latency, daemon RSS/CPU with
# 50 apps x 2 idle dynos, and the per-dyno memory cost of the supervision path (the shims).
#
#   cargo build --release && bash bench/supervision.sh > section.md
#
# Progress goes to stderr; the Markdown section with the results goes to stdout.
# Everything runs in a fresh temporary SLIPWAY_HOME with its own daemon, and is torn down on
# exit (ps:stop --all, daemon --stop, then SIGKILL to anything still mentioning the temp dir).
#
# Knobs (environment):
#   SLIPWAY_BIN          binary to test (default: target/release/slipway of this checkout);
#                        it is copied into the temp dir so a concurrent rebuild cannot swap it
#   SLIPWAY_BENCH_PORTS  dyno PORT range (default 24000-24999: below the kernel's ephemeral
#                        range, so no outgoing connection can be sitting on a dyno's port); its
#                        last port is the daemon's HTTP router
#   BENCH_APPS           apps for the idle measurement (default 50, 2 dynos each)
#   BENCH_CRASH_DYNOS    web dynos killed once each for the latency measurement (default 20)
#   BENCH_IDLE_SECONDS   CPU measurement window (default 60)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SRC_BIN=${SLIPWAY_BIN:-$ROOT/target/release/slipway}
PORTS=${SLIPWAY_BENCH_PORTS:-24000-24999}
N_APPS=${BENCH_APPS:-50}
N_CRASH=${BENCH_CRASH_DYNOS:-20}
IDLE=${BENCH_IDLE_SECONDS:-60}
PUSH_PARALLEL=4

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

[[ -x $SRC_BIN ]] || die "no slipway binary at $SRC_BIN (run: cargo build --release)"
command -v git >/dev/null || die "git is required"
command -v python3 >/dev/null || die "python3 is required"
[[ $N_APPS =~ ^[0-9]+$ && $N_APPS -ge 1 && $N_APPS -le 99 ]] || die "BENCH_APPS must be 1..99"
[[ $N_CRASH =~ ^[0-9]+$ && $N_CRASH -ge 1 && $N_CRASH -le 100 ]] || die "BENCH_CRASH_DYNOS must be 1..100"
[[ $IDLE =~ ^[0-9]+$ && $IDLE -ge 1 && $IDLE -le 600 ]] || die "BENCH_IDLE_SECONDS must be 1..600"

bench_workdir

# Nothing that names $WORK is exported (see bench_workdir).
export SLIPWAY_PORTS=$PORTS SLIPWAY_STOP_TIMEOUT=5
unset SLIPWAY_HOME

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    bench_cleanup 0
    exit "$rc"
}
bench_prepare

# ----- the Python half: timing, /proc sampling, JSON, the report ------------------------------
cat >"$PY" <<'PYEOF'
import json, math, os, re, signal, subprocess, sys, time, urllib.request

from benchlib import cmd_set, cpu_ticks, load, ps, run_ns, save, say, stat_fields
from datetime import datetime

BIN, HOME, RESULTS = sys.argv[1], sys.argv[2], sys.argv[3]
CMD, ARGS = sys.argv[4], sys.argv[5:]


def http_ok(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as r:
            r.read()
            return r.status == 200
    except Exception:
        return False


def ns_delta(before, after):
    """CPU ns used between two run_ns samples; a thread that exited in between loses what it
    used after the first sample, so this is a lower bound."""
    return sum(v - before.get(t, 0) for t, v in after.items())


def start_ticks(pid):
    return int(stat_fields(pid)[19])  # starttime (22)


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def rollup(pid):
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            m = re.match(r"^(\w+):\s+(\d+) kB", line)
            if m:
                out[m.group(1)] = int(m.group(2))
    out["Uss"] = out.get("Private_Clean", 0) + out.get("Private_Dirty", 0)
    return out


def daemon_pid():
    with open(os.path.join(HOME, "run", "slipway.pid")) as f:
        return int(f.read().split()[0])


def shims():
    """pid -> dyno name of every shim of this home (`slipway-shim …`, or `slipway dyno-shim …`)."""
    found = {}
    marker = os.path.join(HOME, "logs") + "/"
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        argv = [a.decode(errors="replace") for a in argv]
        shim = argv[0].endswith("/slipway-shim") or (len(argv) > 1 and argv[1] == "dyno-shim")
        if len(argv) > 5 and shim and "--log" in argv:
            logpath = argv[argv.index("--log") + 1]
            if logpath.startswith(marker):
                app = logpath[len(marker):].split("/")[0]
                dyno = argv[argv.index("--dyno") + 1] if "--dyno" in argv else "?"
                found[int(entry)] = f"{app}/{dyno}"
    return found


def pct(sorted_vals, p):
    """Nearest-rank percentile."""
    k = max(1, math.ceil(p / 100 * len(sorted_vals)))
    return sorted_vals[k - 1]


def summary(vals):
    v = sorted(vals)
    med = v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2
    return {"n": len(v), "min": v[0], "median": med, "p90": pct(v, 90), "max": v[-1]}


def log_ts(line):
    return datetime.fromisoformat(line.split(" ", 1)[0]).timestamp()


# ----- commands -------------------------------------------------------------------------------

def cmd_ports_free(start, end):
    start, end = int(start), int(end)
    busy = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6", "/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    port = int(fields[1].rsplit(":", 1)[1], 16)
                    # TIME_WAIT (06) leftovers of earlier connections do not stop a dyno's bind
                    # (python's http.server and slipway's port probe both use SO_REUSEADDR).
                    if start <= port <= end and not (table.startswith("/proc/net/tcp") and fields[3] == "06"):
                        busy.add(port)
        except FileNotFoundError:
            pass
    if busy:
        say(f"ports in use inside {start}-{end}: {sorted(busy)[:20]}")
        sys.exit(1)


def cmd_wait_up(deadline_s, *specs):
    """Waits until each APP=N has exactly N dynos, all `up`. Bounded by deadline_s."""
    want = {s.split("=")[0]: int(s.split("=")[1]) for s in specs}
    t0 = time.monotonic()
    deadline = t0 + float(deadline_s)
    pending = dict(want)
    while pending:
        for app in list(pending):
            rows = ps(app)
            if len(rows) == pending[app] and all(r["state"] == "up" for r in rows):
                del pending[app]
        if not pending:
            break
        if time.monotonic() > deadline:
            detail = {a: [(r["name"], r["state"]) for r in ps(a)] for a in list(pending)[:3]}
            say(f"timed out waiting for dynos to be up; e.g. {detail}")
            sys.exit(1)
        time.sleep(0.2)
    say(f"all dynos up ({sum(want.values())} in {len(want)} apps) after {time.monotonic() - t0:.1f} s")


def cmd_crash(app, n):
    n = int(n)
    logpath = os.path.join(HOME, "logs", app, "app.log")
    rows = sorted((r for r in ps(app) if r["type"] == "web"), key=lambda r: int(r["name"].split(".")[1]))
    if len(rows) != n or any(r["state"] != "up" for r in rows):
        say(f"expected {n} web dynos up, found {[(r['name'], r['state']) for r in rows]}")
        sys.exit(1)
    samples = []
    poll_intervals = []
    ps_costs = []
    for r in rows:
        name, old_pid, port = r["name"], r["pid"], r["port"]
        offset = os.path.getsize(logpath)
        t_kill_wall = time.time()
        t0 = time.monotonic()
        os.kill(old_pid, signal.SIGKILL)
        deadline = t0 + 15.0
        t_seen = None
        polls = 0
        last_poll = None
        new_pid = None
        while True:
            now = time.monotonic()
            if now > deadline:
                say(f"{name}: no replacement up within 15 s")
                sys.exit(1)
            if last_poll is not None:
                poll_intervals.append(now - last_poll)
            last_poll = now
            polls += 1
            a = time.monotonic()
            cur = next((x for x in ps(app) if x["name"] == name), None)
            ps_costs.append(time.monotonic() - a)
            if cur and cur["state"] == "up" and cur["pid"] not in (None, old_pid):
                if http_ok(port):
                    t_seen = time.monotonic()
                    new_pid = cur["pid"]
                    break
            # next 5 ms tick
            time.sleep(max(0.0, 0.005 - (time.monotonic() - now)))
        # The log lines: the shim's exit line, then the daemon's `starting to up` for the new pid.
        exit_ts = up_ts = listen_ts = None
        log_deadline = time.monotonic() + 5
        while time.monotonic() < log_deadline:
            with open(logpath, "rb") as f:
                if os.path.getsize(logpath) >= offset:
                    f.seek(offset)
                text = f.read().decode(errors="replace")
            exit_ts = up_ts = listen_ts = None
            for line in text.splitlines():
                if exit_ts is None and f"slipway[{name}]: Process exited with status" in line:
                    exit_ts = log_ts(line)
                elif exit_ts is not None and listen_ts is None and f"app[{name}]: Serving HTTP" in line:
                    listen_ts = log_ts(line)
                elif exit_ts is not None and f"slipway[{name}]: State changed from starting to up" in line:
                    up_ts = log_ts(line)
                    break
            if exit_ts is not None and up_ts is not None:
                break
            time.sleep(0.01)
        if exit_ts is None or up_ts is None:
            say(f"{name}: exit/up lines not found in {logpath}")
            sys.exit(1)
        samples.append({
            "dyno": name,
            "old_pid": old_pid,
            "new_pid": new_pid,
            "polled_ms": (t_seen - t0) * 1000,
            "polls": polls,
            "kill_to_exit_logged_ms": (exit_ts - t_kill_wall) * 1000,
            "exit_to_up_logged_ms": (up_ts - exit_ts) * 1000,
            "kill_to_up_logged_ms": (up_ts - t_kill_wall) * 1000,
            # when the new dyno printed "Serving HTTP" (it has bound its port; PYTHONUNBUFFERED=1)
            "exit_to_listening_ms": (listen_ts - exit_ts) * 1000 if listen_ts else None,
        })
        s = samples[-1]
        say(f"{name}: exit->up (log) {s['exit_to_up_logged_ms']:.1f} ms, kill->up+HTTP (polled) {s['polled_ms']:.1f} ms")
        time.sleep(0.2)
    after = {x["name"]: x for x in ps(app)}
    restarts = sorted({after[s["dyno"]]["restarts"] for s in samples})
    save(crash={
        "n": n,
        "samples": samples,
        "restarts_after": restarts,
        "poll_interval_ms": summary([x * 1000 for x in poll_intervals]) if poll_intervals else None,
        "ps_json_ms": summary([x * 1000 for x in ps_costs]),
        "polled": summary([s["polled_ms"] for s in samples]),
        "exit_to_up": summary([s["exit_to_up_logged_ms"] for s in samples]),
        "kill_to_up": summary([s["kill_to_up_logged_ms"] for s in samples]),
        "kill_to_exit": summary([s["kill_to_exit_logged_ms"] for s in samples]),
        "exit_to_listening": summary([s["exit_to_listening_ms"] for s in samples])
        if all(s["exit_to_listening_ms"] is not None for s in samples) else None,
    })


def cmd_wait_gone(app, deadline_s):
    deadline = time.monotonic() + float(deadline_s)
    while ps(app):
        if time.monotonic() > deadline:
            say(f"{app}: dynos still listed after {deadline_s} s: {[(r['name'], r['state']) for r in ps(app)]}")
            sys.exit(1)
        time.sleep(0.1)


def daemon_sample():
    pid = daemon_pid()
    return {
        "pid": pid,
        "rss_kib": status_kib(pid, "VmRSS"),
        "pss_kib": rollup(pid).get("Pss"),
        "threads": status_kib(pid, "Threads"),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


def cmd_daemon_mem(label):
    s = daemon_sample()
    s["shims"] = len(shims())
    save(**{f"daemon_{label}": s})
    say(f"daemon ({label}): VmRSS {s['rss_kib']} KiB, {s['threads']} threads, {s['fds']} fds, {s['shims']} shims")


def cmd_idle(seconds, clk_tck, expect_shims):
    seconds, clk_tck, expect_shims = float(seconds), int(clk_tck), int(expect_shims)
    dpid = daemon_pid()
    sh0 = shims()
    if len(sh0) != expect_shims:
        say(f"expected {expect_shims} shims, found {len(sh0)}")
        sys.exit(1)
    mem0 = daemon_sample()
    starts = {p: start_ticks(p) for p in sh0}
    t0 = time.monotonic()
    d0, dn0 = cpu_ticks(dpid), run_ns(dpid)
    s0 = {p: cpu_ticks(p) for p in sh0}
    sn0 = {p: run_ns(p) for p in sh0}
    time.sleep(seconds)
    d1, dn1 = cpu_ticks(dpid), run_ns(dpid)
    s1, sn1 = {}, {}
    for p in sh0:
        try:
            if start_ticks(p) == starts[p]:
                s1[p] = cpu_ticks(p)
                sn1[p] = run_ns(p)
        except OSError:
            pass
    wall = time.monotonic() - t0
    if len(s1) != len(s0):
        say(f"{len(s0) - len(s1)} shims exited during the idle window")
        sys.exit(1)
    mem1 = daemon_sample()
    # Shim memory, sampled at the end of the window.
    per = []
    for p, dyno in sh0.items():
        r = rollup(p)
        per.append({"pid": p, "dyno": dyno, "rss": r.get("Rss", 0), "pss": r.get("Pss", 0),
                    "uss": r["Uss"], "anon": r.get("Anonymous", 0), "threads": status_kib(p, "Threads")})
    shim_ticks = sum(s1[p] - s0[p] for p in s0)
    d_ticks = d1 - d0
    save(idle={
        "window_s": wall,
        "clk_tck": clk_tck,
        "daemon_ticks": d_ticks,
        "daemon_cpu_pct": 100.0 * d_ticks / clk_tck / wall,
        "shims_ticks": shim_ticks,
        "shims_cpu_pct": 100.0 * shim_ticks / clk_tck / wall,
        "shims_busy": sum(1 for p in s0 if s1[p] != s0[p]),
        "daemon_cpu_ns": ns_delta(dn0, dn1),
        "shims_cpu_ns": sum(ns_delta(sn0[p], sn1[p]) for p in s0),
        "daemon_start": mem0,
        "daemon_end": mem1,
        "shims": per,
    })
    say(f"idle {wall:.1f} s: daemon {d_ticks} ticks, {len(per)} shims {shim_ticks} ticks")


def cmd_alive_now(label):
    """Shims of this home alive right now (e.g. the instant `ps:stop --all` returned)."""
    save(**{label: len(shims())})


def cmd_warnings():
    """WARN/ERROR lines of the daemon's own log."""
    lines = []
    try:
        with open(os.path.join(HOME, "logs", "slipway.log"), errors="replace") as f:
            lines = [l.rstrip("\n") for l in f if re.search(r"\b(WARN|ERROR)\b", l)]
    except FileNotFoundError:
        pass
    for l in lines[:20]:
        say(f"slipway.log: {l}")
    save(daemon_log_warnings=len(lines))


def ms(x):
    return f"{x:.1f}"


def cmd_report():
    d = load()
    c, idle = d["crash"], d["idle"]
    d0, d100 = d["daemon_fresh"], idle["daemon_start"]
    n_dynos = len(idle["shims"])
    rss = [s["rss"] for s in idle["shims"]]
    pss = [s["pss"] for s in idle["shims"]]
    uss = [s["uss"] for s in idle["shims"]]
    mean = lambda v: sum(v) / len(v)
    per_dyno = (d100["rss_kib"] - d0["rss_kib"]) * 1024 / n_dynos
    out = []
    w = out.append
    w(f"## Supervision benchmark — {d['date']}")
    w("")
    w(f"Machine: {d['nproc']} cores, {d['cpu_model']}, {d['kernel']}; {d['version']}; "
      f"dynos: `python3 -m http.server` ({d['python']}) and `sleep infinity`, generic build. "
      f"Script run time: {d['runtime_s'] / 60:.1f} min.")
    w("")
    w(f"### Crash → replacement up ({c['n']} web dynos, each `kill -9`ed once)")
    w("")
    w("| measurement | min | median | p90 | max |")
    w("|---|---:|---:|---:|---:|")
    for label, key in (
        ("exit logged → `starting to up` logged (log timestamps)", "exit_to_up"),
        ("kill → `starting to up` logged (wall clock vs log)", "kill_to_up"),
        ("kill → `ps --json` shows new pid `up` and HTTP GET answers (polled)", "polled"),
        ("kill → shim logs `Process exited with status 137`", "kill_to_exit"),
        ("exit logged → new dyno prints `Serving HTTP` (upper bound on its port being bound)", "exit_to_listening"),
    ):
        s = c.get(key)
        if not s:
            continue
        w(f"| {label} | {ms(s['min'])} ms | {ms(s['median'])} ms | {ms(s['p90'])} ms | {ms(s['max'])} ms |")
    w("")
    pi, pc = c["poll_interval_ms"], c["ps_json_ms"]
    w(f"Polling: one `slipway ps --json` (a process spawn, median {ms(pc['median'])} ms) per ~5 ms tick; "
      f"measured interval between polls median {ms(pi['median'])} ms, max {ms(pi['max'])} ms. "
      f"p90 is nearest-rank. Every killed dyno came back with `restarts` = {c['restarts_after']}. "
      f"The daemon's boot check connects every 5 ms during a dyno's first second (50 ms after), so "
      f"the log-measured latency is Python's start-up plus at most ~5 ms.")
    w("")
    w(f"### Idle: {d['apps']} apps × 2 dynos (web + worker) = {n_dynos} dynos, {ms(idle['window_s'])} s window")
    w("")
    w("| metric | value |")
    w("|---|---:|")
    w(f"| daemon VmRSS, fresh (0 apps, 0 dynos) | {d0['rss_kib'] / 1024:.1f} MiB |")
    w(f"| daemon VmRSS with {n_dynos} dynos (start of window / end) | "
      f"{d100['rss_kib'] / 1024:.1f} MiB / {idle['daemon_end']['rss_kib'] / 1024:.1f} MiB |")
    w(f"| daemon PSS with {n_dynos} dynos | {d100['pss_kib'] / 1024:.1f} MiB |")
    w(f"| daemon bytes per dyno ((RSS@{n_dynos} − RSS@0) / {n_dynos}) | {per_dyno / 1024:.1f} KiB |")
    w(f"| daemon threads / open fds, 0 dynos → {n_dynos} dynos | {d0['threads']} / {d0['fds']} → {d100['threads']} / {d100['fds']} |")
    win = idle["window_s"]
    w(f"| daemon CPU over the window: utime+stime / schedstat | {idle['daemon_ticks']} ticks ({idle['daemon_cpu_pct']:.3f} % of one core) / "
      f"{idle['daemon_cpu_ns'] / 1e6:.2f} ms ({idle['daemon_cpu_ns'] / 1e7 / win:.4f} %) |")
    w(f"| all {n_dynos} shims' CPU over the window: utime+stime / schedstat | {idle['shims_ticks']} ticks ({idle['shims_cpu_pct']:.3f} %) / "
      f"{idle['shims_cpu_ns'] / 1e6:.2f} ms ({idle['shims_cpu_ns'] / 1e7 / win:.4f} %) |")
    w(f"| shim RSS (mean / max) | {mean(rss) / 1024:.2f} MiB / {max(rss) / 1024:.2f} MiB |")
    w(f"| shim PSS (mean / max) — the per-dyno supervision overhead | {mean(pss) / 1024:.2f} MiB / {max(pss) / 1024:.2f} MiB |")
    w(f"| shim USS, private pages (mean / max) | {mean(uss) / 1024:.2f} MiB / {max(uss) / 1024:.2f} MiB |")
    w(f"| all shims together: RSS sum / PSS sum | {sum(rss) / 1024:.1f} MiB / {sum(pss) / 1024:.1f} MiB |")
    if "daemon_after_stop" in d:
        a = d["daemon_after_stop"]
        w(f"| `ps:stop --all` of {n_dynos} dynos (wall) / shims alive just after it returned | {d['stop_all_s']:.2f} s / {d['alive_after_stop']} |")
        w(f"| daemon VmRSS after that stop (0 dynos running) | {a['rss_kib'] / 1024:.1f} MiB, {a['fds']} fds |")
    w(f"| WARN/ERROR lines in the daemon's log (`logs/slipway.log`), whole run | {d.get('daemon_log_warnings', '?')} |")
    w("")
    w(f"Setup: `ps:scale bench-crash web={c['n']}` returned in {d['scale_crash_s']:.2f} s. {d['apps']} generic pushes ({d['push_parallel']} at a time) took {d['push_s']:.1f} s; "
      f"`ps:scale web=1 worker=1` on each, then all {n_dynos} dynos up after {d['scale_up_s']:.1f} s more. "
      f"CPU is from /proc/PID/stat (CLK_TCK = {idle['clk_tck']}, so 1 tick = {1000 / idle['clk_tck']:.0f} ms) and, "
      f"to the nanosecond, from /proc/PID/task/*/schedstat (threads that exit mid-window are undercounted); "
      f"memory from /proc/PID/status and /proc/PID/smaps_rollup. The daemon keeps no pipe per dyno "
      f"(each shim writes the app log itself), so a dyno's supervision cost is its shim plus the "
      f"daemon's per-dyno bytes above.")
    print("\n".join(out))


COMMANDS = {
    "ports-free": cmd_ports_free, "wait-up": cmd_wait_up, "crash": cmd_crash, "wait-gone": cmd_wait_gone,
    "daemon-mem": cmd_daemon_mem, "alive-now": cmd_alive_now, "warnings": cmd_warnings, "idle": cmd_idle, "set": cmd_set, "report": cmd_report,
}
COMMANDS[CMD](*ARGS)
PYEOF

# In the background + wait, so INT/TERM run the cleanup at once (it kills the helper too).
py() { python3 "$PY" "$BIN" "$H" "$RESULTS" "$@" & wait "$!"; }
sw() { "$BIN" --home "$H" "$@"; }
set_result() { py set "$1" "$2"; }

# ----- preflight ---------------------------------------------------------------------------------
[[ $PORTS =~ ^([0-9]+)-([0-9]+)$ ]] || die "SLIPWAY_BENCH_PORTS must be START-END"
PORT_LO=${BASH_REMATCH[1]} PORT_HI=${BASH_REMATCH[2]}
py ports-free "$PORT_LO" "$PORT_HI" || die "port range $PORTS is not free; set SLIPWAY_BENCH_PORTS"
# The range's last port is the daemon's HTTP router, not the shared default 0.0.0.0:8080 (where
# an installed slipway may already listen); the dynos get the rest.
export SLIPWAY_PORTS=$PORT_LO-$((PORT_HI - 1)) SLIPWAY_ROUTER_ADDR=127.0.0.1:$PORT_HI

CPU_MODEL=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)
set_result date "\"$(date -u +%Y-%m-%d)\""
set_result nproc "$(nproc)"
set_result cpu_model "$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1] or "unknown"))' "$CPU_MODEL")"
set_result kernel "\"Linux $(uname -r)\""
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -z $(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]] || REV="$REV + uncommitted src changes"
set_result version "\"$("$BIN" --version) (binary built $(date -u -r "$SRC_BIN" '+%Y-%m-%d %H:%M UTC'), checkout $REV)\""
set_result python "\"$(python3 --version)\""
set_result apps "$N_APPS"
set_result push_parallel "$PUSH_PARALLEL"
log "$("$BIN" --version), $(nproc) cores, ${CPU_MODEL:-unknown CPU}; home $H; ports $PORTS"

# ----- the app -----------------------------------------------------------------------------------
(
    cd "$WORK/src"
    git init -q -b main
    printf 'web: python3 -m http.server $PORT --bind 0.0.0.0\nworker: sleep infinity\n' >Procfile
    printf 'slipway supervision benchmark app\n' >README
    git add Procfile README
    git -c user.name=bench -c user.email=bench@localhost commit -q -m 'bench app'
)

push() { # APP [BRANCH]: pushes BRANCH (default main) of the bench app as APP's main
    local out
    if ! out=$(cd "$WORK/src" && timeout 120 git push -q "$H/repos/$1.git" "${2:-main}:main" 2>&1); then
        log "push to $1 failed:"; printf '%s\n' "$out" >&2; return 1
    fi
    grep -q 'Launching... done, v1' <<<"$out" || { log "push to $1: no 'Launching... done, v1':"; printf '%s\n' "$out" >&2; return 1; }
}

# ----- daemon ------------------------------------------------------------------------------------
sw daemon >/dev/null
[[ -s $H/run/slipway.pid ]] || die "daemon did not write $H/run/slipway.pid"
sleep 1
py daemon-mem fresh

# ----- 1. crash -> replacement up ------------------------------------------------------------------
log "1/3 crash latency: bench-crash with web=$N_CRASH"
sw apps:create bench-crash >/dev/null
push bench-crash
t0=$(date +%s.%N)
sw ps:scale bench-crash "web=$N_CRASH" >/dev/null
t1=$(date +%s.%N)
set_result scale_crash_s "$(python3 -c "print($t1 - $t0)")"
py wait-up 60 "bench-crash=$N_CRASH"
sleep 1
py crash bench-crash "$N_CRASH"
sw ps:scale bench-crash web=0 >/dev/null
py wait-gone bench-crash 30

# ----- 2. 50 apps x 2 idle dynos -------------------------------------------------------------------
log "2/3 creating and pushing $N_APPS apps ($PUSH_PARALLEL pushes at a time)"
# One commit per app (same tree, own message): slipway's build id is the push time in
# milliseconds plus the short commit sha, and builds.id is unique across all apps, so two
# concurrent pushes of the *same* commit to two apps can collide ("UNIQUE constraint failed:
# builds.id") — see docs/BENCHMARKS.md. Distinct commits keep the bench about supervision.
apps=()
for i in $(seq 1 "$N_APPS"); do
    app=$(printf 'bench-%02d' "$i")
    apps+=("$app")
    sw apps:create "$app" >/dev/null
    (
        cd "$WORK/src"
        sha=$(git -c user.name=bench -c user.email=bench@localhost commit-tree 'HEAD^{tree}' -p HEAD -m "bench app $app")
        git update-ref "refs/heads/$app" "$sha"
    )
done
wait_pushes() { # waits for every push in pids; fails after all of them have finished
    local p failed=0
    for p in "${pids[@]}"; do wait "$p" || failed=1; done
    pids=()
    ((failed == 0)) || die "a push failed"
}
t_push=$(date +%s.%N)
pids=()
for app in "${apps[@]}"; do
    push "$app" "$app" &
    pids+=("$!")
    ((${#pids[@]} < PUSH_PARALLEL)) || wait_pushes
done
wait_pushes
t_scale=$(date +%s.%N)
set_result push_s "$(python3 -c "print($t_scale - $t_push)")"

log "scaling every app to web=1 worker=1"
for app in "${apps[@]}"; do
    timeout 60 "$BIN" --home "$H" ps:scale "$app" web=1 worker=1 >/dev/null
done
specs=()
for app in "${apps[@]}"; do specs+=("$app=2"); done
py wait-up 120 "${specs[@]}"
set_result scale_up_s "$(python3 -c "import time; print(time.time() - $t_scale)")"

log "settling 5 s, then a ${IDLE} s idle window"
sleep 5
py idle "$IDLE" "$(getconf CLK_TCK)" "$((2 * N_APPS))"

# ----- 3. teardown, timed ---------------------------------------------------------------------------
log "3/3 ps:stop --all"
t0=$(date +%s.%N)
timeout 120 "$BIN" --home "$H" ps:stop --all >/dev/null
t1=$(date +%s.%N)
py alive-now alive_after_stop
set_result stop_all_s "$(python3 -c "print($t1 - $t0)")"
sleep 1
py daemon-mem after_stop
left=$(pgrep -f "dyno-shim --log $H/" || true)
[[ -z $left ]] || die "shims still running after ps:stop --all: $left"

py warnings
set_result runtime_s "$(( $(date +%s) - BENCH_START ))"
py report
log "done in $(( $(date +%s) - BENCH_START )) s"
