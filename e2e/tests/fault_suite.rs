//! Static stability, proven across real processes under load.
//!
//! ```sh
//! cargo build --workspace --bins && cargo nextest run -p e2e --test fault_suite
//! cargo test -p e2e --test fault_suite -- source_returns_garbage_keeps_last_good
//! ```
//!
//! Every fault is one test named for the behaviour it proves, on 127.0.0.1 only: an echo
//! upstream, `hostile-source` (test-support: a bundle source whose every answer is scripted), the
//! real `control-api`, and up to three real gateways, with a steady stream of checked requests
//! through every gateway during every fault (`e2e::Traffic`: public GET 200, orders GET 200 with
//! the identity header, orders POST 403 with its reason). For each fault it records requests sent,
//! failed and wrong; whether the last-known-good bundle stayed active; whether the failure was
//! counted in metrics and shown in `/status`; and the recovery once the fault ends, with its time.
//!
//! * `source_*` ([`source`]): `hostile-source` as the source: error statuses (with
//!   `Retry-After`), connection refused, a host name that cannot resolve, TLS where HTTP was
//!   expected, every kind of bad bundle, hangs and trickles; a second gateway requires signatures.
//! * [`fleet`] and [`storms`]: `control-api` as the source of three gateways: a rollout with
//!   publish-to-activation time per gateway, storms of publishes and fleet reads against quiet
//!   phases interleaved with them, SIGKILL mid long poll, an outage past `max_staleness`, restarts
//!   from cache, corrupt/deleted/unwritable caches, kill -9 during persist.
//! * `quota_store_*` ([`quota`]): a gateway with a fleet-wide limit whose quota store (a proxy in
//!   front of a real Redis) answers garbage, stalls, resets every connection or is killed.
//! * `upstream_target_*` ([`upstream`]): one of the stream's upstream's two targets resets every
//!   connection, answers 503, or closes every connection at once; it must be retried around,
//!   ejected, and serve again once it heals.
//! * `staged_rollout_*` ([`staged`]): `control-api` staging rollouts to a one-gateway canary of
//!   three: a good revision reaches the canary first and the rest after the bake time; one the
//!   canary cannot activate and one that makes its error rate jump are rolled back automatically,
//!   never reaching the others.
//!
//! Faults of one kind share their processes ([`Fixture`]): started by the first fault that needs
//! them and kept for the next one in the same process, replaced when a fault of another kind
//! comes or when a fault panicked. `cargo test` runs every fault in one process, one after the
//! other; nextest runs each in its own process, so each starts its own. Either way each fault
//! writes its own row of the report (see [`report`]) before its test passes or fails.
//! Timings are short (polls of 100–200 ms, backoff capped at 500 ms, timeout 1 s, long poll 1 s,
//! `max_staleness` 3 s) and every wait is bounded.
//!
//! Linux only, like the rest of the stack's tests: the storms use `chrt` (util-linux) to put the
//! control plane in the idle scheduling class, and thread ids from `/proc/thread-self`.

#[path = "fault_suite/bundles.rs"]
mod bundles;
#[path = "fault_suite/fleet.rs"]
mod fleet;
#[path = "fault_suite/hostile.rs"]
mod hostile;
#[path = "fault_suite/quota.rs"]
mod quota;
#[path = "fault_suite/report.rs"]
mod report;
#[path = "fault_suite/source.rs"]
mod source;
#[path = "fault_suite/staged.rs"]
mod staged;
#[path = "fault_suite/storms.rs"]
mod storms;
#[path = "fault_suite/streams.rs"]
mod streams;
#[path = "fault_suite/upstream.rs"]
mod upstream;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use e2e::Gateway;
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::Value;
use test_support::process::Proc;

use report::Row;

/// Every bundle key but `sources` (and `max_size`, `signing` where a gateway needs them).
const POLL: &str =
    "  min_delay: 100ms\n  max_delay: 200ms\n  backoff_max: 500ms\n  timeout: 1s\n  long_poll: 1s\n  max_staleness: 3s\n";
/// Request interval of each gateway's traffic stream.
const TRAFFIC_INTERVAL: Duration = Duration::from_millis(2);

const SYNC_ERRORS: &str = "gateway_bundle_sync_total{result=\"error\"}";
const NOT_MODIFIED: &str = "gateway_bundle_sync_total{result=\"not_modified\"}";
const STALE: &str = "gateway_bundle_stale";

fn failures(reason: &str) -> String {
    format!("gateway_bundle_activation_failures_total{{reason=\"{reason}\"}}")
}

/// The value of a gateway metric; absent counts as 0.
fn m(gw: &Gateway, series: &str) -> f64 {
    gw.metric(series).unwrap_or(0.0)
}

fn last_error(st: &Value) -> String {
    st["sync"]["last_error"].as_str().unwrap_or("").to_owned()
}

/// Polls `cond` every 10 ms until it holds (the time it took) or `limit` passes (`None`).
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

// ---------------------------------------------------------------------------------------------
// The processes faults share, and running one fault as one test.

/// The processes of one kind of fault.
enum Phase {
    Source(Box<source::PhaseA>),
    Fleet(Box<fleet::PhaseB>),
    Staged(Box<staged::PhaseC>),
    Quota(Box<quota::PhaseD>),
    Upstream(Box<upstream::PhaseE>),
}

impl Phase {
    fn as_source(&mut self) -> Option<&mut source::PhaseA> {
        if let Phase::Source(a) = self {
            Some(a)
        } else {
            None
        }
    }

    fn as_fleet(&mut self) -> Option<&mut fleet::PhaseB> {
        if let Phase::Fleet(b) = self {
            Some(b)
        } else {
            None
        }
    }

    fn as_staged(&mut self) -> Option<&mut staged::PhaseC> {
        if let Phase::Staged(c) = self {
            Some(c)
        } else {
            None
        }
    }

    fn as_quota(&mut self) -> Option<&mut quota::PhaseD> {
        if let Phase::Quota(d) = self {
            Some(d)
        } else {
            None
        }
    }

    fn as_upstream(&mut self) -> Option<&mut upstream::PhaseE> {
        if let Phase::Upstream(e) = self {
            Some(e)
        } else {
            None
        }
    }
}

/// What the faults of one process share: a scratch directory, the echo upstream and the
/// processes of the current kind of fault, each started in a folder of its own.
pub struct Fixture {
    dir: tempfile::TempDir,
    _upstream_proc: Proc,
    upstream: String,
    phase: Option<Phase>,
    started: u32,
}

impl Fixture {
    fn new() -> Fixture {
        let (proc, addr) = e2e::echo_upstream("u");
        let dir = tempfile::tempdir().expect("tempdir");
        Fixture { dir, _upstream_proc: proc, upstream: addr.to_string(), phase: None, started: 0 }
    }

    /// A fresh folder for the next set of processes.
    fn folder(&mut self, kind: &str) -> PathBuf {
        self.started += 1;
        let d = self.dir.path().join(format!("{}-{kind}", self.started));
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    /// The processes of one kind: kept if they are the current ones, else started (after the
    /// current ones are ended).
    fn phase<T>(
        &mut self,
        kind: &str,
        is: fn(&mut Phase) -> Option<&mut T>,
        start: fn(&std::path::Path, &str) -> T,
        wrap: fn(Box<T>) -> Phase,
    ) -> &mut T {
        if self.phase.as_mut().and_then(is).is_none() {
            self.phase = None;
            let dir = self.folder(kind);
            self.phase = Some(wrap(Box::new(start(&dir, &self.upstream))));
        }
        self.phase.as_mut().and_then(is).expect("just started")
    }

    fn source(&mut self) -> &mut source::PhaseA {
        self.phase("source", Phase::as_source, source::PhaseA::start, Phase::Source)
    }

    fn fleet(&mut self) -> &mut fleet::PhaseB {
        self.phase("fleet", Phase::as_fleet, fleet::PhaseB::start, Phase::Fleet)
    }

    fn staged(&mut self) -> &mut staged::PhaseC {
        self.phase("staged", Phase::as_staged, staged::PhaseC::start, Phase::Staged)
    }

    fn quota(&mut self) -> &mut quota::PhaseD {
        self.phase("quota", Phase::as_quota, quota::PhaseD::start, Phase::Quota)
    }

    fn upstream(&mut self) -> &mut upstream::PhaseE {
        self.phase("upstream", Phase::as_upstream, upstream::PhaseE::start, Phase::Upstream)
    }
}

/// The fixture of this process; `None` before the first fault and after the last.
static FIXTURE: Mutex<Option<Fixture>> = Mutex::new(None);

type Run = Box<dyn FnOnce(&mut Fixture, Row) -> Row + Send>;

/// One fault: its test's name, its row in the report, and what it does with its fixture.
pub struct Fault {
    name: &'static str,
    group: u8,
    title: String,
    run: Run,
}

impl Fault {
    pub fn new(
        name: &'static str,
        group: u8,
        title: &str,
        run: impl FnOnce(&mut Fixture, Row) -> Row + Send + 'static,
    ) -> Fault {
        Fault { name, group, title: title.to_owned(), run: Box::new(run) }
    }
}

/// A fault on a fixture's processes of one kind: test name, group, title, what it does.
pub type On<P> = (&'static str, u8, &'static str, fn(&mut P, Row) -> Row);

/// Faults running on the processes `on` gives (`Fixture::fleet`, say).
pub fn faults_on<P: 'static>(on: fn(&mut Fixture) -> &mut P, list: impl IntoIterator<Item = On<P>>) -> Vec<Fault> {
    list.into_iter()
        .map(|(name, group, title, run)| Fault::new(name, group, title, move |fx, row| run(on(fx), row)))
        .collect()
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

/// Runs one fault on the shared fixture: a panic becomes a failed row (and the fixture, in an
/// unknown state, is replaced for the next fault). The row goes into the report either way.
fn run_fault(f: Fault, suite: &[(&str, u8, String)]) -> Result<(), Failed> {
    let started = Instant::now();
    let row = Row::new(f.group, &f.title);
    let mut fixture = FIXTURE.lock().unwrap_or_else(PoisonError::into_inner);
    let outcome = catch_unwind(AssertUnwindSafe(|| (f.run)(fixture.get_or_insert_with(Fixture::new), row)));
    let row = outcome.unwrap_or_else(|p| {
        if let Some(fx) = fixture.as_mut() {
            fx.phase = None;
        }
        let mut r = Row::new(f.group, &f.title);
        r.problems.push(format!("panicked: {}", panic_message(p.as_ref())));
        r
    });
    drop(fixture);
    let took = started.elapsed();
    let path = report::record(f.name, &row, took, suite);
    println!(
        "{} {:<55} sent {:>6} failed {} wrong {} recover {} ({} ms); report: {}",
        if row.passed() { "pass" } else { "FAIL" },
        row.fault,
        row.sent,
        row.failed,
        row.wrong,
        row.recover.map(|d| format!("{} ms", d.as_millis())).unwrap_or_else(|| "—".into()),
        took.as_millis(),
        path.display()
    );
    if row.passed() {
        Ok(())
    } else {
        Err(format!("{}:\n  {}", row.fault, row.problems.join("\n  ")).into())
    }
}

fn main() {
    let mut args = Arguments::from_args();
    // Faults share processes and measure latencies: one at a time, always.
    args.test_threads = Some(1);
    let faults: Vec<Fault> = [source::faults(), fleet::faults(), staged::faults(), quota::faults(), upstream::faults()]
        .into_iter()
        .flatten()
        .collect();
    let mut suite: Vec<(&str, u8, String)> = faults.iter().map(|f| (f.name, f.group, f.title.clone())).collect();
    // The report lists faults by group, in the suite's order within a group.
    suite.sort_by_key(|s| s.1);
    let suite = Arc::new(suite);
    let trials = faults
        .into_iter()
        .map(|f| {
            let suite = suite.clone();
            Trial::test(f.name, move || run_fault(f, &suite))
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    // Statics are never dropped: end this process's children before exiting.
    FIXTURE.lock().unwrap_or_else(PoisonError::into_inner).take();
    conclusion.exit();
}
