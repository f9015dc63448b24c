//! Storms against the control plane while the gateways serve. Each storm's p99 must stay below
//! max(2 × quiet p99, quiet p99 + 5 ms), the quiet p99 measured in the quiet phases interleaved
//! with the storm's own.
//!
//! Both are asserted with the control plane (control-api and the storm's client threads) in the
//! `SCHED_IDLE` class, standing in for the separate hosts it runs on: on one small box any busy
//! process slows every other, which is not what is under test. The gateways keep every CPU and
//! do all their own work (the reconciliation storm's activations included) at normal priority.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use e2e::{example_tarball, Gateway, Tally, Traffic, PUBLISH_TOKEN, READ_TOKEN};

use super::bundles;
use super::fleet::PhaseB;
use super::report::Row;
use super::{faults_on, m, wait_for, Fault, Fixture, On, TRAFFIC_INTERVAL};

/// Moves a process (every thread, `all`) or one thread to `SCHED_IDLE`, or back to the normal
/// policy: an idle-class task only gets CPU no normal task wants.
fn sched(id: &str, all: bool, idle: bool) -> bool {
    let mut c = std::process::Command::new("chrt");
    if all {
        c.arg("-a");
    }
    c.arg(if idle { "-i" } else { "-o" });
    c.args(["-p", "0", id]).output().is_ok_and(|o| o.status.success())
}

/// The calling thread's id, for [`sched`].
fn thread_id() -> Option<String> {
    std::fs::read_link("/proc/thread-self").ok()?.file_name()?.to_str().map(str::to_owned)
}

/// Latencies (µs) of one phase of a storm.
#[derive(Default)]
struct Phase(Vec<u64>);

impl Phase {
    fn pct(&self, p: usize) -> u64 {
        let mut v = self.0.clone();
        v.sort_unstable();
        v.get(v.len().saturating_sub(1) * p / 100).copied().unwrap_or(0)
    }

    /// max(2 × p99, p99 + 5 ms): how far a p99 may move and still be noise.
    fn bound(&self) -> u64 {
        (2 * self.pct(99)).max(self.pct(99) + 5_000)
    }

    fn ms(&self, p: usize) -> String {
        format!("{:.2} ms", self.pct(p) as f64 / 1000.0)
    }
}

/// What one storm did: the traffic's latencies while it raged and in the quiet phases between.
struct Storm {
    traffic: Tally,
    storm: Phase,
    quiet: Phase,
    /// Publishes by answer: accepted (200/201), refused (422 and any other error).
    accepted: u64,
    refused: u64,
    reads: u64,
    read_errors: u64,
    /// Bundles the three gateways activated meanwhile.
    activations: f64,
    took: Duration,
}

fn activations(b: &PhaseB) -> f64 {
    b.gws.iter().map(|g| m(g, "gateway_bundle_sync_total{result=\"updated\"}")).sum()
}

/// Storm phases and the quiet phases between them, interleaved so that whatever else the machine
/// does falls on both alike; a quiet phase starts after a settling pause (the storm's last
/// requests and what they set off end) that counts for neither.
const STORM_CYCLES: u32 = 6;
const STORM_ON: Duration = Duration::from_millis(800);
const STORM_SETTLE: Duration = Duration::from_millis(300);
const STORM_OFF: Duration = Duration::from_millis(800);

/// One publish on a storm thread's keep-alive connection: accepted?
fn publish_once(agent: &ureq::Agent, cp: &str, tarball: &[u8]) -> bool {
    agent
        .put(&format!("{cp}/v1/bundles/main"))
        .set("authorization", &format!("Bearer {PUBLISH_TOKEN}"))
        .set("content-type", "application/gzip")
        .send_bytes(tarball)
        .is_ok()
}

/// One fleet read on a storm thread's keep-alive connection, body included: answered?
fn read_fleet_once(agent: &ureq::Agent, cp: &str) -> bool {
    agent
        .get(&format!("{cp}/v1/fleet"))
        .set("authorization", &format!("Bearer {READ_TOKEN}"))
        .call()
        .is_ok_and(|r| r.into_string().is_ok())
}

/// Checked traffic through every gateway while, in [`STORM_CYCLES`] storm phases, 2 threads publish
/// `tarballs` in turn and 2 threads read `/v1/fleet`, as fast as control-api answers (bounded in
/// count too). With `isolated`, control-api and the storm threads run as `SCHED_IDLE`.
fn storm(b: &PhaseB, tarballs: &[Vec<u8>], isolated: bool) -> Storm {
    let bases: Vec<String> = b.gws.iter().map(|g| g.base.clone()).collect();
    let (on, stop) = (AtomicBool::new(false), AtomicBool::new(false));
    let counters: [AtomicU64; 4] = Default::default();
    let cp = b.cp.base.as_str();
    let cp_pid = b.cp.proc.pid().to_string();
    if isolated {
        sched(&cp_pid, true, true);
    }
    let activations0 = activations(b);
    let traffic = Traffic::start(&bases, TRAFFIC_INTERVAL);
    let started = Instant::now();
    let client = |isolated: bool| {
        if isolated {
            if let Some(tid) = thread_id() {
                sched(&tid, false, true);
            }
        }
        // One keep-alive connection per storm thread, as a busy API client would hold.
        ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build()
    };
    // Runs `op` while the storm is on, at most `limit` times.
    let worker = |limit: usize, mut op: Box<dyn FnMut(usize) + Send + '_>| {
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) && n < limit {
            if on.load(Ordering::Relaxed) {
                op(n);
                n += 1;
            } else {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    };
    let (mut storm_lat, mut quiet_lat) = (Phase::default(), Phase::default());
    std::thread::scope(|s| {
        // Threads 0 and 1 publish (counters 0: accepted, 1: refused), at most 20,000 times each;
        // threads 2 and 3 read the fleet (counters 2: read, 3: failed), at most 100,000 times.
        for i in 0..4usize {
            let (counters, worker) = (&counters, &worker);
            s.spawn(move || {
                let agent = client(isolated);
                let publisher = i < 2;
                let op = Box::new(|n: usize| {
                    let slot = if publisher {
                        usize::from(!publish_once(&agent, cp, &tarballs[(n + i) % tarballs.len()]))
                    } else {
                        2 + usize::from(!read_fleet_once(&agent, cp))
                    };
                    counters[slot].fetch_add(1, Ordering::Relaxed);
                });
                worker(if publisher { 20_000 } else { 100_000 }, op);
            });
        }
        let phase = |into: &mut Phase, length: Duration| {
            let from = traffic.snapshot().latencies_us.len();
            std::thread::sleep(length);
            into.0.extend_from_slice(&traffic.snapshot().latencies_us[from..]);
        };
        for _ in 0..STORM_CYCLES {
            on.store(true, Ordering::Relaxed);
            phase(&mut storm_lat, STORM_ON);
            on.store(false, Ordering::Relaxed);
            std::thread::sleep(STORM_SETTLE);
            phase(&mut quiet_lat, STORM_OFF);
        }
        stop.store(true, Ordering::Relaxed);
    });
    sched(&cp_pid, true, false);
    let took = started.elapsed();
    let traffic = traffic.stop();
    let [accepted, refused, reads, read_errors] = counters.map(AtomicU64::into_inner);
    Storm {
        traffic,
        storm: storm_lat,
        quiet: quiet_lat,
        accepted,
        refused,
        reads,
        read_errors,
        activations: activations(b) - activations0,
        took,
    }
}

/// What every storm must show: strong enough, no failed fleet read, the gateways' p99 within
/// noise of the quiet phases, and no failed or wrong request.
fn storm_checks(row: &mut Row, w: &Storm, isolated: bool) {
    let (p99, quiet, bound) = (w.storm.pct(99), w.quiet.pct(99), w.quiet.bound());
    let secs = (STORM_ON * STORM_CYCLES).as_secs_f64();
    row.note(format!(
        "{} publishes accepted, {} refused ({:.0}/s of storm); {} fleet reads ({:.0}/s), {} failed; {} activations on the gateways; control plane in the idle class; {:.1} s in all",
        w.accepted,
        w.refused,
        (w.accepted + w.refused) as f64 / secs,
        w.reads,
        w.reads as f64 / secs,
        w.read_errors,
        w.activations,
        w.took.as_secs_f64()
    ));
    row.note(format!(
        "gateway latency: storm p50 {} µs / p99 {p99} µs ({} requests); quiet p50 {} µs / p99 {quiet} µs ({} requests); bound {bound} µs",
        w.storm.pct(50),
        w.storm.0.len(),
        w.quiet.pct(50),
        w.quiet.0.len()
    ));
    row.check(isolated, "could not move the control plane to the idle class (chrt)");
    row.check(w.accepted + w.refused > 10 && w.reads > 10, "the storm was too weak");
    row.check(w.read_errors == 0, format!("{} fleet reads failed", w.read_errors));
    row.check(p99 < bound, format!("gateway p99 moved beyond noise: {p99} µs vs quiet {quiet} µs (bound {bound} µs)"));
    row.traffic(&Tally::default(), &w.traffic);
}

/// The storm table's preamble and head; each storm fault adds its lines ([`Row::table`]).
pub fn table_head() -> String {
    format!(
        "Storms against the control plane: 2 threads publishing as fast as control-api answers and 2 threads \
         reading `/v1/fleet` (keep-alive connections) while every gateway serves its checked stream, in {STORM_CYCLES} \
         storm phases of {} ms interleaved with quiet phases of {} ms (after {} ms to settle), so that whatever \
         else the machine does falls on both alike. The storm's p99 must stay below max(2 × quiet p99, quiet p99 \
         + 5 ms). Asserted with control-api and the storm's threads in the `SCHED_IDLE` class (they get only CPU \
         the gateways leave), standing in for the separate hosts the control plane runs on; the row at normal \
         priority shows what sharing this {}-CPU machine costs and is not asserted. Debug builds.\n\n\
         | storm | control plane CPU | publishes accepted / refused | fleet reads | gateway activations | \
         requests | storm p50 | storm p99 | quiet p50 | quiet p99 | bound | asserted |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        STORM_ON.as_millis(),
        STORM_OFF.as_millis(),
        STORM_SETTLE.as_millis(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    )
}

/// One line of the storm table.
fn table_line(name: &str, placement: &str, w: &Storm, asserted: &str) -> String {
    format!(
        "| {name} | {placement} | {} / {} | {} | {} | {} | {} | {} | {} | {} | {:.2} ms | {asserted} |",
        w.accepted,
        w.refused,
        w.reads,
        w.activations,
        w.traffic.sent,
        w.storm.ms(50),
        w.storm.ms(99),
        w.quiet.ms(50),
        w.quiet.ms(99),
        w.quiet.bound() as f64 / 1000.0
    )
}

/// Whether the scheduling classes can be set here (chrt, a thread id for each storm thread).
fn can_isolate(b: &PhaseB) -> bool {
    thread_id().is_some() && sched(&b.cp.proc.pid().to_string(), true, false)
}

/// After a storm: one more publish, and every gateway converges on it, without failures.
fn converges_after(b: &mut PhaseB, row: &mut Row) {
    b.streams.resume_all();
    let t0 = b.streams.snapshot();
    let ended = Instant::now();
    let rev = b.publish_next();
    let converged = wait_for(Duration::from_secs(15), || b.all_at(&rev)).map(|_| ended.elapsed());
    row.recovered =
        Some(row.check(converged.is_some(), format!("the fleet did not converge on {rev} after the storm")));
    row.recover = converged;
    let t1 = b.streams.snapshot();
    row.check(t1.failed == t0.failed && t1.wrong == t0.wrong, "failures while converging after the storm");
    row.sent += t1.sent - t0.sent;
}

/// Publishes that change nothing for the gateways (the active revision again, and a bundle
/// control-api must compile to refuse) and fleet reads: the bundle must not change. Run again
/// with everything at normal priority, reported and not asserted.
fn control_plane_storm(b: &mut PhaseB, mut row: Row) -> Row {
    b.streams.pause_all();
    let no_op = example_tarball(&b.upstream, &b.current);
    // Refused only after compiling every module: a route naming a rule no module defines.
    let refused = bundles::tar_gz(&bundles::settings_replace(
        bundles::files(&b.upstream, "never-storm"),
        "policy: data.http.public.allow",
        "policy: data.http.public.ghost",
    ));
    let tarballs = [no_op, refused];
    let isolated = can_isolate(b);
    let idle = storm(b, &tarballs, isolated);
    let shared = storm(b, &tarballs, false);
    row.table.push(table_line("control-plane storm", "idle class", &idle, "yes"));
    row.table.push(table_line("control-plane storm", "normal (shared)", &shared, "no: measures co-location"));
    storm_checks(&mut row, &idle, isolated);
    // Nothing to activate in a control-plane storm: the bundle must not change.
    row.lkg = Some(row.check(
        idle.activations == 0.0 && shared.activations == 0.0 && b.gws.iter().all(Gateway::ready),
        "a control-plane storm changed the active bundle or readiness",
    ));
    row.note(format!(
        "control plane at normal priority, sharing the CPUs (not asserted): storm p99 {} µs, quiet p99 {} µs",
        shared.storm.pct(99),
        shared.quiet.pct(99)
    ));
    row.sent += shared.traffic.sent;
    row.check(shared.traffic.failed == 0 && shared.traffic.wrong == 0, "failures during the shared-CPU storm");
    converges_after(b, &mut row);
    row
}

/// Publishes of two revisions in turn, so that every publish is a change every gateway must
/// fetch, verify, compile and swap, and fleet reads. (Every publish is a good new revision: LKG
/// does not apply.)
fn reconciliation_storm(b: &mut PhaseB, mut row: Row) -> Row {
    b.streams.pause_all();
    let alternating = [example_tarball(&b.upstream, "storm-a"), example_tarball(&b.upstream, "storm-b")];
    let isolated = can_isolate(b);
    let w = storm(b, &alternating, isolated);
    row.table.push(table_line("reconciliation storm", "idle class", &w, "yes"));
    storm_checks(&mut row, &w, isolated);
    row.check(w.activations >= 3.0, "the gateways activated no revision during the reconciliation storm");
    converges_after(b, &mut row);
    row
}

/// The two storms, on the fleet's fixture.
pub fn faults() -> Vec<Fault> {
    let storms: [On<PhaseB>; 2] = [
        (
            "control_plane_storm_leaves_gateway_latency_and_bundle_alone",
            6,
            "control-plane storm: no-op and refused publishes + fleet reads",
            control_plane_storm,
        ),
        (
            "reconciliation_storm_leaves_gateway_latency_alone",
            6,
            "reconciliation storm: publishes of alternating revisions + fleet reads",
            reconciliation_storm,
        ),
    ];
    faults_on(Fixture::fleet, storms)
}
