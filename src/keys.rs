//! SSH keys that may push and run commands. The `ssh_keys` table is the source of truth; the
//! slipway lines of `$SLIPWAY_HOME/.ssh/authorized_keys` are regenerated from it on every
//! change, and lines slipway did not write are kept as they were.
//!
//! Each generated line forces `slipway ssh-serve --key NAME` and `restrict`s everything else
//! (no forwarding, no agent, no X11), so a key can only ever reach slipway's own command
//! parser. `pty` is allowed back so `ssh -t host run APP -- bash` gets a terminal.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::home::Home;
use crate::store::keys::Role;
use crate::store::{self, Store};

/// Marks lines that slipway owns; everything else in the file is left alone.
const MARKER: &str = "ssh-serve --key ";

const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("'{0}' is not a valid key name: use 1 to 64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit")]
    BadName(String),
    #[error("expected one OpenSSH public key line (like 'ssh-ed25519 AAAA... you@laptop') on stdin")]
    BadKey,
    #[error("the key line carries options ('{0}') before the key type; give the bare public key (slipway sets the options itself)")]
    HasOptions(String),
    #[error("--apps: {0}")]
    BadApp(String),
    #[error("the path {0} cannot be written into authorized_keys: use only letters, digits, '/', '.', '_' and '-'")]
    UnsafePath(String),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("writing {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

pub fn validate_name(name: &str) -> Result<(), KeyError> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c))
        && name.len() <= 64;
    if ok {
        Ok(())
    } else {
        Err(KeyError::BadName(name.chars().filter(|c| !c.is_control()).take(64).collect()))
    }
}

/// Normalises `type base64 [comment]` and rejects anything else: options, several keys,
/// control characters. Returns the key without options, comment kept (printable only).
pub fn parse_public_key(input: &str) -> Result<String, KeyError> {
    let lines: Vec<&str> =
        input.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let [line] = lines.as_slice() else {
        return Err(KeyError::BadKey);
    };
    let mut parts = line.split_whitespace();
    let (Some(kind), Some(blob)) = (parts.next(), parts.next()) else {
        return Err(KeyError::BadKey);
    };
    // `command="..."`, `from=...`, `no-pty` and the like before the type: an authorized_keys
    // line, not a public key. Refused by name rather than silently stripped.
    if !KEY_TYPES.contains(&kind) && line.split_whitespace().skip(1).any(|w| KEY_TYPES.contains(&w)) {
        let options: String = kind.chars().filter(|c| !c.is_control()).take(40).collect();
        return Err(KeyError::HasOptions(options));
    }
    let blob_ok = blob.len() >= 16 && blob.chars().all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c));
    if !KEY_TYPES.contains(&kind) || !blob_ok {
        return Err(KeyError::BadKey);
    }
    let comment: String =
        parts.collect::<Vec<_>>().join(" ").chars().filter(|c| !c.is_control() && *c != '"').collect();
    Ok(if comment.is_empty() { format!("{kind} {blob}") } else { format!("{kind} {blob} {comment}") })
}

/// `SHA256:...` as `ssh-keygen -l` prints it; also proves the key decodes. Falls back to
/// "unknown" when ssh-keygen is not installed (the key's shape was already checked).
pub fn fingerprint(public_key: &str) -> Result<String, KeyError> {
    let child = Command::new("ssh-keygen")
        .args(["-l", "-E", "sha256", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return Ok("unknown".into());
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = writeln!(stdin, "{public_key}");
    }
    let out = child.wait_with_output().map_err(|_| KeyError::BadKey)?;
    if !out.status.success() {
        return Err(KeyError::BadKey);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.split_whitespace().nth(1).unwrap_or("unknown").to_string())
}

/// The forced-command line for one key.
fn authorized_line(binary: &str, home: &str, name: &str, public_key: &str) -> String {
    format!("command=\"{binary} --home {home} {MARKER}{name}\",restrict,pty {public_key}")
}

fn safe_for_forced_command(path: &Path) -> Result<String, KeyError> {
    let s = path.to_string_lossy().to_string();
    if s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c)) {
        Ok(s)
    } else {
        Err(KeyError::UnsafePath(s))
    }
}

/// What `keys:add` was asked for besides the name and the key.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    /// `None`: the default (admin for the first key, else deploy).
    pub role: Option<Role>,
    pub apps: Vec<String>,
    pub allow_run: bool,
}

/// Adds the key; returns the role it got. The first key ever added is an admin whatever was
/// asked, so a fresh install always has a key that can add the others.
pub fn add(
    home: &Home,
    store: &mut Store,
    name: &str,
    stdin_text: &str,
    grant: &Grant,
) -> Result<Role, KeyError> {
    validate_name(name)?;
    let key = parse_public_key(stdin_text)?;
    for app in &grant.apps {
        app.parse::<crate::app::AppName>().map_err(|e| KeyError::BadApp(e.to_string()))?;
    }
    let fp = fingerprint(&key)?;
    let tx = store.transaction()?;
    let role = if store::keys::count(&tx)? == 0 { Role::Admin } else { grant.role.unwrap_or(Role::Deploy) };
    let (apps, allow_run): (&[String], bool) =
        if role == Role::Admin { (&[], false) } else { (&grant.apps, grant.allow_run) };
    let new = store::keys::NewKey { name, public_key: &key, fingerprint: &fp, role, apps, allow_run };
    store::keys::insert(&tx, &new)?;
    write_authorized_keys(home, &store::keys::list(&tx)?)?;
    tx.commit().map_err(store::StoreError::from)?;
    Ok(role)
}

pub fn remove(home: &Home, store: &mut Store, name: &str) -> Result<(), KeyError> {
    validate_name(name)?;
    let tx = store.transaction()?;
    store::keys::delete(&tx, name)?;
    write_authorized_keys(home, &store::keys::list(&tx)?)?;
    tx.commit().map_err(store::StoreError::from)?;
    Ok(())
}

/// Rewrites slipway's lines of `.ssh/authorized_keys` from the `ssh_keys` table (after a
/// restore: the keys come back with the database, the file names this home and binary).
/// Returns how many keys it wrote.
pub fn regenerate(home: &Home, store: &mut Store) -> Result<usize, KeyError> {
    let keys = store::keys::list(store.conn())?;
    write_authorized_keys(home, &keys)?;
    Ok(keys.len())
}

/// Rewrites the file atomically (temp file + rename, [`crate::fsutil::write_atomic_in`]): sshd
/// never sees a half-written file, and a symlink planted at `.ssh`, the file or the temp name
/// makes it fail instead of writing through it. Lines slipway did not write are kept (see
/// [`foreign_lines`]).
fn write_authorized_keys(home: &Home, keys: &[store::keys::KeyRow]) -> Result<(), KeyError> {
    let path = home.authorized_keys();
    let io_err = |source| KeyError::Io { path: path.display().to_string(), source };
    let binary = std::env::current_exe().map_err(io_err)?;
    let binary = safe_for_forced_command(&binary)?;
    let home_str = safe_for_forced_command(home.root())?;

    let existing = std::fs::read_to_string(&path).unwrap_or_default();
    let mut out: String =
        existing.lines().filter(|l| !l.contains(MARKER)).map(|l| format!("{l}\n")).collect();
    for key in keys {
        out.push_str(&authorized_line(&binary, &home_str, &key.name, &key.public_key));
        out.push('\n');
    }

    let dir = home.ssh_dir();
    std::fs::create_dir_all(&dir).map_err(io_err)?;
    set_mode(&dir, 0o700).map_err(io_err)?;
    crate::fsutil::write_atomic_in(home.root(), &path, out.as_bytes(), 0o600).map_err(io_err)
}

/// A line of `.ssh/authorized_keys` that slipway did not write: sshd lets its key in without
/// slipway's forced command, so it bypasses roles entirely.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Foreign {
    /// 1-based line number in the file.
    pub line: usize,
    /// `ssh-ed25519 AAAAC3Nz…0ab comment`, or the start of the line when it names no key.
    pub summary: String,
}

impl Foreign {
    /// The warning `slipway keys` and `keys:add` print on stderr.
    pub fn warning(&self) -> String {
        format!(
            "warning: .ssh/authorized_keys line {} was not written by slipway ({}): it bypasses slipway's roles",
            self.line, self.summary
        )
    }
}

/// Whether `line` is exactly what slipway writes for one of `keys`: its forced command ends in
/// `ssh-serve --key NAME` and the key after the options is NAME's key in the database. A line
/// carrying the marker with any other key (a forged line) is foreign.
fn written_by_slipway(line: &str, keys: &[store::keys::KeyRow]) -> bool {
    let Some(rest) = line.strip_prefix("command=\"") else { return false };
    let Some((command, key)) = rest.split_once("\",restrict,pty ") else { return false };
    let Some((_, name)) = command.rsplit_once(MARKER) else { return false };
    !command.contains('"') && keys.iter().any(|k| k.name == name && k.public_key == key)
}

/// The lines of `text` (an authorized_keys file) that slipway did not write; blank lines and
/// comments are not keys and are left out.
pub fn foreign_lines(text: &str, keys: &[store::keys::KeyRow]) -> Vec<Foreign> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .filter(|(_, l)| !written_by_slipway(l, keys))
        .map(|(i, l)| Foreign { line: i + 1, summary: summarize(l) })
        .collect()
}

/// `type AAAAC3NzaC1l…last3 comment` for a key line (options left out), else its first 40
/// characters; control characters dropped.
fn summarize(line: &str) -> String {
    let clean: String = line.chars().filter(|c| !c.is_control()).collect();
    let words: Vec<&str> = clean.split_whitespace().collect();
    let Some(at) = words.iter().position(|w| KEY_TYPES.contains(w)) else {
        let head: String = clean.chars().take(40).collect();
        return if clean.chars().count() > 40 { format!("{head}…") } else { head };
    };
    let blob = words.get(at + 1).copied().unwrap_or("");
    let short = if blob.chars().count() > 16 {
        let tail: String = blob.chars().rev().take(3).collect::<Vec<_>>().into_iter().rev().collect();
        format!("{}…{tail}", blob.chars().take(12).collect::<String>())
    } else {
        blob.to_string()
    };
    let mut out = format!("{} {short}", words[at]);
    let comment = words[(at + 2).min(words.len())..].join(" ");
    if !comment.is_empty() {
        out.push(' ');
        out.push_str(&comment.chars().take(60).collect::<String>());
    }
    out
}

/// The foreign lines of the home's `.ssh/authorized_keys` (none when it does not exist).
pub fn foreign(home: &Home, keys: &[store::keys::KeyRow]) -> Result<Vec<Foreign>, KeyError> {
    let path = home.authorized_keys();
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(foreign_lines(&text, keys)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(KeyError::Io { path: path.display().to_string(), source }),
    }
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHv2m0mRpL1v8S7yUvLl3bJ1S7pWmGz1p5nK8l3bQ0ab alice@laptop";

    #[test]
    fn key_names() {
        assert!(validate_name("alice").is_ok());
        assert!(validate_name("alice@laptop.2").is_ok());
        for bad in ["", "-x", "a b", "a\"b", "a,command=x", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn public_keys_are_normalised_and_options_refused() {
        assert_eq!(parse_public_key(&format!("{KEY}\n")).unwrap(), KEY);
        assert!(parse_public_key("command=\"sh\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI x").is_err());
        assert!(parse_public_key("").is_err());
        assert!(parse_public_key(&format!("{KEY}\n{KEY}")).is_err());
        assert!(parse_public_key("ssh-ed25519 not*base64*at*all").is_err());
        let options = parse_public_key(&format!("from=\"10.0.0.1\" {KEY}"));
        assert!(matches!(options, Err(KeyError::HasOptions(_))), "{options:?}");
        let options = parse_public_key(&format!("no-pty,restrict {KEY}"));
        assert!(matches!(options, Err(KeyError::HasOptions(_))), "{options:?}");
        let stripped = parse_public_key(&format!("{KEY} \"quoted\"")).unwrap();
        assert!(!stripped.contains('"'));
    }

    #[test]
    fn authorized_line_shape() {
        let line = authorized_line("/usr/local/bin/slipway", "/var/lib/slipway", "alice", KEY);
        assert!(line.starts_with(
            "command=\"/usr/local/bin/slipway --home /var/lib/slipway ssh-serve --key alice\",restrict,pty ssh-ed25519 "
        ));
    }

    fn row(name: &str, key: &str) -> store::keys::KeyRow {
        store::keys::KeyRow {
            name: name.into(),
            public_key: key.into(),
            fingerprint: String::new(),
            created_at: String::new(),
            role: Role::Admin,
            apps: vec![],
            allow_run: false,
        }
    }

    #[test]
    fn foreign_lines_are_those_slipway_did_not_write() {
        const OTHER: &str =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE0therKeyXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXzz9 mallory@box";
        let keys = [row("alice", KEY)];
        let ours = authorized_line("/usr/bin/slipway", "/h", "alice", KEY);
        let forged = authorized_line("/usr/bin/slipway", "/h", "alice", OTHER);
        let text = format!(
            "{ours}\n\n# a comment\n{OTHER}\n{forged}\nno-pty,from=\"10.0.0.1\" {OTHER}\ngarbage line that is long enough to be cut somewhere\n"
        );
        let found = foreign_lines(&text, &keys);
        let lines: Vec<usize> = found.iter().map(|f| f.line).collect();
        assert_eq!(lines, [4, 5, 6, 7]);
        assert_eq!(found[0].summary, "ssh-ed25519 AAAAC3NzaC1l…zz9 mallory@box");
        assert_eq!(found[1].summary, found[0].summary, "a forged slipway line names its key");
        assert_eq!(found[3].summary, "garbage line that is long enough to be c…");
        assert_eq!(
            found[0].warning(),
            "warning: .ssh/authorized_keys line 4 was not written by slipway (ssh-ed25519 AAAAC3NzaC1l…zz9 mallory@box): it bypasses slipway's roles"
        );
        assert!(foreign_lines(&format!("{ours}\n"), &keys).is_empty());
        assert_eq!(foreign_lines(&format!("{ours}\n"), &[]).len(), 1, "a key no longer in the database");
    }

    #[test]
    fn unsafe_paths_are_refused() {
        assert!(safe_for_forced_command(Path::new("/tmp/a b")).is_err());
        assert!(safe_for_forced_command(Path::new("/tmp/a\"b")).is_err());
        assert!(safe_for_forced_command(Path::new("/tmp/.tmpAb_9-x")).is_ok());
    }
}
