//! Build output in Heroku's shape (HEROKU.md): steps start with `-----> `, the output of the
//! commands a build runs is indented by 7 spaces, errors and warnings start with ` !     `.
//! Everything goes to stderr, which git relays to the pushing client as `remote: ` lines.

use std::io::Write;

pub fn step(message: &str) {
    emit(&format!("-----> {message}"));
}

pub fn detail(message: &str) {
    emit(&format!("       {message}"));
}

pub fn error(message: &str) {
    for line in message.lines() {
        emit(&format!(" !     {line}"));
    }
}

pub fn warn(message: &str) {
    error(message);
}

fn emit(line: &str) {
    let mut err = std::io::stderr().lock();
    if writeln!(err, "{line}").and_then(|_| err.flush()).is_err() {
        // The client is gone (Ctrl-C on `git push`): whatever runs for it should stop.
        crate::job::cancel();
    }
}
