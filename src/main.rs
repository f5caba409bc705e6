//! Entry point: parse arguments, dispatch, turn errors into one sentence on stderr.

use clap::Parser;

fn main() {
    let cli = slipway::cli::Cli::parse();
    let code = match slipway::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            // anyhow's alternate form joins the context chain into one line: "a: b: c".
            eprintln!("slipway: {err:#}");
            1
        }
    };
    std::process::exit(code);
}
