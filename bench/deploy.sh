#!/usr/bin/env bash
# Deploy benchmark for slipway (issue 15): how long a `git push` takes until the new code is
# served through the router, against the floor — a plain `git push` of the same commit over the
# same sshd to a bare repository without hooks.
#
#   cargo build --release && bash bench/deploy.sh > section.md
#
# Progress goes to stderr; the Markdown results (one table, min/median/max of every row) go to
# stdout, for docs/BENCHMARKS.md. Everything runs in a fresh temporary SLIPWAY_HOME with its own
# daemon and its own sshd (127.0.0.1, a throw-away host key), torn down on exit (ps:stop --all,
# daemon --stop, sshd killed by pid, then SIGKILL to anything still mentioning the temp dir).
#
# Rows (BENCH_RUNS runs each, interleaved so that the machine's noise hits them alike):
#   floor         `git push` of the next commit to a bare repo without hooks, over the same sshd
#                 (a second key whose forced command is `git-receive-pack` of that repo)
#   ssh           one SSH round trip through slipway's forced command (`apps` over SSH)
#   warm stdlib   push of a code-only change of a stdlib HTTP server (`app.py`, a Python app
#                 without dependencies: its venv holds only pip) until the router serves it
#   warm flask    the same for Flask + gunicorn (requirements.txt: an unchanged venv is reused)
#   config:set    `config:set` over SSH until the router serves the new value
#   cold pip      first push of a new Flask + gunicorn app (its own, empty package cache;
#                 downloads from the package index) until the router serves it
#   cold uv       the same when `uv` is on the PATH of sshd's sessions (else the row says so)
#   uv alone      with uv: `uv venv` + `uv pip install flask gunicorn` of the cold app's
#                 requirements, by hand, with the interpreter the cold push used and an empty
#                 cache of its own (what issue 15's uv target compares the cold uv push with)
#   uv alone + bytecode   the same with `--compile-bytecode`, as the build installs
#   stdlib boot alone, flask boot alone   the warm app's own start, by hand: its command
#                 (`python app.py`, `gunicorn app:app` with WEB_CONCURRENCY=2 as a 512 MB dyno
#                 has) from the app's source dir with its environment's bin first on PATH, until
#                 it answers with the new code on a free port; "floor + … boot" adds it to the
#                 same round's floor: the physical lower bound of the warm rows
# Each row is measured with the default readiness settle (`boot_settle = 3`: a release is live
# only after its web dynos stayed up that long) and with `boot_settle = 0`; the daemon is
# restarted between the two (it reads the setting at start). The cold rows run once per settle
# only with BENCH_COLD_BOTH=1 (default: only with the default settle).
# The report also gives the medians of the phases of the push's own `-----> Done in` line.
#
# piku, side by side (optional, never required): with PIKU_REMOTE (e.g. `piku@127.0.0.1`, a
# working piku install that accepts this user's default SSH key) and PIKU_URL (its app URL
# pattern with `{app}`, e.g. `http://{app}.localhost:80/`), the warm stdlib row is also pushed to
# piku and polled the same way. Without them the piku row is left out.
#
# Knobs (environment):
#   SLIPWAY_BIN          binary to test (default: target/release/slipway of this checkout)
#   SLIPWAY_BENCH_PORTS  port range (default 25000-25099): the last is the router's
#   BENCH_RUNS           runs per row and settle (default 5, at least 5 for the docs)
#   BENCH_SETTLES        the boot_settle values to measure (default "3 0")
#   BENCH_COLD           1 (default) runs the cold rows; 0 skips them (no network needed)
#   BENCH_TOOLS          1 (default) runs `slipway tools:install` first, as install.sh does:
#                        builds then install with the platform's uv (row "cold uv, tools:install");
#                        0 leaves it out (the pip path, row "cold pip", unless uv is on PATH)
#   BENCH_OUTPUT         a file (outside the temp dir) to append every push's output to, each
#                        line with its arrival time (seconds since the push started), and what
#                        the router answered while the bench waited for the new code
#   BENCH_UV_DIR         a dir holding a `uv` executable: put first on the PATH of the bench's
#                        sshd sessions (sshd_config SetEnv), so builds install with uv (the
#                        cold uv row); without it, uv is used when it is on this PATH already
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SRC_BIN=${SLIPWAY_BIN:-$ROOT/target/release/slipway}
PORTS=${SLIPWAY_BENCH_PORTS:-25000-25099}
RUNS=${BENCH_RUNS:-5}
SETTLES=${BENCH_SETTLES:-3 0}
COLD=${BENCH_COLD:-1}
COLD_BOTH=${BENCH_COLD_BOTH:-0}
TOOLS=${BENCH_TOOLS:-1}

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

[[ -x $SRC_BIN ]] || die "no slipway binary at $SRC_BIN (run: cargo build --release)"
for tool in git python3 ssh ssh-keygen /usr/sbin/sshd; do
    command -v "$tool" >/dev/null || die "$tool is required"
done
[[ $RUNS =~ ^[0-9]+$ && $RUNS -ge 1 && $RUNS -le 50 ]] || die "BENCH_RUNS must be 1..50"
[[ $COLD == 0 || $COLD == 1 ]] || die "BENCH_COLD must be 0 or 1"
[[ $TOOLS == 0 || $TOOLS == 1 ]] || die "BENCH_TOOLS must be 0 or 1"
for s in $SETTLES; do [[ $s =~ ^[0-9]+$ ]] || die "BENCH_SETTLES: '$s' is not whole seconds"; done
[[ $PORTS =~ ^([0-9]+)-([0-9]+)$ ]] || die "SLIPWAY_BENCH_PORTS must be START-END"
PORT_LO=${BASH_REMATCH[1]} PORT_HI=${BASH_REMATCH[2]}
((PORT_HI - PORT_LO >= 10 && PORT_HI <= 65535)) || die "SLIPWAY_BENCH_PORTS needs at least 11 ports"

bench_workdir
SSHD_PID=""
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [[ -n $SSHD_PID ]]; then
        kill "$SSHD_PID" 2>/dev/null
        wait "$SSHD_PID" 2>/dev/null
    fi
    bench_cleanup 1
    exit "$rc"
}
bench_prepare
mkdir -p /run/sshd

export SLIPWAY_PORTS=$PORT_LO-$((PORT_HI - 2))
export SLIPWAY_ROUTER_ADDR=127.0.0.1:$PORT_HI
SSH_PORT=$((PORT_HI - 1))
unset SLIPWAY_HOME SLIPWAY_BOOT_SETTLE SLIPWAY_DOMAIN

# ----- sshd, keys, the floor's bare repo ---------------------------------------------------------
mkdir -p "$WORK/sshd" "$WORK/keys" "$H/.ssh"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/sshd/host_key"
ssh-keygen -q -t ed25519 -N '' -C bench -f "$WORK/keys/bench"
ssh-keygen -q -t ed25519 -N '' -C floor -f "$WORK/keys/floor"
USER_NAME=$(id -un)
cat >"$WORK/sshd/sshd_config" <<EOF
ListenAddress 127.0.0.1
Port $SSH_PORT
HostKey $WORK/sshd/host_key
PidFile $WORK/sshd/sshd.pid
AuthorizedKeysFile $H/.ssh/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin forced-commands-only
LogLevel ERROR
AllowUsers $USER_NAME
EOF
if [[ -n ${BENCH_UV_DIR:-} ]]; then
    [[ -x $BENCH_UV_DIR/uv ]] || die "BENCH_UV_DIR: no executable uv in $BENCH_UV_DIR"
    # sshd's own default PATH (root's, else a user's), with uv's dir first.
    default=/usr/local/bin:/usr/bin:/bin
    [[ $(id -u) != 0 ]] || default=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    printf 'SetEnv PATH=%s:%s\n' "$BENCH_UV_DIR" "$default" >>"$WORK/sshd/sshd_config"
fi
/usr/sbin/sshd -D -e -f "$WORK/sshd/sshd_config" 2>"$WORK/sshd/log" &
SSHD_PID=$!
for ((i = 0; i < 100; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$SSH_PORT") 2>/dev/null && break
    alive "$SSHD_PID" || die "sshd exited: $(cat "$WORK/sshd/log")"
    sleep 0.1
done
git init -q --bare "$WORK/floor.git"
"$BIN" --home "$H" keys:add bench <"$WORK/keys/bench.pub" >/dev/null
# A foreign line (slipway keeps it): the floor key may only receive-pack the floor repo.
printf 'command="git-receive-pack %s",restrict %s\n' "'$WORK/floor.git'" "$(cat "$WORK/keys/floor.pub")" \
    >>"$H/.ssh/authorized_keys"

ssh_cmd() { # KEY
    printf 'ssh -F /dev/null -p %s -i %s -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR' \
        "$SSH_PORT" "$1"
}

REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -z $(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]] || REV="$REV + uncommitted src changes"
VERSION="$("$BIN" --version) (binary built $(date -u -r "$SRC_BIN" '+%Y-%m-%d %H:%M UTC'), checkout $REV)"
if [[ -n ${BENCH_UV_DIR:-} ]]; then UV=$BENCH_UV_DIR/uv; else UV=$(command -v uv || true); fi
UV_KIND=""
[[ -z $UV ]] || UV_KIND="uv"
if [[ $TOOLS == 1 ]]; then
    log "slipway tools:install (as install.sh runs it)"
    t0=$(date +%s.%N)
    "$BIN" --home "$H" tools:install >"$WORK/tools.log" 2>&1 || die "slipway tools:install failed: $(tail -5 "$WORK/tools.log")"
    TOOLS_SECONDS=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t0" "$(date +%s.%N)")
    if [[ -z $UV ]]; then
        UV=$(ls "$H"/cache/.tools/uv-*/bin/uv)
        UV_KIND="uv, tools:install"
    fi
fi

cat >"$PY" <<'PYEOF'
import json, os, re, shutil, statistics, subprocess, sys, time, urllib.request

from benchlib import load, save, say, sw

BIN, HOME, RESULTS = sys.argv[1], sys.argv[2], sys.argv[3]
CMD, ARGS = sys.argv[4], sys.argv[5:]
E = os.environ
WORK, SSH_BENCH, SSH_FLOOR, USER, SSH_PORT = E["B_WORK"], E["B_SSH_BENCH"], E["B_SSH_FLOOR"], E["B_USER"], E["B_SSH_PORT"]
ROUTER = E["SLIPWAY_ROUTER_ADDR"]
RUNS = int(E["B_RUNS"])
PHASES = ["export", "deps", "release", "boot", "switch", "slug"]

STDLIB = '''import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
BODY = ("%s " + os.environ.get("GREETING", "")).encode()
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
'''
FLASK = '''import os
from flask import Flask
app = Flask(__name__)
@app.route("/")
def index():
    return "%s " + os.environ.get("GREETING", "")
'''


def git(repo, *args, env=None):
    out = subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, env=env, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {out.stdout}{out.stderr}")
    return out.stdout + out.stderr


def new_repo(name, files):
    repo = os.path.join(WORK, "src", name)
    os.makedirs(repo)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "bench@example.com")
    git(repo, "config", "user.name", "bench")
    commit(repo, files, "first")
    return repo


def commit(repo, files, message):
    for path, text in files.items():
        with open(os.path.join(repo, path), "w") as f:
            f.write(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


def push(repo, url, key):
    """Pushes; returns the start, the seconds it took and its output. With BENCH_OUTPUT the
    output goes there with each line's arrival time (seconds since the start) in front."""
    env = dict(os.environ, GIT_SSH_COMMAND=key)
    t0 = time.monotonic()
    p = subprocess.Popen(["git", "-C", repo, "push", url, "main"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    for line in p.stderr:
        lines.append((time.monotonic() - t0, line))
    p.wait(timeout=900)
    took = time.monotonic() - t0
    stderr = "".join(line for _, line in lines)
    if p.returncode != 0:
        raise RuntimeError(f"push to {url} failed:\n{stderr}")
    if E.get("BENCH_OUTPUT"):
        with open(E["BENCH_OUTPUT"], "a") as f:
            f.write(f"=== git push {url} ({took:.2f} s)\n")
            f.writelines(f"{at:7.3f} {line}" for at, line in lines)
    return t0, took, stderr


def slipway_url(app):
    return f"ssh://{USER}@127.0.0.1:{SSH_PORT}/{app}"


def get(url, host=None, seen=None):
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.read().decode()
    except Exception as e:
        if seen is not None:
            seen.append(repr(e)[:100])
        return None


def served(app, want, t0, deadline=120):
    """Seconds from t0 until the router serves a body starting with `want`. With BENCH_OUTPUT,
    what the polls saw before (each new answer, with its time since t0) goes there too."""
    end = time.monotonic() + deadline
    answers = []
    while time.monotonic() < end:
        seen = []
        body = get(f"http://{ROUTER}/", f"{app}.localhost", seen)
        answer = (body or "")[:40] if body is not None else seen[0]
        if not answers or answers[-1][1] != answer:
            answers.append((time.monotonic() - t0, answer))
        if body is not None and body.startswith(want):
            if E.get("BENCH_OUTPUT"):
                with open(E["BENCH_OUTPUT"], "a") as f:
                    f.write(f"=== polls of {app} until {want!r}\n")
                    f.writelines(f"{at:7.3f} {a}\n" for at, a in answers)
            return time.monotonic() - t0
        time.sleep(0.005)
    raise RuntimeError(f"{app} never served {want!r}")


def phases_of(output):
    m = re.search(r"Done in ([0-9.]+) s \(([^)]*)\)", output)
    if not m:
        return None
    return {k: float(v) for k, v in (p.split(" ") for p in m.group(2).split(", "))}


def record(row, value, phases=None):
    data = load()
    data.setdefault("rows", {}).setdefault(row, []).append(value)
    if phases:
        data.setdefault("phases", {}).setdefault(row, []).append(phases)
    save(**data)


def cmd_setup(settle):
    """Creates (once) the warm apps and deploys them, untimed."""
    data = load()
    if data.get("setup_done"):
        return
    stdlib = new_repo("warm-stdlib", {"Procfile": "web: python app.py\n", "app.py": STDLIB % "w0"})
    push(stdlib, slipway_url("warm-stdlib"), SSH_BENCH)
    served("warm-stdlib", "w0", time.monotonic())
    push(stdlib, f"ssh://{USER}@127.0.0.1:{SSH_PORT}/floor", SSH_FLOOR)
    flask = new_repo("warm-flask", {"app.py": FLASK % "f0", "requirements.txt": "flask\ngunicorn\n"})
    push(flask, slipway_url("warm-flask"), SSH_BENCH)
    served("warm-flask", "f0", time.monotonic())
    save(setup_done=True, counter=0)


def next_counter():
    n = load()["counter"] + 1
    save(counter=n)
    return n


def cmd_round(settle, cold):
    """One run of every row, interleaved."""
    tag = f"settle {settle}"
    n = next_counter()
    stdlib = os.path.join(WORK, "src", "warm-stdlib")
    flask = os.path.join(WORK, "src", "warm-flask")

    # floor: the same commit as the warm stdlib push below, to a bare repo without hooks.
    commit(stdlib, {"app.py": STDLIB % f"w{n}"}, f"w{n}")
    _, took, _ = push(stdlib, f"ssh://{USER}@127.0.0.1:{SSH_PORT}/floor", SSH_FLOOR)
    record(f"floor|{tag}", took)

    t0 = time.monotonic()
    out = subprocess.run(SSH_BENCH.split() + [f"{USER}@127.0.0.1", "apps"], capture_output=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"apps over SSH: {out.stderr!r}")
    record(f"ssh|{tag}", time.monotonic() - t0)

    t0, _, output = push(stdlib, slipway_url("warm-stdlib"), SSH_BENCH)
    record(f"warm stdlib|{tag}", served("warm-stdlib", f"w{n}", t0), phases_of(output))

    commit(flask, {"app.py": FLASK % f"f{n}"}, f"f{n}")
    t0, _, output = push(flask, slipway_url("warm-flask"), SSH_BENCH)
    record(f"warm flask|{tag}", served("warm-flask", f"f{n}", t0), phases_of(output))

    t0 = time.monotonic()
    out = subprocess.run(SSH_BENCH.split() + [f"{USER}@127.0.0.1", "config:set", "warm-stdlib", f"GREETING=g{n}"],
                         capture_output=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"config:set over SSH: {out.stderr!r}")
    record(f"config:set|{tag}", served("warm-stdlib", f"w{n} g{n}", t0))

    # The warm apps' own boots, by hand: the physical lower bound is the floor plus these.
    for name, argv, want in (("stdlib", ["python", "app.py"], f"w{n}"), ("flask", ["gunicorn", "app:app"], f"f{n}")):
        took = boot_alone(f"warm-{name}", argv, want)
        record(f"{name} boot alone|{tag}", took)
        record(f"floor + {name} boot|{tag}", load()["rows"][f"floor|{tag}"][-1] + took)

    if cold:
        # The installer follows the PATH of sshd's sessions (uv when it is there), else the
        # platform's uv (tools:install), else pip.
        kind = E.get("B_UV_KIND") or "pip"
        app = f"cold-{n}"
        repo = new_repo(app, {"app.py": FLASK % "c", "requirements.txt": "flask\ngunicorn\n"})
        t0, _, output = push(repo, slipway_url(app), SSH_BENCH)
        record(f"cold {kind}|{tag}", served(app, "c", t0), phases_of(output))
        sw("apps:destroy", app, "--confirm", app, timeout=120)
        m = re.search(r"Using Python \S+ \((.+)\)", output)
        if E.get("B_UV") and m:
            # uv by itself: a venv and the requirements, cold cache; then the same compiling
            # the bytecode, as the build does.
            for row, extra in (("uv alone", []), ("uv alone + bytecode", ["--compile-bytecode"])):
                scratch = os.path.join(WORK, f"uv-alone-{n}")
                env = dict(os.environ, UV_CACHE_DIR=os.path.join(scratch, "cache"))
                t0 = time.monotonic()
                for args in (["venv", "--quiet", "--python", m.group(1), os.path.join(scratch, "venv")],
                             ["pip", "install", "--quiet", *extra, "--python", os.path.join(scratch, "venv/bin/python"), "flask", "gunicorn"]):
                    out = subprocess.run([E["B_UV"], *args], capture_output=True, text=True, env=env, timeout=600)
                    if out.returncode != 0:
                        raise RuntimeError(f"uv {' '.join(args)}: {out.stderr}")
                record(f"{row}|{tag}", time.monotonic() - t0)
                shutil.rmtree(scratch)

    if E.get("PIKU_REMOTE") and E.get("PIKU_URL"):
        app = "bench-piku"
        url = E["PIKU_URL"].replace("{app}", app)
        t0, _, _ = push(stdlib, f"{E['PIKU_REMOTE']}:{app}", "ssh")
        record(f"piku warm stdlib|{tag}", served_url(url, f"w{n}", t0))


def boot_alone(app, argv, want, deadline=60):
    """Seconds from starting the app's own command (its environment's bin first on PATH, from
    its source dir, as a 512 MB dyno: PORT, WEB_CONCURRENCY=2) until it answers `want`."""
    import glob, signal, socket
    envs = glob.glob(os.path.join(HOME, "envs", app, "*", "bin", "python"))
    if len(envs) != 1:
        raise RuntimeError(f"{app}: expected one environment, found {envs}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"PATH": os.path.dirname(envs[0]) + ":/usr/bin:/bin", "PORT": str(port), "WEB_CONCURRENCY": "2",
           "PYTHONUNBUFFERED": "1", "HOME": WORK, "LANG": "C.UTF-8"}
    t0 = time.monotonic()
    p = subprocess.Popen(argv, cwd=os.path.join(WORK, "src", app), env=env, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = t0 + deadline
        while time.monotonic() < end:
            body = get(f"http://127.0.0.1:{port}/")
            if body is not None and body.startswith(want):
                return time.monotonic() - t0
            if p.poll() is not None:
                raise RuntimeError(f"{app}: {argv} exited with {p.returncode}")
            time.sleep(0.005)
        raise RuntimeError(f"{app}: {argv} never answered {want!r}")
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def served_url(url, want, t0, deadline=120):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        body = get(url)
        if body is not None and body.startswith(want):
            return time.monotonic() - t0
        time.sleep(0.005)
    raise RuntimeError(f"{url} never served {want!r}")


def cmd_report():
    d = load()
    rows, phases = d.get("rows", {}), d.get("phases", {})
    w = print
    w("### Deploys (`bench/deploy.sh`)")
    w()
    w(f"{d['date']}, {d['version']}; {d['nproc']} cores ({d['cpu_model']}), {d['kernel']}, "
      f"load average {d['load_before']} at the start. {RUNS} runs per row and settle, interleaved; "
      "seconds from the start of the command until the router serves the new code or value "
      "(the floor and the SSH round trip: until the command returns).")
    w()
    w("| what | boot_settle | min | median | max | median / floor | median phases of the push's `Done in` line |")
    w("|---|---|---|---|---|---|---|")
    order = ["floor", "ssh", "warm stdlib", "floor + stdlib boot", "stdlib boot alone", "warm flask",
             "floor + flask boot", "flask boot alone", "config:set", "cold pip", "cold uv",
             "cold uv, tools:install", "uv alone", "uv alone + bytecode", "piku warm stdlib"]
    keys = sorted(rows, key=lambda k: (order.index(k.split("|")[0]) if k.split("|")[0] in order else 99, k))
    for key in keys:
        what, tag = key.split("|")
        v = rows[key]
        floor = rows.get(f"floor|{tag}")
        ratio = f"{statistics.median(v) / statistics.median(floor):.2f}×" if floor and what != "floor" else ""
        ph = ""
        if phases.get(key):
            ph = ", ".join(f"{p} {statistics.median(x.get(p, 0) for x in phases[key]):.2f}" for p in PHASES)
        w(f"| {what} | {tag.split()[1]} | {min(v):.2f} | {statistics.median(v):.2f} | {max(v):.2f} | {ratio} | {ph} |")
    if "cold_note" in d:
        w()
        w(d["cold_note"])
    w()


def cmd_set(key, value):
    save(**{key: json.loads(value)})


COMMANDS = {"setup": cmd_setup, "round": lambda s, c: cmd_round(s, c == "1"), "report": cmd_report, "set": cmd_set}
COMMANDS[CMD](*ARGS)
PYEOF

py() { B_WORK=$WORK B_UV=$UV B_UV_KIND=$UV_KIND B_USER=$USER_NAME B_SSH_PORT=$SSH_PORT B_RUNS=$RUNS \
    B_SSH_BENCH="$(ssh_cmd "$WORK/keys/bench")" B_SSH_FLOOR="$(ssh_cmd "$WORK/keys/floor")" \
    python3 "$PY" "$BIN" "$H" "$RESULTS" "$@" & wait "$!"; }
json() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1"; }

py set date "\"$(date -u +%Y-%m-%d)\""
py set nproc "$(nproc)"
py set cpu_model "$(json "$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || echo unknown)")"
py set kernel "\"Linux $(uname -r)\""
py set version "$(json "$VERSION")"
py set load_before "$(json "$(cut -d' ' -f1 /proc/loadavg)")"
case $UV_KIND in
    uv) py set cold_note '"The cold row is the uv path (uv is on PATH); hide uv from PATH and set BENCH_TOOLS=0 to measure the pip path."' ;;
    "uv, tools:install") py set cold_note "$(json "The cold row is the uv path with the platform's uv, as install.sh leaves a server (\`slipway tools:install\`, once: ${TOOLS_SECONDS} s here); BENCH_TOOLS=0 measures the pip path.")" ;;
    *) py set cold_note '"The cold row is the pip path; the uv path was not measured (no uv on PATH, BENCH_TOOLS=0)."' ;;
esac

first=1
for settle in $SETTLES; do
    "$BIN" --home "$H" daemon --stop >/dev/null 2>&1 || true
    "$BIN" --home "$H" settings:set "boot_settle=$settle" >/dev/null
    "$BIN" --home "$H" daemon >/dev/null
    log "boot_settle = $settle: setting up"
    py setup "$settle"
    cold=$COLD
    ((first || COLD_BOTH)) || cold=0
    for ((i = 1; i <= RUNS; i++)); do
        log "boot_settle = $settle: round $i/$RUNS"
        py round "$settle" "$cold"
    done
    first=0
done
py report
