#!/usr/bin/env python3
"""How long a new process takes to start inside a cgroup, by each way slipway has used.

    sudo python3 bench/cgroup_entry.py > section.md      # root: it makes cgroups

Each round forks a child that enters a fresh cgroup and reports the moment it is inside
(CLOCK_MONOTONIC, shared by parent and child); the figure is fork → inside, in ms. Rounds are
spaced (BENCH_GAP_MS, default 100) as dyno starts are: the kernel's global threadgroup lock is
cheap again right after a write, so back-to-back writes would hide its cost. Methods, when the
machine has the hierarchy:

- v1 cgroup.procs: the child writes 0 to `cgroup.procs` of the memory, pids and cpu
  hierarchies (slipway before 2026-12-01 on v1);
- v1 tasks: the same through `tasks` (slipway since, on v1: the kernel moves the calling thread
  alone without the global lock);
- v2 cgroup.procs: the child writes 0 to `cgroup.procs` of a v2 cgroup (slipway's fallback on v2);
- v2 clone3: the child is created in the v2 cgroup by `clone3(CLONE_INTO_CGROUP)` (slipway's
  dyno start on v2 since 2026-12-01).

Knobs: BENCH_ROUNDS (default 30), BENCH_GAP_MS (100). Progress on stderr; a Markdown table on
stdout. Cgroups are made under each hierarchy's root as `slipway-bench-entry-PID` and removed.
"""
import ctypes, os, statistics, struct, sys, time

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "30"))
GAP = int(os.environ.get("BENCH_GAP_MS", "100")) / 1000
NAME = f"slipway-bench-entry-{os.getpid()}"
CLONE_INTO_CGROUP = 0x200000000
SYS_CLONE3 = 435  # x86_64 and aarch64


def mounts():
    """v1 controller -> mount point, and the first cgroup2 mount."""
    v1, v2 = {}, None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            point = left.split()[4]
            fstype, _, opts = right.split()[:3]
            if fstype == "cgroup2" and v2 is None:
                v2 = point
            elif fstype == "cgroup":
                for o in opts.split(","):
                    if o in ("memory", "pids", "cpu"):
                        v1.setdefault(o, point)
    return v1, v2


def by_write(dirs, fname):
    """One round: fork, the child writes 0 to each dir's fname (opened before the fork)."""
    fds = [os.open(os.path.join(d, fname), os.O_WRONLY) for d in dirs]
    r, w = os.pipe()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        for fd in fds:
            os.write(fd, b"0")
        os.write(w, struct.pack("d", time.monotonic()))
        os._exit(0)
    inside = struct.unpack("d", os.read(r, 8))[0]
    os.waitpid(pid, 0)
    for fd in fds + [r, w]:
        os.close(fd)
    return inside - t0


def by_clone3(dirs, _fname):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    dfd = os.open(dirs[0], os.O_RDONLY | os.O_DIRECTORY)
    # struct clone_args up to .cgroup (88 bytes): flags, pidfd, child_tid, parent_tid,
    # exit_signal, stack, stack_size, tls, set_tid, set_tid_size, cgroup.
    args = (ctypes.c_uint64 * 11)(CLONE_INTO_CGROUP, 0, 0, 0, 17, 0, 0, 0, 0, 0, dfd)
    r, w = os.pipe()
    t0 = time.monotonic()
    pid = libc.syscall(ctypes.c_long(SYS_CLONE3), ctypes.byref(args), ctypes.c_size_t(88))
    if pid == 0:
        os.write(w, struct.pack("d", time.monotonic()))
        os._exit(0)
    if pid < 0:
        raise OSError(ctypes.get_errno(), "clone3")
    inside = struct.unpack("d", os.read(r, 8))[0]
    os.waitpid(pid, 0)
    for fd in (dfd, r, w):
        os.close(fd)
    return inside - t0


def main():
    if os.geteuid() != 0:
        sys.exit("cgroup_entry.py makes cgroups: run it as root.")
    v1, v2 = mounts()
    methods = []
    v1_roots = [v1[c] for c in ("memory", "pids", "cpu") if c in v1]
    if "memory" in v1 and "pids" in v1:
        methods += [("v1 cgroup.procs", v1_roots, "cgroup.procs", by_write),
                    ("v1 tasks", v1_roots, "tasks", by_write)]
    if v2:
        methods += [("v2 cgroup.procs", [v2], "cgroup.procs", by_write),
                    ("v2 clone3", [v2], None, by_clone3)]
    results = {m[0]: [] for m in methods}
    made = []
    try:
        for name, roots, fname, fn in methods:
            dirs = [os.path.join(r, NAME, name.replace(" ", "-")) for r in roots]
            for d in dirs:
                os.makedirs(d)
                made.append(d)
        # Interleaved, so that the machine's noise falls on every method alike.
        for i in range(ROUNDS):
            print(f"round {i + 1}/{ROUNDS}", file=sys.stderr, flush=True)
            for name, roots, fname, fn in methods:
                dirs = [os.path.join(r, NAME, name.replace(" ", "-")) for r in roots]
                time.sleep(GAP)
                results[name].append(fn(dirs, fname) * 1000)
    finally:
        for d in reversed(made):
            os.rmdir(d)
        for r in set(v1_roots + ([v2] if v2 else [])):
            try:
                os.rmdir(os.path.join(r, NAME))
            except OSError:
                pass
    u = os.uname()
    print(f"### Starting a process inside a cgroup (`bench/cgroup_entry.py`)\n")
    print(f"{time.strftime('%Y-%m-%d')}, Linux {u.release}, {os.cpu_count()} cores; {ROUNDS} rounds "
          f"per method, interleaved, {GAP * 1000:.0f} ms apart; fork → the child runs inside, in ms.\n")
    print("| method | min | median | max |")
    print("|---|---:|---:|---:|")
    for name, *_ in methods:
        xs = results[name]
        print(f"| {name} | {min(xs):.2f} | {statistics.median(xs):.2f} | {max(xs):.2f} |")


if __name__ == "__main__":
    main()
