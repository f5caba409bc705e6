//! Shared harness for slipway's integration tests.
//!
//! Everything here drives real parts: the `slipway` binary built by cargo, a real OpenSSH `sshd`
//! bound to 127.0.0.1 with a throwaway host key, real `git`, real `python3`. Each test builds its
//! own [`Slipway`] (a private temp dir used as `SLIPWAY_HOME`, its own dyno port range and router
//! port) and, when it needs SSH, its own [`Sshd`] on a free port, so tests can run in parallel.
//!
//! Cleanup happens in `Drop`, also when a test panics: the daemon is stopped, every dyno the
//! binary knows about is killed by process group, and as a last resort every process whose
//! command line, working directory or environment points into the test's temp dir is killed.
//!
//! Synchronisation is always "poll a condition until a deadline" ([`wait_until`]); every command
//! runs with a timeout ([`run_with_timeout`]), so a hung binary fails the test instead of hanging it.
#![allow(dead_code)]

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_slipway");

/// How long an ordinary CLI call may take before the harness kills it.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a `git push` (a whole build) may take before the harness kills it.
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a plain `ssh` admin command may take.
pub const SSH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the daemon may take to answer `slipway status` after being spawned.
pub const DAEMON_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Poll interval of [`wait_until`].
const POLL: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

/// A TCP port on 127.0.0.1 that was free a moment ago (bind port 0 and read it back).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr of a bound listener").port()
}

/// Calls `cond` every 50 ms until it returns true (→ `true`) or `timeout` has passed (→ `false`).
/// `cond` is always called at least once, and once more at/after the deadline.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(POLL.min(deadline - now));
    }
}

/// Runs `cmd` to completion with a deadline and returns its output.
///
/// stdout and stderr go to anonymous temp files rather than pipes, so a grandchild that keeps
/// them open (a daemon, a dyno) can never make the harness wait for EOF. The command runs in
/// its own process group; on timeout the whole group is SIGKILLed and a note is appended to
/// stderr. stdin is `input` if given, else /dev/null.
pub fn run_with_timeout(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> Output {
    let (out, err) = run_files(cmd, input, timeout, false);
    Output { status: out.0, stdout: out.1, stderr: err }
}

/// Like [`run_with_timeout`] but stdout and stderr share one file, so the returned text is the
/// two streams interleaved as the command wrote them. Returns (exited with 0, text).
pub fn run_combined(cmd: &mut Command, timeout: Duration) -> (bool, String) {
    let ((status, combined), note) = run_files(cmd, None, timeout, true);
    let mut text = String::from_utf8_lossy(&combined).into_owned();
    text.push_str(&String::from_utf8_lossy(&note));
    (status.success(), text)
}

fn run_files(
    cmd: &mut Command,
    input: Option<&[u8]>,
    timeout: Duration,
    combined: bool,
) -> ((std::process::ExitStatus, Vec<u8>), Vec<u8>) {
    let mut out = tempfile::tempfile().expect("create temp file for stdout");
    let mut err = if combined {
        out.try_clone().expect("clone stdout temp file")
    } else {
        tempfile::tempfile().expect("create temp file for stderr")
    };
    let stdin = match input {
        Some(bytes) => {
            let mut f = tempfile::tempfile().expect("create temp file for stdin");
            f.write_all(bytes).expect("write stdin temp file");
            f.seek(SeekFrom::Start(0)).expect("rewind stdin temp file");
            Stdio::from(f)
        }
        None => Stdio::null(),
    };
    cmd.stdin(stdin)
        .stdout(Stdio::from(out.try_clone().expect("clone stdout temp file")))
        .stderr(Stdio::from(err.try_clone().expect("clone stderr temp file")))
        .process_group(0);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let mut status = None;
    wait_until(timeout, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    let mut note = Vec::new();
    let status = match status {
        Some(s) => s,
        None => {
            kill_group(child.id());
            let _ = child.kill();
            note = format!("\n[harness] killed after {timeout:?}: {cmd:?}\n").into_bytes();
            child.wait().expect("wait for killed child")
        }
    };
    let read_all = |f: &mut File| {
        let mut buf = Vec::new();
        let _ = f.seek(SeekFrom::Start(0));
        let _ = f.read_to_end(&mut buf);
        buf
    };
    let stdout = read_all(&mut out);
    let mut stderr = if combined { Vec::new() } else { read_all(&mut err) };
    if combined {
        return ((status, stdout), note);
    }
    stderr.extend_from_slice(&note);
    ((status, stdout), stderr)
}

/// SIGKILLs the process group `pgid` (`/bin/kill -KILL -- -PGID`). Errors are ignored.
pub fn kill_group(pgid: u32) {
    if pgid <= 1 {
        return;
    }
    let _ = Command::new("/bin/kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// SIGKILLs one process (`/bin/kill -KILL PID`). Errors are ignored.
pub fn kill_pid(pid: u32) {
    if pid <= 1 {
        return;
    }
    let _ = Command::new("/bin/kill")
        .args(["-KILL", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Whether process `pid` is alive: `/bin/kill -0 PID` succeeds and the process is not a zombie.
/// (Here pid 1 is not a reaping init, so an orphaned dyno that exited may linger as a zombie;
/// a zombie has stopped running and counts as gone.)
pub fn process_alive(pid: u32) -> bool {
    let signalable = Command::new("/bin/kill")
        .args(["-0", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    signalable && !is_zombie(pid)
}

fn is_zombie(pid: u32) -> bool {
    // /proc/PID/stat is "pid (comm) S ..."; comm may contain spaces and parens, so split on the
    // last ')'.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')).unwrap_or(false)
        }
        Err(_) => false,
    }
}

/// The current user's name (`id -un`); sshd's `AllowUsers` and the SSH URLs use it.
/// Whether the tests run as root (then apps run as uids of their own: per-app users).
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Run as root, apps run as uids of their own, which must reach the Python their venvs were
/// made from. A pyenv under root's home (`/root/.pyenv`, /root being 0700) is out of their
/// reach; the dirs on the way to the build's `python3` are opened for passing through
/// (`o+x`, never listing or reading), once per test process.
fn open_the_way_to_python() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if !running_as_root() {
            return;
        }
        let Ok(out) = Command::new("python3").args(["-c", "import sys; print(sys.base_prefix)"]).output()
        else {
            return;
        };
        let prefix = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        for dir in prefix.ancestors() {
            let Ok(meta) = fs::metadata(dir) else { continue };
            let mode = meta.permissions().mode();
            if mode & 0o001 == 0 {
                fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o001))
                    .unwrap_or_else(|e| panic!("chmod o+x {}: {e}", dir.display()));
            }
        }
    });
}

pub fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("run id -un");
    assert!(out.status.success(), "id -un failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The last `n` lines of a file, or a note that it cannot be read.
pub fn tail_file(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(n);
            lines[start..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Lossy UTF-8 of stdout and stderr, for messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Does `path` hold at least one entry? (A missing directory holds none.)
pub fn dir_has_entries(path: &Path) -> bool {
    fs::read_dir(path).map(|mut d| d.next().is_some()).unwrap_or(false)
}

/// Every path below `path`, recursively (bounded depth), for messages and emptiness checks.
pub fn list_tree(path: &Path) -> Vec<PathBuf> {
    fn walk(p: &Path, depth: usize, acc: &mut Vec<PathBuf>) {
        if depth > 8 || acc.len() > 1000 {
            return;
        }
        if let Ok(rd) = fs::read_dir(p) {
            for e in rd.flatten() {
                let child = e.path();
                acc.push(child.clone());
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(&child, depth + 1, acc);
                }
            }
        }
    }
    let mut acc = Vec::new();
    walk(path, 0, &mut acc);
    acc
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// `GET path` on 127.0.0.1:port over HTTP/1.0 with `Connection: close` and a 5 s read timeout.
/// Returns (status code, body) or None if anything fails.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status_line = head.lines().next()?;
    let mut parts = status_line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    Some((status, body.to_string()))
}

// ---------------------------------------------------------------------------------------------
// SSH: client keys and a throwaway sshd
// ---------------------------------------------------------------------------------------------

/// An ed25519 key pair made with `ssh-keygen -N ''`.
pub struct ClientKey {
    /// The private key file (`<dir>/<name>`); the public key is next to it as `<name>.pub`.
    pub path: PathBuf,
    /// The public key line (`ssh-ed25519 AAAA... comment`), without a trailing newline.
    pub public: String,
}

impl ClientKey {
    /// Generates `<dir>/<name>` and `<dir>/<name>.pub` with comment `<name>@slipway-test`.
    pub fn generate(dir: &Path, name: &str) -> ClientKey {
        fs::create_dir_all(dir).expect("create key dir");
        let path = dir.join(name);
        let out = run_with_timeout(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", &format!("{name}@slipway-test"), "-f"])
                .arg(&path),
            None,
            Duration::from_secs(30),
        );
        assert!(out.status.success(), "ssh-keygen for {name} failed:\n{}", describe(&out));
        let public = fs::read_to_string(path.with_extension("pub"))
            .expect("read generated public key")
            .trim()
            .to_string();
        ClientKey { path, public }
    }

    /// The base64 blob of the public key (the second field), to find it in authorized_keys.
    pub fn blob(&self) -> &str {
        self.public.split_whitespace().nth(1).unwrap_or("")
    }
}

/// A real OpenSSH `sshd -D -e` on 127.0.0.1:`port`, killed on drop.
///
/// Config: a throwaway ed25519 host key, `AuthorizedKeysFile` = the given absolute path (the
/// test's `$SLIPWAY_HOME/.ssh/authorized_keys`), public keys only, `PermitRootLogin
/// forced-commands-only` (tests run as root), `AllowUsers <current user>`. Its stderr (the log)
/// goes to `<dir>/sshd.log`; see [`Sshd::log`]. If the test panics, the log is printed on drop.
pub struct Sshd {
    child: Child,
    /// The port sshd listens on (127.0.0.1 only).
    pub port: u16,
    /// The user that logs in (the current user).
    pub user: String,
    /// sshd's own directory (config, host key, pid file, log).
    pub dir: PathBuf,
    log_path: PathBuf,
}

impl Sshd {
    /// Starts sshd with its files in `dir` (created if needed), reading keys from
    /// `authorized_keys` (must be absolute; need not exist yet), giving every session the
    /// test's `SLIPWAY_APP_UIDS`. Panics with the sshd log if it
    /// does not accept connections within 10 s (after up to 3 tries on fresh ports).
    pub fn start(dir: &Path, authorized_keys: &Path, app_uids: &str) -> Sshd {
        Sshd::start_as(dir, authorized_keys, app_uids, &current_user())
    }

    /// [`Sshd::start`] letting only `user` log in (e.g. a platform user owning the home).
    pub fn start_as(dir: &Path, authorized_keys: &Path, app_uids: &str, user: &str) -> Sshd {
        assert!(authorized_keys.is_absolute(), "AuthorizedKeysFile must be absolute");
        fs::create_dir_all(dir).expect("create sshd dir");
        // sshd's privilege-separation directory; it refuses to start as root without it.
        let _ = fs::create_dir_all("/run/sshd");
        let host_key = dir.join("ssh_host_ed25519_key");
        if !host_key.exists() {
            let out = run_with_timeout(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-C", "slipway-test-host", "-f"])
                    .arg(&host_key),
                None,
                Duration::from_secs(30),
            );
            assert!(out.status.success(), "ssh-keygen (host key) failed:\n{}", describe(&out));
        }
        let user = user.to_string();
        let config = dir.join("sshd_config");
        let log_path = dir.join("sshd.log");
        let mut last_failure = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            let text = format!(
                "ListenAddress 127.0.0.1\n\
                 Port {port}\n\
                 HostKey {host_key}\n\
                 PidFile {pid}\n\
                 AuthorizedKeysFile {ak}\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 PubkeyAuthentication yes\n\
                 PermitRootLogin forced-commands-only\n\
                 LogLevel ERROR\n\
                 AllowUsers {user}\n\
                 SetEnv SLIPWAY_APP_UIDS={app_uids}\n",
                host_key = host_key.display(),
                pid = dir.join("sshd.pid").display(),
                ak = authorized_keys.display(),
            );
            fs::write(&config, text).expect("write sshd_config");
            let log =
                fs::OpenOptions::new().create(true).append(true).open(&log_path).expect("open sshd.log");
            let mut child = Command::new("/usr/sbin/sshd")
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .current_dir(dir)
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone().expect("clone sshd.log")))
                .stderr(Stdio::from(log))
                .spawn()
                .expect("spawn /usr/sbin/sshd");
            let mut exited = None;
            let ready = wait_until(Duration::from_secs(10), || {
                if let Ok(Some(status)) = child.try_wait() {
                    exited = Some(status);
                    return true;
                }
                sshd_banner(port)
            });
            match (ready, exited) {
                (true, None) => {
                    return Sshd { child, port, user, dir: dir.to_path_buf(), log_path };
                }
                (_, Some(status)) => {
                    last_failure = format!("sshd on port {port} exited early with {status}");
                }
                (false, None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_failure = format!("sshd on port {port} not accepting after 10 s");
                }
            }
        }
        panic!("{last_failure}\n--- sshd.log ---\n{}", tail_file(&log_path, 100));
    }

    /// Everything sshd has written to its log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The `GIT_SSH_COMMAND` value that connects to this sshd with `key`. (`-F /dev/null` keeps
    /// the invoking user's ~/.ssh/config out of the test.)
    pub fn ssh_command(&self, key: &Path) -> String {
        let key = key.display().to_string();
        assert!(!key.contains('\''), "key path must not contain a quote");
        format!(
            "ssh -F /dev/null -p {} -i '{}' -o IdentitiesOnly=yes -o StrictHostKeyChecking=no \
             -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR \
             -o ConnectTimeout=10",
            self.port, key
        )
    }

    /// `ssh://USER@127.0.0.1:PORT/APP`
    pub fn url(&self, app: &str) -> String {
        format!("ssh://{}@127.0.0.1:{}/{}", self.user, self.port, app)
    }

    /// `USER@127.0.0.1:APP` (scp-like; the port comes from [`Sshd::ssh_command`]'s `-p`).
    pub fn scp_url(&self, app: &str) -> String {
        format!("{}@127.0.0.1:{}", self.user, app)
    }

    /// Runs `ssh ... USER@127.0.0.1 ARGS...` with `key`. ssh joins ARGS with spaces into the
    /// one command string the server sees (as `SSH_ORIGINAL_COMMAND` under a forced command).
    pub fn ssh(&self, key: &Path, args: &[&str]) -> Output {
        self.ssh_stdin(key, args, None)
    }

    /// `ssh` with this server's options, `key`, the user and the remote words `args`.
    pub fn ssh_base(&self, key: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(["-F", "/dev/null", "-p", &self.port.to_string(), "-i"])
            .arg(key)
            .args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "ConnectTimeout=10",
            ])
            .arg(format!("{}@127.0.0.1", self.user))
            .args(args);
        cmd
    }

    /// Like [`Sshd::ssh`], with `input` on the remote command's stdin.
    pub fn ssh_stdin(&self, key: &Path, args: &[&str], input: Option<&str>) -> Output {
        let mut cmd = self.ssh_base(key, args);
        run_with_timeout(&mut cmd, input.map(str::as_bytes), SSH_TIMEOUT)
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- sshd.log ({}) ---\n{}", self.log_path.display(), tail_file(&self.log_path, 100));
        }
    }
}

/// True once something on `port` speaks SSH: it sends a banner starting with `SSH-`. We answer
/// with our own identification before closing so sshd logs nothing above INFO.
fn sshd_banner(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 4];
    if stream.read_exact(&mut buf).is_err() || &buf != b"SSH-" {
        return false;
    }
    let _ = stream.write_all(b"SSH-2.0-slipway-test-probe\r\n");
    true
}

// ---------------------------------------------------------------------------------------------
// The slipway test environment
// ---------------------------------------------------------------------------------------------

/// One test's slipway: a private temp dir, `home` (= `<tmp>/home`, used as `SLIPWAY_HOME`), a
/// private dyno port range (`SLIPWAY_PORTS`) and router address (`SLIPWAY_ROUTER_ADDR`), and
/// optionally a daemon child. Dropping it stops the daemon, kills every dyno and removes the dir.
pub struct Slipway {
    /// `$SLIPWAY_HOME`, i.e. `<root>/home`.
    pub home: PathBuf,
    /// Inclusive dyno port range handed to the daemon as `SLIPWAY_PORTS=START-END`.
    pub ports: (u16, u16),
    /// `SLIPWAY_ROUTER_ADDR` (127.0.0.1 and a free port, so parallel daemons do not clash on 8080).
    pub router_addr: String,
    /// `SLIPWAY_HTTPS_ADDR` (127.0.0.1 and a free port, so parallel routers do not clash on 8443).
    pub https_addr: String,
    /// Extra environment for every slipway command and the daemon (e.g. a short boot timeout).
    pub env: Vec<(String, String)>,
    /// The `slipway` binary every command runs ([`BIN`] unless a test copies it elsewhere).
    pub bin: PathBuf,
    daemon: Option<Child>,
    // Last field: dropped (the directory removed) after Drop::drop has killed everything.
    tmp: tempfile::TempDir,
}

/// `slipway --home HOME ARGS...` with `SLIPWAY_HOME`, `SLIPWAY_PORTS`, `SLIPWAY_ROUTER_ADDR` and
/// `SLIPWAY_HTTPS_ADDR` set and `cwd` as working directory.
fn slipway_command(
    bin: &Path,
    home: &Path,
    ports: (u16, u16),
    addrs: (&str, &str),
    cwd: &Path,
    args: &[&str],
) -> Command {
    let (router_addr, https_addr) = addrs;
    let mut cmd = Command::new(bin);
    cmd.arg("--home")
        .arg(home)
        .args(args)
        .env("SLIPWAY_HOME", home)
        .env("SLIPWAY_PORTS", format!("{}-{}", ports.0, ports.1))
        .env("SLIPWAY_ROUTER_ADDR", router_addr)
        .env("SLIPWAY_HTTPS_ADDR", https_addr)
        .env("SLIPWAY_APP_UIDS", app_uids(ports))
        .current_dir(cwd);
    cmd
}

/// The test's own 100 app uids (`app_uids`), derived from its dyno port range's slot, so
/// parallel test homes never share a uid (apps run as them when the tests run as root).
pub fn app_uids(ports: (u16, u16)) -> String {
    let slot = (u32::from(ports.0).saturating_sub(PORT_BASE)) / PORT_WIDTH;
    let first = 200_000 + slot * 100;
    format!("{first}-{}", first + 99)
}

const PORT_BASE: u32 = 20000;
const PORT_WIDTH: u32 = 40;

static NEXT_PORT_SLOT: AtomicU32 = AtomicU32::new(0);

/// Chooses a 40-port range inside 20000..32000 (below Linux's ephemeral range, so neither
/// `free_port()` nor outgoing connections land in it) whose ports can all be bound on 0.0.0.0
/// right now. Ranges of tests in one process never overlap (a shared counter); other processes
/// start at a pid-dependent slot.
fn choose_port_range() -> (u16, u16) {
    const BASE: u32 = PORT_BASE;
    const WIDTH: u32 = PORT_WIDTH;
    const SLOTS: u32 = 300; // 20000 + 300 * 40 = 32000
    let first = std::process::id().wrapping_mul(37) % SLOTS;
    for _ in 0..SLOTS {
        let slot = (first + NEXT_PORT_SLOT.fetch_add(1, Ordering::SeqCst)) % SLOTS;
        let lo = BASE + slot * WIDTH;
        let hi = lo + WIDTH - 1;
        let all_free = (lo..=hi).all(|p| TcpListener::bind(("0.0.0.0", p as u16)).is_ok());
        if all_free {
            return (lo as u16, hi as u16);
        }
    }
    panic!("no free 40-port range in 20000..32000");
}

impl Slipway {
    /// A fresh environment: `<tmp>/home` exists and is empty; nothing is running.
    pub fn new() -> Slipway {
        let tmp = tempfile::Builder::new().prefix("slipway-test-").tempdir().expect("create temp dir");
        let home = tmp.path().join("home");
        fs::create_dir_all(&home).expect("create home");
        open_the_way_to_python();
        // Run as root, apps run as uids of their own, which must pass through the temp dir
        // (0700 from tempfile) to reach their release and working dirs.
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o711)).expect("chmod the temp dir");
        let ports = choose_port_range();
        // In the settings file too: processes started by sshd (a push, `apps:create` over SSH)
        // do not get the test's environment.
        fs::write(home.join("slipway.toml"), format!("app_uids = \"{}\"\n", app_uids(ports)))
            .expect("write slipway.toml");
        Slipway {
            home,
            ports,
            router_addr: format!("127.0.0.1:{}", free_port()),
            https_addr: format!("127.0.0.1:{}", free_port()),
            env: Vec::new(),
            daemon: None,
            bin: PathBuf::from(BIN),
            tmp,
        }
    }

    /// The test's temp dir (parent of `home`); put scratch files (repos, keys, marks) here.
    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    /// `<home>/.ssh/authorized_keys`, which `keys:add` writes and [`Sshd`] reads.
    pub fn authorized_keys(&self) -> PathBuf {
        self.home.join(".ssh").join("authorized_keys")
    }

    /// Starts an [`Sshd`] in `<root>/sshd` that reads this home's authorized_keys.
    pub fn start_sshd(&self) -> Sshd {
        Sshd::start(&self.root().join("sshd"), &self.authorized_keys(), &app_uids(self.ports))
    }

    /// Generates a client key pair in `<root>/keys/<name>`.
    pub fn client_key(&self, name: &str) -> ClientKey {
        ClientKey::generate(&self.root().join("keys"), name)
    }

    /// A `Command` for `slipway --home HOME ARGS...` with this environment's variables set and
    /// the temp dir as working directory.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = slipway_command(
            &self.bin,
            &self.home,
            self.ports,
            (&self.router_addr, &self.https_addr),
            self.tmp.path(),
            args,
        );
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Runs `slipway --home HOME ARGS...` (stdin /dev/null, 60 s timeout).
    pub fn cmd(&self, args: &[&str]) -> Output {
        run_with_timeout(&mut self.command(args), None, CMD_TIMEOUT)
    }

    /// Like [`Slipway::cmd`] with `input` on stdin.
    pub fn cmd_stdin(&self, args: &[&str], input: &str) -> Output {
        run_with_timeout(&mut self.command(args), Some(input.as_bytes()), CMD_TIMEOUT)
    }

    /// Runs the command, panics (with diagnostics) unless it exits 0, returns stdout.
    pub fn cmd_ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args);
        assert!(out.status.success(), "slipway {args:?} failed:\n{}\n{}", describe(&out), self.diagnostics());
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the command (which should print JSON) and parses its stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let stdout = self.cmd_ok(args);
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("slipway {args:?} printed invalid JSON ({e}):\n{stdout}"))
    }

    /// `slipway ps APP --json` as a list of dyno objects.
    pub fn ps_json(&self, app: &str) -> Vec<Value> {
        match self.json(&["ps", app, "--json"]) {
            Value::Array(dynos) => dynos,
            other => panic!("ps {app} --json is not an array: {other}"),
        }
    }

    /// `slipway apps --json` as a list of app objects.
    pub fn apps_json(&self) -> Vec<Value> {
        match self.json(&["apps", "--json"]) {
            Value::Array(apps) => apps,
            other => panic!("apps --json is not an array: {other}"),
        }
    }

    /// `slipway apps:info APP --json`.
    pub fn app_info(&self, app: &str) -> Value {
        self.json(&["apps:info", app, "--json"])
    }

    /// `slipway keys:add NAME` with `key`'s public line on stdin; panics unless it succeeds.
    pub fn add_key(&self, name: &str, key: &ClientKey) {
        let out = self.cmd_stdin(&["keys:add", name], &format!("{}\n", key.public));
        assert!(out.status.success(), "keys:add {name} failed:\n{}", describe(&out));
    }

    /// `<home>/logs/APP/app.log`
    pub fn app_log_path(&self, app: &str) -> PathBuf {
        self.home.join("logs").join(app).join("app.log")
    }

    /// Where the daemon's own stdout/stderr go.
    pub fn daemon_log_path(&self) -> PathBuf {
        self.root().join("daemon.log")
    }

    /// Spawns `slipway --home HOME daemon --foreground` (with `SLIPWAY_PORTS` etc.), output to
    /// `<root>/daemon.log`, and waits (20 s) until `slipway status` exits 0. Panics with the
    /// daemon's log if it exits or never becomes ready.
    pub fn start_daemon(&mut self) {
        assert!(self.daemon.is_none(), "daemon already started");
        let log = File::create(self.daemon_log_path()).expect("create daemon.log");
        let child = self
            .command(&["daemon", "--foreground"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("clone daemon.log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn slipway daemon --foreground");
        self.daemon = Some(child);
        let mut exited = None;
        let (bin, home, ports, root) = (&self.bin, &self.home, self.ports, self.tmp.path());
        let router = (self.router_addr.as_str(), self.https_addr.as_str());
        let daemon = &mut self.daemon;
        let ready = wait_until(DAEMON_READY_TIMEOUT, || {
            if let Some(child) = daemon.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    exited = Some(status);
                    return true;
                }
            }
            let mut status = slipway_command(bin, home, ports, router, root, &["status"]);
            run_with_timeout(&mut status, None, Duration::from_secs(10)).status.success()
        });
        if let Some(status) = exited {
            self.daemon = None;
            panic!(
                "slipway daemon --foreground exited early with {status}\n--- daemon.log ---\n{}",
                tail_file(&self.daemon_log_path(), 100)
            );
        }
        assert!(
            ready,
            "slipway status did not succeed within {DAEMON_READY_TIMEOUT:?}\n--- status ---\n{}\n--- daemon.log ---\n{}",
            describe(&self.cmd(&["status"])),
            tail_file(&self.daemon_log_path(), 100)
        );
    }

    /// Pushes `repo`'s main straight into the app's bare repository (no sshd): the same
    /// pre-receive hook runs. Creates the app first if needed.
    pub fn push_local(&self, repo: &GitRepo, app: &str) -> (bool, String) {
        let _ = self.cmd(&["apps:create", app]);
        let path = self.home.join("repos").join(format!("{app}.git"));
        let mut cmd = repo.command(&["push", &path.to_string_lossy(), "HEAD:main"]);
        // The hook inherits git's environment: this test's settings reach the build.
        cmd.env("SLIPWAY_HOME", &self.home)
            .env("SLIPWAY_APP_UIDS", app_uids(self.ports))
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        run_combined(&mut cmd, PUSH_TIMEOUT)
    }

    /// `kill -9` the daemon this environment started (a crash, as far as the daemon can tell)
    /// and reap it; dynos are left alone.
    pub fn kill_daemon_hard(&mut self) {
        let mut child = self.daemon.take().expect("kill_daemon_hard: no daemon was started");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops the daemon this environment started: SIGTERM, up to 15 s to exit, then SIGKILL.
    /// Without a daemon child, runs `slipway daemon --stop` if a pid file exists. Never panics.
    pub fn stop_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = Command::new("/bin/kill")
                .args(["-TERM", &child.id().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let exited = wait_until(Duration::from_secs(15), || matches!(child.try_wait(), Ok(Some(_))));
            if !exited {
                eprintln!("[harness] daemon ignored SIGTERM for 15 s; killing it");
                let _ = child.kill();
            }
            let _ = child.wait();
        } else if self.home.join("run").join("slipway.pid").exists() {
            let _ = run_with_timeout(&mut self.command(&["daemon", "--stop"]), None, Duration::from_secs(20));
        }
    }

    /// Kills every dyno the binary knows: for each app in `apps --json`, each dyno in
    /// `ps APP --json` with a pid gets `kill -KILL -- -PID` (its process group). Never panics.
    pub fn kill_dynos(&self) {
        let quick = |args: &[&str]| -> Option<Value> {
            let out = run_with_timeout(&mut self.command(args), None, Duration::from_secs(15));
            if !out.status.success() {
                return None;
            }
            serde_json::from_slice(&out.stdout).ok()
        };
        let Some(Value::Array(apps)) = quick(&["apps", "--json"]) else {
            return;
        };
        for app in apps {
            let Some(name) = app.get("name").and_then(Value::as_str) else {
                continue;
            };
            let Some(Value::Array(dynos)) = quick(&["ps", name, "--json"]) else {
                continue;
            };
            for dyno in dynos {
                if let Some(pid) = dyno.get("pid").and_then(Value::as_u64) {
                    kill_group(pid as u32);
                }
            }
        }
    }

    /// SIGKILLs the router process this home's daemon started (`run/router`: `PID START …`),
    /// which outlives the daemon by design. Never panics.
    pub fn kill_router(&self) {
        let Ok(text) = fs::read_to_string(self.home.join("run").join("router")) else {
            return;
        };
        let Some(pid) = text.split_whitespace().next().and_then(|p| p.parse::<u32>().ok()) else {
            return;
        };
        // Only if it is this home's router still (its command line names the temp dir).
        if pid > 1 && self.leftover_processes().contains(&pid) {
            kill_pid(pid);
            wait_until(Duration::from_secs(5), || !process_alive(pid));
        }
    }

    /// Pids of live processes (other than this one) whose command line, working directory or
    /// environment mentions this environment's temp dir: whatever the test started that is still
    /// running (daemon, dynos, ssh-serve, git-receive-pack, hooks, sshd).
    pub fn leftover_processes(&self) -> Vec<u32> {
        let root = self.root();
        let needle = format!("{}/", root.display());
        let me = std::process::id();
        let mut pids = Vec::new();
        let Ok(proc_dir) = fs::read_dir("/proc") else {
            return pids;
        };
        for entry in proc_dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pid == me || pid <= 1 || is_zombie(pid) {
                continue;
            }
            let mentions = |file: &str| {
                fs::read(format!("/proc/{pid}/{file}"))
                    .map(|b| String::from_utf8_lossy(&b).contains(&needle))
                    .unwrap_or(false)
            };
            let cwd_inside =
                fs::read_link(format!("/proc/{pid}/cwd")).map(|p| p.starts_with(root)).unwrap_or(false);
            if cwd_inside || mentions("cmdline") || mentions("environ") {
                pids.push(pid);
            }
        }
        pids
    }

    /// Last-resort cleanup: SIGKILL every [`Slipway::leftover_processes`] pid, a few rounds.
    fn sweep_leftovers(&self) {
        for _round in 0..3 {
            let pids = self.leftover_processes();
            if pids.is_empty() {
                return;
            }
            for pid in &pids {
                kill_pid(*pid);
            }
            wait_until(Duration::from_secs(2), || pids.iter().all(|pid| !process_alive(*pid)));
        }
    }

    /// Text for failure messages: the daemon's log and the tail of every app log.
    pub fn diagnostics(&self) -> String {
        let mut s = format!("--- daemon.log (tail) ---\n{}\n", tail_file(&self.daemon_log_path(), 60));
        if let Ok(rd) = fs::read_dir(self.home.join("logs")) {
            for e in rd.flatten() {
                if e.file_name() == "router.log" {
                    s.push_str(&format!("--- router.log (tail) ---\n{}\n", tail_file(&e.path(), 30)));
                    continue;
                }
                if !e.path().is_dir() {
                    continue;
                }
                let log = e.path().join("app.log");
                s.push_str(&format!("--- {} (tail) ---\n{}\n", log.display(), tail_file(&log, 40)));
            }
        }
        s
    }
}

impl Default for Slipway {
    fn default() -> Self {
        Slipway::new()
    }
}

impl Drop for Slipway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
        // Daemon first, so it cannot restart the dynos (or the router) we are about to kill.
        self.stop_daemon();
        self.kill_router();
        self.kill_dynos();
        self.sweep_leftovers();
        self.sweep_cgroups();
        // `tmp` is dropped after this, removing the directory.
    }
}

impl Slipway {
    /// Removes the cgroups of this home's dynos and builds that are still there (as root, where
    /// slipway makes them): their shims remove them on a normal end, not when the sweep above
    /// killed them. Never panics.
    pub fn sweep_cgroups(&self) {
        let Ok(layout) = slipway::cgroup::detect() else { return };
        for (app, name, cgroup) in slipway::cgroup::list(&layout, &self.home) {
            let deadline = Instant::now() + Duration::from_secs(5);
            if let Err(err) = cgroup.remove(deadline, || {}) {
                eprintln!("[harness] cgroup {app}/{name} stays: {err}");
            }
        }
        slipway::cgroup::remove_empty_dirs(&layout, &self.home);
    }
}

// ---------------------------------------------------------------------------------------------
// git
// ---------------------------------------------------------------------------------------------

/// A working repository on branch `main` with a local identity, isolated from the invoking
/// user's global and system git config.
pub struct GitRepo {
    pub dir: PathBuf,
}

impl GitRepo {
    /// `git init -b main DIR` and a local user.name / user.email.
    pub fn init(dir: &Path) -> GitRepo {
        fs::create_dir_all(dir).expect("create work repo dir");
        let repo = GitRepo { dir: dir.to_path_buf() };
        repo.git_ok(&["init", "-q", "-b", "main"]);
        repo.git_ok(&["config", "user.name", "Slipway Test"]);
        repo.git_ok(&["config", "user.email", "test@slipway.invalid"]);
        repo.git_ok(&["config", "commit.gpgsign", "false"]);
        repo
    }

    /// A `git` command in the repo, with system/global config ignored, English messages and no
    /// prompts.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("git");
        cmd.args(args)
            .current_dir(&self.dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("LC_ALL", "C");
        cmd
    }

    /// Runs git, returns its output (60 s timeout).
    pub fn git(&self, args: &[&str]) -> Output {
        run_with_timeout(&mut self.command(args), None, CMD_TIMEOUT)
    }

    /// Runs git and panics unless it exits 0; returns stdout.
    pub fn git_ok(&self, args: &[&str]) -> String {
        let out = self.git(args);
        assert!(out.status.success(), "git {args:?} failed:\n{}", describe(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes each (relative path, content) (creating parent dirs), `git add -A`, commits.
    pub fn commit_files<P: AsRef<str>, C: AsRef<str>>(&self, files: &[(P, C)], message: &str) {
        for (path, content) in files {
            let target = self.dir.join(path.as_ref());
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent).expect("create parent dir in work repo");
            }
            fs::write(&target, content.as_ref()).expect("write file in work repo");
        }
        self.git_ok(&["add", "-A"]);
        self.git_ok(&["commit", "-q", "-m", message]);
    }

    /// Points remote `slipway` at `remote_url` and runs `git push slipway main` with
    /// `GIT_SSH_COMMAND=ssh_command`. Returns (exit 0, stdout+stderr interleaved).
    pub fn push(&self, remote_url: &str, ssh_command: &str) -> (bool, String) {
        let _ = self.git(&["remote", "remove", "slipway"]);
        self.git_ok(&["remote", "add", "slipway", remote_url]);
        let mut cmd = self.command(&["push", "slipway", "main"]);
        cmd.env("GIT_SSH_COMMAND", ssh_command);
        run_combined(&mut cmd, PUSH_TIMEOUT)
    }

    /// The full hash of HEAD.
    pub fn head(&self) -> String {
        self.git_ok(&["rev-parse", "HEAD"]).trim().to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// A stdlib-only Python web app
// ---------------------------------------------------------------------------------------------

/// `Procfile` of the test app.
pub const PROCFILE: &str = "web: python app.py\n";
/// `requirements.txt` of the test app: no dependencies, just a comment.
pub const REQUIREMENTS: &str = "# no dependencies: the test app uses only the standard library\n";

/// `app.py`: a `ThreadingHTTPServer` on 0.0.0.0:$PORT answering every GET with `body`
/// (200, text/plain), printing `Listening on 0.0.0.0:PORT` (flushed) once bound, and logging
/// each request to stdout.
pub fn python_app_py(body: &str) -> String {
    let literal = serde_json::to_string(body).expect("encode body as a string literal");
    format!(
        r#"import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = {literal}.encode("utf-8")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, fmt, *args):
        print("%s %s" % (self.address_string(), fmt % args), flush=True)


def main():
    port = int(os.environ["PORT"])
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    print("Listening on 0.0.0.0:%d" % port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
"#
    )
}

/// The three files of the test app: `app.py` (answering `body`), `Procfile`, `requirements.txt`.
pub fn python_app(body: &str) -> Vec<(&'static str, String)> {
    vec![
        ("app.py", python_app_py(body)),
        ("Procfile", PROCFILE.to_string()),
        ("requirements.txt", REQUIREMENTS.to_string()),
    ]
}

// ---------------------------------------------------------------------------------------------
// The usual push set-up
// ---------------------------------------------------------------------------------------------

/// What a push test needs: a running daemon, an sshd, and a client key authorised as `alice`.
/// Fields drop in order: sshd first, then the slipway environment (which removes the temp dir).
pub struct PushEnv {
    pub sshd: Sshd,
    pub key: ClientKey,
    /// `GIT_SSH_COMMAND` for `key` against `sshd`.
    pub ssh: String,
    pub slip: Slipway,
}

impl PushEnv {
    /// `configure` runs before the daemon starts (e.g. to shorten timeouts through `env`).
    pub fn start(configure: impl FnOnce(&mut Slipway)) -> PushEnv {
        let mut slip = Slipway::new();
        configure(&mut slip);
        let key = slip.client_key("id_client");
        let sshd = slip.start_sshd();
        slip.start_daemon();
        slip.add_key("alice", &key);
        let ssh = sshd.ssh_command(&key.path);
        PushEnv { sshd, key, ssh, slip }
    }

    /// A new repository under the temp dir, with the test app answering `body` committed.
    pub fn app_repo(&self, dir: &str, body: &str) -> GitRepo {
        let repo = GitRepo::init(&self.slip.root().join(dir));
        repo.commit_files(&python_app(body), body);
        repo
    }

    /// `git push slipway main` to `app` over ssh.
    pub fn push(&self, repo: &GitRepo, app: &str) -> (bool, String) {
        repo.push(&self.sshd.url(app), &self.ssh)
    }
}

/// One `GET path` through the router at `router` (`IP:PORT`) with `Host: host`, HTTP/1.1 on a
/// fresh connection with `Connection: close` and a 10 s read timeout: (status, raw body — still
/// chunked if the dyno chunked it), or None when anything fails.
pub fn router_get(router: &str, host: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(router).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// A stdlib HTTP server script (save it as `server`, run `python3 server ARG`: a generic build,
/// no `.py` file) answering every GET with 200 and the Python expression `body` (a `str`; it
/// may use `sys.argv` and `os.environ`), on `$PORT`, one write per response.
pub fn stdlib_server(body: &str) -> String {
    format!(
        r#"import os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
BODY = ({body}).encode()
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 65536  # one write per response: no Nagle stall between headers and body
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
"#
    )
}

// ---------------------------------------------------------------------------------------------
// Users and uids
// ---------------------------------------------------------------------------------------------

/// The real, effective, saved and filesystem uids of a process (`Uid:` in /proc/PID/status);
/// empty when it is gone.
pub fn process_uids(pid: u32) -> Vec<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .map(|v| v.split_whitespace().filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default()
}

/// A throw-away system user (`useradd --system`, no home made), deleted on drop (after killing
/// whatever still runs as it), also when the test panics. Root only.
pub struct SystemUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl SystemUser {
    /// A user named `PREFIX-t<8 hex>`; with `login`, it has a shell and no password yet is not
    /// locked (`-p *`: sshd without PAM refuses locked accounts, and runs forced commands
    /// through the shell), else the shell is nologin.
    pub fn create(prefix: &str, login: bool) -> SystemUser {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .subsec_nanos();
        let name = format!("{prefix}-t{:08x}", nanos ^ std::process::id().rotate_left(16));
        let mut args = vec!["--system", "--no-create-home", "--shell"];
        args.extend(if login { ["/bin/sh", "-p", "*"].as_slice() } else { ["/usr/sbin/nologin"].as_slice() });
        args.push(&name);
        let mut last = String::new();
        // useradd fails when another process holds /etc/passwd's lock for a moment.
        let created = wait_until(Duration::from_secs(20), || {
            let out = run_with_timeout(Command::new("useradd").args(&args), None, Duration::from_secs(20));
            last = describe(&out);
            out.status.success()
        });
        assert!(created, "useradd {name} failed:\n{last}");
        let id = |flag: &str| -> u32 {
            let out = run_with_timeout(Command::new("id").args([flag, &name]), None, Duration::from_secs(10));
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or_else(|_| panic!("id {flag} {name}"))
        };
        let (uid, gid) = (id("-u"), id("-g"));
        SystemUser { name, uid, gid }
    }

    /// Pids of live processes whose real uid is this user's.
    pub fn processes(&self) -> Vec<u32> {
        let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
        dir.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| process_uids(*pid).first() == Some(&self.uid) && process_alive(*pid))
            .collect()
    }
}

impl Drop for SystemUser {
    fn drop(&mut self) {
        for _round in 0..3 {
            let pids = self.processes();
            if pids.is_empty() {
                break;
            }
            pids.iter().for_each(|pid| kill_pid(*pid));
            wait_until(Duration::from_secs(2), || pids.iter().all(|pid| !process_alive(*pid)));
        }
        let out = run_with_timeout(Command::new("userdel").arg(&self.name), None, Duration::from_secs(20));
        if !out.status.success() {
            eprintln!("[support] userdel {} failed:\n{}", self.name, describe(&out));
        }
    }
}

impl Slipway {
    /// The pid and port of `app`'s dyno `name` (e.g. `web.1`) once `ps` shows it up.
    pub fn dyno_up(&self, app: &str, name: &str) -> Option<(u32, u16)> {
        self.ps_json(app)
            .into_iter()
            .find(|d| d["name"] == name && d["state"] == "up")
            .and_then(|d| Some((d["pid"].as_u64()? as u32, d["port"].as_u64()? as u16)))
    }

    /// The port of `app`'s web.1 of `release` (`v3`) once it is up, waited for up to `timeout`;
    /// panics with the diagnostics.
    pub fn release_web_port(&self, app: &str, release: &str, timeout: Duration) -> u16 {
        let mut port = None;
        wait_until(timeout, || {
            port = self.ps_json(app).iter().find_map(|d| {
                let ok = d["name"] == "web.1" && d["state"] == "up" && d["release"] == release;
                ok.then(|| d["port"].as_u64()).flatten()
            });
            port.is_some()
        });
        port.unwrap_or_else(|| panic!("no up web.1 of {release}\n{}", self.diagnostics())) as u16
    }

    /// [`Slipway::dyno_up`] for `web.1`, waited for (30 s); panics with the diagnostics.
    pub fn wait_web(&self, app: &str) -> (u32, u16) {
        let mut found = None;
        wait_until(Duration::from_secs(30), || {
            found = self.dyno_up(app, "web.1");
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("{app}'s web.1 is not up\n{}", self.diagnostics()))
    }

    /// Pushes app `victim` (a stdlib web server answering `victim`) and waits for its web.1:
    /// the other app that containment tests attack. Its pid and port.
    pub fn push_victim(&self) -> (u32, u16) {
        let repo = GitRepo::init(&self.root().join("victim"));
        repo.commit_files(
            &[("server", stdlib_server("'victim'")), ("Procfile", "web: python3 server\n".into())],
            "v",
        );
        let (ok, out) = self.push_local(&repo, "victim");
        assert!(ok, "{out}\n{}", self.diagnostics());
        self.wait_web("victim")
    }
}

/// The body of `GET path` on 127.0.0.1:`port` once it answers 200, tried until `timeout`;
/// empty when it never did.
pub fn get_200(port: u16, path: &str, timeout: Duration) -> String {
    let mut body = None;
    wait_until(timeout, || {
        body = http_get(port, path).filter(|(s, _)| *s == 200).map(|(_, b)| b);
        body.is_some()
    });
    body.unwrap_or_default()
}
