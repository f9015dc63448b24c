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

use std::io::Write as _;
use std::net::SocketAddr;

use anyhow::Context as _;
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {addr}").context("writing to stdout")?;
        stdout.flush().context("flushing stdout")?;
        drop(stdout);
        source::serve(listener, Answer::Status { code: 503, retry_after: None }).await;
        Ok(())
    })
}
