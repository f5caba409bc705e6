//! `slipway firewall [--dry-run] [--tool nft|iptables|none]` (hidden, root only): keeps the dyno
//! ports (the `ports` setting) for the router. Dynos listen on every address; one rule drops TCP
//! to that range unless it arrives over loopback: an nft table `inet slipway` when `nft` is
//! installed, else a chain `SLIPWAY-DYNOS` jumped to from `INPUT` (iptables, and ip6tables when
//! present). `install.sh` runs it, and the systemd unit runs it before every start of the daemon
//! (`ExecStartPre=`), so the rule comes back after a reboot and follows a changed `ports`.
//!
//! Idempotent: nft replaces the table in one transaction (add, delete, define), iptables flushes
//! its own chain and adds the jump only when missing. It never locks out SSH or the router: a
//! range holding sshd's port, `router_addr`'s or `https_addr`'s is refused (one line, exit 1,
//! nothing loaded). The plan is a pure function of the tool and the range ([`plan`]); only
//! [`apply`] runs anything, never through a shell.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use crate::home::Home;

/// The nft table and the iptables chain (install.sh's `--uninstall` removes them by these names).
pub const NFT_TABLE: &str = "inet slipway";
pub const CHAIN: &str = "SLIPWAY-DYNOS";

/// Which firewall front end loads the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Nft,
    /// iptables, plus ip6tables when `v6`.
    Iptables {
        v6: bool,
    },
    None,
}

/// Picks the tool from what is installed: nft first (Debian's default since 10).
pub fn pick_tool(nft: bool, iptables: bool, ip6tables: bool) -> Tool {
    match (nft, iptables) {
        (true, _) => Tool::Nft,
        (false, true) => Tool::Iptables { v6: ip6tables },
        (false, false) => Tool::None,
    }
}

/// One command of a plan: `argv` with `stdin`; skipped when `unless` succeeds; a failure is
/// ignored when `may_fail` (creating a chain that exists already).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub argv: Vec<String>,
    pub stdin: Option<String>,
    pub unless: Option<Vec<String>>,
    pub may_fail: bool,
}

impl Step {
    fn new(argv: &[&str]) -> Step {
        Step { argv: words(argv), stdin: None, unless: None, may_fail: false }
    }

    /// The step as a shell line, for `--dry-run` (never run through a shell).
    pub fn display(&self) -> String {
        let mut line = self.argv.join(" ");
        if let Some(unless) = &self.unless {
            line = format!("{} || {line}", unless.join(" "));
        }
        if self.may_fail {
            line.push_str(" (may fail: it exists)");
        }
        match &self.stdin {
            Some(text) => format!("{line} <<EOF\n{text}EOF"),
            None => line,
        }
    }
}

fn words(argv: &[&str]) -> Vec<String> {
    argv.iter().map(|w| w.to_string()).collect()
}

/// The nft ruleset: `add` then `delete` makes replacing the table one transaction whether or
/// not it exists, so the dyno ports are never open in between.
pub fn nft_ruleset(ports: &RangeInclusive<u16>) -> String {
    format!(
        "add table {NFT_TABLE}\n\
         delete table {NFT_TABLE}\n\
         table {NFT_TABLE} {{\n\
         \x20   chain dyno_ports {{\n\
         \x20       type filter hook input priority -10; policy accept;\n\
         \x20       iifname != \"lo\" tcp dport {}-{} drop\n\
         \x20   }}\n\
         }}\n",
        ports.start(),
        ports.end()
    )
}

/// The commands that (re)load the rule with `tool`.
pub fn plan(tool: Tool, ports: &RangeInclusive<u16>) -> Vec<Step> {
    match tool {
        Tool::Nft => vec![Step { stdin: Some(nft_ruleset(ports)), ..Step::new(&["nft", "-f", "-"]) }],
        Tool::Iptables { v6 } => {
            let range = format!("{}:{}", ports.start(), ports.end());
            let tools: &[&str] = if v6 { &["iptables", "ip6tables"] } else { &["iptables"] };
            let mut steps = Vec::new();
            for ipt in tools {
                steps.push(Step { may_fail: true, ..Step::new(&[ipt, "-N", CHAIN]) });
                steps.push(Step::new(&[ipt, "-F", CHAIN]));
                steps.push(Step::new(&[
                    ipt, "-A", CHAIN, "!", "-i", "lo", "-p", "tcp", "--dport", &range, "-j", "DROP",
                ]));
                steps.push(Step {
                    unless: Some(words(&[ipt, "-C", "INPUT", "-j", CHAIN])),
                    ..Step::new(&[ipt, "-I", "INPUT", "-j", CHAIN])
                });
            }
            steps
        }
        Tool::None => Vec::new(),
    }
}

/// The ports sshd listens on, from `sshd -T` (`port N` and `listenaddress HOST:N` lines); 22
/// when it says none.
pub fn sshd_ports(sshd_t: &str) -> Vec<u16> {
    let mut ports: Vec<u16> = sshd_t
        .lines()
        .filter_map(|line| {
            let mut w = line.split_whitespace();
            match (w.next()?, w.next()?) {
                ("port", p) => p.parse().ok(),
                ("listenaddress", addr) => listen_port(addr),
                _ => None,
            }
        })
        .collect();
    if ports.is_empty() {
        ports.push(22);
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The port of a `ListenAddress` value: `HOST:PORT` or `[V6]:PORT`; None for a bare host (the
/// `Port` lines apply to it).
fn listen_port(addr: &str) -> Option<u16> {
    let port = match addr.strip_prefix('[') {
        Some(v6) => v6.split_once("]:")?.1,
        None if addr.matches(':').count() == 1 => addr.split_once(':')?.1,
        None => return None,
    };
    port.parse().ok()
}

/// Refuses a range that would drop what must stay reachable: `protected` is (port, what).
pub fn check_range(ports: &RangeInclusive<u16>, protected: &[(u16, String)]) -> Result<(), String> {
    match protected.iter().find(|(port, _)| ports.contains(port)) {
        Some((port, what)) => Err(format!(
            "the dyno ports {}-{} include port {port} of {what}; no firewall rule was loaded (change the ports setting with 'slipway settings:set ports=START-END')",
            ports.start(),
            ports.end()
        )),
        None => Ok(()),
    }
}

/// An executable named `name` in PATH or the usual sbin directories (systemd's and a root
/// shell's PATH have them; `env -i` does not).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from);
    std::env::split_paths(&path).chain(extra).map(|dir| dir.join(name)).find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The `Port` and `ListenAddress` ports of an `sshd_config` text (keywords are
/// case-insensitive, `Port=2222` is allowed), and the patterns of its `Include` lines.
pub fn sshd_config_ports(text: &str) -> (Vec<u16>, Vec<String>) {
    let (mut ports, mut includes) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let (keyword, rest) = match line.split_once(|c: char| c.is_whitespace() || c == '=') {
            Some((k, r)) => {
                (k.to_ascii_lowercase(), r.trim_start_matches(|c: char| c.is_whitespace() || c == '='))
            }
            None => continue,
        };
        match keyword.as_str() {
            "port" => ports.extend(rest.split_whitespace().filter_map(|p| p.parse::<u16>().ok())),
            "listenaddress" => ports.extend(rest.split_whitespace().next().and_then(listen_port)),
            "include" => includes.extend(rest.split_whitespace().map(str::to_string)),
            _ => {}
        }
    }
    (ports, includes)
}

/// Files an sshd `Include` pattern names: a path, or a `*` in its last component (Debian's
/// `/etc/ssh/sshd_config.d/*.conf`); relative paths are under /etc/ssh.
fn include_files(pattern: &str) -> Vec<PathBuf> {
    let path =
        if pattern.starts_with('/') { PathBuf::from(pattern) } else { Path::new("/etc/ssh").join(pattern) };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let Some((prefix, suffix)) = name.split_once('*') else { return vec![path] };
    let Some(dir) = path.parent() else { return Vec::new() };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name().map(|n| n.to_string_lossy().into_owned()).is_some_and(|n| {
                        n.len() >= prefix.len() + suffix.len() && n.starts_with(prefix) && n.ends_with(suffix)
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// sshd's ports on this machine: what `sshd -T` says (it fails before sshd's runtime dir exists,
/// early at boot), with every port its configuration files name, and 22.
fn this_sshd_ports() -> Vec<u16> {
    let text = find_program("sshd")
        .and_then(|sshd| {
            std::process::Command::new(sshd).arg("-T").stderr(std::process::Stdio::null()).output().ok()
        })
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default();
    let mut ports = sshd_ports(&text);
    let mut files = vec![PathBuf::from("/etc/ssh/sshd_config")];
    let mut seen = 0;
    while let Some(file) = files.get(seen).cloned() {
        seen += 1;
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        let (found, includes) = sshd_config_ports(&text);
        ports.extend(found);
        for pattern in includes {
            for included in include_files(&pattern) {
                // At most 64 files: an Include loop stops here.
                if files.len() < 64 && !files.contains(&included) {
                    files.push(included);
                }
            }
        }
    }
    ports.push(22);
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Runs one step; Err is one line naming the command.
fn run_step(step: &Step) -> anyhow::Result<()> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let program = |argv: &[String]| find_program(&argv[0]).unwrap_or_else(|| PathBuf::from(&argv[0]));
    if let Some(unless) = &step.unless {
        let checked = Command::new(program(unless))
            .args(&unless[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if checked.is_ok_and(|s| s.success()) {
            return Ok(());
        }
    }
    let mut command = Command::new(program(&step.argv));
    command.args(&step.argv[1..]).stdin(if step.stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    if step.may_fail {
        command.stderr(Stdio::null());
    }
    let mut child = command.spawn().map_err(|e| anyhow::anyhow!("{}: {e}", step.argv[0]))?;
    if let (Some(text), Some(mut stdin)) = (&step.stdin, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).map_err(|e| anyhow::anyhow!("{}: {e}", step.argv[0]))?;
    }
    let status = child.wait().map_err(|e| anyhow::anyhow!("{}: {e}", step.argv[0]))?;
    if !status.success() && !step.may_fail {
        anyhow::bail!("'{}' failed ({status}; its message is above)", step.argv.join(" "));
    }
    Ok(())
}

/// Loads the rule (or, with `dry_run`, prints the commands); `tool` overrides detection.
pub fn apply(home: &Home, dry_run: bool, tool: Option<&str>) -> anyhow::Result<i32> {
    let settings = crate::settings::Settings::load(home)?;
    let ports = settings.ports.clone();
    let tool = match tool {
        Some("nft") => Tool::Nft,
        // A dry run shows both; a real one uses ip6tables where it is installed.
        Some("iptables") => Tool::Iptables { v6: dry_run || find_program("ip6tables").is_some() },
        Some("none") => Tool::None,
        Some(other) => anyhow::bail!("--tool '{other}' is not nft, iptables or none"),
        None => pick_tool(
            find_program("nft").is_some(),
            find_program("iptables").is_some(),
            find_program("ip6tables").is_some(),
        ),
    };
    let mut protected: Vec<(u16, String)> =
        this_sshd_ports().into_iter().map(|p| (p, "sshd".to_string())).collect();
    protected
        .push((settings.router_addr.port(), format!("the router (router_addr {})", settings.router_addr)));
    if let Some(https) = settings.https_addr {
        protected.push((https.port(), format!("HTTPS (https_addr {https})")));
    }
    check_range(&ports, &protected).map_err(|why| anyhow::anyhow!("{why}"))?;
    let steps = plan(tool, &ports);
    let (from, to) = (ports.start(), ports.end());
    if steps.is_empty() {
        eprintln!(
            "warning: neither nft nor iptables is installed: the dyno ports {from}-{to} stay reachable from other machines; block them in your firewall (only the router, on this machine, needs them)"
        );
        return Ok(0);
    }
    if dry_run {
        for step in &steps {
            println!("{}", step.display());
        }
        return Ok(0);
    }
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("loading the firewall rule needs root; run 'slipway firewall' as root");
    }
    for step in &steps {
        run_step(step)?;
    }
    let how = match tool {
        Tool::Nft => format!("nft table {NFT_TABLE}"),
        _ => format!("iptables chain {CHAIN}"),
    };
    println!("Firewall: TCP to the dyno ports {from}-{to} is dropped unless it comes over loopback ({how})");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tool_is_nft_when_there_else_iptables() {
        let cases = [
            ((true, true, true), Tool::Nft),
            ((true, false, false), Tool::Nft),
            ((false, true, true), Tool::Iptables { v6: true }),
            ((false, true, false), Tool::Iptables { v6: false }),
            ((false, false, true), Tool::None),
            ((false, false, false), Tool::None),
        ];
        for ((nft, ipt, ip6), want) in cases {
            assert_eq!(pick_tool(nft, ipt, ip6), want, "{nft} {ipt} {ip6}");
        }
    }

    #[test]
    fn nft_replaces_its_table_in_one_transaction() {
        let steps = plan(Tool::Nft, &(6000..=6099));
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].argv, ["nft", "-f", "-"]);
        let text = steps[0].stdin.as_deref().expect("a ruleset");
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        assert_eq!(
            lines,
            [
                "add table inet slipway",
                "delete table inet slipway",
                "table inet slipway {",
                "chain dyno_ports {",
                "type filter hook input priority -10; policy accept;",
                "iifname != \"lo\" tcp dport 6000-6099 drop",
                "}",
                "}",
            ]
        );
    }

    #[test]
    fn iptables_flushes_its_chain_and_jumps_once() {
        let lines: Vec<String> =
            plan(Tool::Iptables { v6: true }, &(5000..=5999)).iter().map(Step::display).collect();
        let want = |ipt: &str| {
            [
                format!("{ipt} -N SLIPWAY-DYNOS (may fail: it exists)"),
                format!("{ipt} -F SLIPWAY-DYNOS"),
                format!("{ipt} -A SLIPWAY-DYNOS ! -i lo -p tcp --dport 5000:5999 -j DROP"),
                format!("{ipt} -C INPUT -j SLIPWAY-DYNOS || {ipt} -I INPUT -j SLIPWAY-DYNOS"),
            ]
        };
        let mut both = want("iptables").to_vec();
        both.extend(want("ip6tables"));
        assert_eq!(lines, both);
        assert_eq!(plan(Tool::Iptables { v6: false }, &(5000..=5999)).len(), 4);
        assert!(plan(Tool::None, &(5000..=5999)).is_empty());
    }

    #[test]
    fn sshd_ports_from_sshd_t() {
        let cases: &[(&str, &[u16])] = &[
            ("port 22\naddressfamily any\n", &[22]),
            ("port 2222\nport 22\nlistenaddress 0.0.0.0:2222\nlistenaddress [::]:2222\n", &[22, 2222]),
            ("listenaddress 10.0.0.1:5022\n", &[5022]),
            ("", &[22]),
            ("port nonsense\n", &[22]),
        ];
        for (text, want) in cases {
            assert_eq!(sshd_ports(text), *want, "{text:?}");
        }
    }

    #[test]
    fn sshd_ports_from_its_configuration_files() {
        let cases: &[(&str, &[u16], &[&str])] = &[
            ("Port 2222\n", &[2222], &[]),
            ("port=2200\nPORT 2201 # second\n", &[2200, 2201], &[]),
            ("#Port 2222\n  # Port 2300\n", &[], &[]),
            ("ListenAddress 10.0.0.1:5022\nListenAddress [::1]:5023\nListenAddress ::1\nListenAddress 10.0.0.2\n", &[5022, 5023], &[]),
            ("Include /etc/ssh/sshd_config.d/*.conf\nPort 22\n", &[22], &["/etc/ssh/sshd_config.d/*.conf"]),
            ("Match User git\n    PasswordAuthentication no\n", &[], &[]),
            ("Port nonsense\n", &[], &[]),
        ];
        for (text, ports, includes) in cases {
            let (got_ports, got_includes) = sshd_config_ports(text);
            assert_eq!(got_ports, *ports, "{text:?}");
            assert_eq!(got_includes, *includes, "{text:?}");
        }
    }

    #[test]
    fn a_range_over_ssh_or_the_router_is_refused() {
        let protected = [
            (2222, "sshd".to_string()),
            (8080, "the router (router_addr 0.0.0.0:8080)".to_string()),
            (8443, "HTTPS (https_addr 0.0.0.0:8443)".to_string()),
        ];
        let cases: &[(RangeInclusive<u16>, Option<&str>)] = &[
            (5000..=5999, None),
            (2000..=2999, Some("include port 2222 of sshd")),
            (8000..=8099, Some("include port 8080 of the router")),
            (8443..=8443, Some("include port 8443 of HTTPS")),
            (2223..=8079, None),
        ];
        for (range, want) in cases {
            match (check_range(range, &protected), want) {
                (Ok(()), None) => {}
                (Err(why), Some(part)) => {
                    assert!(why.contains(part), "{range:?}: {why}");
                    assert!(why.contains("no firewall rule was loaded"), "{why}");
                }
                (got, _) => panic!("{range:?}: {got:?}, wanted {want:?}"),
            }
        }
    }
}
