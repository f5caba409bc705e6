#!/usr/bin/env bash
# Log throughput benchmark for slipway: how many lines per second one app's dynos can push
# through their shims into logs/APP/app.log, what that costs the shims in CPU, and whether every
# line arrives exactly once, in order, untorn.
#
#   cargo build --release && bash bench/logs.sh > section.md
#
# Progress goes to stderr; the Markdown results go to stdout (a `###` section, for under
# `## Logs` in docs/BENCHMARKS.md). Run it as root: the writers (dynos, confined by Landlock to
# their release, their private dir and, under a root daemon, /dev/shm) meet the bench through a
# marks dir in /dev/shm, the one place outside their own that they may write.
# Everything runs in a fresh temporary SLIPWAY_HOME with its own daemon, and is torn down on
# exit (ps:stop --all, daemon --stop, then SIGKILL to anything still mentioning the temp dir).
#
# Scenarios (one app each; writers pre-generate their lines, then all start on one signal):
#   burst     1 dyno,  N lines, 64 KiB os.write() blocks (a big buffered writer, seq-style)
#   print     1 dyno,  N lines, print(line, flush=True) per line (the worst case)
#   ten       10 dynos, N/10 lines each, 64 KiB blocks
#   tenprint  10 dynos, N/10 lines each, print(line, flush=True)
#   steady    1 dyno, print(flush=True) paced at BENCH_RATE lines/s for BENCH_STEADY_SECONDS:
#             does the shim keep up, how far behind is each line, what does it cost
#   tensteady 10 dynos, the same total rate (BENCH_RATE / 10 each)
#   rotate    like `ten`, with the daemon restarted at SLIPWAY_LOG_MAX_MB=BENCH_ROTATE_MB and
#             SLIPWAY_LOG_FILES=100, so the shims rotate app.log under load (nothing is deleted)
# The other scenarios run with the daemon at SLIPWAY_LOG_MAX_MB=100000. The CLI calls of the bench
# (ps:scale) run with slipway's defaults, like an operator's shell; see docs/BENCHMARKS.md.
#
# Knobs (environment):
#   SLIPWAY_BIN          binary to test (default: target/release/slipway of this checkout);
#                        it is copied into the temp dir so a concurrent rebuild cannot swap it
#   SLIPWAY_BENCH_PORTS  dyno PORT range (default 24000-24999; no web dynos run here, but the
#                        daemon wants a free range; its last port is the router's address)
#   BENCH_LINES          lines per scenario (default 2000000; divisible by BENCH_DYNOS)
#   BENCH_DYNOS          dynos in the multi-dyno scenarios (default 10)
#   BENCH_ROTATE_MB      rotation size for the `rotate` scenario (default 8; 0 skips it)
#   BENCH_RATE           total lines/s of the paced scenarios (default 200000; 0 skips them)
#   BENCH_STEADY_SECONDS how long they write (default 20)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SRC_BIN=${SLIPWAY_BIN:-$ROOT/target/release/slipway}
PORTS=${SLIPWAY_BENCH_PORTS:-24000-24999}
N_LINES=${BENCH_LINES:-2000000}
N_DYNOS=${BENCH_DYNOS:-10}
ROTATE_MB=${BENCH_ROTATE_MB:-8}
RATE=${BENCH_RATE:-200000}
STEADY_S=${BENCH_STEADY_SECONDS:-20}

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

[[ -x $SRC_BIN ]] || die "no slipway binary at $SRC_BIN (run: cargo build --release)"
command -v git >/dev/null || die "git is required"
command -v python3 >/dev/null || die "python3 is required"
[[ -x /usr/bin/python3 || -x /usr/local/bin/python3 || -x /bin/python3 ]] ||
    die "dynos run with PATH=/usr/local/bin:/usr/bin:/bin and need a python3 there"
[[ $N_DYNOS =~ ^[0-9]+$ && $N_DYNOS -ge 2 && $N_DYNOS -le 50 ]] || die "BENCH_DYNOS must be 2..50"
[[ $N_LINES =~ ^[0-9]+$ && $N_LINES -ge 1000 && $N_LINES -le 20000000 ]] || die "BENCH_LINES must be 1000..20000000"
((N_LINES % N_DYNOS == 0)) || die "BENCH_LINES must be divisible by BENCH_DYNOS"
[[ $ROTATE_MB =~ ^[0-9]+$ && $ROTATE_MB -le 1000 ]] || die "BENCH_ROTATE_MB must be 0..1000 (whole MB)"
[[ $RATE =~ ^[0-9]+$ && $RATE -le 2000000 ]] || die "BENCH_RATE must be 0..2000000"
((RATE % N_DYNOS == 0 && (RATE == 0 || RATE / N_DYNOS >= 1000))) || die "BENCH_RATE must be 0 or a multiple of BENCH_DYNOS, at least 1000 per dyno"
[[ $STEADY_S =~ ^[0-9]+$ && $STEADY_S -ge 1 && $STEADY_S -le 60 ]] || die "BENCH_STEADY_SECONDS must be 1..60"

[[ $(id -u) == 0 ]] || die "run it as root: a dyno may write outside its own dir only to /dev/shm, and only under a root daemon"
bench_workdir
# The writers' ready/go/done marks: in /dev/shm, which dynos of a root daemon may write (each
# scenario's dir is 1777: the dynos run as their app's uid).
MARKS=/dev/shm/$(basename "$WORK").marks

# Nothing that names $WORK is exported (see bench_workdir).
export SLIPWAY_PORTS=$PORTS SLIPWAY_STOP_TIMEOUT=5
unset SLIPWAY_HOME SLIPWAY_LOG_MAX_MB SLIPWAY_LOG_FILES

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    bench_cleanup 0
    rm -rf "$MARKS"
    exit "$rc"
}
bench_prepare
mkdir -p "$MARKS"

# ----- the dyno: pre-generates its lines, says ready, waits for `go`, writes, then idles -------
# No .py suffix, so the build stays generic (no virtualenv). argv: MODE N MARKDIR [RATE].
cat >"$WORK/src/gen" <<'GENEOF'
import json, os, sys, time

mode, n, marks = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rate = float(sys.argv[4]) if mode == "pace" else 0.0
dyno = os.environ["DYNO"]
B = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" * 3


def put(name, obj):
    tmp = os.path.join(marks, f".{dyno}.{name}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, os.path.join(marks, f"{dyno}.{name}"))


# Payload: `DYNO SEQ FILLER`, 60-100 bytes with a 9-character dyno name; the checker rebuilds it.
lines = [f"{dyno} {i:09d} {B[i % 62:i % 62 + 40 + i % 41]}" for i in range(1, n + 1)]
blob = None
if mode == "block":
    blob = memoryview(("\n".join(lines) + "\n").encode())
    lines = None
put("ready", {"pid": os.getpid(), "t": time.time()})
go = os.path.join(marks, "go")
deadline = time.monotonic() + 300
while not os.path.exists(go):
    if time.monotonic() > deadline:
        time.sleep(3600)
        sys.exit(1)
    time.sleep(0.001)
c0, t0 = os.times(), time.time()
late = 0.0
if mode == "block":
    off = 0
    while off < len(blob):
        off += os.write(1, blob[off:off + 65536])
elif mode == "pace":
    # RATE lines/s in 1 ms ticks: line i (from 1) is due at t0 + (i - 1) / RATE.
    tick = max(1, int(rate // 1000))
    for k in range(0, n, tick):
        due = t0 + k / rate
        now = time.time()
        if now < due:
            time.sleep(due - now)
        else:
            late = max(late, now - due)
        for line in lines[k:k + tick]:
            print(line, flush=True)
else:
    for line in lines:
        print(line, flush=True)
t1, c1 = time.time(), os.times()
put("done", {"t_first": t0, "t_last": t1, "cpu": (c1.user - c0.user) + (c1.system - c0.system), "late": late})
# Stay alive: an exited dyno would be restarted (and write everything again), and its shim must
# still be there to be measured.
time.sleep(3600)
GENEOF

# ----- the Python half: timing, /proc sampling, verification, JSON, the report -----------------
cat >"$PY" <<'PYEOF'
import json, os, re, subprocess, sys, time

from benchlib import cmd_ports_free, cmd_set, cpu_ticks, load, ps, run_ns, save, say, stat_fields, sw

BIN, HOME, RESULTS, MARKS = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
CMD, ARGS = sys.argv[5], sys.argv[6:]
B = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" * 3
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00")


def payload(dyno, i):
    return f"{dyno} {i:09d} {B[i % 62:i % 62 + 40 + i % 41]}"


def io(pid):
    out = {}
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            k, v = line.split(":")
            out[k] = int(v)
    return out


def sample(pid):
    return {"ticks": cpu_ticks(pid), "ns": run_ns(pid), "io": io(pid)}


def delta(a, b):
    """CPU ns (per-thread schedstat; a thread that exited in between is undercounted), ticks and
    read/write syscalls between two samples of one process."""
    return {
        "ns": sum(v - a["ns"].get(t, 0) for t, v in b["ns"].items()),
        "ticks": b["ticks"] - a["ticks"],
        "syscr": b["io"]["syscr"] - a["io"]["syscr"],
        "syscw": b["io"]["syscw"] - a["io"]["syscw"],
        "wchar": b["io"]["wchar"] - a["io"]["wchar"],
    }


def daemon_pid():
    with open(os.path.join(HOME, "run", "slipway.pid")) as f:
        return int(f.read().split()[0])


def shims(app):
    """dyno name -> pid of every shim (`slipway-shim`, or `slipway dyno-shim`) writing APP's log."""
    found = {}
    logpath = os.path.join(HOME, "logs", app, "app.log")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0")]
        except OSError:
            continue
        shim = argv[0].endswith("/slipway-shim") or (len(argv) > 1 and argv[1] == "dyno-shim")
        if len(argv) > 5 and shim and "--log" in argv and "--dyno" in argv:
            if argv[argv.index("--log") + 1] == logpath:
                found[argv[argv.index("--dyno") + 1]] = int(entry)
    return found


def log_files(app):
    """APP's log files, oldest first (app.log.K … app.log.1, app.log)."""
    d = os.path.join(HOME, "logs", app)
    rotated = sorted((int(n.rsplit(".", 1)[1]), n) for n in os.listdir(d) if re.fullmatch(r"app\.log\.\d+", n))
    return [os.path.join(d, n) for _, n in reversed(rotated)] + [os.path.join(d, "app.log")]


def log_bytes(app):
    return sum(os.path.getsize(p) for p in log_files(app) if os.path.exists(p))


def app_lines(app):
    """Complete `app[` lines across APP's log files."""
    n = 0
    for p in log_files(app):
        try:
            with open(p, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            continue
        n += data[:data.rfind(b"\n") + 1].count(b" app[")
    return n


def wait_for(what, deadline_s, cond, step=0.01):
    deadline = time.monotonic() + deadline_s
    while not cond():
        if time.monotonic() > deadline:
            say(f"timed out after {deadline_s} s waiting for {what}")
            sys.exit(1)
        time.sleep(step)


# ----- commands -------------------------------------------------------------------------------


def cmd_run(key, app, ptype, count, per_dyno, mode, rate="0"):
    """One scenario: scale up, wait until every writer is ready, start them all at once, wait
    until every line is in the log, sample the shims, scale down, verify the log. RATE: lines/s
    per dyno of a paced writer (mode `pace`)."""
    count, per_dyno, rate = int(count), int(per_dyno), float(rate)
    marks = os.path.join(MARKS, ptype)
    os.makedirs(marks, exist_ok=True)
    os.chmod(marks, 0o1777)
    names = [f"{ptype}.{k}" for k in range(1, count + 1)]
    total = count * per_dyno
    # Bytes the app lines will add: stamp (32) + " app[" + dyno + "]: " + payload + "\n".
    expect_bytes = sum(
        32 + 5 + len(d) + 3 + len(d) + 1 + 9 + 1 + 40 + i % 41 + 1 for d in names for i in range(1, per_dyno + 1))

    t_scale = time.time()
    sw("ps:scale", app, f"{ptype}={count}")
    wait_for(f"{count} {ptype} writers to be ready", 120,
             lambda: all(os.path.exists(os.path.join(marks, f"{d}.ready")) for d in names), step=0.05)
    t_ready = time.time()
    writers = {}
    for d in names:
        with open(os.path.join(marks, f"{d}.ready")) as f:
            writers[d] = json.load(f)["pid"]
    sh = shims(app)
    if sorted(sh) != sorted(names):
        say(f"expected shims for {names}, found {sorted(sh)}")
        sys.exit(1)
    for d in names:
        ppid = int(stat_fields(writers[d])[1])
        if ppid != sh[d]:
            say(f"{d}: writer pid {writers[d]} has parent {ppid}, not its shim {sh[d]}")
            sys.exit(1)
    dpid = daemon_pid()
    base_bytes = log_bytes(app)
    base_lines = app_lines(app)
    if base_lines:
        say(f"{app}: {base_lines} app lines already in the log before the start")
        sys.exit(1)
    s0 = {d: sample(p) for d, p in sh.items()}
    w0 = {d: sample(p) for d, p in writers.items()}
    d0 = sample(dpid)

    t_go = time.time()
    open(os.path.join(marks, "go"), "w").close()
    # Cheap polling while the burst runs (a stat per 10 ms); the lines are counted (which reads
    # the whole log) only once the size says they are all there.
    limit = 180 + (per_dyno / rate if rate else 0)
    deadline = time.monotonic() + limit
    t_seen = None
    while True:
        if log_bytes(app) - base_bytes >= expect_bytes:
            t_seen = t_seen or time.time()
            if app_lines(app) >= total:
                break
        if time.monotonic() > deadline:
            say(f"{app}: only {app_lines(app)} of {total} lines after {limit:.0f} s")
            sys.exit(1)
        time.sleep(0.01)
    s1 = {d: sample(p) for d, p in sh.items()}
    w1 = {d: sample(p) for d, p in writers.items()}
    d1 = sample(dpid)
    wait_for("the writers' done marks", 30,
             lambda: all(os.path.exists(os.path.join(marks, f"{d}.done")) for d in names))
    done = {}
    for d in names:
        with open(os.path.join(marks, f"{d}.done")) as f:
            done[d] = json.load(f)
    shim_cpu_total_ns = sum(sum(s1[d]["ns"].values()) for d in names)
    alive_ok = all(os.path.exists(f"/proc/{p}") for p in list(sh.values()) + list(writers.values()))

    sw("ps:scale", app, f"{ptype}=0")
    wait_for(f"{app}'s dynos to stop", 30, lambda: not ps(app), step=0.1)
    wait_for(f"{app}'s shims to exit", 30, lambda: not shims(app), step=0.05)

    say(f"{key}: all {total} lines in the log {t_seen - t_go:.2f} s after go; verifying")
    pace = {d: (done[d]["t_first"], rate) for d in names} if rate else None
    v = verify(app, {d: per_dyno for d in names}, pace)
    files = log_files(app)
    sizes = [os.path.getsize(p) for p in files]
    for p in files:
        os.remove(p)  # keep the disk use of a run bounded

    sd = {d: delta(s0[d], s1[d]) for d in names}
    wd = {d: delta(w0[d], w1[d]) for d in names}
    first = min(x["t_first"] for x in done.values())
    res = {
        "app": app, "type": ptype, "dynos": count, "per_dyno": per_dyno, "lines": total, "mode": mode,
        "startup_s": t_ready - t_scale, "t_go": t_go, "t_first": first,
        "writers_done": max(x["t_last"] for x in done.values()),
        "t_seen": t_seen, "last_stamp": v["last_stamp"], "first_stamp": v["first_stamp"],
        "writer_cpu_s": sum(x["cpu"] for x in done.values()),
        "writer_late_s": max(x.get("late", 0.0) for x in done.values()), "rate": rate,
        "writer_syscw": sum(x["syscw"] for x in wd.values()),
        "shim_ns": sum(x["ns"] for x in sd.values()),
        "shim_ticks": sum(x["ticks"] for x in sd.values()),
        "shim_syscr": sum(x["syscr"] for x in sd.values()),
        "shim_syscw": sum(x["syscw"] for x in sd.values()),
        "shim_wchar": sum(x["wchar"] for x in sd.values()),
        "shim_cpu_total_ns": shim_cpu_total_ns,
        "daemon_ns": delta(d0, d1)["ns"],
        "alive_after": alive_ok,
        "log_files": len(files), "log_bytes": sum(sizes), "max_file": max(sizes),
        "verify": v,
    }
    save(**{key: res})
    lo = max(res["last_stamp"] - first, 1e-9)
    say(f"{key}: {total / lo:,.0f} lines/s (first write -> last line stamped, {lo:.2f} s); "
        f"shims {res['shim_ns'] / 1e9:.2f} s CPU; missing {v['missing']}, dup {v['duplicates']}, "
        f"out of order {v['out_of_order']}, torn {v['torn']}, wrong payload {v['bad_payload']}")


def verify(app, expect, pace=None):
    """Every line must be `STAMP source[dyno]: message`; every app line must carry the exact
    payload its dyno wrote, each sequence number once, in order within its dyno. PACE: dyno ->
    (first write, lines/s) of a paced writer; then each line's lag behind its due time is kept."""
    from datetime import datetime
    parsed = {}
    lags = []
    seen = {d: bytearray(n + 1) for d, n in expect.items()}
    high = {d: 0 for d in expect}
    prev = {d: "" for d in expect}
    batches = {d: 0 for d in expect}
    v = {"lines": 0, "app_lines": 0, "other_lines": 0, "torn": 0, "bad_payload": 0, "foreign": 0,
         "duplicates": 0, "out_of_order": 0, "stamp_backwards": 0, "unterminated": 0, "examples": []}
    first_stamp = last_stamp = None

    def bad(kind, line):
        v[kind] += 1
        if len(v["examples"]) < 5:
            v["examples"].append(f"{kind}: {line[:160]!r}")

    v["late_files"] = 0  # rotated files holding a line newer than the next file's first line
    newest_before = None
    for path in log_files(app):
        if not os.path.exists(path):
            continue
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "surrogateescape")
        head_stamp = text[:32]
        if newest_before and STAMP.fullmatch(head_stamp) and newest_before > head_stamp:
            v["late_files"] += 1
        newest_before = max((l[:32] for l in text.split("\n") if STAMP.fullmatch(l[:32])), default=None)
        if text and not text.endswith("\n"):
            v["unterminated"] += 1
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        for line in lines:
            v["lines"] += 1
            stamp = line[:32]
            if len(line) < 36 or line[32] != " " or not STAMP.fullmatch(stamp):
                bad("torn", line)
                continue
            head, sep, msg = line[33:].partition("]: ")
            src, br, dyno = head.partition("[")
            if not sep or not br or src not in ("app", "slipway", "router"):
                bad("torn", line)
                continue
            if src != "app":
                v["other_lines"] += 1
                continue
            v["app_lines"] += 1
            if dyno not in seen:
                bad("foreign", line)
                continue
            parts = msg.split(" ", 2)
            if len(parts) != 3 or parts[0] != dyno or not parts[1].isdigit():
                bad("bad_payload", line)
                continue
            i = int(parts[1])
            if not 1 <= i < len(seen[dyno]) or msg != payload(dyno, i):
                bad("bad_payload", line)
                continue
            if seen[dyno][i]:
                v["duplicates"] += 1
            seen[dyno][i] = 1
            if i < high[dyno]:
                v["out_of_order"] += 1
            high[dyno] = max(high[dyno], i)
            if stamp < prev[dyno]:
                v["stamp_backwards"] += 1
            if stamp != prev[dyno]:
                batches[dyno] += 1
                prev[dyno] = stamp
            if pace:
                t = parsed.get(stamp)
                if t is None:
                    t = parsed[stamp] = datetime.fromisoformat(stamp).timestamp()
                t0, r = pace[dyno]
                tick = max(1, int(r // 1000))  # as in gen: the whole tick is due at its start
                lags.append(t - (t0 + (i - 1) // tick * tick / r))
            if first_stamp is None or stamp < first_stamp:
                first_stamp = stamp
            if last_stamp is None or stamp > last_stamp:
                last_stamp = stamp
    v["missing"] = sum(n - sum(seen[d][1:]) for d, n in expect.items())
    v["batches"] = sum(batches.values())
    ts = lambda s: datetime.fromisoformat(s).timestamp() if s else 0.0
    v["first_stamp"], v["last_stamp"] = ts(first_stamp), ts(last_stamp)
    if lags:
        lags.sort()
        k = lambda p: lags[max(0, -(-len(lags) * p // 100) - 1)]  # nearest rank
        v["lag"] = {"p50": k(50), "p99": k(99), "max": lags[-1], "min": lags[0]}
    return v


def cmd_check(app, *specs):
    """Self-test aid: verify APP's log against DYNO=N specs and print the result."""
    print(json.dumps(verify(app, {s.split("=")[0]: int(s.split("=")[1]) for s in specs}), indent=1))


SCENARIOS = [
    ("burst", "1 dyno, 64 KiB `os.write` blocks"),
    ("print", "1 dyno, `print(line, flush=True)`"),
    ("ten", "{n} dynos, 64 KiB blocks"),
    ("tenprint", "{n} dynos, `print(line, flush=True)`"),
    ("rotate", "{n} dynos, 64 KiB blocks, rotating every {mb} MB"),
    ("steady", "1 dyno, `print(line, flush=True)` paced at {rate:,} lines/s"),
    ("tensteady", "{n} dynos, `print(line, flush=True)` paced at {rate_each:,} lines/s each"),
]


def cmd_report():
    d = load()
    out = []
    w = out.append
    runs = [(k, label.format(n=d["dynos"], mb=d.get("rotate_mb"), rate=d["rate"], rate_each=d["rate"] // d["dynos"]))
            for k, label in SCENARIOS if k in d]
    w(f"### Logs benchmark — {d['date']}")
    w("")
    w(f"Machine: {d['nproc']} cores, {d['cpu_model']}, {d['kernel']}, SLIPWAY_HOME on {d['fs']}; {d['version']}; "
      f"writers: /usr/bin/python3 ({d['python']}) with slipway's `PYTHONUNBUFFERED=1`, generic build. "
      f"{d['lines']:,} lines per scenario, 60–100-byte payloads. Script run time: {d['runtime_s'] / 60:.1f} min.")
    w("")
    w("#### Throughput")
    w("")
    w("| scenario | lines | first write → last line stamped | **lines/s** | log MB/s | writers' last write returned | all lines seen by a 10 ms poller |")
    w("|---|---:|---:|---:|---:|---:|---:|")
    for k, label in runs:
        r = d[k]
        if r["rate"]:
            continue
        span = r["last_stamp"] - r["t_first"]
        w(f"| {k}: {label} | {r['lines']:,} | {span:.2f} s | **{r['lines'] / span:,.0f}** | "
          f"{r['shim_wchar'] / span / 1e6:.0f} | {r['writers_done'] - r['t_first']:.2f} s | "
          f"{r['t_seen'] - r['t_first']:.2f} s |")
    paced = [(k, label) for k, label in runs if d[k]["rate"]]
    if paced:
        w("")
        w(f"#### Sustained: {d['rate']:,} lines/s for {d['steady_s']} s")
        w("")
        w("| scenario | lines | achieved lines/s | lag behind due time: p50 / p99 / max | shims' CPU, % of one core | writers' CPU, % of one core | writers' worst lateness |")
        w("|---|---:|---:|---:|---:|---:|---:|")
        for k, label in paced:
            r = d[k]
            span = r["last_stamp"] - r["t_first"]
            lag = r["verify"].get("lag", {})
            ms = lambda x: f"{x * 1000:.1f} ms"
            w(f"| {k}: {label} | {r['lines']:,} | {r['lines'] / span:,.0f} | "
              f"{ms(lag['p50'])} / {ms(lag['p99'])} / {ms(lag['max'])} | {100 * r['shim_ns'] / 1e9 / span:.1f} % | "
              f"{100 * r['writer_cpu_s'] / span:.1f} % | {ms(r['writer_late_s'])} |")
    w("")
    w("#### Cost")
    w("")
    w("| scenario | shim CPU (all shims, go → done) | shim CPU per 1M lines | shim reads / log writes | lines per log write | writer write() calls per line | writers' CPU | daemon CPU |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    for k, label in runs:
        r = d[k]
        w(f"| {k} | {r['shim_ns'] / 1e9:.2f} s ({r['shim_ticks']} ticks) | {r['shim_ns'] / 1e9 / r['lines'] * 1e6:.2f} s | "
          f"{r['shim_syscr']:,} / {r['shim_syscw']:,} | {r['lines'] / max(r['shim_syscw'], 1):.1f} | "
          f"{r['writer_syscw'] / r['lines']:.3f} | {r['writer_cpu_s']:.2f} s | {r['daemon_ns'] / 1e6:.1f} ms |")
    w("")
    w("#### Integrity")
    w("")
    w("| scenario | app lines in the log / written | missing | duplicated | out of order (per dyno) | torn / unparseable | wrong or mixed payload | stamp goes backwards (per dyno) | log files |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    unterminated = lambda v: f" ({v['unterminated']} files end mid-line)" if v["unterminated"] else ""
    for k, label in runs:
        r = d[k]
        v = r["verify"]
        w(f"| {k} | {v['app_lines']:,} / {r['lines']:,} | {v['missing']} | {v['duplicates']} | {v['out_of_order']} | "
          f"{v['torn']}{unterminated(v)} | {v['bad_payload'] + v['foreign']} | {v['stamp_backwards']} | "
          f"{r['log_files']} ({r['log_bytes'] / 2**20:.0f} MiB, largest {r['max_file'] / 2**20:.1f} MiB"
          f"{f'; {late} with lines newer than the next file starts' if (late := v.get('late_files')) else ''}) |")
    ex = [e for k, _ in runs for e in d[k]["verify"]["examples"]]
    if ex:
        w("")
        w("Examples of bad lines: " + "; ".join(f"`{e}`" for e in ex[:5]))
    w("")
    w("Method: each writer is a dyno (`python3 gen MODE N DIR`) that builds all of its lines first "
      "(`DYNO SEQ FILLER`, every payload reproducible from dyno and sequence number), reports ready, "
      "and starts writing when the bench creates a `go` file, so all writers of a scenario start together "
      "and Python's line formatting is not part of the measurement. After the last write it sleeps, so the "
      "dyno and its shim stay alive to be measured (an exited dyno would be restarted). *Lines/s* is all lines "
      "over the time from the first writer's first write to the newest stamp in the log (the shim stamps a "
      "batch right after reading it, before the one `write`). Shim CPU is the `/proc/PID/task/*/schedstat` "
      "delta of all the scenario's shims between go and all lines present (utime+stime ticks at "
      f"CLK_TCK = {d['clk_tck']} in brackets); reads/writes are `syscr`/`syscw` from `/proc/PID/io`. "
      "The check reads every log file of the app oldest first and parses every line as "
      "`STAMP source[dyno]: message`, requiring each app line's message to be exactly the payload its dyno "
      "wrote, each sequence number exactly once and in increasing order within its dyno. The paced writers "
      "print their lines in 1 ms ticks of rate/1000 lines, tick k due at t0 + k ms; a line's *lag* is its log "
      "stamp minus its tick's due time, so it includes the writer's own delay (*worst lateness*: how far behind "
      "schedule a tick started) and the time to print the tick's earlier lines. "
      f"Load average (1 min) before / after the run: {d['load_before']} / {d['load_after']}; "
      f"WARN/ERROR lines in the daemon's own log: {d['daemon_log_warnings']}.")
    print("\n".join(out))


COMMANDS = {"ports-free": cmd_ports_free, "run": cmd_run, "set": cmd_set, "report": cmd_report, "check": cmd_check}
COMMANDS[CMD](*ARGS)
PYEOF

# In the background + wait, so INT/TERM run the cleanup at once (it kills the helper too).
py() { python3 "$PY" "$BIN" "$H" "$RESULTS" "$MARKS" "$@" & wait "$!"; }
sw() { timeout 60 "$BIN" --home "$H" "$@"; }
set_result() { py set "$1" "$2"; }

# ----- preflight ---------------------------------------------------------------------------------
[[ $PORTS =~ ^([0-9]+)-([0-9]+)$ ]] || die "SLIPWAY_BENCH_PORTS must be START-END"
py ports-free "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}" || die "port range $PORTS is in use; set SLIPWAY_BENCH_PORTS"
# No web dynos here, so the range's last port is free for the daemon's HTTP router (binaries
# that have one; older ones ignore the variable) instead of the shared default 0.0.0.0:8080.
export SLIPWAY_ROUTER_ADDR=127.0.0.1:${BASH_REMATCH[2]}

CPU_MODEL=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -z $(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]] || REV="$REV + uncommitted src changes"
VERSION="$("$BIN" --version) (binary built $(date -u -r "$SRC_BIN" '+%Y-%m-%d %H:%M UTC'), checkout $REV)"
FS=$(df -T "$WORK" | awk 'NR == 2 {print $2}')
json() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1"; }
set_result date "\"$(date -u +%Y-%m-%d)\""
set_result nproc "$(nproc)"
set_result cpu_model "$(json "${CPU_MODEL:-unknown}")"
set_result kernel "\"Linux $(uname -r)\""
set_result fs "$(json "$FS")"
set_result version "$(json "$VERSION")"
set_result python "$(json "$(/usr/bin/python3 --version 2>&1 || echo unknown)")"
set_result clk_tck "$(getconf CLK_TCK)"
set_result load_before "$(json "$(cut -d' ' -f1 /proc/loadavg)")"
set_result lines "$N_LINES"
set_result dynos "$N_DYNOS"
set_result rotate_mb "$ROTATE_MB"
set_result rate "$RATE"
set_result steady_s "$STEADY_S"
log "$VERSION; $(nproc) cores, ${CPU_MODEL:-unknown CPU}; home $H ($FS)"

# ----- the app: one process type per scenario ------------------------------------------------------
PER=$((N_LINES / N_DYNOS))
STEADY_N=$((RATE * STEADY_S))
(
    cd "$WORK/src"
    git init -q -b main
    {
        echo "burst: python3 gen block $N_LINES $MARKS/burst"
        echo "print: python3 gen print $N_LINES $MARKS/print"
        echo "worker: python3 gen block $PER $MARKS/worker"
        echo "wprint: python3 gen print $PER $MARKS/wprint"
        echo "rworker: python3 gen block $PER $MARKS/rworker"
        echo "steady: python3 gen pace $STEADY_N $MARKS/steady $RATE"
        echo "tsteady: python3 gen pace $((STEADY_N / N_DYNOS)) $MARKS/tsteady $((RATE / N_DYNOS))"
    } >Procfile
    git add Procfile gen
    git -c user.name=bench -c user.email=bench@localhost commit -q -m 'log bench app'
)

deploy() { # APP: creates APP and pushes a commit of its own (see supervision.sh on build ids)
    local out sha
    sw apps:create "$1" >/dev/null
    sha=$(cd "$WORK/src" && git -c user.name=bench -c user.email=bench@localhost commit-tree 'HEAD^{tree}' -p HEAD -m "bench $1")
    if ! out=$(cd "$WORK/src" && timeout 120 git push -q "$H/repos/$1.git" "$sha:refs/heads/main" 2>&1); then
        log "push to $1 failed:"; printf '%s\n' "$out" >&2; return 1
    fi
    grep -q 'Launching... done, v1' <<<"$out" || { log "push to $1: no 'Launching... done, v1':"; printf '%s\n' "$out" >&2; return 1; }
}

# ----- daemon, no rotation ---------------------------------------------------------------------------
SLIPWAY_LOG_MAX_MB=100000 SLIPWAY_LOG_FILES=5 sw daemon >/dev/null
[[ -s $H/run/slipway.pid ]] || die "daemon did not write $H/run/slipway.pid"
for app in logs-burst logs-print logs-ten logs-tenprint logs-steady logs-tensteady logs-rotate; do deploy "$app"; done

log "1/7 burst: 1 dyno x $N_LINES lines, 64 KiB blocks"
py run burst logs-burst burst 1 "$N_LINES" block
log "2/7 print: 1 dyno x $N_LINES lines, print(flush=True) per line"
py run print logs-print print 1 "$N_LINES" print
log "3/7 ten: $N_DYNOS dynos x $PER lines, 64 KiB blocks"
py run ten logs-ten worker "$N_DYNOS" "$PER" block
log "4/7 tenprint: $N_DYNOS dynos x $PER lines, print(flush=True) per line"
py run tenprint logs-tenprint wprint "$N_DYNOS" "$PER" print
if ((RATE > 0)); then
    log "5/7 steady: 1 dyno, print(flush=True) at $RATE lines/s for $STEADY_S s"
    py run steady logs-steady steady 1 "$STEADY_N" pace "$RATE"
    log "6/7 tensteady: $N_DYNOS dynos, print(flush=True) at $((RATE / N_DYNOS)) lines/s each for $STEADY_S s"
    py run tensteady logs-tensteady tsteady "$N_DYNOS" "$((STEADY_N / N_DYNOS))" pace "$((RATE / N_DYNOS))"
fi

if ((ROTATE_MB > 0)); then
    log "7/7 rotate: daemon restarted with SLIPWAY_LOG_MAX_MB=$ROTATE_MB SLIPWAY_LOG_FILES=100; $N_DYNOS dynos x $PER lines"
    timeout 60 "$BIN" --home "$H" daemon --stop >/dev/null
    SLIPWAY_LOG_MAX_MB=$ROTATE_MB SLIPWAY_LOG_FILES=100 sw daemon >/dev/null
    py run rotate logs-rotate rworker "$N_DYNOS" "$PER" block
fi

# ----- teardown check ------------------------------------------------------------------------------
timeout 60 "$BIN" --home "$H" ps:stop --all >/dev/null
left=$(pgrep -f -- "-shim --log $H/" || true)
[[ -z $left ]] || die "shims still running after ps:stop --all: $left"
warn=$(grep -cE '\b(WARN|ERROR)\b' "$H/logs/slipway.log" 2>/dev/null || true)
((${warn:-0} == 0)) || { log "WARN/ERROR lines in the daemon's log:"; grep -E '\b(WARN|ERROR)\b' "$H/logs/slipway.log" | head -10 >&2; }
set_result daemon_log_warnings "${warn:-0}"
set_result load_after "$(json "$(cut -d' ' -f1 /proc/loadavg)")"
set_result runtime_s "$(( $(date +%s) - BENCH_START ))"
py report
log "done in $(( $(date +%s) - BENCH_START )) s"
