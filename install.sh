#!/usr/bin/env bash
# install.sh — turn a Debian/Ubuntu box into a slipway server.
#
#   ./install.sh [--home DIR] [--user NAME] [--router-addr ADDR] [--domain DOMAIN]
#   ./install.sh --uninstall [--purge] [--dry-run] [--force] [--home DIR] [--user NAME]
#
# Run it as root from a checkout of the slipway repository. It is idempotent: running
# it again (for example after `git pull`, to upgrade) rebuilds, replaces the binary
# atomically, reports the version change and restarts the daemon only; running dynos
# keep serving across the restart. --uninstall undoes it (see uninstall below).
# The daemon runs as root (it gives every app a uid of its own); the home belongs to
# the slipway user, which sshd logs in as for git pushes. An install whose unit ran the
# daemon as that user is switched over by running this script again.
# Settings live in $HOME_DIR/slipway.toml: this script only adds or changes the
# keys of the options it is given (and router_addr and https_addr when the file
# has none), so whatever an operator put there survives every run.
set -euo pipefail

readonly DEFAULT_HOME=/var/lib/slipway
readonly DEFAULT_USER=slipway
readonly BIN=/usr/local/bin/slipway
# The per-dyno shim the daemon starts from beside $BIN (src/bin/slipway-shim.rs).
readonly SHIM_BIN=/usr/local/bin/slipway-shim
readonly UNIT=/etc/systemd/system/slipway.service
# What `systemctl enable slipway` creates (WantedBy=multi-user.target in the template).
readonly UNIT_LINK=/etc/systemd/system/multi-user.target.wants/slipway.service
readonly WAIT_SECONDS=10

HOME_DIR=$DEFAULT_HOME
SLIPWAY_USER=$DEFAULT_USER   # not $USER: that one is the caller's, from the environment
ROUTER_ADDR=""                # --router-addr; empty: keep slipway.toml's, else a default
DOMAIN=""                     # --domain; empty: keep slipway.toml's
UNINSTALL=0                   # --uninstall
PURGE=0                       # --purge: also the home and the user
DRY_RUN=0                     # --dry-run: print what --uninstall would do, change nothing
FORCE=0                       # --force: uninstall even when the dynos could not be stopped
OLD_VERSION=""                # slipway's version before this run ("" when not installed)
NEW_VERSION=""                # ... and after
SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TMP_FILES=()

usage() {
    cat <<EOF
Usage: $0 [--home DIR] [--user NAME] [--router-addr ADDR] [--domain DOMAIN]
       $0 --uninstall [--purge] [--dry-run] [--force] [--home DIR] [--user NAME]

Run as root. Install slipway on this machine: system packages, the slipway binary
($BIN), the system user, uv for Python builds ('slipway tools:install';
without the package index builds use pip), sshd, the firewall rule that keeps the dyno
ports for the router ('slipway firewall', reloaded at every start of the daemon under
systemd), and the slipway daemon, which runs as root.
Safe to run again; that is also how you upgrade: the binary is replaced, the
version change is reported and only the daemon restarts (apps keep running).

Options:
  --home DIR    SLIPWAY_HOME, which is also the user's home (default: $DEFAULT_HOME)
  --user NAME   system user that owns the data and that git pushes log in as over SSH
                (default: $DEFAULT_USER); the daemon itself runs as root
  --router-addr ADDR
                where the HTTP router listens (default: the router_addr already in
                DIR/slipway.toml, else 0.0.0.0:80 with systemd, which grants the
                daemon the right to bind it, and 0.0.0.0:8080 otherwise)
  --domain DOMAIN
                apps answer at <app>.DOMAIN (default: the domain already in
                DIR/slipway.toml, else localhost)
  -h, --help    show this help and exit

Both options are written to DIR/slipway.toml (with 'slipway settings:set'), where
every other setting can be added too; keys already there are kept.

Uninstall:
  --uninstall   stop every dyno ('slipway ps:stop --all') and the daemon, then remove
                what install.sh added: $BIN, the systemd unit
                ($UNIT) and the firewall rule for the dyno
                ports. The home (apps, releases, logs, keys,
                slipway.toml) and the user are kept. System packages, sshd and its
                host keys are left alone. Running it again says nothing is left.
  --purge       with --uninstall: also delete the user and the home DIR
  --dry-run     with --uninstall: print what would be stopped and removed; change nothing
  --force       with --uninstall: go on when the dynos cannot be stopped (they keep
                running, on a deleted binary)
EOF
}

say() { printf -- '-----> %s\n' "$*"; }
warn() { printf 'install.sh: warning: %s\n' "$*" >&2; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

cleanup() {
    # Temporary files of a step that failed half-way (a finished step renamed its own).
    if [ "${#TMP_FILES[@]}" -gt 0 ]; then rm -f -- "${TMP_FILES[@]}"; fi
}
trap cleanup EXIT

parse_args() {
    while [ $# -gt 0 ]; do
        case $1 in
            --home) [ $# -ge 2 ] || die "--home needs a directory."; HOME_DIR=$2; shift 2 ;;
            --home=*) HOME_DIR=${1#--home=}; shift ;;
            --user) [ $# -ge 2 ] || die "--user needs a user name."; SLIPWAY_USER=$2; shift 2 ;;
            --user=*) SLIPWAY_USER=${1#--user=}; shift ;;
            --router-addr) [ $# -ge 2 ] || die "--router-addr needs HOST:PORT."; ROUTER_ADDR=$2; shift 2 ;;
            --router-addr=*) ROUTER_ADDR=${1#--router-addr=}; shift ;;
            --domain) [ $# -ge 2 ] || die "--domain needs a domain name."; DOMAIN=$2; shift 2 ;;
            --domain=*) DOMAIN=${1#--domain=}; shift ;;
            --uninstall) UNINSTALL=1; shift ;;
            --purge) PURGE=1; shift ;;
            --dry-run) DRY_RUN=1; shift ;;
            --force) FORCE=1; shift ;;
            -h|--help) usage; exit 0 ;;
            *) usage >&2; die "unknown argument '$1'." ;;
        esac
    done
    if [ "$UNINSTALL" = 1 ]; then
        if [ -n "$ROUTER_ADDR$DOMAIN" ]; then die "--router-addr and --domain make no sense with --uninstall."; fi
    else
        if [ "$PURGE$DRY_RUN$FORCE" != 000 ]; then die "--purge, --dry-run and --force go with --uninstall."; fi
    fi

    # Both values end up in a systemd unit, in the commands printed at the end and
    # in authorized_keys forced commands, so accept only plain names and paths.
    if ! [[ $SLIPWAY_USER =~ ^[a-z_][a-z0-9_-]*$ ]] || [ "${#SLIPWAY_USER}" -gt 32 ]; then
        die "--user '$SLIPWAY_USER' is not a valid user name (lowercase letters, digits, '_' and '-', at most 32)."
    fi
    [ "$SLIPWAY_USER" != root ] || die "--user root is refused: the platform user (which owns the home and which sshd logs in as) must be unprivileged."
    local addr_re='^[][0-9a-fA-F.:]+:[0-9]+$'   # IPv4:port or [IPv6]:port
    if [ -n "$ROUTER_ADDR" ] && ! [[ $ROUTER_ADDR =~ $addr_re ]]; then
        die "--router-addr '$ROUTER_ADDR' is not HOST:PORT."
    fi
    if [ -n "$DOMAIN" ] && ! [[ $DOMAIN =~ ^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]]; then
        die "--domain '$DOMAIN' is not a domain name (letters, digits, '.' and '-')."
    fi
    # Drop trailing slashes so /var/lib/slipway/ and /var/lib/slipway are the same home.
    while [ "${#HOME_DIR}" -gt 1 ] && [ "${HOME_DIR%/}" != "$HOME_DIR" ]; do HOME_DIR=${HOME_DIR%/}; done
    [[ $HOME_DIR =~ ^/[A-Za-z0-9._/+-]+$ ]] ||
        die "--home '$HOME_DIR' must be an absolute path made of letters, digits and . _ / + - (no spaces, quotes or @)."
    [[ /$HOME_DIR/ != */../* && /$HOME_DIR/ != */./* && $HOME_DIR != *//* ]] ||
        die "--home '$HOME_DIR' must not contain '.', '..' or empty path components."
    case $HOME_DIR in
        /|/bin|/boot|/dev|/etc|/home|/lib|/lib32|/lib64|/opt|/proc|/root|/run|/sbin|/sys|/tmp|/usr|/usr/*|/var|/var/lib|/var/tmp)
            die "--home '$HOME_DIR' is a system directory; choose a directory of its own, like $DEFAULT_HOME." ;;
    esac
}

# "--home DIR " for the commands printed in the next steps, only when DIR is not the default.
home_flag() {
    if [ "$HOME_DIR" != "$DEFAULT_HOME" ]; then printf -- '--home %s ' "$HOME_DIR"; fi
}

# ---------------------------------------------------------------------------
# System packages
# ---------------------------------------------------------------------------
install_packages() {
    local pkg missing=()
    for pkg in git openssh-server python3 python3-venv ca-certificates; do
        # dpkg -s succeeds for removed-but-configured packages too; check the status line.
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed'; then
            missing+=("$pkg")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        say "System packages already installed"
        return
    fi
    say "Installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
}

# ---------------------------------------------------------------------------
# Build and install the binary
# ---------------------------------------------------------------------------
# find_cargo: set CARGO_BIN (a global, not printed: it may also export RUSTUP_HOME,
# which a $(...) subshell would lose).
CARGO_BIN=
find_cargo() {
    local sudo_home
    if CARGO_BIN=$(command -v cargo); then return 0; fi
    # sudo's secure_path drops ~/.cargo/bin from PATH, so look where rustup puts it.
    CARGO_BIN=${HOME:-/root}/.cargo/bin/cargo
    if [ -x "$CARGO_BIN" ]; then return 0; fi
    if [ -n "${SUDO_USER:-}" ]; then
        sudo_home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
        if [ -n "$sudo_home" ] && [ -x "$sudo_home/.cargo/bin/cargo" ]; then
            # A rustup proxy finds its toolchains through RUSTUP_HOME (default ~/.rustup,
            # which as root would be /root/.rustup): point it at the invoking user's.
            if [ -z "${RUSTUP_HOME:-}" ] && [ ! -d "${HOME:-/root}/.rustup" ] && [ -d "$sudo_home/.rustup" ]; then
                export RUSTUP_HOME="$sudo_home/.rustup"
            fi
            CARGO_BIN=$sudo_home/.cargo/bin/cargo
            return 0
        fi
    fi
    CARGO_BIN=
    return 1
}

# binary_version FILE: the version FILE reports ("slipway 0.1.0" -> 0.1.0); nothing when
# FILE does not exist, "unknown" when it exists but does not answer --version.
binary_version() {
    local out
    [ -e "$1" ] || return 0
    if ! out=$(timeout 10 "$1" --version 2>/dev/null) || [ -z "$out" ]; then
        echo unknown
        return 0
    fi
    out=${out%%$'\n'*}
    printf '%s\n' "${out##* }"
}

# version_change OLD NEW: what this run did to the installed version, in one line.
version_change() {
    if [ -z "$1" ]; then printf 'installed slipway %s\n' "$2"
    elif [ "$1" = "$2" ]; then printf 'reinstalled %s\n' "$2"
    else printf 'slipway %s → %s\n' "$1" "$2"
    fi
}

build_and_install_binary() {
    local cargo tmp owner
    OLD_VERSION=$(binary_version "$BIN")
    [ -f "$SRC_DIR/Cargo.toml" ] || die "no Cargo.toml next to install.sh; run it from a checkout of the slipway repository."
    find_cargo ||
        die "cargo not found (looked in PATH and ~/.cargo/bin${SUDO_USER:+ and ~$SUDO_USER/.cargo/bin}); install Rust from https://rustup.rs and run install.sh again."
    cargo=$CARGO_BIN
    # cargo runs rustc from the same directory; make sure it is on PATH.
    PATH="$(dirname "$cargo"):$PATH"
    export PATH

    local locked=()
    if [ -f "$SRC_DIR/Cargo.lock" ]; then locked=(--locked); fi
    say "Building slipway ($cargo build --release ${locked[*]-})"
    (cd "$SRC_DIR" && "$cargo" build --release ${locked[@]+"${locked[@]}"}) ||
        die "building slipway failed (cargo's output is above); nothing was installed."

    # A checkout owned by the invoking user must stay buildable by that user:
    # give back what this root build created.
    owner=$(stat -c %u:%g "$SRC_DIR/Cargo.toml")
    if [ "$owner" != 0:0 ]; then
        chown -R "$owner" "$SRC_DIR/target" "$SRC_DIR/Cargo.lock" 2>/dev/null ||
            warn "could not give $SRC_DIR/target back to uid:gid $owner; chown -R it (as root) before building as yourself."
    fi

    local f
    for f in slipway slipway-shim; do
        [ -x "$SRC_DIR/target/release/$f" ] || die "the build did not produce target/release/$f."
    done
    NEW_VERSION=$(binary_version "$SRC_DIR/target/release/slipway")
    if cmp -s "$SRC_DIR/target/release/slipway" "$BIN" &&
        cmp -s "$SRC_DIR/target/release/slipway-shim" "$SHIM_BIN"; then
        say "$BIN is up to date: $(version_change "$OLD_VERSION" "$NEW_VERSION")"
        return
    fi
    say "Installing $BIN and $SHIM_BIN"
    mkdir -p "$(dirname "$BIN")"
    # The shim first: a daemon started in between (the old binary) finds a shim of another
    # version beside it and shims with itself; a new binary never runs without its shim.
    install_binary "$SRC_DIR/target/release/slipway-shim" "$SHIM_BIN"
    install_binary "$SRC_DIR/target/release/slipway" "$BIN"
    NEW_VERSION=$(binary_version "$BIN")
    say "$(version_change "$OLD_VERSION" "$NEW_VERSION")"
}

# install_binary SRC DEST: installs SRC as DEST (root's, 0755) under a temporary name, then
# renames it over the old one: rename is atomic, and running processes keep executing the
# old inode instead of crashing on a file rewritten under them ("Text file busy" at best).
install_binary() {
    local tmp
    tmp="$(dirname "$2")/.slipway.new.$$"
    TMP_FILES+=("$tmp")
    install -o root -g root -m 0755 "$1" "$tmp"
    mv -f "$tmp" "$2"
}

# ---------------------------------------------------------------------------
# The slipway user and its home (= SLIPWAY_HOME)
# ---------------------------------------------------------------------------
# Run before anything is changed: an existing account must fit the install.
check_existing_user() {
    local entry current_home
    entry=$(getent passwd "$SLIPWAY_USER") || return 0
    [ "$(id -u "$SLIPWAY_USER")" != 0 ] || die "user '$SLIPWAY_USER' has uid 0; the platform user must be unprivileged."
    # sshd reads keys from the account's home, while slipway writes them to
    # $SLIPWAY_HOME/.ssh: the two must be the same directory.
    current_home=$(printf '%s\n' "$entry" | cut -d: -f6)
    current_home=${current_home%/}
    [ "$current_home" = "$HOME_DIR" ] ||
        die "user '$SLIPWAY_USER' already exists with home '$current_home', not '$HOME_DIR'; rerun with --home $current_home (or change it with usermod -d)."
}

setup_user() {
    local entry shell pw
    if entry=$(getent passwd "$SLIPWAY_USER"); then
        check_existing_user
        say "User $SLIPWAY_USER exists"
        # The forced command in authorized_keys is run through the login shell.
        shell=$(printf '%s\n' "$entry" | cut -d: -f7)
        case $shell in
            */nologin|*/false|'')
                say "Giving $SLIPWAY_USER the shell /bin/sh (sshd runs forced commands through it)"
                usermod --shell /bin/sh "$SLIPWAY_USER" ;;
        esac
    else
        say "Creating system user $SLIPWAY_USER (home $HOME_DIR)"
        mkdir -p "$(dirname "$HOME_DIR")"
        local group_opt=(--user-group)
        # --user-group fails when a group of that name is left over; join it instead.
        if getent group "$SLIPWAY_USER" >/dev/null; then group_opt=(--gid "$SLIPWAY_USER"); fi
        useradd --system --home-dir "$HOME_DIR" --create-home --shell /bin/sh \
            "${group_opt[@]}" "$SLIPWAY_USER"
    fi
    getent group "$SLIPWAY_USER" >/dev/null ||
        die "group '$SLIPWAY_USER' does not exist; the home is owned by $SLIPWAY_USER:$SLIPWAY_USER (create it with groupadd --system $SLIPWAY_USER)."

    # useradd leaves the password as "!" (locked). With UsePAM off, OpenSSH refuses
    # locked accounts even for public keys; "*" means "no password" but not locked.
    # Only touch a locked entry, so an existing real password is never replaced.
    pw=$(getent shadow "$SLIPWAY_USER" | cut -d: -f2)
    if [[ $pw == '!'* || -z $pw ]]; then
        usermod -p '*' "$SLIPWAY_USER"
    fi

    # The home holds the database, repos and config vars (secrets): no other users.
    mkdir -p "$HOME_DIR" "$HOME_DIR/.ssh"
    chown "$SLIPWAY_USER:$SLIPWAY_USER" "$HOME_DIR" "$HOME_DIR/.ssh"
    chmod 0750 "$HOME_DIR"
    # sshd's StrictModes ignores keys in a group/world-accessible .ssh.
    chmod 0700 "$HOME_DIR/.ssh"
    if [ -f "$HOME_DIR/.ssh/authorized_keys" ]; then
        chown "$SLIPWAY_USER:$SLIPWAY_USER" "$HOME_DIR/.ssh/authorized_keys"
        chmod 0600 "$HOME_DIR/.ssh/authorized_keys"
    fi
}

# ---------------------------------------------------------------------------
# sshd
# ---------------------------------------------------------------------------
have_systemd() { [ -d /run/systemd/system ]; }

sshd_running() {
    local pidfile pid port
    # `pgrep -x sshd` is not enough: it also matches private sshds (slipway's own
    # test suite runs some on 127.0.0.1 with `-f`) and leftover session processes.
    # Trust the system sshd's pidfile, if that pid is still an sshd ...
    pidfile=$(/usr/sbin/sshd -T 2>/dev/null | awk '$1 == "pidfile" { print $2 }')
    pidfile=${pidfile:-/run/sshd.pid}
    if [ -s "$pidfile" ]; then
        pid=$(cat "$pidfile")
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = sshd ] && return 0
    fi
    # ... or anything already listening on sshd's configured port(s): starting
    # another sshd there would fail anyway.
    if command -v ss >/dev/null 2>&1; then
        for port in $(/usr/sbin/sshd -T 2>/dev/null | awk '$1 == "port" { print $2 }'); do
            [ -n "$(ss -Hltn "sport = :$port")" ] && return 0
        done
    fi
    return 1
}

setup_sshd() {
    # Creates only the host key types that are missing; a no-op afterwards.
    ssh-keygen -A >/dev/null
    # The privilege-separation directory, normally made by the init script or
    # systemd; sshd (and even `sshd -t`) refuses to run without it.
    mkdir -p /run/sshd
    chmod 0755 /run/sshd
    # Fail here, with sshd's own message, rather than on the first git push.
    /usr/sbin/sshd -t || die "sshd's configuration is invalid (see above); fix /etc/ssh/sshd_config and run install.sh again."
    if have_systemd; then
        say "Enabling and starting ssh.service"
        systemctl enable --now ssh
    elif sshd_running; then
        say "sshd is running"
    else
        say "Starting sshd"
        # It detaches itself; it will not come back after a reboot (no init system
        # to start it): the same goes for the slipway daemon, see the next steps.
        /usr/sbin/sshd
    fi

    # Warn about settings that would make every push fail with "Permission denied".
    local effective
    if effective=$(/usr/sbin/sshd -T -C "user=$SLIPWAY_USER,host=localhost,addr=127.0.0.1" 2>/dev/null); then
        if grep -qix 'pubkeyauthentication no' <<<"$effective"; then
            warn "sshd has PubkeyAuthentication no for $SLIPWAY_USER; git pushes need public-key login."
        fi
        if ! grep -qiE '^authorizedkeysfile( .*)? (%h/)?\.ssh/authorized_keys( |$)' <<<"$effective"; then
            warn "sshd's AuthorizedKeysFile does not include .ssh/authorized_keys; keys added with 'slipway keys:add' will not be used."
        fi
    fi
}

# ---------------------------------------------------------------------------
# Settings: $HOME_DIR/slipway.toml
# ---------------------------------------------------------------------------
# setting KEY: the value of KEY when slipway.toml sets it (empty otherwise). Run as
# the slipway user with a clean environment, so no SLIPWAY_* variable hides the file.
# configure_settings checks first that the file is valid, so this does not fail.
setting() {
    as_slipway settings | awk -v key="$1" '$1 == key && $NF == "slipway.toml" { print $2 }'
}

# Settings that older versions of this script wrote into the unit as Environment=
# lines: carry over to slipway.toml the ones it does not set yet.
migrate_unit_settings() {
    local line assignment var key value
    [ -f "$UNIT" ] || return 0
    # The unit on fd 3: the slipway commands in the loop must not read it as stdin.
    while IFS= read -r line <&3 || [ -n "$line" ]; do
        [[ $line =~ ^[[:space:]]*Environment=\"?(SLIPWAY_[A-Z_]+=[^\"]*)\"?[[:space:]]*$ ]] || continue
        assignment=${BASH_REMATCH[1]}
        var=${assignment%%=*}
        value=${assignment#*=}
        key=${var#SLIPWAY_}
        key=${key,,}
        if [ "$key" = home ] || [ -z "$value" ] || [ -n "$(setting "$key")" ]; then continue; fi
        if as_slipway settings:set "$key=$value" >/dev/null; then
            say "Moved $var=$value from $UNIT to $HOME_DIR/slipway.toml"
        else
            warn "could not move $var=$value from $UNIT to $HOME_DIR/slipway.toml (the reason is above); set it with 'slipway settings:set'."
        fi
    done 3<"$UNIT"
}

configure_settings() {
    local pairs=()
    as_slipway settings >/dev/null ||
        die "$HOME_DIR/slipway.toml is not valid (the reason is above); fix it and run install.sh again."
    migrate_unit_settings
    if [ -z "$ROUTER_ADDR" ] && [ -z "$(setting router_addr)" ]; then
        # Port 80 needs CAP_NET_BIND_SERVICE, which only the systemd unit grants.
        if have_systemd; then ROUTER_ADDR=0.0.0.0:80; else ROUTER_ADDR=0.0.0.0:8080; fi
    fi
    if [ -n "$ROUTER_ADDR" ]; then pairs+=("router_addr=$ROUTER_ADDR"); fi
    # HTTPS: 443 with systemd (the same capability as port 80), else 8443; kept when set.
    if [ -z "$(setting https_addr)" ]; then
        if have_systemd; then pairs+=("https_addr=0.0.0.0:443"); else pairs+=("https_addr=0.0.0.0:8443"); fi
    fi
    if [ -n "$DOMAIN" ]; then pairs+=("domain=$DOMAIN"); fi
    if [ "${#pairs[@]}" -gt 0 ]; then
        say "Writing ${pairs[*]} to $HOME_DIR/slipway.toml"
        as_slipway settings:set "${pairs[@]}" >/dev/null ||
            die "could not write $HOME_DIR/slipway.toml (the reason is above)."
    else
        say "Settings in $HOME_DIR/slipway.toml kept as they are"
    fi
    # What the daemon will use, for the next steps printed at the end.
    ROUTER_ADDR=$(setting router_addr)
    DOMAIN=$(setting domain)
}

# ---------------------------------------------------------------------------
# Build tools
# ---------------------------------------------------------------------------
# install_build_tools: the platform's uv and the pinned pip's wheel, in HOME_DIR/cache/.tools
# ('slipway tools:install' as the slipway user; proxies come from the build_env setting), so
# that a Python app's very first push installs requirements.txt with uv, seconds faster than
# pip. It needs the package index once; without it the install goes on with a warning, builds
# use pip, and running this script (or 'slipway tools:install') again later retries.
install_build_tools() {
    say "Installing uv for Python builds ('slipway tools:install'; needs the package index once)"
    if ! as_slipway tools:install; then
        warn "uv is not installed (the reason is above): Python builds install with pip until 'slipway tools:install' (as $SLIPWAY_USER) or this script succeeds."
    fi
}

# ---------------------------------------------------------------------------
# The daemon
# ---------------------------------------------------------------------------
# Run slipway as the slipway user with a clean environment (like systemd would),
# from its home: the checkout's directory may not even be readable by that user.
as_slipway() {
    (cd "$HOME_DIR" && runuser -u "$SLIPWAY_USER" -- env -i \
        PATH=/usr/local/bin:/usr/bin:/bin HOME="$HOME_DIR" USER="$SLIPWAY_USER" \
        LOGNAME="$SLIPWAY_USER" LANG=C.UTF-8 SLIPWAY_HOME="$HOME_DIR" \
        "$BIN" --home "$HOME_DIR" "$@")
}

# Run slipway as root with the clean environment systemd gives the unit: for `daemon`
# (the daemon runs as root; `daemon --stop` must be able to signal it, and also stops a
# daemon an older install started as the slipway user) and `firewall`.
as_root() {
    (cd "$HOME_DIR" && env -i \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        USER=root LOGNAME=root LANG=C.UTF-8 SLIPWAY_HOME="$HOME_DIR" \
        "$BIN" --home "$HOME_DIR" "$@")
}

daemon_up() { as_slipway status >/dev/null 2>&1; }

# wait_for up|down: poll `slipway status` for at most WAIT_SECONDS.
wait_for() {
    local want=$1 i
    for ((i = 0; i < WAIT_SECONDS * 5; i++)); do
        if daemon_up; then [ "$want" = up ] && return 0
        else [ "$want" = down ] && return 0
        fi
        sleep 0.2
    done
    return 1
}

# report_daemon: after a (re)start, say what answers, and warn when it is not the
# version just installed (an old daemon still holding the socket).
report_daemon() {
    local status
    status=$(as_slipway status 2>&1) || die "the slipway daemon stopped answering right after starting: $status"
    say "$status"
    if [ -n "$NEW_VERSION" ] && [ "$NEW_VERSION" != unknown ] && [[ $status != *", version $NEW_VERSION,"* ]]; then
        warn "the daemon that answers is not slipway $NEW_VERSION; restart it (systemctl restart slipway, or slipway daemon --stop then slipway daemon)."
    fi
}

# render_unit DEST: fill templates/slipway.service in, replacing DEST atomically.
render_unit() {
    local dest=$1 template=$SRC_DIR/templates/slipway.service tmp
    [ -f "$template" ] || die "missing $template; run install.sh from a complete checkout."
    tmp="$dest.new.$$"
    TMP_FILES+=("$tmp")
    # Safe with sed: the values were validated above and contain no '|', '&' or '\'.
    sed -e "s|@BIN@|$BIN|g" -e "s|@HOME@|$HOME_DIR|g" "$template" >"$tmp"
    if grep -q '@[A-Z]*@' "$tmp"; then die "unsubstituted placeholder left in $template."; fi
    chmod 0644 "$tmp"
    mv -f "$tmp" "$dest"
}

start_daemon_systemd() {
    say "Installing $UNIT"
    render_unit "$UNIT"
    # A daemon started by hand (before systemd managed it) would hold the control
    # socket and make the unit fail: stop it first. Dynos keep running.
    if ! systemctl is-active --quiet slipway && as_root daemon --stop >/dev/null 2>&1; then
        say "Stopped the slipway daemon started outside systemd (apps keep running)"
    fi
    systemctl daemon-reload
    systemctl enable slipway
    say "Restarting slipway.service (the daemon only: apps keep running)"
    systemctl restart slipway
    wait_for up || {
        journalctl -u slipway -n 20 --no-pager >&2 || true
        die "slipway.service did not answer 'slipway status' within ${WAIT_SECONDS}s (log above; see 'journalctl -u slipway')."
    }
    report_daemon
}

start_daemon_plain() {
    local out
    # Restart so the new binary takes over; --stop leaves the dynos running and the new
    # daemon re-adopts them. --stop finds the daemon by its pid-file lock, so it also stops
    # one too old to answer this binary's `status` (a protocol change).
    if as_root daemon --stop >/dev/null 2>&1; then
        say "Stopped the running slipway daemon (apps keep running)"
    fi
    say "Starting the slipway daemon"
    out=$(mktemp /tmp/slipway-install.XXXXXX)
    TMP_FILES+=("$out")
    # The daemon detaches itself. Keep its inherited stdio off our terminal/pipe
    # (a pipe held open by it would hang `./install.sh | tee log`), but keep the
    # startup messages for the error report.
    as_root daemon </dev/null >"$out" 2>&1 || {
        cat "$out" >&2
        die "'slipway daemon' failed to start (output above)."
    }
    wait_for up || {
        cat "$out" >&2
        die "the slipway daemon did not answer 'slipway status' within ${WAIT_SECONDS}s; check $HOME_DIR/logs."
    }
    report_daemon
}

# ---------------------------------------------------------------------------
next_steps() {
    local host
    # hostname -f asks the resolver, which can hang on a broken DNS setup.
    host=$(timeout 5 hostname -f 2>/dev/null || true)
    [ -n "$host" ] || host=$(hostname)
    cat <<EOF

slipway is installed and running ($(version_change "$OLD_VERSION" "$NEW_VERSION"); home $HOME_DIR, user $SLIPWAY_USER).

Next steps (as root, 'slipway ...' switches to the $SLIPWAY_USER user by itself, except
'slipway daemon', which stays root; from another account use: runuser -u $SLIPWAY_USER -- slipway ...):
  1. Authorize a developer's SSH public key (copy alice's ~/.ssh/id_ed25519.pub
     to this server first), on this server:
       slipway $(home_flag)keys:add alice < id_ed25519.pub
  2. On the laptop, in the app's git repository (try examples/python-hello):
       git remote add slipway $SLIPWAY_USER@$host:hello
       git push slipway main
     The push ends with the app's URL; the router listens on $ROUTER_ADDR and routes
     Host: hello.${DOMAIN:-localhost} to the app, e.g.
       curl http://hello.${DOMAIN:-localhost}:${ROUTER_ADDR##*:}/
  3. On this server:
       slipway $(home_flag)apps
       slipway $(home_flag)logs hello
  4. Settings (domain, timeouts, limits) are in $HOME_DIR/slipway.toml:
       slipway $(home_flag)settings
       slipway $(home_flag)settings:set domain=apps.example.com
  Upgrade: git pull, then run install.sh again. Remove: install.sh --uninstall [--purge].
EOF
    if ! have_systemd; then
        cat <<EOF

This machine does not run systemd, so nothing starts sshd or the slipway daemon
at boot, and nothing reloads the firewall rule for the dyno ports: after a reboot,
run install.sh again, or as root: 'slipway $(home_flag)firewall', /usr/sbin/sshd and
'slipway $(home_flag)daemon' (in that order; an init script or @reboot cron job may run them).
EOF
    fi
}

# ---------------------------------------------------------------------------
# Firewall: dyno ports are for the router only
# ---------------------------------------------------------------------------
# Dynos listen on every address at a port of the `ports` setting; only the router (on
# this machine) should reach them. `slipway firewall` (as root) loads one rule that drops
# TCP to that range unless it arrives on the loopback interface: an nft table
# `inet slipway` when nft is installed, else a chain SLIPWAY-DYNOS jumped to from INPUT
# (iptables, and ip6tables when present). It is idempotent, and refuses a range holding
# sshd's or the router's port. The systemd unit runs it before every start of the daemon
# (ExecStartPre), so the rule comes back after a reboot and follows a changed `ports`.
readonly FW_NFT_TABLE="inet slipway"
readonly FW_CHAIN=SLIPWAY-DYNOS

# firewall_tool: nft when installed, else iptables, else nothing.
firewall_tool() {
    if command -v nft >/dev/null 2>&1; then
        echo nft
    elif command -v iptables >/dev/null 2>&1; then
        echo iptables
    fi
}

# setup_firewall: load the rule now (with DRY_RUN=1, print the commands instead).
setup_firewall() {
    local out
    if [ "$DRY_RUN" = 1 ]; then
        say "Would run (as root) $BIN --home $HOME_DIR firewall:"
        as_root firewall --dry-run
        return
    fi
    out=$(as_root firewall) ||
        die "could not load the firewall rule for the dyno ports (the reason is above); nothing else was changed by this step."
    if [ -n "$out" ]; then
        if have_systemd; then
            say "$out; slipway.service reloads it at every start"
        else
            say "$out; after a reboot, run 'slipway $(home_flag)firewall' as root (or this script again)"
        fi
    fi
}

# remove_firewall [TOOL]: undo setup_firewall (TOOL defaults to firewall_tool's answer).
remove_firewall() {
    local tool=${1-$(firewall_tool)} ipt
    case $tool in
        nft)
            if [ "$DRY_RUN" = 1 ] || nft list table $FW_NFT_TABLE >/dev/null 2>&1; then
                would "remove the firewall rule for the dyno ports (nft delete table $FW_NFT_TABLE)" || {
                    nft delete table $FW_NFT_TABLE &&
                        say "Removed the firewall rule for the dyno ports (nft table $FW_NFT_TABLE)"
                }
            fi
            ;;
        iptables)
            would "remove the firewall rule for the dyno ports (iptables and ip6tables: -D INPUT -j $FW_CHAIN, -F $FW_CHAIN, -X $FW_CHAIN)" || {
                for ipt in iptables ip6tables; do
                    command -v "$ipt" >/dev/null 2>&1 || continue
                    "$ipt" -L "$FW_CHAIN" -n >/dev/null 2>&1 || continue
                    while "$ipt" -D INPUT -j "$FW_CHAIN" 2>/dev/null; do :; done
                    "$ipt" -F "$FW_CHAIN" && "$ipt" -X "$FW_CHAIN" &&
                        say "Removed the firewall rule for the dyno ports ($ipt chain $FW_CHAIN)"
                done
            }
            ;;
        *)
            if [ "$DRY_RUN" = 1 ]; then
                say "Firewall rule for the dyno ports: no nft or iptables here, nothing to remove"
            fi
            ;;
    esac
}

# ---------------------------------------------------------------------------
# Uninstall
# ---------------------------------------------------------------------------
# uninstall_files: the files install.sh creates outside the home, one "PATH<TAB>what"
# per line. Everything else it touches is shared with the rest of the system and is
# left alone: the system packages, sshd (enabled, started) and its host keys, /run/sshd.
# The user and the home are --purge's (see uninstall).
uninstall_files() {
    local f
    printf '%s\t%s\n' "$BIN" "the slipway binary" "$SHIM_BIN" "the dyno shim binary" \
        "$UNIT" "the systemd unit" "$UNIT_LINK" "the unit's enablement link"
    # Temporary files of an install that was killed half-way.
    for f in "$(dirname "$BIN")"/.slipway.new.* "$UNIT".new.*; do
        if [ -e "$f" ]; then printf '%s\t%s\n' "$f" "a leftover temporary file"; fi
    done
}

# is_slipway_home: whether --purge may delete HOME_DIR: it belongs to the slipway user,
# or holds slipway's database or settings. Anything else given as --home is not ours.
is_slipway_home() {
    [ -d "$HOME_DIR" ] && [ ! -L "$HOME_DIR" ] || return 1
    if getent passwd "$SLIPWAY_USER" >/dev/null &&
        [ "$(stat -c %u "$HOME_DIR")" = "$(id -u "$SLIPWAY_USER")" ]; then
        return 0
    fi
    [ -e "$HOME_DIR/slipway.db" ] || [ -e "$HOME_DIR/slipway.toml" ]
}

# would WORDS: in a dry run print "Would WORDS" and succeed; otherwise fail, so the
# caller goes on and does it: `would "remove X" || rm X`.
would() {
    if [ "$DRY_RUN" = 1 ]; then say "Would $*"; return 0; fi
    return 1
}

# stop_slipway: stop every dyno, then the daemon; STOPPED=1 when there was something to stop.
STOPPED=0
stop_slipway() {
    local unit_there=0
    if have_systemd && [ -f "$UNIT" ]; then unit_there=1; fi
    if [ ! -x "$BIN" ] || ! getent passwd "$SLIPWAY_USER" >/dev/null || [ ! -d "$HOME_DIR" ]; then
        # No binary, user or home: no dyno or daemon of this install can be running.
        if [ "$unit_there" = 1 ]; then
            would "stop and disable slipway.service" || {
                systemctl disable --now slipway >/dev/null 2>&1 || true
                say "Stopped and disabled slipway.service"
            }
            STOPPED=1
        elif [ "$DRY_RUN" = 1 ]; then
            say "No dynos or daemon to stop ($BIN, user $SLIPWAY_USER or $HOME_DIR is missing)"
        fi
        return 0
    fi
    STOPPED=1

    # ps:stop goes through the daemon: start it when it is down (it re-adopts the
    # dynos that outlived it), so that no dyno is left running on a deleted binary.
    if would "stop every dyno: runuser -u $SLIPWAY_USER -- $BIN --home $HOME_DIR ps:stop --all (starting the daemon first if it is down)"; then
        :
    else
        if ! daemon_up; then
            say "Starting the daemon, to stop the dynos through it"
            if [ "$unit_there" = 1 ]; then
                systemctl start slipway || true
            else
                as_root daemon </dev/null >/dev/null 2>&1 || true
            fi
            wait_for up || true
        fi
        if as_slipway ps:stop --all >/dev/null; then
            say "Stopped every dyno of every app (after a reinstall they stay down until 'slipway ps:restart APP')"
        elif [ "$FORCE" = 1 ]; then
            warn "could not stop the dynos (the reason is above); going on because of --force: they keep running."
        else
            die "could not stop the dynos (the reason is above); nothing was removed. Fix that and run --uninstall again, or add --force to leave them running."
        fi
    fi

    if [ "$unit_there" = 1 ]; then
        would "stop and disable slipway.service (systemctl disable --now slipway)" || {
            systemctl disable --now slipway
            say "Stopped and disabled slipway.service"
        }
    fi
    # A daemon started by hand (no systemd, or before the unit existed), and the router: it
    # outlives the daemon (systemd's KillMode=process leaves it too) and stops with
    # 'daemon --stop' once no dyno is left.
    would "stop the daemon and the router: $BIN --home $HOME_DIR daemon --stop (as root)" || {
        if as_root daemon --stop >/dev/null 2>&1; then say "Stopped the slipway daemon and router"; fi
        wait_for down || warn "the slipway daemon still answers 'slipway status'; stop it by hand (kill its pid)."
    }
}

uninstall() {
    local changed=0 path what reload=0
    check_existing_user
    if [ "$DRY_RUN" = 1 ]; then
        say "Uninstalling slipway (dry run: nothing is stopped or removed)"
    else
        say "Uninstalling slipway"
    fi
    stop_slipway
    changed=$STOPPED

    while IFS=$'\t' read -r path what; do
        if [ -e "$path" ] || [ -L "$path" ]; then
            changed=1
            would "remove $path ($what)" || {
                rm -f -- "$path"
                say "Removed $path ($what)"
                if [[ $path == /etc/systemd/* ]]; then reload=1; fi
            }
        elif [ "$DRY_RUN" = 1 ]; then
            say "$path ($what): not there"
        fi
    done < <(uninstall_files)
    remove_firewall
    if [ "$reload" = 1 ] && have_systemd; then
        systemctl daemon-reload
        systemctl reset-failed slipway >/dev/null 2>&1 || true
    fi

    if [ "$PURGE" = 1 ]; then
        # Decide about the home before the user is gone (ownership is checked by uid).
        local purge_home=0
        if is_slipway_home; then purge_home=1; fi
        if getent passwd "$SLIPWAY_USER" >/dev/null; then
            changed=1
            would "delete the user $SLIPWAY_USER (userdel $SLIPWAY_USER)" || {
                userdel "$SLIPWAY_USER" ||
                    die "userdel $SLIPWAY_USER failed (the reason is above; processes still running as $SLIPWAY_USER? see: ps -u $SLIPWAY_USER)."
                say "Deleted the user $SLIPWAY_USER"
                if getent group "$SLIPWAY_USER" >/dev/null; then
                    say "Kept the group $SLIPWAY_USER (other users share it, or it was there before); groupdel $SLIPWAY_USER removes it"
                fi
            }
        elif [ "$DRY_RUN" = 1 ]; then
            say "user $SLIPWAY_USER: not there"
        fi
        if [ "$purge_home" = 1 ]; then
            changed=1
            would "remove $HOME_DIR (SLIPWAY_HOME: apps, repos, releases, logs, keys, slipway.toml)" || {
                rm -rf --one-file-system -- "$HOME_DIR"
                say "Removed $HOME_DIR (SLIPWAY_HOME)"
            }
        elif [ -e "$HOME_DIR" ]; then
            warn "kept $HOME_DIR: it is neither owned by $SLIPWAY_USER nor holds slipway.db or slipway.toml, so it is not a slipway home to purge."
        elif [ "$DRY_RUN" = 1 ]; then
            say "$HOME_DIR (SLIPWAY_HOME): not there"
        fi
    else
        local kept=Kept
        if [ "$DRY_RUN" = 1 ]; then kept="Would keep"; fi
        if [ -d "$HOME_DIR" ]; then
            say "$kept $HOME_DIR (apps, repos, releases, logs, keys, slipway.toml; --purge removes it)"
        fi
        if getent passwd "$SLIPWAY_USER" >/dev/null; then
            say "$kept the user $SLIPWAY_USER (--purge removes it)"
        fi
    fi

    if [ "$DRY_RUN" = 1 ]; then
        say "Dry run: nothing was changed"
    elif [ "$changed" = 0 ]; then
        say "Nothing left to uninstall"
    else
        say "slipway is uninstalled; system packages and sshd were left as they are"
    fi
}

main() {
    parse_args "$@"
    if [ "$UNINSTALL" = 1 ]; then
        [ "$DRY_RUN" = 1 ] || [ "$(id -u)" -eq 0 ] ||
            die "must be run as root (as root: $0${*:+ $*}; or try --dry-run)."
        uninstall
        return
    fi
    [ "$(id -u)" -eq 0 ] || die "must be run as root: log in as root (or su -) and run $0${*:+ $*} again."
    check_existing_user

    install_packages
    build_and_install_binary
    setup_user
    configure_settings
    install_build_tools
    setup_firewall
    setup_sshd
    if have_systemd; then start_daemon_systemd; else start_daemon_plain; fi
    next_steps
}

# Sourcing the file (for tests) defines the functions without running anything.
# `return` succeeds only in a sourced file; comparing BASH_SOURCE with $0 is not
# enough: `bash -c 'source "$0"' install.sh` would run main.
if ! (return 0 2>/dev/null); then main "$@"; fi
