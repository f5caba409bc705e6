//! Entry point: parse arguments, dispatch, turn errors into one sentence on stderr.

use clap::Parser;

/// mimalloc instead of glibc's malloc: the router's request path makes many small short-lived
/// allocations across tokio's worker threads, and glibc's malloc/free were ~16 % of its CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
