//! Settings from the environment (DESIGN.md, "Settings"). Read once per process; a bad value is
//! an error naming the variable, never a silent default.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Settings {
    /// Dyno `PORT`s are allocated from this range (`SLIPWAY_PORTS`, default 5000-5999).
    pub ports: RangeInclusive<u16>,
    /// A web dyno must accept TCP on its port within this time (`SLIPWAY_BOOT_TIMEOUT`, 60 s).
    pub boot_timeout: Duration,
    /// SIGTERM → SIGKILL grace period (`SLIPWAY_STOP_TIMEOUT`, 30 s).
    pub stop_timeout: Duration,
    /// Apps answer at `<app>.<domain>` (`SLIPWAY_DOMAIN`, localhost).
    pub domain: String,
    /// The interpreter used for builds (`SLIPWAY_PYTHON`, default `python3` on PATH).
    pub python: String,
    /// App log rotation (`SLIPWAY_LOG_MAX_MB`, 20; `SLIPWAY_LOG_FILES`, 5).
    pub log_policy: crate::logs::LogPolicy,
    /// Where the HTTP router listens (`SLIPWAY_ROUTER_ADDR`, default 0.0.0.0:8080).
    pub router_addr: SocketAddr,
    /// How long the router waits for a dyno's response head before answering 503 H12
    /// (`SLIPWAY_ROUTER_TIMEOUT`, seconds, default 30 as on Heroku).
    pub router_timeout: Duration,
    /// A build is killed after this long (`SLIPWAY_BUILD_TIMEOUT`, 900 s).
    pub build_timeout: Duration,
    /// The release phase fails after this long (`SLIPWAY_RELEASE_TIMEOUT`, 3600 s).
    pub release_timeout: Duration,
    /// Slugs and release dirs of this many newest releases are kept (`SLIPWAY_KEEP_RELEASES`, 10).
    pub keep_releases: usize,
    /// Larger slugs are refused (`SLIPWAY_MAX_SLUG_MB`, 500).
    pub max_slug_bytes: u64,
    /// Builds see the app's config vars only when `SLIPWAY_BUILD_CONFIG=1`.
    pub build_config: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("{var}={value:?} is not valid: {why}")]
pub struct SettingsError {
    var: &'static str,
    value: String,
    why: &'static str,
}

impl Settings {
    pub fn from_env() -> Result<Settings, SettingsError> {
        Ok(Settings {
            ports: ports_from_env()?,
            boot_timeout: seconds_from_env("SLIPWAY_BOOT_TIMEOUT", 60)?,
            stop_timeout: seconds_from_env("SLIPWAY_STOP_TIMEOUT", 30)?,
            domain: var("SLIPWAY_DOMAIN").unwrap_or_else(|| "localhost".into()),
            python: var("SLIPWAY_PYTHON").unwrap_or_else(|| "python3".into()),
            log_policy: log_policy_from_env()?,
            router_addr: router_addr_from_env()?,
            router_timeout: positive_seconds_from_env("SLIPWAY_ROUTER_TIMEOUT", 30)?,
            build_timeout: seconds_from_env("SLIPWAY_BUILD_TIMEOUT", 900)?,
            release_timeout: seconds_from_env("SLIPWAY_RELEASE_TIMEOUT", 3600)?,
            keep_releases: count_from_env("SLIPWAY_KEEP_RELEASES", 10, 1..=1000)?,
            max_slug_bytes: count_from_env("SLIPWAY_MAX_SLUG_MB", 500, 1..=100_000)? as u64 * 1024 * 1024,
            build_config: var("SLIPWAY_BUILD_CONFIG").is_some_and(|v| v.trim() == "1"),
        })
    }
}

impl Settings {
    /// Where the router serves an app: `http://<app>.<SLIPWAY_DOMAIN>[:port]/`.
    pub fn app_url(&self, app: &str) -> String {
        app_url(&self.domain, self.router_addr.port(), app)
    }
}

pub fn app_url(domain: &str, router_port: u16, app: &str) -> String {
    match router_port {
        80 => format!("http://{app}.{domain}/"),
        port => format!("http://{app}.{domain}:{port}/"),
    }
}

/// `SLIPWAY_LOG_MAX_MB` (may be fractional, e.g. 0.5) and `SLIPWAY_LOG_FILES` (1 to 100).
pub fn log_policy_from_env() -> Result<crate::logs::LogPolicy, SettingsError> {
    let mut policy = crate::logs::LogPolicy::default();
    if let Some(value) = var("SLIPWAY_LOG_MAX_MB") {
        let mb = value.trim().parse::<f64>().ok().filter(|m| m.is_finite() && *m >= 0.001 && *m <= 1e6);
        let mb = mb.ok_or(SettingsError {
            var: "SLIPWAY_LOG_MAX_MB",
            value,
            why: "expected megabytes, at least 0.001",
        })?;
        policy.max_bytes = (mb * 1024.0 * 1024.0) as u64;
    }
    if let Some(value) = var("SLIPWAY_LOG_FILES") {
        let files = value.trim().parse::<u32>().ok().filter(|n| (1..=100).contains(n));
        policy.files =
            files.ok_or(SettingsError { var: "SLIPWAY_LOG_FILES", value, why: "expected 1 to 100" })?;
    }
    Ok(policy)
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn seconds_from_env(name: &'static str, default: u64) -> Result<Duration, SettingsError> {
    let Some(value) = var(name) else {
        return Ok(Duration::from_secs(default));
    };
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 86_400.0)
        .map(Duration::from_secs_f64)
        .ok_or(SettingsError { var: name, value, why: "expected a number of seconds" })
}

/// Like [`seconds_from_env`], but zero is refused: a router timeout of 0 would fail every request.
fn positive_seconds_from_env(name: &'static str, default: u64) -> Result<Duration, SettingsError> {
    let duration = seconds_from_env(name, default)?;
    if duration.is_zero() {
        let value = var(name).unwrap_or_default();
        return Err(SettingsError { var: name, value, why: "expected a number of seconds above 0" });
    }
    Ok(duration)
}

fn router_addr_from_env() -> Result<SocketAddr, SettingsError> {
    let Some(value) = var("SLIPWAY_ROUTER_ADDR") else {
        return Ok(SocketAddr::from(([0, 0, 0, 0], 8080)));
    };
    value.trim().parse::<SocketAddr>().map_err(|_| SettingsError {
        var: "SLIPWAY_ROUTER_ADDR",
        value,
        why: "expected IP:PORT, e.g. 0.0.0.0:8080 or [::]:8080",
    })
}

fn count_from_env(
    name: &'static str,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
) -> Result<usize, SettingsError> {
    let Some(value) = var(name) else { return Ok(default) };
    value.trim().parse::<usize>().ok().filter(|n| range.contains(n)).ok_or(SettingsError {
        var: name,
        value,
        why: "expected a whole number in range",
    })
}

fn ports_from_env() -> Result<RangeInclusive<u16>, SettingsError> {
    let Some(value) = var("SLIPWAY_PORTS") else {
        return Ok(5000..=5999);
    };
    parse_port_range(&value).ok_or(SettingsError {
        var: "SLIPWAY_PORTS",
        value,
        why: "expected START-END with 1024 <= START <= END <= 65535",
    })
}

pub fn parse_port_range(s: &str) -> Option<RangeInclusive<u16>> {
    let (a, b) = s.trim().split_once('-')?;
    let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (1024 <= a && a <= b).then_some(a..=b)
}

#[cfg(test)]
mod tests {
    use super::parse_port_range;

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("5000-5999"), Some(5000..=5999));
        assert_eq!(parse_port_range(" 7000 - 7000 "), Some(7000..=7000));
        assert_eq!(parse_port_range("80-90"), None);
        assert_eq!(parse_port_range("6000-5000"), None);
        assert_eq!(parse_port_range("5000"), None);
        assert_eq!(parse_port_range("a-b"), None);
    }
}
