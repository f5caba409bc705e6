//! Build output in Heroku's shape (HEROKU.md): steps start with `-----> `, the output of the
//! commands a build runs is indented by 7 spaces, errors and warnings start with ` !     `.
//! Everything goes to stderr, which git relays to the pushing client as `remote: ` lines.

use std::io::{BufRead, BufReader, Read, Write};

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
    let _ = writeln!(err, "{line}");
    let _ = err.flush();
}

/// Copies a command's output to the client line by line, indented, as it arrives.
pub fn relay_indented(stream: impl Read) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    while let Ok(n) = reader.read_until(b'\n', &mut buf) {
        if n == 0 {
            break;
        }
        let text = String::from_utf8_lossy(&buf);
        // pip redraws progress with \r; keep only what the line finally says.
        let text = text.trim_end_matches(['\n', '\r']);
        let text = text.rsplit('\r').next().unwrap_or(text);
        detail(text);
        buf.clear();
    }
}
