//! TLS certificates of the apps (issue 11): where they live and how they are read.
//!
//! Certificates and their keys are files, not rows: the router (which must not open
//! `slipway.db`, see docs/SECURITY.md) reads them at handshake time, and they are blobs like slugs.
//! Everything TLS of an app is in `certs/<app>/` (0700; files 0600, written via a fresh temp
//! file and a rename, never through a symbolic link):
//!
//! | file | what |
//! |---|---|
//! | `manual-<host>.pem` | a certificate added with `certs:add` (`<host>`: its first DNS name, `*` written as `_`) |
//! | `acme-<host>.pem` | a certificate issued by ACME for `<host>` |
//! | `auto` | present while `certs:auto:enable` is on |
//! | `redirect` | present while plain-HTTP requests to the app are redirected to HTTPS |
//!
//! A `.pem` file holds the private key and the chain, leaf first (as haproxy's). Every writer
//! ends with [`mark_changed`], which rewrites `certs/.changed`; the router re-reads the
//! directory when that file's stamp ([`changed_stamp`]) moved.
//!
//! Run as root on a root-owned home, the router runs as a uid of its own (the last of
//! `app_uids`), so what it reads here is 0750/0640 and of its group ([`router_group`]); the
//! ACME account (`.acme/`) and state files stay 0700/0600, root's alone.
//!
//! ACME challenges being answered live under `certs/.challenges/`: `http-01/<token>` holds the key
//! authorization the router answers `GET /.well-known/acme-challenge/<token>` with, on the HTTP
//! port and before any app routing; `tls-alpn-01/<host>.pem` is the challenge certificate (key
//! and certificate, as above) the router presents for `<host>` to a client offering only the
//! ALPN protocol `acme-tls/1`.

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::app::AppName;
use crate::home::Home;

/// Where a certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `certs:add`.
    Manual,
    /// Issued by ACME (`certs:auto:enable`).
    Acme,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Manual => "manual",
            Source::Acme => "acme",
        }
    }
}

/// `certs/`.
pub fn dir(home: &Home) -> PathBuf {
    home.root().join("certs")
}

/// `certs/<app>/`.
pub fn app_dir(home: &Home, app: &AppName) -> PathBuf {
    dir(home).join(app.as_str())
}

/// `certs/.challenges/http-01/`: one file per pending HTTP-01 token, holding its key
/// authorization.
pub fn http01_dir(home: &Home) -> PathBuf {
    dir(home).join(".challenges").join("http-01")
}

/// `certs/.challenges/tls-alpn-01/`: one `<host>.pem` per pending TLS-ALPN-01 challenge.
pub fn tls_alpn01_dir(home: &Home) -> PathBuf {
    dir(home).join(".challenges").join("tls-alpn-01")
}

/// The group that must read what the router reads here, when it is not the files' owner: the
/// router's own gid when this process is root on a root-owned home (the router then runs as
/// the reserved last uid of `app_uids`, see `crate::users::router_user`). `None` otherwise: the
/// router runs as the files' owner, and everything stays private to it (0700/0600).
pub fn router_group(home: &Home) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() || std::fs::metadata(home.root()).map_or(true, |m| m.uid() != 0) {
        return None;
    }
    crate::settings::Settings::load(home).ok().map(|s| crate::users::router_id(s.app_uids))
}

/// Makes `dir` (and its parents up to the home) a directory the router may read: 0750 and the
/// router's group when there is one ([`router_group`]), else 0700; never through a symbolic
/// link. An existing one gets the mode and group too.
pub fn ensure_dir(home: &Home, dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let group = router_group(home);
    let rel = dir
        .strip_prefix(home.root())
        .map_err(|_| io::Error::other(format!("{} is outside the home", dir.display())))?;
    let mut at = home.root().to_path_buf();
    for part in rel.components() {
        at.push(part);
        match std::fs::DirBuilder::new().mode(0o700).create(&at) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(err),
        }
        if !std::fs::symlink_metadata(&at)?.is_dir() {
            return Err(io::Error::other(format!("{} is not a directory", at.display())));
        }
        if let Some((uid, gid)) = crate::daemon::home_owner(home) {
            // A root daemon (ACME renewals) on the platform user's home: its dirs stay the user's.
            if std::fs::symlink_metadata(&at)?.uid() == 0 {
                std::os::unix::fs::lchown(&at, Some(uid), Some(gid))?;
            }
        }
        if at.starts_with(self::dir(home)) {
            if let Some(gid) = group {
                std::os::unix::fs::lchown(&at, None, Some(gid))?;
                std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o750))?;
            }
        }
    }
    Ok(())
}

/// Writes a file the router reads (a certificate, a flag, a challenge) into `dir` (made with
/// [`ensure_dir`]): 0640 and the router's group when there is one, else 0600.
pub fn write_file(home: &Home, path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path.parent().ok_or_else(|| io::Error::other("a file needs a directory"))?;
    ensure_dir(home, dir)?;
    match router_group(home) {
        Some(gid) => crate::fsutil::write_atomic_owned(path, contents, 0o640, Some((0, gid))),
        None => crate::fsutil::write_atomic_owned(path, contents, 0o600, crate::daemon::home_owner(home)),
    }
}

/// The file name of a certificate for `host` (its first DNS name): `manual-www.example.com.pem`,
/// `acme-_.example.com.pem` for `*.example.com`.
pub fn file_name(source: Source, host: &str) -> String {
    format!("{}-{}.pem", source.as_str(), host.replace('*', "_"))
}

/// Makes `certs/<app>/` when missing ([`ensure_dir`]: 0700, or 0750 for the router's group);
/// never through a symbolic link.
pub fn ensure_app_dir(home: &Home, app: &AppName) -> io::Result<PathBuf> {
    ensure_dir(home, &app_dir(home, app))?;
    Ok(app_dir(home, app))
}

/// Writes `pem` (key and chain) as the app's certificate `name` (a [`file_name`]), 0600 (0640
/// for the router's group, [`write_file`]), and tells the router.
pub fn write(home: &Home, app: &AppName, name: &str, pem: &[u8]) -> io::Result<()> {
    write_file(home, &app_dir(home, app).join(name), pem)?;
    mark_changed(home)
}

/// Removes the app's file `name` (a certificate or a flag) if present, and tells the router.
pub fn remove(home: &Home, app: &AppName, name: &str) -> io::Result<()> {
    crate::home::remove_if_present(&app_dir(home, app).join(name))?;
    mark_changed(home)
}

/// Sets or clears a flag file of the app (`auto`, `redirect`).
pub fn set_flag(home: &Home, app: &AppName, flag: &str, on: bool) -> io::Result<()> {
    if on {
        write(home, app, flag, b"")
    } else {
        remove(home, app, flag)
    }
}

/// True while the app's flag file (`auto`, `redirect`) is present.
pub fn flag(home: &Home, app: &AppName, flag: &str) -> bool {
    std::fs::symlink_metadata(app_dir(home, app).join(flag)).is_ok_and(|m| m.is_file())
}

/// Rewrites `certs/.changed`, whose stamp the router watches.
pub fn mark_changed(home: &Home) -> io::Result<()> {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    write_file(home, &dir(home).join(".changed"), now.as_nanos().to_string().as_bytes())
}

/// What identifies the last [`mark_changed`]: the inode and modification time of
/// `certs/.changed` (a rename makes a new inode), `None` when there is none.
pub fn changed_stamp(home: &Home) -> Option<(u64, SystemTime)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir(home).join(".changed")).ok()?;
    Some((meta.ino(), meta.modified().ok()?))
}

/// One certificate file, read and parsed.
#[derive(Debug)]
pub struct Loaded {
    pub app: String,
    pub source: Source,
    pub file: PathBuf,
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// The leaf's DNS names (subjectAltName; the subject's CN when it has none), lowercase.
    pub hosts: Vec<String>,
    /// The leaf's notAfter, seconds since the epoch.
    pub not_after: i64,
    pub not_before: i64,
    /// The leaf issuer's distinguished name.
    pub issuer: String,
}

/// Why a `.pem` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("it holds no certificate")]
    NoCertificate,
    #[error("it holds no private key")]
    NoKey,
    #[error("its certificate cannot be read: {0}")]
    Parse(String),
}

/// Parses PEM text holding a private key and a chain (in any order in the text; the chain's
/// order is kept).
pub fn parse(app: &str, source: Source, file: &Path, pem: &[u8]) -> Result<Loaded, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| CertError::Parse(e.to_string()))?;
    let leaf = chain.first().ok_or(CertError::NoCertificate)?;
    let key = PrivateKeyDer::from_pem_slice(pem).map_err(|_| CertError::NoKey)?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| CertError::Parse(e.to_string()))?;
    let mut hosts: Vec<String> = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                hosts.push(dns.to_ascii_lowercase());
            }
        }
    }
    if hosts.is_empty() {
        hosts.extend(
            cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_ascii_lowercase),
        );
    }
    Ok(Loaded {
        app: app.to_string(),
        source,
        file: file.to_path_buf(),
        hosts,
        not_after: cert.validity().not_after.timestamp(),
        not_before: cert.validity().not_before.timestamp(),
        issuer: cert.issuer().to_string(),
        chain,
        key,
    })
}

/// Every certificate of one app, skipping (and returning) those that cannot be read.
pub fn load_app(home: &Home, app: &str) -> (Vec<Loaded>, Vec<(PathBuf, CertError)>) {
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    let Ok(entries) = std::fs::read_dir(dir(home).join(app)) else { return (good, bad) };
    let mut names: Vec<String> = entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    names.sort();
    for name in names {
        let source = if name.starts_with("manual-") {
            Source::Manual
        } else if name.starts_with("acme-") {
            Source::Acme
        } else {
            continue;
        };
        if !name.ends_with(".pem") {
            continue;
        }
        let path = dir(home).join(app).join(&name);
        let read = crate::fsutil::read_beneath(&dir(home), Path::new(app).join(&name))
            .map_err(|e| CertError::Io(io::Error::other(e.to_string())));
        match read.and_then(|pem| parse(app, source, &path, pem.as_bytes())) {
            Ok(loaded) => good.push(loaded),
            Err(err) => bad.push((path, err)),
        }
    }
    (good, bad)
}

/// Every app's certificates (apps by directory name), skipping those that cannot be read.
pub fn load_all(home: &Home) -> (Vec<Loaded>, Vec<(PathBuf, CertError)>) {
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    let Ok(entries) = std::fs::read_dir(dir(home)) else { return (good, bad) };
    for entry in entries.flatten() {
        let Ok(app) = entry.file_name().into_string() else { continue };
        if app.starts_with('.') || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let (g, b) = load_app(home, &app);
        good.extend(g);
        bad.extend(b);
    }
    (good, bad)
}

/// True when a certificate name (`www.example.com`, `*.example.com`) covers `host` (one label
/// for a wildcard, as RFC 6125 says).
pub fn covers(name: &str, host: &str) -> bool {
    let (name, host) = (name.to_ascii_lowercase(), host.to_ascii_lowercase());
    match name.strip_prefix("*.") {
        Some(parent) => host.split_once('.').is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => name == host,
    }
}

/// Why `certs:add` refuses a bundle (each one sentence).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the private key does not match the certificate")]
    KeyMismatch,
    #[error("the private key cannot be used: {0}")]
    BadKey(String),
    #[error("the chain is out of order: certificate {0} is not issued by certificate {next} (put the leaf first, then each issuer)", next = .0 + 1)]
    ChainOrder(usize),
    #[error("the certificate expired at {0}")]
    Expired(String),
    #[error("the certificate ({names}) covers none of {app}'s hosts ({hosts})")]
    CoversNone { app: String, names: String, hosts: String },
}

/// What an accepted bundle covers of the app's hosts.
#[derive(Debug, PartialEq, Eq)]
pub struct Coverage {
    pub covered: Vec<String>,
    pub uncovered: Vec<String>,
}

/// Checks a bundle for `certs:add`: the chain is in order (each certificate issued by the
/// next), the key matches the leaf, the leaf has not expired at `now` (seconds since the
/// epoch), and it covers at least one of `app_hosts`.
pub fn check_bundle(loaded: &Loaded, now: i64, app_hosts: &[String]) -> Result<Coverage, Refusal> {
    if let Some(i) = chain_break(&loaded.chain) {
        return Err(Refusal::ChainOrder(i));
    }
    key_matches(&loaded.chain, &loaded.key)?;
    if loaded.not_after < now {
        return Err(Refusal::Expired(show_time(loaded.not_after)));
    }
    let (covered, uncovered): (Vec<String>, Vec<String>) =
        app_hosts.iter().cloned().partition(|host| loaded.hosts.iter().any(|name| covers(name, host)));
    if covered.is_empty() {
        return Err(Refusal::CoversNone {
            app: loaded.app.clone(),
            names: loaded.hosts.join(", "),
            hosts: app_hosts.join(", "),
        });
    }
    Ok(Coverage { covered, uncovered })
}

/// The key's public half is the leaf's (rustls compares the SubjectPublicKeyInfo).
fn key_matches(chain: &[CertificateDer<'static>], key: &PrivateKeyDer<'static>) -> Result<(), Refusal> {
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| Refusal::BadKey(e.to_string()))?;
    let certified = rustls::sign::CertifiedKey::new(chain.to_vec(), signing);
    match certified.keys_match() {
        Ok(()) => Ok(()),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(Refusal::KeyMismatch)
        }
        Err(e) => Err(Refusal::BadKey(e.to_string())),
    }
}

/// The first certificate (1-based) whose issuer is not the next certificate's subject.
pub fn chain_break(chain: &[CertificateDer<'static>]) -> Option<usize> {
    let names: Vec<Option<(Vec<u8>, Vec<u8>)>> = chain
        .iter()
        .map(|der| {
            let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
            Some((cert.issuer().as_raw().to_vec(), cert.subject().as_raw().to_vec()))
        })
        .collect();
    for (i, pair) in names.windows(2).enumerate() {
        match (&pair[0], &pair[1]) {
            (Some((issuer, _)), Some((_, next_subject))) if issuer == next_subject => {}
            _ => return Some(i + 1),
        }
    }
    None
}

/// `2026-03-01 12:00 UTC` for seconds since the epoch.
pub fn show_time(secs: i64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| secs.to_string())
}

/// Seconds since the epoch, now.
pub fn now_secs() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A CA and a leaf it signed for `names`, valid from `from` to `until` (seconds from now).
    pub(crate) fn issued(names: &[&str], from: i64, until: i64) -> (String, String, String) {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name.push(rcgen::DnType::CommonName, "Test CA");
        let ca_cert = ca.self_signed(&ca_key).expect("ca");
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::seconds(from);
        params.not_after = now + time::Duration::seconds(until);
        let leaf = params.signed_by(&key, &issuer).expect("leaf");
        (key.serialize_pem(), leaf.pem(), ca_cert.pem())
    }

    fn bundle(pem: &str) -> Loaded {
        parse("web", Source::Manual, Path::new("b.pem"), pem.as_bytes()).expect("parses")
    }

    #[test]
    fn bundles_are_checked_for_key_order_expiry_and_coverage() {
        let hosts = vec!["web.example.com".to_string(), "www.shop.io".to_string()];
        let now = now_secs();
        let (key, leaf, ca) = issued(&["www.shop.io"], -3600, 86_400);
        let (other_key, _, _) = issued(&["x"], -3600, 86_400);
        let (old_key, old_leaf, old_ca) = issued(&["www.shop.io"], -7200, -3600);
        let (k2, l2, c2) = issued(&["*.elsewhere.org"], -3600, 86_400);
        let table: Vec<(&str, String, Result<Coverage, &str>)> = vec![
            (
                "good, with a note for the host it misses",
                format!("{key}{leaf}{ca}"),
                Ok(Coverage {
                    covered: vec!["www.shop.io".into()],
                    uncovered: vec!["web.example.com".into()],
                }),
            ),
            (
                "a leaf alone is a chain in order",
                format!("{leaf}{key}"),
                Ok(Coverage {
                    covered: vec!["www.shop.io".into()],
                    uncovered: vec!["web.example.com".into()],
                }),
            ),
            ("wrong key", format!("{other_key}{leaf}{ca}"), Err("does not match")),
            (
                "reversed chain",
                format!("{key}{ca}{leaf}"),
                Err("out of order: certificate 1 is not issued by certificate 2"),
            ),
            ("expired", format!("{old_key}{old_leaf}{old_ca}"), Err("expired at")),
            (
                "covers nothing of the app",
                format!("{k2}{l2}{c2}"),
                Err("covers none of web's hosts (web.example.com, www.shop.io)"),
            ),
        ];
        for (what, pem, want) in table {
            let got = check_bundle(&bundle(&pem), now, &hosts);
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{what}"),
                (Err(got), Err(want)) => assert!(got.to_string().contains(want), "{what}: {got}"),
                (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn wildcards_cover_one_label() {
        for (name, host, want) in [
            ("www.example.com", "www.example.com", true),
            ("WWW.example.com", "www.EXAMPLE.com", true),
            ("*.example.com", "www.example.com", true),
            ("*.example.com", "example.com", false),
            ("*.example.com", "a.b.example.com", false),
            ("*.example.com", ".example.com", false),
            ("www.example.com", "example.com", false),
        ] {
            assert_eq!(covers(name, host), want, "{name} vs {host}");
        }
    }

    #[test]
    fn a_self_signed_pem_parses_with_its_names_and_dates() {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["www.example.com".into(), "*.example.org".into()])
            .expect("params");
        let cert = params.self_signed(&key).expect("cert");
        let pem = format!("{}{}", key.serialize_pem(), cert.pem());
        let loaded = parse("web", Source::Manual, Path::new("x.pem"), pem.as_bytes()).expect("parses");
        assert_eq!(loaded.hosts, vec!["www.example.com", "*.example.org"]);
        assert!(loaded.not_after > loaded.not_before);
        assert_eq!(loaded.chain.len(), 1);
        assert!(matches!(
            parse("web", Source::Manual, Path::new("x.pem"), cert.pem().as_bytes()),
            Err(CertError::NoKey)
        ));
        assert_eq!(file_name(Source::Acme, "*.example.org"), "acme-_.example.org.pem");
    }
}
