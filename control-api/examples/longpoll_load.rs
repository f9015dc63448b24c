//! Load test: how many idle long-poll waiters one control-api holds, what they cost in memory,
//! and how long it takes to wake all of them on a publish. Run by `loadtest/control-api-longpoll.sh`,
//! which starts the server; this program only talks to it, on loopback only.
//!
//! 1. publishes the example bundle (revision `load-<time>-a`) and reads its ETag;
//! 2. opens `--waiters` connections, each `GET` with that ETag and `Prefer: wait=N`;
//! 3. waits until `control_api_long_poll_waiters` says they are all held, reads the server's RSS;
//! 4. publishes a new revision and measures when each waiter's answer starts arriving.
//!
//! Exits non-zero unless every waiter was answered 200 with the new bundle.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use policy_bundles::archive::{read_dir, write_tar_gz};
use policy_bundles::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

#[derive(Parser)]
struct Args {
    /// The control-api address (loopback only).
    #[arg(long)]
    addr: SocketAddr,
    /// PID of the control-api process, to read its RSS.
    #[arg(long)]
    pid: u32,
    #[arg(long)]
    read_token: String,
    #[arg(long)]
    publish_token: String,
    #[arg(long, default_value = "loadtest")]
    name: String,
    /// Concurrent long polls to hold.
    #[arg(long, default_value_t = 5000)]
    waiters: usize,
    /// `Prefer: wait=N`, seconds.
    #[arg(long, default_value_t = 60)]
    wait: u64,
    /// Bundle source directory.
    #[arg(long, default_value = "policy-bundles/examples/api-gateway")]
    bundle_dir: PathBuf,
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
}

/// One request on its own connection; returns the status code and the full response bytes.
async fn http(addr: SocketAddr, request: Vec<u8>) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(&request).await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let status = std::str::from_utf8(out.get(9..12).context("short response")?)?.parse()?;
    Ok((status, out))
}

async fn publish(args: &Args, revision: &str) -> anyhow::Result<String> {
    let mut files = read_dir(&args.bundle_dir, &Limits::default()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut manifest: serde_json::Value = match files.get(".manifest") {
        Some(m) => serde_json::from_slice(m)?,
        None => serde_json::json!({}),
    };
    manifest["revision"] = revision.into();
    files.insert(".manifest".into(), serde_json::to_vec(&manifest)?);
    let tarball = write_tar_gz(&files)?;
    let mut req = format!(
        "PUT /v1/bundles/{} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        args.name,
        args.addr,
        args.publish_token,
        tarball.len()
    )
    .into_bytes();
    req.extend_from_slice(&tarball);
    let (status, body) = http(args.addr, req).await?;
    if status != 201 {
        bail!("publish answered {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(policy_bundles::digest(&tarball))
}

async fn waiters_gauge(addr: SocketAddr) -> anyhow::Result<u64> {
    let req = format!("GET /metrics HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").into_bytes();
    let (_, body) = http(addr, req).await?;
    let text = String::from_utf8_lossy(&body);
    let line = text.lines().find(|l| l.starts_with("control_api_long_poll_waiters ")).context("no waiters gauge")?;
    Ok(line.split_whitespace().nth(1).context("gauge value")?.parse()?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.addr.ip().is_loopback() {
        bail!("this load test only targets loopback addresses");
    }
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let first = publish(&args, &format!("load-{stamp}-a")).await?;
    let etag = format!("\"{first}\"");
    let rss_before = rss_kib(args.pid)?;

    // Open the waiters, a bounded number of connects at a time (the accept backlog is finite).
    let connects = Arc::new(Semaphore::new(256));
    let request = Arc::new(
        format!(
            "GET /v1/bundles/{} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {}\r\nif-none-match: {etag}\r\nprefer: wait={}\r\nconnection: close\r\n\r\n",
            args.name, args.addr, args.read_token, args.wait
        )
        .into_bytes(),
    );
    let opening = Instant::now();
    let mut tasks = Vec::with_capacity(args.waiters);
    for _ in 0..args.waiters {
        let permit = connects.clone().acquire_owned().await?;
        let (addr, request) = (args.addr, request.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await?;
            s.write_all(&request).await?;
            drop(permit);
            let mut buf = [0u8; 12];
            s.read_exact(&mut buf).await?;
            let answered = Instant::now();
            let status: u16 = std::str::from_utf8(&buf[9..12])?.parse()?;
            anyhow::Ok((status, answered))
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut held = 0;
    while held < args.waiters as u64 {
        if Instant::now() > deadline {
            bail!("only {held} of {} waiters held after 120 s", args.waiters);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        held = waiters_gauge(args.addr).await?;
    }
    let opened_in = opening.elapsed();
    let rss_held = rss_kib(args.pid)?;

    let sent = Instant::now();
    let second = publish(&args, &format!("load-{stamp}-b")).await?;
    let publish_answered = sent.elapsed();
    let mut ok = 0usize;
    let mut last = Duration::ZERO;
    let mut latencies = Vec::with_capacity(tasks.len());
    for t in tasks {
        match t.await? {
            Ok((200, answered)) => {
                ok += 1;
                let d = answered.saturating_duration_since(sent);
                latencies.push(d);
                last = last.max(d);
            }
            Ok((status, _)) => eprintln!("a waiter was answered {status}"),
            Err(e) => eprintln!("a waiter failed: {e}"),
        }
    }
    latencies.sort();
    let pct = |p: f64| latencies.get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)));
    let rss_after = rss_kib(args.pid)?;
    let per_waiter = (rss_held.saturating_sub(rss_before) as f64 * 1024.0) / args.waiters as f64;
    println!("waiters:              {}", args.waiters);
    println!("all held after:       {opened_in:?}");
    println!("server RSS:           {rss_before} KiB before, {rss_held} KiB with all waiting ({per_waiter:.0} B per waiter), {rss_after} KiB after");
    println!("publish answered in:  {publish_answered:?} (from the PUT being sent)");
    println!(
        "woken with 200:       {ok}/{}; from the PUT being sent: p50 {:?}, p99 {:?}, last {last:?}",
        args.waiters,
        pct(0.5).copied().unwrap_or_default(),
        pct(0.99).copied().unwrap_or_default()
    );
    if ok != args.waiters {
        bail!("{} waiters were not woken with the new bundle {second}", args.waiters - ok);
    }
    Ok(())
}
