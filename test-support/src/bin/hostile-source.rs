//! `hostile-source`: the scriptable bundle source ([`test_support::source`]) run as its own
//! process, so that fault-injection suites can treat it like any other source (kill it, restart
//! it on the same port, point real gateways at it) and script it over HTTP (`PUT /_script`,
//! `GET /_requests`; the module documents the modes and the control endpoints).
//!
//! ```text
//! hostile-source --listen 127.0.0.1:0
//! ```
//!
//! Once bound it prints exactly one line, `listening on <addr>`, to stdout. Until the first
//! script it answers `503`.

use std::net::SocketAddr;

use clap::Parser;
use test_support::source::{self, Answer};

#[derive(Debug, Parser)]
#[command(name = "hostile-source", version, about = "A bundle source whose answers a test scripts over HTTP")]
struct Args {
    /// Address to listen on; use port 0 for an ephemeral port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    test_support::serve::runtime(Some(2))?.block_on(async move {
        let listener = test_support::serve::listen(args.listen).await?;
        source::serve(listener, Answer::Status { code: 503, retry_after: None }).await;
        Ok(())
    })
}
