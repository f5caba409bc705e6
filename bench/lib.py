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
