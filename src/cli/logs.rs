//! `logs APP [-n N] [-t] [--ps TYPE|DYNO] [--source app|slipway|router]`.

use super::{app_name, open_store};
use crate::home::Home;
use crate::logs::follow::{self, Flow};
use crate::logs::read::{self, Filter};
use crate::logs::Source;
use crate::store;

pub fn show(
    home: &Home,
    app: &str,
    lines: usize,
    tail: bool,
    ps: Option<String>,
    source: Option<String>,
) -> anyhow::Result<i32> {
    let name = app_name(app)?;
    let store = open_store(home)?;
    store::apps::require(store.conn(), &name)?;
    drop(store);
    let filter = Filter { source: source.as_deref().and_then(Source::parse), dyno: ps };
    let path = home.app_log(&name);
    if !tail {
        for line in read::last_lines(&path, lines, &filter)? {
            if print_line(&line).is_err() {
                break; // the reader has seen enough
            }
        }
        return Ok(0);
    }
    follow::tail(
        &path,
        lines,
        &filter,
        |line| match print_line(line) {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop,
        },
        reader_gone,
    )?;
    Ok(0)
}

/// One line, flushed at once (over SSH each line must arrive as it happens). A reader that
/// went away (`| head`, a closed SSH session) is the normal end, not an error.
fn print_line(line: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

/// While following, notices a closed stdout even when no line arrives to fail on.
fn reader_gone() -> bool {
    crate::job::reader_gone(std::io::stdout())
}
