//! Staged rollout across three gateways with a one-gateway canary (`gw-x`), under the
//! checked request stream. A good revision reaches the canary first and everyone after the bake
//! time; a revision the canary cannot activate, and one that makes the canary's error rate jump,
//! are each rolled back automatically, and the other two gateways never activate them.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use e2e::{
    bound_token, bound_tokens_yaml, example_tarball, gateway_config_with_token, get_as_reader, push,
    start_control_api_with_tokens, ControlApi, Gateway, Tally, READ_TOKEN,
};
use serde_json::Value;

use super::bundles;
use super::fleet::{publish, revision_at};
use super::report::Row;
use super::streams::Streams;
use super::{faults_on, ms, wait_for, Fault, Fixture, On, POLL};

/// Canary `gw-x`, a short bake; silence and error-rate bounds as an operator would set them.
const ROLLOUT: &str =
    "rollout:\n  canary: [gw-x]\n  bake: 2s\n  silent_after: 3s\n  max_error_rate: 0.05\n  min_requests: 20\n";
const NAMES: [&str; 3] = ["gw-x", "gw-y", "gw-z"];

/// The fleet's bundle keys: reports on a timer well inside `silent_after`, as the rollout
/// settings' reference asks (after poll rounds alone, a round that waits on a slow activation
/// would leave the canary silent).
fn fleet_keys() -> String {
    format!("{POLL}  report_interval: 1s\n")
}

pub struct PhaseC {
    upstream: String,
    cp: ControlApi,
    gws: Vec<Gateway>,
    streams: Streams,
    stable: String,
}

impl PhaseC {
    pub fn start(dir: &Path, upstream: &str) -> PhaseC {
        let store = format!("sqlite://{}", dir.join("control-staged.db").display());
        // Each gateway reports with a token bound to it: with staged rollouts no other may.
        let cp = start_control_api_with_tokens(dir, Some(&store), ROLLOUT, &bound_tokens_yaml(&NAMES));
        push(&cp.base, &example_tarball(upstream, "s1"), dir);
        let gws: Vec<Gateway> = NAMES
            .iter()
            .map(|n| gateway_config_with_token(dir, n, &[&cp.base], &fleet_keys(), &bound_token(n)).spawn())
            .collect();
        for gw in &gws {
            gw.wait_ready();
        }
        let streams = Streams::start(&NAMES.iter().copied().zip(gws.iter()).collect::<Vec<_>>());
        PhaseC { upstream: upstream.to_owned(), cp, gws, streams, stable: "s1".into() }
    }

    fn rollout(&self) -> Value {
        let r = get_as_reader(&format!("{}/v1/bundles/main/rollout", self.cp.base));
        serde_json::from_slice(&r.body).unwrap_or(Value::Null)
    }

    /// Watches every gateway's revision every 10 ms while `f` runs: the revisions each one served.
    fn watching<T>(&self, f: impl FnOnce() -> T) -> (T, Vec<Vec<String>>) {
        let admins: Vec<String> = self.gws.iter().map(|g| g.admin.clone()).collect();
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let watchers: Vec<_> = admins
                .iter()
                .map(|admin| {
                    let stop = &stop;
                    s.spawn(move || {
                        let mut seen: Vec<String> = Vec::new();
                        while !stop.load(Ordering::Relaxed) {
                            let rev = revision_at(admin);
                            if !rev.is_empty() && seen.last() != Some(&rev) {
                                seen.push(rev);
                            }
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        seen
                    })
                })
                .collect();
            let out = f();
            stop.store(true, Ordering::Relaxed);
            (out, watchers.into_iter().map(|w| w.join().unwrap_or_default()).collect())
        })
    }

    fn publish(&self, tarball: &[u8]) -> Result<u16, String> {
        publish(&self.cp.base, tarball)
    }
}

/// `bundlectl rollout list` of the staged bundle, through the real binary.
fn rollout_list(c: &PhaseC) -> String {
    let out = std::process::Command::new(test_support::paths::bin("bundlectl"))
        .args(["rollout", "list", "--server", &c.cp.base, "--name", "main"])
        .env("BUNDLECTL_TOKEN", READ_TOKEN)
        .output();
    out.map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
        .unwrap_or_else(|e| format!("running bundlectl: {e}"))
}

/// The line of `listed` for a rollout of `revision`.
fn listed_line<'a>(listed: &'a str, revision: &str) -> &'a str {
    listed.lines().find(|l| l.split_whitespace().next() == Some(revision)).unwrap_or("")
}

fn seen_text(seen: &[Vec<String>]) -> String {
    NAMES.iter().zip(seen).map(|(n, s)| format!("{n}: {}", s.join(" → "))).collect::<Vec<_>>().join("; ")
}

/// The two gateways outside the canary never served `rev`.
fn others_never(row: &mut Row, seen: &[Vec<String>], rev: &str) {
    for (n, s) in NAMES.iter().zip(seen).skip(1) {
        row.check(!s.iter().any(|r| r == rev), format!("{n} activated {rev}, outside the canary: {s:?}"));
    }
}

fn good_revision_reaches_the_canary_then_everyone(c: &mut PhaseC, mut row: Row) -> Row {
    let t0 = c.streams.snapshot();
    let tarball = example_tarball(&c.upstream, "s2");
    let published = Instant::now();
    let ((canary_at, all_at), seen) = c.watching(|| {
        let put = c.publish(&tarball);
        let canary =
            wait_for(Duration::from_secs(10), || revision_at(&c.gws[0].admin) == "s2").map(|_| published.elapsed());
        let all = wait_for(Duration::from_secs(15), || c.gws.iter().all(|g| revision_at(&g.admin) == "s2"))
            .map(|_| published.elapsed());
        (canary.ok_or(put), all)
    });
    match &canary_at {
        Ok(t) => row.note(format!("canary gw-x on s2 {} ms after the publish", ms(*t))),
        Err(put) => {
            row.check(false, format!("the canary never activated s2 (publish: {put:?})"));
        }
    }
    match all_at {
        Some(t) => row.note(format!("every gateway on s2 {} ms after the publish (bake 2 s)", ms(t))),
        None => {
            row.check(false, "not every gateway activated s2 within 15 s");
        }
    }
    // The others moved only after the canary had served it for the bake time.
    if let (Ok(canary), Some(all)) = (&canary_at, all_at) {
        row.check(
            all >= *canary + Duration::from_millis(1500),
            format!("the rest followed after {} ms, before the bake time", ms(all - *canary)),
        );
    }
    row.note(seen_text(&seen));
    let state = c.rollout();
    row.check(state["rollout"]["state"] == "promoted", format!("rollout state: {state}"));
    row.check(c.cp.metric("control_api_rollouts_total{result=\"promoted\"}") == Some(1.0), "promotion not counted");
    // Measured from the status reports, which follow each gateway's poll round.
    let propagated = || c.cp.metric("control_api_rollout_propagation_seconds_count").unwrap_or(0.0);
    let reported = wait_for(Duration::from_secs(5), || propagated() >= 3.0);
    row.check(reported.is_some(), format!("propagation observed for {} gateways, not 3", propagated()));
    row.recovered = Some(all_at.is_some());
    row.recover = all_at;
    c.stable = "s2".into();
    std::thread::sleep(Duration::from_millis(300));
    row.traffic(&t0, &c.streams.snapshot());
    row
}

fn canary_that_cannot_activate_rolls_back(c: &mut PhaseC, mut row: Row) -> Row {
    let t0 = c.streams.snapshot();
    // Compiles on the control plane; on a gateway its upstream's name does not resolve.
    let mut files = bundles::files(&c.upstream, "s3-unresolvable");
    files =
        bundles::settings_replace(files, &format!("\"{}\"", c.upstream), &format!("\"{}.invalid:80\"", "x".repeat(64)));
    let tarball = bundles::tar_gz(&files);
    let started = Instant::now();
    let (ended, seen) = c.watching(|| {
        let put = c.publish(&tarball);
        row.check(put == Ok(201), format!("publish answered {put:?}"));
        wait_for(Duration::from_secs(15), || c.rollout()["rollout"]["state"] == "rolled_back")
    });
    let state = c.rollout();
    let reason = state["rollout"]["reason"].as_str().unwrap_or("").to_owned();
    row.counted = Some(row.check(
        c.cp.metric("control_api_rollbacks_total{reason=\"activation\"}") == Some(1.0),
        "the rollback was not counted under reason activation",
    ));
    row.shown =
        Some(row.check(reason.contains("gw-x failed to activate it: upstream"), format!("history says: {reason:?}")));
    row.note(format!("rolled back after {} ms: {reason}", ended.map(|_| ms(started.elapsed())).unwrap_or(0)));
    others_never(&mut row, &seen, "s3-unresolvable");
    row.lkg = Some(row.check(c.gws.iter().all(|g| revision_at(&g.admin) == c.stable), "not every gateway kept s2"));
    row.note(seen_text(&seen));
    row.recovered = Some(ended.is_some());
    row.recover = ended;
    row.traffic(&t0, &c.streams.snapshot());
    row
}

fn canary_error_rate_jump_rolls_back(c: &mut PhaseC, mut row: Row) -> Row {
    // Orders go to an upstream that refuses connections: a third of the canary's requests fail.
    let files = bundles::settings_replace(
        bundles::files(&c.upstream, "s4-dead-orders"),
        "upstreams:\n",
        "upstreams:\n  dead:\n    targets: [\"127.0.0.1:1\"]\n",
    );
    let files = bundles::settings_replace(
        files,
        "    upstream: backend\n    policy: data.http.orders.decision",
        "    upstream: dead\n    policy: data.http.orders.decision",
    );
    let tarball = bundles::tar_gz(&files);
    let others_before: Vec<Tally> = NAMES[1..].iter().map(|n| c.streams.snapshot_of(n)).collect();
    let canary_before = c.streams.snapshot_of(NAMES[0]);
    let started = Instant::now();
    let (ended, seen) = c.watching(|| {
        let put = c.publish(&tarball);
        row.check(put == Ok(201), format!("publish answered {put:?}"));
        let rolled = wait_for(Duration::from_secs(15), || c.rollout()["rollout"]["state"] == "rolled_back");
        let back = wait_for(Duration::from_secs(10), || revision_at(&c.gws[0].admin) == c.stable);
        rolled.and(back)
    });
    let state = c.rollout();
    let reason = state["rollout"]["reason"].as_str().unwrap_or("").to_owned();
    row.counted = Some(row.check(
        c.cp.metric("control_api_rollbacks_total{reason=\"error_rate\"}") == Some(1.0),
        "the rollback was not counted under reason error_rate",
    ));
    row.shown = Some(row.check(
        reason.contains("gw-x") && reason.contains("requests failed since activation"),
        format!("history says: {reason:?}"),
    ));
    row.check(
        seen[0].iter().any(|r| r == "s4-dead-orders"),
        format!("the canary never activated the bad revision: {:?}", seen[0]),
    );
    others_never(&mut row, &seen, "s4-dead-orders");
    row.note(format!(
        "canary back on {} after {} ms: {reason}",
        c.stable,
        ended.map(|_| ms(started.elapsed())).unwrap_or(0)
    ));
    row.note(seen_text(&seen));
    row.recovered = Some(ended.is_some());
    row.recover = ended;
    // The canary's failures are what the rollback is for: counted, bounded, and over once it is back.
    std::thread::sleep(Duration::from_millis(300));
    let canary_mid = c.streams.snapshot_of(NAMES[0]);
    std::thread::sleep(Duration::from_millis(700));
    let canary_after = c.streams.snapshot_of(NAMES[0]);
    let during = canary_mid.failed - canary_before.failed;
    row.note(format!(
        "the canary failed {during} requests while it served the bad revision; the other two failed none"
    ));
    row.check(during > 0, "the canary's stream never saw the errors its rollback was for");
    row.check(canary_after.failed == canary_mid.failed, "the canary kept failing after it was rolled back");
    let mut t_before = Tally::default();
    let mut t_after = Tally::default();
    for (n, b) in NAMES[1..].iter().zip(&others_before) {
        t_before.add(b);
        t_after.add(&c.streams.snapshot_of(n));
    }
    row.traffic(&t_before, &t_after);
    row.note("traffic figures: the two gateways outside the canary");
    row
}

/// gw-x's `last_report` in control-api's fleet view.
fn last_report_of(c: &PhaseC, instance: &str) -> String {
    let r = get_as_reader(&format!("{}/v1/fleet", c.cp.base));
    let fleet: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    let me = fleet.as_array().and_then(|a| a.iter().find(|g| g["instance"] == instance).cloned());
    me.and_then(|g| g["last_report"].as_str().map(str::to_owned)).unwrap_or_default()
}

/// The canary dies at the worst moment: right after a status report in the second half of the
/// bake. Its last report covers only part of the bake, so nothing says the revision is healthy
/// for the whole of it: it must not be promoted, and once the canary has been quiet for
/// `silent_after` the rollout is rolled back as silent.
fn dead_canary_is_never_promoted(c: &mut PhaseC, mut row: Row) -> Row {
    let tarball = example_tarball(&c.upstream, "s5-dead-canary");
    let put = c.publish(&tarball);
    row.check(put == Ok(201), format!("publish answered {put:?}"));
    let activated = wait_for(Duration::from_secs(10), || revision_at(&c.gws[0].admin) == "s5-dead-canary");
    row.check(activated.is_some(), "the canary never activated the revision");
    let on_canary = Instant::now();
    // Half of the 2 s bake, then the next report, then SIGKILL.
    std::thread::sleep(Duration::from_millis(1000));
    let before = last_report_of(c, NAMES[0]);
    let reported = wait_for(Duration::from_secs(3), || last_report_of(c, NAMES[0]) != before);
    c.streams.pause(NAMES[0]);
    c.gws[0].proc.kill9();
    let killed_at = on_canary.elapsed();
    row.note(format!(
        "canary SIGKILLed {} ms after it activated the revision, right after a report (bake 2 s, silent_after 3 s)",
        ms(killed_at)
    ));
    row.check(
        reported.is_some() && killed_at < Duration::from_millis(2000),
        "no report in the second half of the bake",
    );
    let t0 = c.streams.snapshot();
    let (ended, seen) = c.watching(|| {
        wait_for(Duration::from_secs(10), || {
            let state = c.rollout()["rollout"]["state"].clone();
            state == "rolled_back" || state == "promoted"
        })
    });
    let state = c.rollout();
    let reason = state["rollout"]["reason"].as_str().unwrap_or("").to_owned();
    row.check(
        state["rollout"]["state"] == "rolled_back",
        format!("a dead canary's revision was not rolled back: {state}"),
    );
    row.counted = Some(row.check(
        c.cp.metric("control_api_rollbacks_total{reason=\"silent\"}").unwrap_or(0.0) >= 1.0,
        "the rollback was not counted as silent",
    ));
    row.shown =
        Some(row.check(reason.contains("gw-x") && reason.contains("silent"), format!("history says: {reason:?}")));
    row.note(format!("rolled back {} ms after the kill: {reason}", ended.map_or(0, ms)));
    others_never(&mut row, &seen, "s5-dead-canary");
    // The whole history, not only the latest: `bundlectl rollout list` shows every rollout the
    // API holds for this phase (the earlier rows' too, when they ran in it), with how it ended.
    let listed = rollout_list(c);
    let history = get_as_reader(&format!("{}/v1/bundles/main/rollouts", c.cp.base)).json();
    let rollouts = history["rollouts"].as_array().cloned().unwrap_or_default();
    let whole = rollouts.iter().all(|r| {
        let line = listed_line(&listed, r["revision"].as_str().unwrap_or("?"));
        line.contains(r["state"].as_str().unwrap_or("?")) && line.contains(r["reason"].as_str().unwrap_or(""))
    });
    let dead = listed_line(&listed, "s5-dead-canary");
    row.check(
        whole && dead.contains("rolled_back") && dead.contains("silent"),
        format!("`bundlectl rollout list` differs from the history ({history}):\n{listed}"),
    );
    row.note(format!("`bundlectl rollout list`: {} rollout(s), the dead canary's `{}`", rollouts.len(), dead.trim()));
    row.note(seen_text(&seen));
    // The canary comes back and is served the stable revision again.
    c.gws[0].restart();
    c.gws[0].wait_ready();
    let back = wait_for(Duration::from_secs(10), || revision_at(&c.gws[0].admin) == c.stable);
    row.lkg = Some(row.check(back.is_some(), format!("the restarted canary is not back on {}", c.stable)));
    row.recovered = Some(ended.is_some());
    row.recover = ended;
    row.traffic(&t0, &c.streams.snapshot());
    row.note("traffic figures: the two other gateways (the dead canary's stream paused while it was down)");
    c.streams.resume(NAMES[0]);
    row
}

/// The staged rollouts, in the order they run.
pub fn faults() -> Vec<Fault> {
    let rollouts: [On<PhaseC>; 4] = [
        (
            "staged_rollout_reaches_the_canary_first_and_everyone_after_the_bake",
            8,
            "staged rollout: a good revision, canary first, everyone after the bake time",
            good_revision_reaches_the_canary_then_everyone,
        ),
        (
            "staged_rollout_is_rolled_back_when_the_canary_cannot_activate_it",
            8,
            "staged rollout: the canary cannot activate it, rolled back automatically",
            canary_that_cannot_activate_rolls_back,
        ),
        (
            "staged_rollout_is_rolled_back_when_the_canary_error_rate_jumps",
            8,
            "staged rollout: the canary's error rate jumps, rolled back automatically",
            canary_error_rate_jump_rolls_back,
        ),
        (
            "staged_rollout_is_never_promoted_when_the_canary_dies_mid_bake",
            8,
            "staged rollout: the canary SIGKILLed right after a report in the second half of the bake",
            dead_canary_is_never_promoted,
        ),
    ];
    faults_on(Fixture::staged, rollouts)
}
