//! Staged rollout with automatic rollback. With `rollout` configured, a publish does not change
//! the bundle's active revision: it starts a rollout in its canary phase, and the hub serves the
//! candidate to the canary cohort only (gateways name themselves in `x-gateway-instance`); every
//! other gateway keeps being served the active revision through the same ETag and long-poll
//! protocol. [`supervise`] judges each canary phase from the canaries' status reports
//! ([`judge`]): a canary that fails to activate the candidate, goes silent, or whose error rate
//! or p99 since activation passes the configured bounds rolls it back (the canaries are served
//! the active revision again, and the history records why); when every canary has served it
//! healthily for `bake`, it is promoted to everyone.
//!
//! Transitions are compare-and-set in the store (a rollout still in `canary`), so several
//! replicas sharing PostgreSQL may all judge and only one transition happens.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use crate::app_state::AppState;
use crate::config::{Cohort, RolloutConfig};
use crate::store::{self, GatewayReport, Rollout, PROMOTED, ROLLED_BACK};

/// What to do with a rollout in its canary phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not judged yet: canaries still activating or baking.
    Wait,
    /// Every canary served it healthily for the bake time.
    Promote,
    /// Roll it back: `label` is the metric's reason, `why` the history's.
    RollBack { label: &'static str, why: String },
}

fn roll_back(label: &'static str, why: String) -> Verdict {
    Verdict::RollBack { label, why }
}

/// A canary's health as its last report told it.
struct Health {
    /// The last activation attempt's digest, outcome, reason and message, and when (ms).
    attempt: Option<(String, String, String, i64)>,
    requests: u64,
    errors: u64,
    p99_ms: Option<u64>,
    activated_at_ms: Option<i64>,
}

fn health(r: &GatewayReport) -> Health {
    let v: Value = r.health.as_deref().and_then(|h| serde_json::from_str(h).ok()).unwrap_or(Value::Null);
    let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let a = &v["activation"];
    let attempt = a["digest"].as_str().map(|d| {
        let at_ms = a["at"].as_i64().map_or(0, |s| s.saturating_mul(1000));
        (d.to_owned(), text(&a["outcome"]), format!("{}: {}", text(&a["reason"]), text(&a["message"])), at_ms)
    });
    Health {
        attempt,
        requests: v["served"]["requests"].as_u64().unwrap_or(0),
        errors: v["served"]["errors"].as_u64().unwrap_or(0),
        p99_ms: v["served"]["p99_ms"].as_u64(),
        activated_at_ms: v["activated_at"].as_i64().map(|s| s.saturating_mul(1000)),
    }
}

/// The canary instances of a rollout: the configured names, or the reporting gateways of the
/// bundle whose name hashes into the percentage.
pub fn canaries<'a>(cohort: &'a Cohort, bundle: &str, reports: &'a [GatewayReport], since_ms: i64) -> Vec<&'a str> {
    match cohort {
        Cohort::Instances(list) => list.iter().map(String::as_str).collect(),
        // Gateways gone before the rollout started (their rows never expire) are not canaries.
        Cohort::Percent(_) => reports
            .iter()
            .filter(|r| r.bundle == bundle && cohort.contains(&r.instance) && r.last_report_ms >= since_ms)
            .map(|r| r.instance.as_str())
            .collect(),
    }
}

/// Judges one rollout in its canary phase at `now_ms`, from the latest report of each gateway.
pub fn judge(r: &Rollout, candidate: &str, reports: &[GatewayReport], cfg: &RolloutConfig, now_ms: i64) -> Verdict {
    let since_start = now_ms.saturating_sub(r.started_at_ms);
    let Some(cohort) = cfg.cohort(&r.bundle) else {
        let why = format!("bundle {} has no canary cohort any more (the rollout configuration changed)", r.bundle);
        return roll_back("no_canary", why);
    };
    let names = canaries(cohort, &r.bundle, reports, r.started_at_ms.saturating_sub(ms(cfg.silent_after)));
    if names.is_empty() {
        return if since_start > ms(cfg.silent_after) {
            roll_back("no_canary", "no gateway of the canary cohort has reported".into())
        } else {
            Verdict::Wait
        };
    }
    let mut baked_since = r.started_at_ms;
    let mut unproven = false;
    for name in names {
        let Some(rep) = reports.iter().find(|x| x.instance == name && x.bundle == r.bundle) else {
            if since_start > ms(cfg.silent_after) {
                return roll_back("silent", format!("canary {name} has not reported since the rollout started"));
            }
            return Verdict::Wait;
        };
        match evidence(r, name, rep, candidate, cfg, now_ms) {
            Err(verdict) => return verdict,
            Ok(Evidence { activated, covers_bake }) => {
                baked_since = baked_since.max(activated);
                unproven |= !covers_bake;
            }
        }
    }
    if !unproven && now_ms.saturating_sub(baked_since) >= ms(cfg.bake) {
        Verdict::Promote
    } else {
        Verdict::Wait
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

/// What one canary's report shows of the candidate.
struct Evidence {
    /// When it activated the candidate (ms, ours).
    activated: i64,
    /// Its report was sent at least the bake time after that: evidence for the whole bake. A
    /// canary that died earlier, however recently it reported, has not shown it; it waits, and
    /// is rolled back as silent once quiet for `silent_after`.
    covers_bake: bool,
}

/// One canary's report judged: a verdict that ends the judgement at once (a rollback, or a
/// wait while it activates), or its evidence.
fn evidence(
    r: &Rollout,
    name: &str,
    rep: &GatewayReport,
    candidate: &str,
    cfg: &RolloutConfig,
    now_ms: i64,
) -> Result<Evidence, Verdict> {
    let since_start = now_ms.saturating_sub(r.started_at_ms);
    let quiet = now_ms.saturating_sub(rep.last_report_ms.max(r.started_at_ms));
    if quiet > ms(cfg.silent_after) {
        return Err(roll_back("silent", format!("canary {name} silent for {:.1} s", secs(quiet))));
    }
    let h = health(rep);
    if let Some((digest, outcome, why, at_ms)) = &h.attempt {
        // An attempt from before this rollout (the same content, refused last time) is stale:
        // the gateway reports in whole seconds, hence the one-second allowance.
        if digest == candidate && outcome == "failed" && *at_ms + 1000 >= r.started_at_ms {
            return Err(roll_back("activation", format!("canary {name} failed to activate it: {why}")));
        }
    }
    if rep.digest.as_deref() != Some(candidate) {
        if since_start > ms(cfg.bake + cfg.silent_after) {
            let why = format!(
                "canary {name} still serves another revision {:.1} s after the rollout started",
                secs(since_start)
            );
            return Err(roll_back("not_activated", why));
        }
        return Err(Verdict::Wait);
    }
    if h.requests >= cfg.min_requests.max(1) {
        let rate = h.errors as f64 / h.requests as f64;
        if rate > cfg.max_error_rate {
            return Err(roll_back(
                "error_rate",
                format!(
                    "canary {name}: {} of {} requests failed since activation ({:.1}%, limit {:.1}%)",
                    h.errors,
                    h.requests,
                    rate * 100.0,
                    cfg.max_error_rate * 100.0
                ),
            ));
        }
        if let (Some(limit), Some(p99)) = (cfg.max_p99, h.p99_ms) {
            if u128::from(p99) > limit.as_millis() {
                let why = format!("canary {name}: p99 {p99} ms since activation (limit {} ms)", limit.as_millis());
                return Err(roll_back("p99", why));
            }
        }
    }
    // The gateway reports its activation in whole seconds: taken at the end of that second (and
    // never before the rollout began), so that rounding never shortens the bake. A gateway clock
    // ahead of ours cannot hold the bake open forever.
    let activated = h
        .activated_at_ms
        .map_or(r.started_at_ms, |at| at.saturating_add(999))
        .max(r.started_at_ms)
        .min(rep.last_report_ms);
    Ok(Evidence { activated, covers_bake: rep.last_report_ms.saturating_sub(activated) >= ms(cfg.bake) })
}

/// What the supervisor remembers between ticks to measure propagation.
#[derive(Default)]
struct Propagation {
    /// Per bundle: the digest gateways should move to, since when (ms), and whether only canaries.
    targets: HashMap<String, (String, i64, bool)>,
    /// Per instance: the digest it last reported.
    seen: HashMap<String, String>,
    /// Bundles whose reload after a verdict failed: retried every tick.
    pending: std::collections::BTreeSet<String>,
}

impl Propagation {
    fn observe(&mut self, state: &AppState, reports: &[GatewayReport], cfg: &RolloutConfig, now_ms: i64) {
        for rep in reports {
            let Some(digest) = &rep.digest else { continue };
            if self.seen.get(&rep.instance) == Some(digest) {
                continue;
            }
            self.seen.insert(rep.instance.clone(), digest.clone());
            if let Some((want, since, canary_only)) = self.targets.get(&rep.bundle) {
                if want == digest && (!canary_only || cfg.is_canary(&rep.bundle, &rep.instance)) {
                    state.0.metrics.propagation.observe(now_ms.saturating_sub(*since).max(0) as f64 / 1000.0);
                }
            }
        }
        // A target nobody moved to within an hour is forgotten.
        self.targets.retain(|_, (_, since, _)| now_ms.saturating_sub(*since) < 3_600_000);
    }
}

/// The candidate's digest: the hub's, or the store's history.
async fn candidate_digest(state: &AppState, r: &Rollout) -> Option<String> {
    if let Ok((_, Some(heads))) = state.0.hub.current(&r.bundle).await {
        if let Some(c) = heads.canary.as_ref().filter(|c| c.revision == r.revision) {
            return Some(c.digest.clone());
        }
    }
    let revisions = state.0.store.revisions(&r.bundle).await.ok()?;
    revisions.into_iter().find(|x| x.revision == r.revision).map(|x| x.digest)
}

/// Serves the verdict: the store has it already; a failed reload is retried next tick.
async fn reload(state: &AppState, bundle: &str, memory: &mut Propagation) {
    if let Err(e) = state.0.hub.reload(bundle, None).await {
        tracing::warn!(bundle.name = %bundle, error = %e, "reloading after a rollout verdict failed; retrying");
        memory.pending.insert(bundle.to_owned());
    }
}

/// One round: judges every rollout in its canary phase and carries out the verdicts.
async fn tick(state: &AppState, cfg: &RolloutConfig, memory: &mut Propagation) -> Result<(), store::StoreError> {
    let s = &state.0;
    for bundle in std::mem::take(&mut memory.pending) {
        reload(state, &bundle, memory).await;
    }
    let rollouts = s.store.canaries().await?;
    if rollouts.is_empty() && memory.targets.is_empty() {
        return Ok(());
    }
    let reports = s.store.fleet().await?;
    let now = crate::clock::now_ms();
    for r in &rollouts {
        let Some(candidate) = candidate_digest(state, r).await else { continue };
        memory.targets.entry(r.bundle.clone()).or_insert_with(|| (candidate.clone(), r.started_at_ms, true));
        let (state_name, why) = match judge(r, &candidate, &reports, cfg, now) {
            Verdict::Wait => continue,
            Verdict::Promote => (PROMOTED, None::<String>),
            Verdict::RollBack { label, why } => {
                if s.store.finish_rollout(r.id, ROLLED_BACK, Some(&why), now).await? {
                    tracing::warn!(bundle.name = %r.bundle, bundle.revision = %r.revision, reason = label, why = %why, "canary rolled back");
                    s.metrics.rollbacks.with_label_values(&[label]).inc();
                    s.metrics.rollouts.with_label_values(&[ROLLED_BACK]).inc();
                    memory.targets.remove(&r.bundle);
                }
                reload(state, &r.bundle, memory).await;
                continue;
            }
        };
        if s.store.finish_rollout(r.id, state_name, why.as_deref(), now).await? {
            tracing::info!(bundle.name = %r.bundle, bundle.revision = %r.revision, "canary healthy for the bake time: promoted to every gateway");
            s.metrics.rollouts.with_label_values(&[PROMOTED]).inc();
            s.metrics.rollout_duration.observe(now.saturating_sub(r.started_at_ms) as f64 / 1000.0);
            memory.targets.insert(r.bundle.clone(), (candidate, now, false));
        }
        reload(state, &r.bundle, memory).await;
    }
    memory.observe(state, &reports, cfg, now);
    Ok(())
}

/// Promotes the bundle's rollout of `revision` now, before its bake ends: an operator's decision
/// (the console's "promote", publish tokens only). `false` when that rollout is no longer in its
/// canary phase (it ended, or another replica judged it first).
pub async fn promote_now(state: &AppState, bundle: &str, revision: &str, by: &str) -> Result<bool, store::StoreError> {
    let s = &state.0;
    let Some(r) = s.store.rollout(bundle).await?.filter(|r| r.state == store::CANARY && r.revision == revision) else {
        return Ok(false);
    };
    let now = crate::clock::now_ms();
    let why = format!("promoted by token `{by}` before the bake ended");
    if !s.store.finish_rollout(r.id, PROMOTED, Some(&why), now).await? {
        return Ok(false);
    }
    tracing::info!(bundle.name = %bundle, bundle.revision = %revision, by = %by, "canary promoted by hand");
    s.metrics.rollouts.with_label_values(&[PROMOTED]).inc();
    s.metrics.rollout_duration.observe(now.saturating_sub(r.started_at_ms) as f64 / 1000.0);
    if let Err(e) = s.hub.reload(bundle, None).await {
        tracing::warn!(bundle.name = %bundle, error = %e, "promoted, but reloading the active revision failed");
    }
    Ok(true)
}

/// Judges rollouts until `shutdown` turns true. Runs only with `rollout` configured.
pub async fn supervise(state: AppState, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let Some(cfg) = state.0.config.rollout.clone() else { return };
    let every = (cfg.bake.min(cfg.silent_after) / 4).clamp(Duration::from_millis(100), Duration::from_secs(2));
    let mut memory = Propagation::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|down| *down) => return,
        }
        if let Err(e) = tick(&state, &cfg, &mut memory).await {
            tracing::warn!(error = %e, "judging rollouts failed; retrying");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANDIDATE: &str = "c0ffee";

    fn cfg() -> RolloutConfig {
        RolloutConfig {
            canary: Some(Cohort::Instances(vec!["gw-a".into()])),
            bundles: Default::default(),
            bake: Duration::from_secs(10),
            silent_after: Duration::from_secs(5),
            max_error_rate: 0.05,
            min_requests: 20,
            max_p99: Some(Duration::from_millis(500)),
        }
    }

    fn rollout() -> Rollout {
        Rollout {
            id: 1,
            bundle: "main".into(),
            revision: "v2".into(),
            previous: "v1".into(),
            state: "canary".into(),
            started_at_ms: 100_000,
            ended_at_ms: None,
            reason: None,
        }
    }

    fn report(instance: &str, digest: &str, at_ms: i64, health: Value) -> GatewayReport {
        GatewayReport {
            instance: instance.into(),
            bundle: "main".into(),
            revision: None,
            digest: Some(digest.into()),
            last_sync: None,
            staleness_seconds: None,
            last_report_ms: at_ms,
            health: Some(health.to_string()),
            token: "gateways".into(),
        }
    }

    fn served(requests: u64, errors: u64, p99: u64) -> Value {
        serde_json::json!({ "served": { "requests": requests, "errors": errors, "p99_ms": p99 }, "activated_at": 101,
                            "activation": { "digest": CANDIDATE, "outcome": "activated" } })
    }

    #[test]
    fn a_healthy_canary_is_promoted_after_the_bake_time_only() {
        // Activated in the second 101 (reported in whole seconds: read as its end), bake 10 s: a
        // report at 112 s covers the whole bake, one at 111 s may not.
        let reports =
            [report("gw-a", CANDIDATE, 112_000, served(100, 1, 20)), report("gw-b", "old", 112_000, Value::Null)];
        assert_eq!(judge(&rollout(), CANDIDATE, &reports, &cfg(), 111_500), Verdict::Wait, "before the bake is over");
        assert_eq!(judge(&rollout(), CANDIDATE, &reports[..1], &cfg(), 112_500), Verdict::Promote);
        let early = [report("gw-a", CANDIDATE, 111_000, served(100, 1, 20))];
        assert_eq!(judge(&rollout(), CANDIDATE, &early, &cfg(), 112_500), Verdict::Wait);
    }

    #[test]
    fn a_canary_that_dies_after_a_report_late_in_the_bake_is_never_promoted() {
        // Its last report came 9 s into the 10 s bake; then nothing. The bake time passes, the
        // report is recent: still no evidence for the whole bake.
        let dead = [report("gw-a", CANDIDATE, 110_000, served(100, 0, 20))];
        assert_eq!(judge(&rollout(), CANDIDATE, &dead, &cfg(), 111_500), Verdict::Wait);
        assert_eq!(judge(&rollout(), CANDIDATE, &dead, &cfg(), 114_900), Verdict::Wait);
        let v = judge(&rollout(), CANDIDATE, &dead, &cfg(), 115_100);
        assert!(matches!(v, Verdict::RollBack { label: "silent", .. }), "{v:?}");
    }

    #[test]
    fn a_canary_that_fails_to_activate_rolls_it_back_with_the_reason() {
        let h = serde_json::json!({ "activation": { "digest": CANDIDATE, "outcome": "failed", "reason": "rego", "message": "http/x.rego:2: bad", "at": 101 } });
        let v = judge(&rollout(), CANDIDATE, &[report("gw-a", "old", 101_000, h)], &cfg(), 101_500);
        assert_eq!(v, roll_back("activation", "canary gw-a failed to activate it: rego: http/x.rego:2: bad".into()));
        // The same content refused before this rollout started is not this rollout's failure.
        let old = serde_json::json!({ "activation": { "digest": CANDIDATE, "outcome": "failed", "reason": "rego", "message": "x", "at": 90 } });
        let v = judge(&rollout(), CANDIDATE, &[report("gw-a", "old", 101_000, old)], &cfg(), 101_500);
        assert_eq!(v, Verdict::Wait);
    }

    #[test]
    fn an_error_rate_jump_or_a_slow_p99_rolls_it_back() {
        let v =
            judge(&rollout(), CANDIDATE, &[report("gw-a", CANDIDATE, 102_000, served(40, 10, 20))], &cfg(), 102_100);
        assert!(
            matches!(&v, Verdict::RollBack { label: "error_rate", why } if why.contains("10 of 40 requests failed")),
            "{v:?}"
        );
        let v =
            judge(&rollout(), CANDIDATE, &[report("gw-a", CANDIDATE, 102_000, served(40, 0, 1000))], &cfg(), 102_100);
        assert!(matches!(v, Verdict::RollBack { label: "p99", .. }), "{v:?}");
        // Too few requests to judge a rate.
        let v = judge(&rollout(), CANDIDATE, &[report("gw-a", CANDIDATE, 102_000, served(5, 5, 20))], &cfg(), 102_100);
        assert_eq!(v, Verdict::Wait);
    }

    #[test]
    fn a_silent_canary_rolls_it_back() {
        let v =
            judge(&rollout(), CANDIDATE, &[report("gw-a", CANDIDATE, 101_000, served(100, 0, 20))], &cfg(), 107_000);
        assert!(matches!(&v, Verdict::RollBack { label: "silent", why } if why.contains("silent for 6.0 s")), "{v:?}");
        let v = judge(&rollout(), CANDIDATE, &[], &cfg(), 106_000);
        assert!(matches!(v, Verdict::RollBack { label: "silent", .. }), "{v:?}");
    }

    #[test]
    fn a_percent_cohort_canary_that_stops_reporting_is_rolled_back_as_silent() {
        let cfg = RolloutConfig { canary: Some(Cohort::Percent(100)), ..cfg() };
        // Both were reporting when the rollout started; gw-b never reports again.
        let reports =
            [report("gw-a", CANDIDATE, 112_000, served(100, 0, 20)), report("gw-b", "old", 99_000, Value::Null)];
        assert_eq!(judge(&rollout(), CANDIDATE, &reports, &cfg, 104_900), Verdict::Wait);
        let v = judge(&rollout(), CANDIDATE, &reports, &cfg, 105_100);
        assert!(matches!(&v, Verdict::RollBack { label: "silent", why } if why.contains("gw-b")), "{v:?}");
        // One that never reported at all in the cohort's window is no canary; with none left,
        // the rollout is rolled back as having no canary, never left waiting.
        let gone = [report("gw-b", "old", 90_000, Value::Null)];
        let v = judge(&rollout(), CANDIDATE, &gone, &cfg, 105_100);
        assert!(matches!(v, Verdict::RollBack { label: "no_canary", .. }), "{v:?}");
    }

    #[test]
    fn a_bundle_is_judged_by_its_own_cohort_only() {
        // gw-a is the default cohort (and serves `main`); `payments` has its own, gw-p.
        let bundles = [("payments".to_owned(), Cohort::Instances(vec!["gw-p".into()]))].into();
        let cfg = RolloutConfig { bundles, ..cfg() };
        let payments = Rollout { bundle: "payments".into(), ..rollout() };
        let mut paid = report("gw-p", CANDIDATE, 112_000, served(100, 0, 20));
        paid.bundle = "payments".into();
        let main = report("gw-a", "old", 112_000, Value::Null);
        assert_eq!(judge(&payments, CANDIDATE, &[main.clone(), paid], &cfg, 112_500), Verdict::Promote);
        // gw-a, silent on `payments` it never served, is not its canary; gw-p alone is.
        let v = judge(&payments, CANDIDATE, &[main], &cfg, 106_000);
        assert!(matches!(&v, Verdict::RollBack { label: "silent", why } if why.contains("gw-p")), "{v:?}");
        assert!(cfg.is_canary("payments", "gw-p") && !cfg.is_canary("payments", "gw-a"));
        assert!(cfg.is_canary("main", "gw-a") && !cfg.is_canary("main", "gw-p"));
        let only_payments = RolloutConfig { canary: None, ..cfg };
        assert!(only_payments.cohort("main").is_none(), "a bundle without a cohort is not staged");
    }

    #[test]
    fn a_percentage_cohort_is_a_stable_choice_among_reporting_gateways() {
        let cohort = Cohort::Percent(50);
        let reports: Vec<GatewayReport> = (0..40).map(|i| report(&format!("gw-{i}"), "d", 0, Value::Null)).collect();
        let chosen = canaries(&cohort, "main", &reports, 0);
        assert!(!chosen.is_empty() && chosen.len() < 40, "{}", chosen.len());
        assert_eq!(chosen, canaries(&cohort, "main", &reports, 0));
        assert!(canaries(&cohort, "main", &reports, 1).is_empty(), "reports older than the window do not count");
    }
}
