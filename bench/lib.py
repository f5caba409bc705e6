"""Shared by the Python halves of bench/*.sh (copied next to each as benchlib.py).

Every half is run as `python3 bench.py BIN HOME RESULTS ...`."""
import json, os, subprocess, sys, time

BIN, HOME, RESULTS = sys.argv[1], sys.argv[2], sys.argv[3]


def save(**kv):
    """Merges kv into the results file (atomically: write a temp file, rename)."""
    with open(RESULTS) as f:
        data = json.load(f)
    data.update(kv)
    tmp = RESULTS + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, RESULTS)


def load():
    with open(RESULTS) as f:
        return json.load(f)


def say(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sw(*args, timeout=60):
    """Runs `slipway --home HOME ARGS…`; its stdout, or an error naming the command."""
    out = subprocess.run([BIN, "--home", HOME, *args], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"slipway {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def ps(app):
    return json.loads(sw("ps", app, "--json", timeout=20))


def stat_fields(pid):
    """Fields of /proc/PID/stat after the command name (index 0 = field 3, state)."""
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    return s[s.rfind(")") + 2:].split()


def cpu_ticks(pid):
    f = stat_fields(pid)
    return int(f[11]) + int(f[12])  # utime (14) + stime (15)


def run_ns(pid):
    """On-CPU nanoseconds per thread (tid -> ns) from /proc/PID/task/*/schedstat."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                out[int(tid)] = int(f.read().split()[0])
        except OSError:
            pass
    return out


def cmd_ports_free(start, end):
    """`ports-free START END`: exits 1 (naming them) if any port in the range is listening."""
    start, end = int(start), int(end)
    busy = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    port = int(fields[1].rsplit(":", 1)[1], 16)
                    if start <= port <= end and fields[3] == "0A":  # LISTEN
                        busy.add(port)
        except FileNotFoundError:
            pass
    if busy:
        say(f"ports listening inside {start}-{end}: {sorted(busy)[:20]}")
        sys.exit(1)


def cmd_set(key, value):
    """`set KEY VALUE`: VALUE as JSON if it parses, else as a string."""
    try:
        value = json.loads(value)
    except ValueError:
        pass
    save(**{key: value})


def cmd_wait_web(app, deadline_s, out_path):
    """Waits (bounded) until APP has exactly one dyno, web.1, `up`; writes `PORT PID` to out_path."""
    t0 = time.monotonic()
    while True:
        rows = ps(app)
        if len(rows) == 1 and rows[0]["name"] == "web.1" and rows[0]["state"] == "up" and rows[0]["port"]:
            with open(out_path, "w") as f:
                f.write(f"{rows[0]['port']} {rows[0]['pid']}\n")
            say(f"{app}/web.1 up on port {rows[0]['port']} (pid {rows[0]['pid']}) after {time.monotonic() - t0:.1f} s")
            return
        if time.monotonic() - t0 > float(deadline_s):
            say(f"timed out waiting for {app}/web.1 to be up: {[(r['name'], r['state']) for r in rows]}")
            sys.exit(1)
        time.sleep(0.2)


def cpu_ns(pids):
    return sum(sum(run_ns(p).values()) for p in pids)
