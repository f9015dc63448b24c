//! Faults of an upstream: the example bundle's `backend` upstream given a second target, a
//! loopback proxy in front of the echo upstream that turns hostile on demand (it resets every
//! connection, answers 503, or accepts and closes at once), under the checked request stream.
//! Retries on the other target must leave the clients untouched; the failing target is ejected
//! after three failures in a row and serves again once it heals. The upstream has no active
//! health check here, so that ejection alone takes the target out.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use e2e::Gateway;
use serde_json::Value;

use super::bundles;
use super::hostile::{self, Hostile};
use super::report::Row;
use super::streams::Streams;
use super::{ms, wait_for, Fault, POLL};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Mode {
    /// Passes the connection to the echo upstream.
    Pass,
    /// Reads a request, then closes without a byte of answer.
    Reset,
    /// Answers every request 503.
    Unavailable,
    /// Closes every connection as it is accepted.
    Close,
}

/// The second target: a proxy in front of the echo upstream whose behaviour a fault switches.
struct Flaky {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    /// Connections passed to the echo upstream.
    passed: Arc<AtomicU64>,
    /// The connections being passed now: a fault ends them (a target that starts failing fails
    /// on the connections it holds too).
    live: Arc<Mutex<Vec<TcpStream>>>,
}

impl Flaky {
    fn start(upstream: SocketAddr) -> Flaky {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the flaky target");
        let addr = listener.local_addr().expect("addr");
        let (mode, passed) = (Arc::new(AtomicU8::new(Mode::Pass as u8)), Arc::new(AtomicU64::new(0)));
        let live: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (m, p, l) = (mode.clone(), passed.clone(), live.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let mode = m.load(Ordering::SeqCst);
                if mode == Mode::Close as u8 {
                    let _ = conn.shutdown(Shutdown::Both);
                    continue;
                }
                if mode == Mode::Pass as u8 {
                    p.fetch_add(1, Ordering::SeqCst);
                    if let Ok(c) = conn.try_clone() {
                        l.lock().unwrap_or_else(PoisonError::into_inner).push(c);
                    }
                }
                let m = m.clone();
                std::thread::spawn(move || serve(conn, upstream, &m));
            }
        });
        Flaky { addr, mode, passed, live }
    }

    fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
        if mode != Mode::Pass {
            for c in self.live.lock().unwrap_or_else(PoisonError::into_inner).drain(..) {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }
}

fn serve(conn: TcpStream, upstream: SocketAddr, mode: &AtomicU8) {
    if mode.load(Ordering::SeqCst) == Mode::Pass as u8 {
        let Ok(server) = TcpStream::connect(upstream) else { return };
        let (Ok(mut a), Ok(mut b)) = (conn.try_clone(), server.try_clone()) else { return };
        let (mut conn, mut server) = (conn, server);
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut b, &mut a);
            let _ = a.shutdown(Shutdown::Both);
        });
        let _ = std::io::copy(&mut conn, &mut server);
        let _ = server.shutdown(Shutdown::Both);
        return;
    }
    let Ok(mut out) = conn.try_clone() else { return };
    let mut r = BufReader::new(conn);
    loop {
        // A request head (the stream's requests that reach an upstream have no body).
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
        }
        if mode.load(Ordering::SeqCst) != Mode::Unavailable as u8 {
            let _ = out.shutdown(Shutdown::Both);
            return;
        }
        if out.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\ndown").is_err() {
            return;
        }
    }
}

pub struct PhaseE {
    flaky: Flaky,
    _hs: Hostile,
    gw: Gateway,
    streams: Streams,
}

impl PhaseE {
    pub fn start(dir: &Path, upstream: &str) -> PhaseE {
        let flaky = Flaky::start(upstream.parse().expect("upstream address"));
        let targets = format!("targets: [\"{upstream}\"]");
        let settings = format!(
            "targets: [\"{upstream}\", \"{}\"]\n    retries: {{ on: [connect_failure, reset, \"503\"] }}\n    outlier: {{ consecutive_failures: 3, base_ejection: 1s }}",
            flaky.addr
        );
        let files = bundles::settings_replace(bundles::files(upstream, "u0"), &targets, &settings);
        // No active health check: the faults are about what requests see (ejection), and a
        // probe that happens to fail first would take the target out before three requests do.
        let files = bundles::settings_replace(files, "    health_check: { path: /healthz, interval: 500ms }\n", "");
        let hs = Hostile::start();
        hs.set(&hostile::bundle(&bundles::tar_gz(&files)));
        let gw = e2e::start_gateway(dir, "gw-u", &[&hs.url], POLL);
        let streams = Streams::start(&[("gw-u", &gw)]);
        PhaseE { flaky, _hs: hs, gw, streams }
    }

    fn backend(&self) -> Value {
        let st = self.gw.status();
        let ups = st["bundle"]["upstreams"].as_array().cloned().unwrap_or_default();
        ups.into_iter().find(|u| u["name"] == "backend").unwrap_or(Value::Null)
    }

    fn flaky_state(&self) -> String {
        let target = self.flaky.addr.to_string();
        let b = self.backend();
        let t = b["targets"].as_array().and_then(|ts| ts.iter().find(|t| t["address"] == target.as_str()).cloned());
        t.and_then(|t| t["state"].as_str().map(str::to_owned)).unwrap_or_default()
    }
}

fn total(gw: &Gateway, name: &str) -> f64 {
    gw.metric_sum(name, &[("upstream", "backend")]).unwrap_or(0.0)
}

/// Turns the second target hostile (`mode`) while the stream runs: no client may see it;
/// retries, the ejection and the target's state in `/status` must; then it heals and must
/// serve again.
fn half_fails(e: &mut PhaseE, mut row: Row, mode: Mode) -> Row {
    let gw = &e.gw;
    let (retries0, ejections0) =
        (total(gw, "gateway_upstream_retries_total"), total(gw, "gateway_upstream_ejections_total"));
    let t0 = e.streams.snapshot();
    e.flaky.set(mode);
    let ejected = wait_for(Duration::from_secs(10), || e.flaky_state() == "ejected");
    row.counted = Some(row.check(ejected.is_some(), "the failing target was not ejected within 10 s"));
    let gw = &e.gw;
    let (retried, ejections) = (
        total(gw, "gateway_upstream_retries_total") - retries0,
        total(gw, "gateway_upstream_ejections_total") - ejections0,
    );
    row.note(format!(
        "{retried} requests retried on the other target, the failing one ejected {ejections} time(s) after {} ms",
        ejected.map_or(0, ms)
    ));
    row.check((1.0..=6.0).contains(&retried), format!("{retried} retries: each failure before the ejection, no more"));
    row.shown = Some(row.check(e.flaky_state() == "ejected", format!("/status: {}", e.backend())));
    // Ejected for a second: the clients keep being served by the other target meanwhile.
    std::thread::sleep(Duration::from_millis(300));
    row.lkg = Some(row.check(gw.ready(), "the gateway stopped being ready"));
    let passed0 = e.flaky.passed.load(Ordering::SeqCst);
    e.flaky.set(Mode::Pass);
    let back = wait_for(Duration::from_secs(10), || e.flaky_state() == "serving");
    row.recovered = Some(row.check(back.is_some(), "the healed target was not serving again within 10 s"));
    row.recover = back;
    std::thread::sleep(Duration::from_millis(300));
    let passed = e.flaky.passed.load(Ordering::SeqCst) - passed0;
    row.note(format!(
        "healed target `serving` in /status {} ms after it healed (its ejection over); {passed} connections to it since",
        back.map_or(0, ms)
    ));
    row.check(passed > 0, "the healed target got no connection");
    row.traffic(&t0, &e.streams.snapshot());
    row
}

fn resets(e: &mut PhaseE, row: Row) -> Row {
    half_fails(e, row, Mode::Reset)
}

fn unavailable(e: &mut PhaseE, row: Row) -> Row {
    half_fails(e, row, Mode::Unavailable)
}

fn closes(e: &mut PhaseE, row: Row) -> Row {
    half_fails(e, row, Mode::Close)
}

pub fn faults() -> Vec<Fault> {
    fn on(fx: &mut super::Fixture) -> &mut PhaseE {
        fx.upstream()
    }
    let list: [super::On<PhaseE>; 3] = [
        (
            "upstream_target_resetting_connections_is_retried_and_ejected",
            10,
            "one of two targets resets every connection",
            resets,
        ),
        ("upstream_target_answering_503_is_retried_and_ejected", 10, "one of two targets answers 503", unavailable),
        (
            "upstream_target_closing_every_connection_is_retried_and_ejected",
            10,
            "one of two targets closes every connection at once",
            closes,
        ),
    ];
    super::faults_on(on, list)
}
