# shellcheck shell=bash
# Sourced by bench/*.sh: logging, the throw-away work directory, and the cleanup that stops the
# bench's daemon and kills whatever still mentions the work directory. The scripts' Python
# halves share bench/lib.py the same way (copied next to them as benchlib.py).

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

alive() { # PID: exists and is not a zombie
    local st
    st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [[ -n $st && $st != Z ]]
}

# Sets BENCH_START, WORK (a new temp dir), H (the SLIPWAY_HOME), BIN, PY (the script's Python
# half) and RESULTS. Nothing naming $WORK may be exported: the cleanup kills every process whose
# command line or environment mentions it, and the script must not be one of them.
# shellcheck disable=SC2034 # the sourcing script uses them
bench_workdir() {
    BENCH_START=$(date +%s)
    WORK=$(mktemp -d /tmp/slipway-bench.XXXXXX)
    # Run as root, apps run as uids of their own, which must pass through the work dir (0700
    # from mktemp) to reach their release and working dirs.
    chmod 711 "$WORK"
    H=$WORK/home
    BIN=$WORK/bin/slipway
    PY=$WORK/bench.py
    RESULTS=$WORK/results.json
}

# Installs the script's `cleanup` as the exit trap, then fills the work dir: the binary under
# test (a copy, so a concurrent rebuild cannot swap it) with the `slipway-shim` beside it when
# there is one (the daemon shims dynos with it, else with `slipway dyno-shim`), bench/lib.py, an
# empty results file.
bench_prepare() {
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    mkdir -p "$WORK/bin" "$WORK/src"
    cp "$SRC_BIN" "$BIN"
    if [[ -x $(dirname "$SRC_BIN")/slipway-shim ]]; then
        cp "$(dirname "$SRC_BIN")/slipway-shim" "$WORK/bin/slipway-shim"
    fi
    cp "$ROOT/bench/lib.py" "$WORK/benchlib.py"
    echo '{}' >"$RESULTS"
}

# bench_cleanup GRACE [PID...]: stops the bench's dynos and daemon, then SIGKILLs PIDs and every
# process whose command line or environment mentions $WORK (after GRACE seconds for graceful
# stops still finishing), and removes $WORK. For the scripts' `cleanup`.
bench_cleanup() {
    local grace=$1
    shift
    if [[ -d $H/run ]]; then
        timeout 60 "$BIN" --home "$H" ps:stop --all >/dev/null 2>&1
        timeout 30 "$BIN" --home "$H" daemon --stop >/dev/null 2>&1
    fi
    local leftovers=("$@") still=() p pid
    for p in /proc/[0-9]*; do
        pid=${p#/proc/}
        [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
        if grep -qsF -- "$WORK" "$p/cmdline" "$p/environ"; then
            leftovers+=("$pid")
        fi
    done
    if ((${#leftovers[@]})); then
        ((grace == 0)) || sleep "$grace"
        for pid in "${leftovers[@]}"; do
            if alive "$pid"; then still+=("$pid"); fi
        done
        if ((${#still[@]})); then
            log "cleanup: SIGKILL to leftover processes: ${still[*]}"
            kill -9 "${still[@]}" 2>/dev/null
            sleep 0.5
        fi
    fi
    rm -rf "$WORK"
}

# Installs Debian packages PKG... with apt-get (root only), without letting a package start its
# service: the nginx package starts the system nginx (port 80) from its postinst, and a
# policy-rc.d answering 101 ("action forbidden") keeps it stopped (one is made only if there
# is none already, and removed afterwards).
bench_apt_install() {
    local made_policy=0 rc=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    {
        DEBIAN_FRONTEND=noninteractive timeout 300 apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq --no-install-recommends "$@"
    } >&2 || rc=$?
    ((made_policy == 0)) || rm -f /usr/sbin/policy-rc.d
    ((rc == 0)) || die "apt-get install $* failed"
}
