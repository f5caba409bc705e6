//! Entry point: parse arguments, dispatch, turn errors into one sentence on stderr.

fn main() {
    // Everything slipway writes (its database, keys, logs, builds) is its owner's alone; dynos
    // and one-off dynos get the usual 022 back when they start (daemon/shim.rs, cli/run.rs).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
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
