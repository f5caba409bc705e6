//! `slipway-shim`: the per-dyno shim ([`slipway::daemon::shim`]) as a binary of its own.
//!
//! One shim runs per dyno for the dyno's whole life, so its private memory is the per-dyno
//! cost of supervision. Started as `slipway dyno-shim`, each shim carried private copies of
//! the relocated data of the whole `slipway` binary (its HTTP, TLS, SQLite and CLI code
//! included: ~0.38 MiB of `.data.rel.ro` and GOT pages, written by the loader in every
//! process) and built the whole CLI to parse its arguments. This binary links only what the
//! shim uses. The daemon starts it when it sits beside `slipway`, else `slipway dyno-shim`.

use clap::Parser;

#[derive(Parser)]
#[command(name = "slipway-shim", version, about = "The per-dyno shim started by the slipway daemon.")]
struct Cli {
    #[command(flatten)]
    shim: slipway::daemon::shim::ShimCli,
}

fn main() {
    // As `slipway` itself: what the shim writes (its log, its announcement, the dyno's private
    // dir) is its owner's alone; the dyno gets the usual 022 back when it starts.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let cli = Cli::parse();
    std::process::exit(cli.shim.run());
}
