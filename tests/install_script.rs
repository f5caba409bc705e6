//! install.sh without installing anything: its syntax, --help, the uninstall plan printed by
//! `--uninstall --dry-run` (which must change nothing), the version line of an upgrade, the
//! systemd unit it renders and who it starts the daemon as. A real install or uninstall is never
//! run here: it would change the machine. The firewall rule (`slipway firewall`) is loaded for
//! real, but only in network namespaces of the tests' own.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = "/usr/local/bin/slipway";
const SHIM_BIN: &str = "/usr/local/bin/slipway-shim";
const UNIT: &str = "/etc/systemd/system/slipway.service";
/// A user that does not exist, so nothing can be stopped or deleted even by mistake.
const NO_USER: &str = "slipwaytestnosuchuser";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("install.sh")
}

fn bash(args: &[&str]) -> Output {
    Command::new("bash").arg(script()).args(args).output().expect("run bash")
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string())
}

/// Runs one install.sh function with the script sourced (sourcing runs nothing; were main to
/// run anyway, the `--help` given to it would only print the usage).
fn function(call: &str) -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("source \"$1\" --help && {call}"))
        .arg("bash")
        .arg(script())
        .env("LC_ALL", "C")
        .output()
        .expect("run bash");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{call}: {stderr}");
    stdout.trim_end().to_string()
}

/// A fake slipway home that --purge would recognise (it holds a slipway.toml).
fn fake_home() -> tempfile::TempDir {
    let home = tempfile::tempdir().expect("tempdir");
    std::fs::write(home.path().join("slipway.toml"), "domain = \"example.com\"\n").expect("write");
    std::fs::create_dir(home.path().join("repos")).expect("mkdir");
    home
}

fn exists(path: &str) -> bool {
    Path::new(path).symlink_metadata().is_ok()
}

#[test]
fn the_script_parses() {
    let out = Command::new("bash").arg("-n").arg(script()).output().expect("run bash -n");
    assert!(out.status.success(), "bash -n: {}", text(&out).1);
}

#[test]
fn help_lists_the_uninstall_options() {
    let out = bash(&["--help"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "--help failed: {stderr}");
    for word in ["--uninstall", "--purge", "--dry-run", "--home", "--user"] {
        assert!(stdout.contains(word), "--help lacks {word}: {stdout}");
    }
    assert!(!stdout.contains("sudo"), "--help assumes sudo: {stdout}");
}

#[test]
fn uninstall_only_options_need_uninstall() {
    for args in [&["--purge"][..], &["--dry-run"], &["--uninstall", "--domain", "x.com"]] {
        let out = bash(args);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(text(&out).1.contains("--uninstall"), "{args:?}: {}", text(&out).1);
    }
}

#[test]
fn dry_run_purge_lists_everything_and_removes_nothing() {
    let home = fake_home();
    let home_str = home.path().to_str().expect("utf-8 path");
    let before = (exists(BIN), exists(UNIT));
    let out = bash(&["--uninstall", "--dry-run", "--purge", "--home", home_str, "--user", NO_USER]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "dry run failed: {stderr}\n{stdout}");
    for path in [BIN, SHIM_BIN, UNIT, "/etc/systemd/system/multi-user.target.wants/slipway.service"] {
        assert!(stdout.contains(path), "the plan lacks {path}:\n{stdout}");
    }
    assert!(stdout.contains(&format!("Would remove {home_str} ")), "the plan lacks the home:\n{stdout}");
    assert!(stdout.contains(&format!("user {NO_USER}: not there")), "the plan lacks the user:\n{stdout}");
    assert!(stdout.contains("nothing was changed"), "{stdout}");

    assert!(home.path().join("slipway.toml").is_file(), "the dry run removed the home's files");
    assert!(home.path().join("repos").is_dir(), "the dry run removed the home's files");
    assert_eq!((exists(BIN), exists(UNIT)), before, "the dry run changed {BIN} or {UNIT}");
}

#[test]
fn dry_run_without_purge_keeps_the_home() {
    let home = fake_home();
    let home_str = home.path().to_str().expect("utf-8 path");
    let out = bash(&["--uninstall", "--dry-run", "--home", home_str, "--user", NO_USER]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "dry run failed: {stderr}\n{stdout}");
    assert!(stdout.contains(BIN) && stdout.contains(UNIT), "{stdout}");
    assert!(stdout.contains(&format!("Would keep {home_str} ")), "{stdout}");
    assert!(!stdout.contains(&format!("Would remove {home_str}")), "{stdout}");
    assert!(home.path().join("slipway.toml").is_file());
}

#[test]
fn purge_refuses_a_home_that_is_not_slipways() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("precious"), "x").expect("write");
    let dir_str = dir.path().to_str().expect("utf-8 path");
    let out = bash(&["--uninstall", "--dry-run", "--purge", "--home", dir_str, "--user", NO_USER]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(!stdout.contains(&format!("Would remove {dir_str}")), "{stdout}");
    assert!(stderr.contains("not a slipway home"), "{stderr}");
    assert!(dir.path().join("precious").is_file());
}

#[test]
fn upgrades_report_the_version_change() {
    assert_eq!(function("version_change 0.1.0 0.2.0"), "slipway 0.1.0 → 0.2.0");
    assert_eq!(function("version_change 0.1.0 0.1.0"), "reinstalled 0.1.0");
    assert_eq!(function("version_change '' 0.1.0"), "installed slipway 0.1.0");
    let built = env!("CARGO_BIN_EXE_slipway");
    assert_eq!(function(&format!("binary_version {built}")), env!("CARGO_PKG_VERSION"));
    assert_eq!(function("binary_version /nonexistent/slipway"), "");
}

/// `slipway firewall --dry-run` with a home whose slipway.toml holds `toml`: (exit ok, stdout,
/// stderr).
fn firewall_dry_run(toml: &str, tool: &str) -> (bool, String, String) {
    let home = tempfile::tempdir().expect("tempdir");
    std::fs::write(home.path().join("slipway.toml"), toml).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["--home", home.path().to_str().expect("utf-8"), "firewall", "--dry-run", "--tool", tool])
        .env_remove("SLIPWAY_PORTS")
        .env_remove("SLIPWAY_ROUTER_ADDR")
        .env_remove("SLIPWAY_HTTPS_ADDR")
        .output()
        .expect("run slipway firewall");
    let (stdout, stderr) = text(&out);
    (out.status.success(), stdout, stderr)
}

/// The firewall rule that keeps the dyno ports (the `ports` setting) for the router, as
/// `slipway firewall --dry-run` prints it (install.sh and the systemd unit run `slipway
/// firewall`); install.sh's --uninstall removes the same table and chain.
#[test]
fn the_firewall_rule_drops_outside_traffic_to_the_dyno_ports() {
    let (ok, nft, stderr) = firewall_dry_run("ports = \"6000-6099\"\n", "nft");
    assert!(ok, "{stderr}");
    assert!(nft.contains("nft -f - <<EOF\nadd table inet slipway\ndelete table inet slipway\n"), "{nft}");
    assert!(nft.contains("table inet slipway {"), "{nft}");
    assert!(nft.contains("type filter hook input priority -10; policy accept;"), "{nft}");
    assert!(nft.contains("iifname != \"lo\" tcp dport 6000-6099 drop"), "{nft}");
    let (ok, ipt, stderr) = firewall_dry_run("ports = \"6000-6099\"\n", "iptables");
    assert!(ok, "{stderr}");
    for tool in ["iptables", "ip6tables"] {
        assert!(
            ipt.contains(&format!("{tool} -A SLIPWAY-DYNOS ! -i lo -p tcp --dport 6000:6099 -j DROP")),
            "{ipt}"
        );
        assert!(
            ipt.contains(&format!("{tool} -C INPUT -j SLIPWAY-DYNOS || {tool} -I INPUT -j SLIPWAY-DYNOS")),
            "{ipt}"
        );
    }
    // The default range when the setting is not set.
    let (ok, default, stderr) = firewall_dry_run("", "nft");
    assert!(ok && default.contains("tcp dport 5000-5999 drop"), "{default}{stderr}");
    // Neither tool: a warning, nothing loaded, not a failure (the daemon must still start).
    let (ok, none, stderr) = firewall_dry_run("", "none");
    assert!(ok && none.is_empty() && stderr.contains("stay reachable from other machines"), "{none}{stderr}");
    // A range over the router's port is refused: the router would be cut off.
    let (ok, over, stderr) =
        firewall_dry_run("ports = \"8000-8999\"\nrouter_addr = \"0.0.0.0:8080\"\n", "nft");
    assert!(!ok && over.is_empty(), "{over}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("include port 8080 of the router") && stderr.contains("no firewall rule was loaded"),
        "{stderr}"
    );

    // install.sh removes what the binary adds, under the same names.
    assert_eq!(function("echo \"$FW_NFT_TABLE/$FW_CHAIN\""), "inet slipway/SLIPWAY-DYNOS");
    let removal = function("DRY_RUN=1; remove_firewall nft");
    assert_eq!(
        removal,
        "-----> Would remove the firewall rule for the dyno ports (nft delete table inet slipway)"
    );
    let removal = function("DRY_RUN=1; remove_firewall iptables");
    assert!(
        removal.contains("-D INPUT -j SLIPWAY-DYNOS") && removal.contains("-X SLIPWAY-DYNOS"),
        "{removal}"
    );
}

/// install.sh loads the rule with `slipway firewall` as root and says how it comes back.
#[test]
fn install_loads_the_firewall_rule_through_the_binary() {
    let stub = "as_root() { echo \"as root: $*\"; }";
    let dry = function(&format!("{stub}; DRY_RUN=1; setup_firewall"));
    assert!(dry.contains("as root: firewall --dry-run"), "{dry}");
    let loaded = |systemd: bool| {
        function(&format!(
            "as_root() {{ echo 'Firewall: TCP to the dyno ports 5000-5999 is dropped'; }}; \
             have_systemd() {{ {}; }}; setup_firewall",
            if systemd { "true" } else { "false" }
        ))
    };
    assert!(loaded(true).contains("slipway.service reloads it at every start"), "{}", loaded(true));
    assert!(loaded(false).contains("after a reboot, run 'slipway firewall' as root"), "{}", loaded(false));
    let failed = Command::new("bash")
        .arg("-c")
        .arg("source \"$1\" --help && as_root() { return 1; } && setup_firewall")
        .arg("bash")
        .arg(script())
        .output()
        .expect("run bash");
    assert!(!failed.status.success(), "a rule that cannot be loaded stops the install");
    assert!(text(&failed).1.contains("could not load the firewall rule"), "{}", text(&failed).1);
}

/// The rule for real, in a network namespace of its own (the machine's firewall is left
/// alone): loaded twice with nft, then twice with iptables, it is there once each time.
#[test]
fn the_firewall_rule_loads_idempotently_in_a_network_namespace() {
    for tool in ["unshare", "nft", "iptables", "ip6tables"] {
        let found = Command::new("sh")
            .arg("-c")
            .arg("command -v \"$1\" || test -x \"/usr/sbin/$1\"")
            .arg("sh")
            .arg(tool)
            .output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "{tool} is missing: install util-linux, nftables and iptables (.ci/run does)"
        );
    }
    let home = tempfile::tempdir().expect("tempdir");
    std::fs::write(home.path().join("slipway.toml"), "ports = \"6000-6099\"\n").expect("write");
    // Fixed words only; the binary and the home come as positional parameters.
    let script = r#"set -e
export PATH=/usr/sbin:/sbin:$PATH
"$1" --home "$2" firewall --tool nft
"$1" --home "$2" firewall --tool nft
echo '== nft'
nft list ruleset
"$1" --home "$2" firewall --tool iptables
"$1" --home "$2" firewall --tool iptables
echo '== iptables'
iptables -S
echo '== ip6tables'
ip6tables -S
"#;
    let out = Command::new("unshare")
        .args(["--net", "bash", "-c", script, "bash", env!("CARGO_BIN_EXE_slipway")])
        .arg(home.path())
        .output()
        .expect("run unshare");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}\n{stdout}");
    assert_eq!(
        stdout
            .matches("Firewall: TCP to the dyno ports 6000-6099 is dropped unless it comes over loopback")
            .count(),
        4,
        "{stdout}"
    );
    let section = |name: &str| -> String {
        let start = stdout.find(&format!("== {name}\n")).expect("section");
        let rest = &stdout[start + name.len() + 4..];
        rest[..rest.find("\n== ").unwrap_or(rest.len())].to_string()
    };
    let nft = section("nft");
    assert_eq!(nft.matches("table inet slipway").count(), 1, "{nft}");
    assert_eq!(nft.matches("iifname != \"lo\" tcp dport 6000-6099 drop").count(), 1, "{nft}");
    for name in ["iptables", "ip6tables"] {
        let rules = section(name);
        assert_eq!(rules.matches("-A INPUT -j SLIPWAY-DYNOS").count(), 1, "{name}:\n{rules}");
        assert_eq!(
            rules.matches("-A SLIPWAY-DYNOS ! -i lo -p tcp -m tcp --dport 6000:6099 -j DROP").count(),
            1,
            "{name}:\n{rules}"
        );
    }
}

/// What the rule does, for real, with each tool: in a network namespace of its own (the
/// machine's firewall is left alone) with a veth link to a second one, a server on a dyno port
/// (6000) and one outside the range (7000): from the other namespace, 7000 answers and 6000 is
/// dropped; over loopback 6000 answers (the router's way in).
#[test]
fn the_firewall_rule_drops_outside_traffic_and_keeps_loopback() {
    let home = tempfile::tempdir().expect("tempdir");
    std::fs::write(home.path().join("slipway.toml"), "ports = \"6000-6099\"\n").expect("write");
    // Fixed words only; the binary, the home and the tool come as positional parameters. The
    // helpers (the peer namespace's sleep, the servers) are killed on exit.
    let script = r#"set -euo pipefail
export PATH=/usr/sbin:/sbin:$PATH
"$1" --home "$2" firewall --tool "$3"
ip link set lo up
ip link add veth0 type veth peer name veth1
unshare --net sleep 1000 &
peer=$!
trap 'kill $peer' EXIT
mine=$(readlink /proc/self/ns/net)
for _ in $(seq 1 500); do
    [ "$(readlink /proc/$peer/ns/net 2>/dev/null)" != "$mine" ] && break
    sleep 0.01
done
ip link set veth1 netns "$peer"
ip addr add 10.231.0.1/24 dev veth0
ip link set veth0 up
nsenter -t "$peer" -n ip addr add 10.231.0.2/24 dev veth1
nsenter -t "$peer" -n ip link set veth1 up
python3 -c '
import socket, threading, time
def serve(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(16)
    while True:
        c, _ = s.accept()
        c.close()
for p in (6000, 7000):
    threading.Thread(target=serve, args=(p,), daemon=True).start()
time.sleep(1000)
' &
server=$!
trap 'kill $peer $server' EXIT
# "open" once a connection is accepted (refusals are retried while the servers start, for 5 s);
# "dropped" when the SYN goes unanswered for 1 s.
probe='
import socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
deadline = time.time() + 5
while True:
    try:
        socket.create_connection((host, port), timeout=1).close()
        print("open", port)
        break
    except ConnectionRefusedError:
        if time.time() > deadline:
            print("refused", port)
            break
        time.sleep(0.05)
    except OSError:
        print("dropped", port)
        break
'
echo "loopback $(python3 -c "$probe" 127.0.0.1 6000)"
echo "outside $(nsenter -t "$peer" -n python3 -c "$probe" 10.231.0.1 7000)"
echo "outside $(nsenter -t "$peer" -n python3 -c "$probe" 10.231.0.1 6000)"
"#;
    for tool in ["nft", "iptables"] {
        let out = Command::new("unshare")
            .args(["--net", "bash", "-c", script, "bash", env!("CARGO_BIN_EXE_slipway")])
            .arg(home.path())
            .arg(tool)
            .output()
            .expect("run unshare");
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{tool}: {stderr}\n{stdout}");
        let lines: Vec<&str> = stdout.lines().skip(1).collect();
        assert_eq!(
            lines,
            ["loopback open 6000", "outside open 7000", "outside dropped 6000"],
            "{tool}: {stdout}\n{stderr}"
        );
    }
}

/// The unit runs the daemon as root (no User=), reloads the firewall rule before every start,
/// keeps dynos across restarts and gets its cgroup subtree delegated. Rendering it over a unit
/// of an older install (which ran the daemon as the slipway user) replaces that unit.
#[test]
fn the_unit_runs_the_daemon_as_root_and_reloads_the_firewall() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("slipway.service");
    std::fs::write(&dest, "[Service]\nUser=slipway\nGroup=slipway\nExecStart=/old\n").expect("write");
    let unit = function(&format!("render_unit '{}' && cat '{}'", dest.display(), dest.display()));
    let lines: Vec<&str> = unit.lines().filter(|l| !l.starts_with('#')).collect();
    for want in [
        "ExecStartPre=-/usr/local/bin/slipway --home /var/lib/slipway firewall",
        "ExecStart=/usr/local/bin/slipway --home /var/lib/slipway daemon --foreground",
        "KillMode=process",
        "Delegate=yes",
        "DelegateSubgroup=daemon",
        "Restart=always",
    ] {
        assert!(lines.contains(&want), "the unit lacks {want}:\n{unit}");
    }
    for unwanted in ["User=", "Group=", "NoNewPrivileges", "PrivateTmp", "ProtectSystem", "/old"] {
        assert!(!lines.iter().any(|l| l.starts_with(unwanted)), "the unit has {unwanted}:\n{unit}");
    }
    assert!(!unit.contains('@'), "a placeholder is left:\n{unit}");
}

/// systemd's own check of the unit (`systemd-analyze verify`, which needs no running systemd):
/// every line is understood, except `DelegateSubgroup=` on a systemd older than 254, which
/// ignores it (the daemon then moves itself into the leaf).
#[test]
fn systemd_accepts_the_unit() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    };
    let version: u32 = String::from_utf8_lossy(&version.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .expect("systemd's version");
    let dir = tempfile::tempdir().expect("tempdir");
    let template =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/slipway.service"))
            .expect("read the template");
    let unit = template
        .replace("@BIN@", env!("CARGO_BIN_EXE_slipway"))
        .replace("@HOME@", dir.path().to_str().expect("utf-8"));
    let path = dir.path().join("slipway.service");
    std::fs::write(&path, unit).expect("write");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("run systemd-analyze");
    let (stdout, stderr) = text(&out);
    let about_the_unit: Vec<&str> =
        stdout.lines().chain(stderr.lines()).filter(|l| l.contains("slipway.service")).collect();
    let expected: Vec<&str> = if version < 254 {
        about_the_unit.iter().copied().filter(|l| l.contains("Unknown key 'DelegateSubgroup'")).collect()
    } else {
        Vec::new()
    };
    assert_eq!(about_the_unit, expected, "systemd {version}:\n{stdout}{stderr}");
}

/// Installing (with or without systemd) starts and stops the daemon as root, never as the
/// slipway user; the status check still runs as that user (what sshd's git pushes see).
#[test]
fn install_starts_the_daemon_as_root() {
    // The functions send the daemon's output elsewhere: the stubs log their calls to a file.
    let log = tempfile::NamedTempFile::new().expect("tempfile");
    let stubs = format!(
        "LOG='{}'; as_root() {{ echo \"as root: $*\" >>\"$LOG\"; }}; \
         as_slipway() {{ echo \"as slipway: $*\" >>\"$LOG\"; }}; \
         systemctl() {{ echo \"systemctl $*\" >>\"$LOG\"; [ \"$1\" != is-active ]; }}; \
         render_unit() {{ :; }}; wait_for() {{ :; }}; report_daemon() {{ :; }}",
        log.path().display()
    );
    let calls = |function_name: &str| -> Vec<String> {
        std::fs::write(log.path(), "").expect("truncate");
        function(&format!("{stubs}; {function_name} >/dev/null"));
        std::fs::read_to_string(log.path()).expect("read").lines().map(str::to_string).collect()
    };
    assert_eq!(calls("start_daemon_plain"), ["as root: daemon --stop", "as root: daemon"]);
    assert_eq!(
        calls("start_daemon_systemd"),
        [
            "systemctl is-active --quiet slipway",
            "as root: daemon --stop",
            "systemctl daemon-reload",
            "systemctl enable slipway",
            "systemctl restart slipway",
        ]
    );
}

/// install.sh makes uv for Python builds as the slipway user; a failure (no package index) is a
/// warning, and the install goes on (builds then use pip).
#[test]
fn install_makes_the_build_tools_as_the_slipway_user_and_goes_on_without_them() {
    let made = function("as_slipway() { echo \"as slipway: $*\"; }; install_build_tools");
    assert!(made.contains("as slipway: tools:install"), "{made}");
    let failed = Command::new("bash")
        .arg("-c")
        .arg("source \"$1\" --help && as_slipway() { return 1; } && install_build_tools && echo went-on")
        .arg("bash")
        .arg(script())
        .output()
        .expect("run bash");
    let (stdout, stderr) = text(&failed);
    assert!(failed.status.success() && stdout.contains("went-on"), "{stdout}{stderr}");
    assert!(stderr.contains("uv is not installed") && stderr.contains("builds install with pip"), "{stderr}");
}

#[test]
fn the_uninstall_dry_run_mentions_the_firewall_rule() {
    let home = fake_home();
    let home_str = home.path().to_str().expect("utf-8 path");
    let out = bash(&["--uninstall", "--dry-run", "--home", home_str, "--user", NO_USER]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "dry run failed: {stderr}\n{stdout}");
    assert!(stdout.to_lowercase().contains("firewall rule for the dyno ports"), "{stdout}");
}

/// `https_addr` is written when slipway.toml has none: 443 with systemd (the unit grants the
/// capability to bind it), 8443 without; one already in the file is kept.
#[test]
fn install_writes_https_addr_only_when_the_file_has_none() {
    // `as_slipway settings` lists (KEY VALUE ORIGIN); `settings:set` does nothing; what would be
    // written is in the `Writing …` line.
    let run = |file_keys: &str, systemd: bool| {
        function(&format!(
            "migrate_unit_settings() {{ :; }}; have_systemd() {{ {}; }}; \
             as_slipway() {{ if [ \"$1\" = settings ]; then printf '{file_keys}'; fi; }}; \
             configure_settings",
            if systemd { "true" } else { "false" }
        ))
    };
    let fresh = run("", true);
    assert!(fresh.contains("https_addr=0.0.0.0:443"), "{fresh}");
    let fresh = run("", false);
    assert!(fresh.contains("https_addr=0.0.0.0:8443"), "{fresh}");
    let kept = run("router_addr 0.0.0.0:80 slipway.toml\\nhttps_addr off slipway.toml\\n", true);
    assert!(!kept.contains("https_addr="), "{kept}");
}
