//! Faults of the fleet-wide quota store: a gateway whose bundle puts a `scope: global` limit on
//! the public route (high enough never to refuse the stream, so every request of it is counted
//! and exchanged), its `quota_store` a loopback proxy in front of a real Redis that turns
//! hostile on demand: it answers garbage, stalls, resets every connection, or Redis is killed.
//! Serving must not change: no request fails, none is refused, the bundle stays; the failures are
//! counted (`gateway_quota_store_errors_total{reason}`) and shown (`/status` `quota_store`), and
//! the gateway exchanges again once the store is back.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::Gateway;
use serde_json::Value;
use test_support::redis::Redis;

use super::bundles;
use super::hostile::{self, Hostile};
use super::report::Row;
use super::streams::Streams;
use super::{m, ms, wait_for, Fault, POLL};

/// What the store proxy does with what it is sent.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Mode {
    /// Passes everything to Redis and back.
    Pass,
    /// Answers every command itself with `:-1` (a negative count: no store says that).
    Garbage,
    /// Reads everything and answers nothing.
    Stall,
    /// Closes every connection, new ones at once.
    Reset,
}

/// A loopback proxy in front of Redis whose behaviour a fault switches.
struct StoreProxy {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
}

impl StoreProxy {
    fn start(redis: SocketAddr) -> StoreProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the store proxy");
        let addr = listener.local_addr().expect("addr");
        let mode = Arc::new(AtomicU8::new(Mode::Pass as u8));
        let m = mode.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if m.load(Ordering::SeqCst) == Mode::Reset as u8 {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let m = m.clone();
                std::thread::spawn(move || serve(client, redis, &m));
            }
        });
        StoreProxy { addr, mode }
    }

    fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }
}

/// One client connection: commands to Redis (or not, by the mode), answers back.
fn serve(mut client: TcpStream, redis: SocketAddr, mode: &AtomicU8) {
    let Ok(mut server) = TcpStream::connect(redis) else { return };
    if let (Ok(mut from), Ok(mut to)) = (server.try_clone(), client.try_clone()) {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Both);
        });
    }
    let mut pending = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let sent = match mode.load(Ordering::SeqCst) {
            m if m == Mode::Pass as u8 => server.write_all(&buf[..n]).is_ok(),
            m if m == Mode::Garbage as u8 => {
                pending.extend_from_slice(&buf[..n]);
                let commands = complete_commands(&mut pending);
                client.write_all(&b":-1\r\n".repeat(commands)).is_ok()
            }
            m if m == Mode::Stall as u8 => true,
            _ => false,
        };
        if !sent {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}

/// Takes the complete RESP commands (`*N` arrays of bulk strings) off the front of `buf` and
/// says how many there were.
fn complete_commands(buf: &mut Vec<u8>) -> usize {
    fn line(b: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let end = b.get(at..)?.windows(2).position(|w| w == b"\r\n")? + at;
        Some((&b[at..end], end + 2))
    }
    fn number(l: &[u8]) -> Option<usize> {
        std::str::from_utf8(l.get(1..)?).ok()?.parse().ok()
    }
    let (mut at, mut count) = (0, 0);
    'commands: while let Some((head, mut next)) = line(buf, at) {
        let Some(args) = number(head).filter(|_| head.first() == Some(&b'*')) else { break };
        for _ in 0..args {
            let Some((len, after)) = line(buf, next) else { break 'commands };
            let Some(len) = number(len) else { break 'commands };
            if buf.len() < after + len + 2 {
                break 'commands;
            }
            next = after + len + 2;
        }
        (at, count) = (next, count + 1);
    }
    buf.drain(..at);
    count
}

/// The public route's fleet-wide limit: far above the stream's rate.
const LIMIT: &str = "rate_limits:\n  fleet: { key: route, rate: 100000/s, scope: global }\n\nroutes:";
const ROUTE: &str = "    policy: data.http.public.allow\n";

pub struct PhaseD {
    redis: Redis,
    store: StoreProxy,
    _hs: Hostile,
    gw: Gateway,
    streams: Streams,
}

impl PhaseD {
    pub fn start(dir: &Path, upstream: &str) -> PhaseD {
        let redis = Redis::start(dir);
        let store = StoreProxy::start(SocketAddr::from(([127, 0, 0, 1], redis.port)));
        let files = bundles::settings_replace(bundles::files(upstream, "q0"), "routes:", LIMIT);
        let files = bundles::settings_replace(files, ROUTE, &format!("{ROUTE}    rate_limits: [fleet]\n"));
        let hs = Hostile::start();
        hs.set(&hostile::bundle(&bundles::tar_gz(&files)));
        let quota_store =
            format!("quota_store: {{ url: \"{}\", sync_interval: 100ms, timeout: 100ms }}\n", store.url());
        let gw = e2e::gateway_config(dir, "gw-q", &[&hs.url], POLL).top(&quota_store).spawn();
        gw.wait_ready();
        let up = wait_for(Duration::from_secs(10), || gw.status()["quota_store"]["up"] == true);
        assert!(up.is_some(), "the quota store never came up: {}", gw.status());
        let streams = Streams::start(&[("gw-q", &gw)]);
        PhaseD { redis, store, _hs: hs, gw, streams }
    }
}

const ERRORS: &str = "gateway_quota_store_errors_total";
const REASONS: [&str; 4] = ["connect", "timeout", "reset", "garbage"];

/// Failed exchanges a fault must show before it ends (at 100 ms each): a fault that lasts.
const MIN_FAILED: f64 = 5.0;

/// Injects a store fault while traffic flows, checks that serving did not change and that the
/// failures are counted with one of `reasons` and shown, ends it and measures until the gateway
/// exchanges again.
fn store_fault(d: &mut PhaseD, mut row: Row, inject: fn(&mut PhaseD), reasons: &[&str], end: fn(&mut PhaseD)) -> Row {
    let gw = &d.gw;
    let rev0 = gw.revision();
    let errors0 = gw.metric_sum(ERRORS, &[]).unwrap_or(0.0);
    let reason = |gw: &Gateway, r: &str| m(gw, &format!("{ERRORS}{{reason=\"{r}\"}}"));
    let reasons0: Vec<f64> = REASONS.iter().map(|r| reason(gw, r)).collect();
    let refused0 = m(gw, "gateway_rate_limited_total{route=\"public\",limit=\"fleet\",mode=\"enforce\"}");
    let t0 = d.streams.snapshot();
    inject(d);
    let gw = &d.gw;
    let counted =
        wait_for(Duration::from_secs(10), || gw.metric_sum(ERRORS, &[]).unwrap_or(0.0) >= errors0 + MIN_FAILED);
    row.counted = Some(row.check(counted.is_some(), format!("fewer than {MIN_FAILED} failed exchanges within 10 s")));
    let by_reason: Vec<String> = REASONS
        .iter()
        .zip(&reasons0)
        .filter(|(r, before)| reason(gw, r) > **before)
        .map(|(r, _)| (*r).to_owned())
        .collect();
    row.note(format!("`{ERRORS}` grew by reason: {}", by_reason.join(", ")));
    row.check(
        by_reason.iter().any(|r| reasons.contains(&r.as_str())),
        format!("the failures should be counted as {reasons:?}, were {by_reason:?}"),
    );
    let st = gw.status();
    let q: &Value = &st["quota_store"];
    let err = q["last_error"].as_str().unwrap_or("").to_owned();
    row.note(format!("/status quota_store: up {}, last_error `{err}`", q["up"]));
    row.shown =
        Some(row.check(q["up"] == false && !err.is_empty(), format!("/status should show the store down: {q}")));
    row.check(m(gw, "gateway_quota_store_up") == 0.0, "gateway_quota_store_up should be 0");
    let refused = m(gw, "gateway_rate_limited_total{route=\"public\",limit=\"fleet\",mode=\"enforce\"}") - refused0;
    row.check(refused == 0.0, format!("{refused} requests refused by the global limit during the fault"));
    let is_ready = gw.ready();
    row.lkg = Some(row.check(gw.revision() == rev0 && is_ready, "the bundle or readiness changed during the fault"));

    let ended = Instant::now();
    end(d);
    let gw = &d.gw;
    let recovered = wait_for(Duration::from_secs(10), || gw.status()["quota_store"]["up"] == true);
    row.recovered = Some(row.check(recovered.is_some(), "no good exchange within 10 s of the fault ending"));
    row.recover = recovered;
    row.note(format!("fault and recovery lasted {} ms", ms(ended.elapsed()) + counted.map_or(0, ms)));
    row.traffic(&t0, &d.streams.snapshot());
    row
}

fn garbage(d: &mut PhaseD, row: Row) -> Row {
    store_fault(d, row, |d| d.store.set(Mode::Garbage), &["garbage"], |d| d.store.set(Mode::Pass))
}

fn stall(d: &mut PhaseD, row: Row) -> Row {
    store_fault(d, row, |d| d.store.set(Mode::Stall), &["timeout"], |d| d.store.set(Mode::Pass))
}

fn reset(d: &mut PhaseD, row: Row) -> Row {
    store_fault(d, row, |d| d.store.set(Mode::Reset), &["reset", "connect"], |d| d.store.set(Mode::Pass))
}

fn killed(d: &mut PhaseD, row: Row) -> Row {
    store_fault(d, row, |d| d.redis.kill9(), &["reset", "connect"], |d| d.redis.restart())
}

pub fn faults() -> Vec<Fault> {
    fn on(fx: &mut super::Fixture) -> &mut PhaseD {
        fx.quota()
    }
    let list: [super::On<PhaseD>; 4] = [
        (
            "quota_store_answers_garbage_changes_nothing_but_a_counter",
            9,
            "quota store answers garbage (negative counts)",
            garbage,
        ),
        (
            "quota_store_stalls_and_exchanges_time_out_off_the_request_path",
            9,
            "quota store stalls (reads, never answers)",
            stall,
        ),
        ("quota_store_resets_every_connection", 9, "quota store resets every connection", reset),
        ("quota_store_killed_then_restarted_empty", 9, "quota store SIGKILLed, then restarted empty", killed),
    ];
    super::faults_on(on, list)
}
