//! Entry point: parse arguments, dispatch, turn errors into one sentence on stderr.

fn main() {
    // clap's parse, plus Heroku's `-a/--app APP` (see cli/args.rs).
    let cli = slipway::cli::parse_env();
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
