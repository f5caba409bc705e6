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

/// How long each phase of a push took, in the order they ran.
pub type Phases<'a> = [(&'a str, std::time::Duration)];

/// The line that ends every successful push, so users and the benchmark see where the time
/// went: `Done in 0.31 s (export 0.01, deps 0.00, release 0.02, boot 0.05, switch 0.01)`.
pub fn done_line(total: std::time::Duration, phases: &Phases<'_>) -> String {
    let parts: Vec<String> =
        phases.iter().map(|(name, took)| format!("{name} {:.2}", took.as_secs_f64())).collect();
    format!("Done in {:.2} s ({})", total.as_secs_f64(), parts.join(", "))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn done_line_names_every_phase_in_seconds() {
        let ms = Duration::from_millis;
        let cases: &[(Duration, &super::Phases<'_>, &str)] = &[
            (
                ms(310),
                &[
                    ("export", ms(10)),
                    ("deps", ms(0)),
                    ("release", ms(20)),
                    ("boot", ms(50)),
                    ("switch", ms(10)),
                ],
                "Done in 0.31 s (export 0.01, deps 0.00, release 0.02, boot 0.05, switch 0.01)",
            ),
            (ms(3_456), &[("boot", ms(3_004))], "Done in 3.46 s (boot 3.00)"),
            (ms(0), &[], "Done in 0.00 s ()"),
        ];
        for (total, phases, want) in cases {
            assert_eq!(super::done_line(*total, phases), *want);
        }
    }
}
