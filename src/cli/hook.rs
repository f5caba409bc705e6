//! `hook pre-receive`: run by git inside the app's bare repo; see `deploy`.

use crate::build::output;
use crate::deploy::{self, HookContext};

pub fn pre_receive(who: Option<&str>) -> anyhow::Result<i32> {
    let ctx = match HookContext::from_repo(std::path::Path::new(".")) {
        Ok(ctx) => ctx,
        Err(message) => {
            output::error(&message);
            return Ok(1);
        }
    };
    let pushed_by = who
        .map(str::to_string)
        .or_else(|| std::env::var("SLIPWAY_PUSHED_BY").ok().filter(|k| crate::keys::validate_name(k).is_ok()))
        .unwrap_or_else(super::local_user);
    match deploy::pre_receive(&ctx, std::io::stdin().lock(), &pushed_by) {
        Ok(()) => Ok(0),
        Err(message) => {
            output::error(&message);
            Ok(1)
        }
    }
}
