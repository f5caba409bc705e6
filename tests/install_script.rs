//! install.sh without installing anything: its syntax, --help, the uninstall plan printed by
//! `--uninstall --dry-run` (which must change nothing), and the version line of an upgrade.
//! A real install or uninstall is never run here: it would change the machine.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = "/usr/local/bin/slipway";
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
    for path in [BIN, UNIT, "/etc/systemd/system/multi-user.target.wants/slipway.service"] {
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

/// The firewall rule that keeps the dyno ports (the `ports` setting) for the router: printed,
/// not loaded (DRY_RUN=1, `as_slipway` replaced by a stub that prints the settings).
#[test]
fn the_firewall_rule_drops_outside_traffic_to_the_dyno_ports() {
    let stub = "DRY_RUN=1; as_slipway() { echo 'ports 6000-6099 slipway.toml'; }";
    let nft = function(&format!("{stub}; setup_firewall nft"));
    assert!(nft.contains("table inet slipway {"), "{nft}");
    assert!(nft.contains("type filter hook input priority -10; policy accept;"), "{nft}");
    assert!(nft.contains("iifname != \"lo\" tcp dport 6000-6099 drop"), "{nft}");
    let ipt = function(&format!("{stub}; setup_firewall iptables"));
    for tool in ["iptables", "ip6tables"] {
        assert!(
            ipt.contains(&format!("{tool} -A SLIPWAY-DYNOS ! -i lo -p tcp --dport 6000:6099 -j DROP")),
            "{ipt}"
        );
        assert!(ipt.contains(&format!("{tool} -I INPUT -j SLIPWAY-DYNOS")), "{ipt}");
    }
    // The default range when the setting is not set.
    let default = function("DRY_RUN=1; as_slipway() { :; }; setup_firewall nft");
    assert!(default.contains("tcp dport 5000-5999 drop"), "{default}");

    // --uninstall removes it.
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

    assert_eq!(function("port_range 5000-5999"), "5000 5999");
    for bad in ["0-10", "10-5", "5000-70000", "5000", "1-2;reboot", "a-b"] {
        assert_eq!(function(&format!("port_range '{bad}' || echo refused")), "refused", "{bad}");
    }
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
