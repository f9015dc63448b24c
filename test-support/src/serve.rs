//! What every fixture server's `main` does before it serves: a tokio runtime of the size asked
//! for, and a listener announced with the one stdout line tests wait for, `listening on ADDR`
//! (see [`crate::process::Proc::spawn_listening`]).

use std::io::Write as _;
use std::net::SocketAddr;

use tokio::net::TcpListener;

/// Why a fixture server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("--threads must be at least 1")]
    NoThreads,
    #[error("building the tokio runtime: {0}")]
    Runtime(std::io::Error),
    #[error("binding {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("announcing the listener on stdout: {0}")]
    Announce(std::io::Error),
}

/// A multi-thread runtime with `threads` workers (tokio's default, one per CPU, when `None`).
pub fn runtime(threads: Option<usize>) -> Result<tokio::runtime::Runtime, StartError> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    match threads {
        Some(0) => return Err(StartError::NoThreads),
        Some(n) => {
            builder.worker_threads(n);
        }
        None => {}
    }
    builder.build().map_err(StartError::Runtime)
}

/// Binds `addr` and prints `listening on <bound address>` to stdout, flushed.
pub async fn listen(addr: SocketAddr) -> Result<TcpListener, StartError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })?;
    let bound = listener.local_addr().map_err(|source| StartError::Bind { addr, source })?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {bound}").and_then(|()| stdout.flush()).map_err(StartError::Announce)?;
    Ok(listener)
}
