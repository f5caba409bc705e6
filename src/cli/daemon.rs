//! `daemon [--foreground|--stop]` and `status`.

use std::time::Duration;

use super::out;
use crate::daemon::{
    self, client,
    protocol::{Request, Response},
};
use crate::home::Home;

pub fn daemon(home: &Home, foreground: bool, stop: bool) -> anyhow::Result<i32> {
    if stop {
        daemon::stop(home)?;
        out("slipway daemon stopped; dynos keep running");
        return Ok(0);
    }
    daemon::start(home, foreground)?;
    Ok(0)
}

pub fn status(home: &Home) -> anyhow::Result<i32> {
    match client::call(home, &Request::Status, Duration::from_secs(10)) {
        Ok(Response::Status { pid, version, dynos, .. }) => {
            out(&format!(
                "slipway daemon {version} is running (pid {pid}, {dynos} dynos) for {}",
                home.root().display()
            ));
            Ok(0)
        }
        Ok(other) => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
        Err(e) => Err(e.into()),
    }
}
