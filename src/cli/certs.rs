//! `certs APP [--json]`, `certs:add APP CERT KEY`, `certs:remove APP HOST`,
//! `certs:auto:enable|disable APP`, `certs:redirect:enable|disable APP`.
//!
//! Certificates are files in `certs/<app>/` (see `crate::certs`); the router picks up every change
//! through `certs/.changed`, so none of these commands needs the daemon. Automatic certificates
//! are ordered by the daemon's ACME loop (`crate::acme`), which notices `certs:auto:enable`
//! within seconds.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context};
use serde::Serialize;

use super::{app_name, open_store, out, print_json, print_table};
use crate::acme;
use crate::app::AppName;
use crate::certs::{self, Source};
use crate::home::Home;
use crate::settings::Settings;
use crate::store;

/// The largest PEM input read (a key and a long chain are a few KiB).
const MAX_PEM_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Serialize)]
struct CertView {
    /// The names the certificate is for.
    hosts: Vec<String>,
    issuer: String,
    /// RFC 3339, UTC.
    expires_at: String,
    days_left: i64,
    /// `auto` (ACME) or `manual` (`certs:add`).
    #[serde(rename = "type")]
    kind: &'static str,
    file: String,
}

#[derive(Debug, Serialize)]
struct HostView {
    host: String,
    /// The file of the certificate serving it (the latest expiring), if any.
    certificate: Option<String>,
    /// With automatic certificates on, for a host without a certificate: `pending`, `failing`,
    /// or `unsupported` (wildcards and `*.localhost` cannot be validated); for a host with one,
    /// `failing` while its renewal fails (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    acme: Option<AcmeView>,
}

#[derive(Debug, Serialize)]
struct AcmeView {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failures: Option<u32>,
    /// RFC 3339, UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_attempt: Option<String>,
}

#[derive(Debug, Serialize)]
struct AppCertsView {
    app: String,
    /// Automatic certificates (`certs:auto:enable`).
    auto: bool,
    /// Plain-HTTP requests redirected to HTTPS (`certs:redirect:enable`).
    redirect: bool,
    certificates: Vec<CertView>,
    hosts: Vec<HostView>,
    /// Files in `certs/<app>/` that cannot be read, with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unreadable: Vec<String>,
}

fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| secs.to_string())
}

/// The app's hosts: its default host, then its custom domains.
fn hosts_of(home: &Home, name: &AppName) -> anyhow::Result<Vec<String>> {
    let settings = Settings::load(home)?;
    let store = open_store(home)?;
    store::apps::require(store.conn(), name)?;
    let mut hosts = vec![super::default_host(name, &settings.domain)];
    hosts.extend(store::domains::for_app(store.conn(), name)?.into_iter().map(|d| d.host));
    Ok(hosts)
}

fn view(home: &Home, name: &AppName) -> anyhow::Result<AppCertsView> {
    let hosts = hosts_of(home, name)?;
    let (loaded, bad) = certs::load_app(home, name.as_str());
    let auto = certs::flag(home, name, "auto");
    let state = acme::load_state(home, name.as_str());
    let now = certs::now_secs();
    let file_of =
        |c: &certs::Loaded| c.file.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let certificates = loaded
        .iter()
        .map(|c| CertView {
            hosts: c.hosts.clone(),
            issuer: c.issuer.clone(),
            expires_at: rfc3339(c.not_after),
            days_left: (c.not_after - now).div_euclid(86_400),
            kind: match c.source {
                Source::Acme => "auto",
                Source::Manual => "manual",
            },
            file: file_of(c),
        })
        .collect();
    let host_views = hosts
        .into_iter()
        .map(|host| {
            let serving = loaded
                .iter()
                .filter(|c| c.not_after > now && c.hosts.iter().any(|n| certs::covers(n, &host)))
                .max_by_key(|c| c.not_after);
            let failing = state.hosts.get(&host).filter(|s| s.failures > 0).map(|s| AcmeView {
                status: "failing",
                error: s.error.clone(),
                failures: Some(s.failures),
                next_attempt: Some(rfc3339(s.next_attempt)),
            });
            let acme = match (auto, serving) {
                (false, _) => None,
                (true, None) if !acme::eligible(&host) => {
                    Some(AcmeView { status: "unsupported", error: None, failures: None, next_attempt: None })
                }
                (true, None) => Some(failing.unwrap_or(AcmeView {
                    status: "pending",
                    error: None,
                    failures: None,
                    next_attempt: None,
                })),
                // A certificate serves it; shown only while its renewal is failing.
                (true, Some(_)) => failing,
            };
            HostView { host, certificate: serving.map(file_of), acme }
        })
        .collect();
    Ok(AppCertsView {
        app: name.to_string(),
        auto,
        redirect: certs::flag(home, name, "redirect"),
        certificates,
        hosts: host_views,
        unreadable: bad
            .into_iter()
            .map(|(path, err)| format!("{}: {err}", path.file_name().unwrap_or_default().to_string_lossy()))
            .collect(),
    })
}

pub fn list(home: &Home, app: &str, json: bool) -> anyhow::Result<i32> {
    let name = app_name(app)?;
    let v = view(home, &name)?;
    if json {
        return print_json(&v);
    }
    out(&format!("=== {name} Certificates"));
    if v.certificates.is_empty() {
        out(&format!(
            "None yet. Add one: slipway certs:add {name} CERT.pem KEY.pem, or slipway certs:auto:enable {name}"
        ));
    } else {
        let rows: Vec<Vec<String>> = v
            .certificates
            .iter()
            .map(|c| {
                vec![
                    c.hosts.join(", "),
                    c.issuer.clone(),
                    c.expires_at.replace('T', " "),
                    c.days_left.to_string(),
                    c.kind.to_string(),
                ]
            })
            .collect();
        print_table(&["HOSTS", "ISSUER", "EXPIRES", "DAYS LEFT", "TYPE"], &rows);
    }
    out("");
    let on = |b: bool| if b { "on" } else { "off" };
    out(&format!("Automatic certificates (ACME): {}", on(v.auto)));
    out(&format!("Redirect HTTP to HTTPS: {}", on(v.redirect)));
    let waiting: Vec<&HostView> = v.hosts.iter().filter(|h| h.certificate.is_none()).collect();
    if !waiting.is_empty() {
        out("");
        out(&format!("=== {name} Hosts without a certificate"));
        for h in waiting {
            let status = match &h.acme {
                None => "no certificate".to_string(),
                Some(a) if a.status == "failing" => failing_line(Some(a)),
                Some(a) if a.status == "unsupported" => "ACME cannot validate this host".to_string(),
                Some(_) => "pending".to_string(),
            };
            out(&format!("{}  {status}", h.host));
        }
    }
    let renewals: Vec<&HostView> = v
        .hosts
        .iter()
        .filter(|h| h.certificate.is_some() && h.acme.as_ref().is_some_and(|a| a.status == "failing"))
        .collect();
    if !renewals.is_empty() {
        out("");
        out(&format!("=== {name} Renewals failing"));
        for h in renewals {
            out(&format!("{}  {}", h.host, failing_line(h.acme.as_ref())));
        }
    }
    for bad in &v.unreadable {
        eprintln!("warning: {bad}");
    }
    Ok(0)
}

/// `failing: <reason> (next attempt <time>)`.
fn failing_line(acme: Option<&AcmeView>) -> String {
    let (error, next) = acme.map_or((None, None), |a| (a.error.as_deref(), a.next_attempt.as_deref()));
    format!(
        "failing: {} (next attempt {})",
        error.unwrap_or("unknown"),
        next.unwrap_or("-").replace('T', " ")
    )
}

/// Reads a PEM argument: a file, or stdin for `-` (read once; `certs:add APP - -` takes key
/// and chain in one stream).
fn read_pem(arg: &str, stdin: &mut Option<String>) -> anyhow::Result<String> {
    if arg == "-" {
        if let Some(text) = stdin {
            return Ok(text.clone());
        }
        let mut text = String::new();
        std::io::stdin()
            .take(MAX_PEM_BYTES)
            .read_to_string(&mut text)
            .context("reading the certificate from stdin")?;
        *stdin = Some(text.clone());
        return Ok(text);
    }
    let mut text = String::new();
    std::fs::File::open(arg)
        .and_then(|f| f.take(MAX_PEM_BYTES).read_to_string(&mut text))
        .with_context(|| format!("cannot read {arg}"))?;
    Ok(text)
}

pub fn add(home: &Home, app: &str, cert: &str, key: &str, who: Option<&str>) -> anyhow::Result<i32> {
    let name = app_name(app)?;
    if who.is_some() && (cert != "-" || key != "-") {
        // Paths would name files on the server, readable by slipway: over SSH only stdin.
        bail!(
            "over SSH, send the certificate and key on stdin: ssh SERVER certs:add {name} - - < bundle.pem"
        );
    }
    let hosts = hosts_of(home, &name)?;
    let mut stdin = None;
    let cert_text = read_pem(cert, &mut stdin)?;
    let key_text = if key == cert && cert == "-" { String::new() } else { read_pem(key, &mut stdin)? };
    let pem = format!("{}\n{}", key_text.trim_end(), cert_text);
    let loaded = certs::parse(name.as_str(), Source::Manual, Path::new("-"), pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("the certificate was not added: {e}"))?;
    let coverage = certs::check_bundle(&loaded, certs::now_secs(), &hosts)
        .map_err(|e| anyhow::anyhow!("the certificate was not added: {e}"))?;
    let first = loaded.hosts.first().cloned().unwrap_or_default();
    let file = certs::file_name(Source::Manual, &first);
    certs::write(home, &name, &file, pem.as_bytes()).with_context(|| format!("writing {file}"))?;
    let expiry = certs::show_time(loaded.not_after);
    crate::logs::append_event(
        &home.app_log(&name),
        crate::logs::Source::Slipway,
        "api",
        &format!("Added certificate for {} by {}", coverage.covered.join(", "), super::actor(who)),
    );
    out(&format!("Added a certificate for {} to {name} (expires {expiry})", coverage.covered.join(", ")));
    if !coverage.uncovered.is_empty() {
        out(&format!("Note: it does not cover {}", coverage.uncovered.join(", ")));
    }
    Ok(0)
}

pub fn remove(home: &Home, app: &str, host: &str, who: Option<&str>) -> anyhow::Result<i32> {
    let name = app_name(app)?;
    let host = store::domains::validate_host(host.trim_start_matches("*.")).map(|h| {
        if host.starts_with("*.") {
            format!("*.{h}")
        } else {
            h
        }
    })?;
    {
        let store = open_store(home)?;
        store::apps::require(store.conn(), &name)?;
    }
    let (loaded, _) = certs::load_app(home, name.as_str());
    let matching: Vec<&certs::Loaded> = loaded
        .iter()
        .filter(|c| {
            c.source == Source::Manual && c.hosts.iter().any(|n| n == &host || certs::covers(n, &host))
        })
        .collect();
    if matching.is_empty() {
        bail!("{name} has no manual certificate covering {host}");
    }
    for c in matching {
        let file = c.file.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        certs::remove(home, &name, &file).with_context(|| format!("removing {file}"))?;
        crate::logs::append_event(
            &home.app_log(&name),
            crate::logs::Source::Slipway,
            "api",
            &format!("Removed certificate for {} by {}", c.hosts.join(", "), super::actor(who)),
        );
        out(&format!("Removed the certificate for {} from {name}", c.hosts.join(", ")));
    }
    Ok(0)
}

/// `certs:auto:enable|disable` and `certs:redirect:enable|disable`.
pub fn set_flag(home: &Home, app: &str, flag: &str, on: bool, who: Option<&str>) -> anyhow::Result<i32> {
    let name = app_name(app)?;
    let hosts = hosts_of(home, &name)?;
    certs::set_flag(home, &name, flag, on).with_context(|| format!("writing certs/{name}/{flag}"))?;
    let what = match flag {
        "auto" => "Automatic certificates",
        _ => "Redirect from HTTP to HTTPS",
    };
    let state = if on { "enabled" } else { "disabled" };
    crate::logs::append_event(
        &home.app_log(&name),
        crate::logs::Source::Slipway,
        "api",
        &format!("{what} {state} by {}", super::actor(who)),
    );
    out(&format!("{what} {state} for {name}"));
    if flag == "auto" && on {
        let (eligible, other): (Vec<String>, Vec<String>) =
            hosts.into_iter().partition(|h| acme::eligible(h));
        if !eligible.is_empty() {
            out(&format!(
                "The daemon orders certificates for {} (see: slipway certs {name})",
                eligible.join(", ")
            ));
        }
        if !other.is_empty() {
            out(&format!(
                "Note: ACME cannot validate {}; add a certificate for them with certs:add",
                other.join(", ")
            ));
        }
        if crate::daemon::running_pid(home).is_none() {
            eprintln!("warning: the slipway daemon is not running; certificates are ordered once it starts");
        }
    }
    if flag == "redirect" && on {
        let (loaded, _) = certs::load_app(home, name.as_str());
        if loaded.is_empty() {
            out("Note: the redirect applies once the app has a certificate");
        }
    }
    Ok(0)
}
