//! Publish-to-enforce times, per revision, as this replica saw them in gateways' status reports:
//! what the console's propagation page plots. A sample is the time from a revision's publish to
//! the moment a gateway activated it (the gateway's own `activated_at`, else the report that
//! first showed it). An activation more than [`WINDOW_MS`] after the publish is not counted: a
//! gateway started later, or a rollback to an old revision, is not propagation. Kept in memory
//! and bounded: a restart starts the page afresh, and a hostile reporter can neither grow it
//! without bound nor invent a revision (a digest is looked up in the store's history before it
//! counts).

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

/// The most revisions kept per bundle, bundles kept, samples per revision, instances remembered.
pub const MAX_REVISIONS: usize = 50;
pub const MAX_BUNDLES: usize = 16;
pub const MAX_SAMPLES: usize = 1_000;
pub const MAX_INSTANCES: usize = 10_000;
/// Activations later than this after the publish are not propagation.
pub const WINDOW_MS: i64 = 3_600_000;

/// One revision and how long it took to reach each gateway that reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct Spread {
    pub bundle: String,
    pub revision: String,
    pub digest: String,
    pub published_at_ms: i64,
    /// Milliseconds from publish to enforce, one per gateway, in the order they were seen.
    pub samples: Vec<i64>,
    /// The gateways sampled (hashes of their names): one sample each.
    sampled: HashSet<u64>,
}

impl Spread {
    /// A revision, not sampled yet.
    pub fn new(bundle: &str, revision: String, digest: String, published_at_ms: i64) -> Spread {
        Spread {
            bundle: bundle.to_owned(),
            revision,
            digest,
            published_at_ms,
            samples: Vec::new(),
            sampled: HashSet::new(),
        }
    }
}

fn name_hash(instance: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    instance.hash(&mut h);
    h.finish()
}

#[derive(Default)]
struct Inner {
    /// Per instance: the digest it last reported.
    seen: HashMap<String, String>,
    /// Per bundle: its newest revisions, oldest first.
    bundles: HashMap<String, VecDeque<Spread>>,
}

/// See the module documentation.
#[derive(Default)]
pub struct Propagation(Mutex<Inner>);

/// What a report says, as far as propagation goes.
pub struct Sighting<'a> {
    pub instance: &'a str,
    pub bundle: &'a str,
    pub digest: &'a str,
    /// Unix milliseconds the gateway says it activated the bundle at.
    pub activated_at_ms: Option<i64>,
    /// Unix milliseconds of the report.
    pub reported_at_ms: i64,
}

impl Propagation {
    /// Notes that `s.instance` reports `s.digest`. Returns when the enforce time is, if this is
    /// news worth a sample: the instance moved to a digest it did not report before, and either
    /// it says when it activated it or it was seen on another digest before (so the report
    /// time bounds the move).
    pub fn sighting(&self, s: &Sighting<'_>) -> Option<i64> {
        let mut inner = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = inner.seen.get(s.instance).cloned();
        if before.as_deref() == Some(s.digest) {
            return None;
        }
        if inner.seen.len() >= MAX_INSTANCES && before.is_none() {
            inner.seen.clear();
        }
        inner.seen.insert(s.instance.to_owned(), s.digest.to_owned());
        s.activated_at_ms.or(before.map(|_| s.reported_at_ms))
    }

    /// Adds a sample to a revision, tracking the revision first if it is new (`revision` and
    /// `published_at_ms` from the store's history). An activation before the publish (clocks
    /// apart) counts as 0; one past [`WINDOW_MS`] after it is not counted.
    pub fn record(&self, spread: Spread, instance: &str, enforced_at_ms: i64) {
        let took = enforced_at_ms.saturating_sub(spread.published_at_ms).max(0);
        if took > WINDOW_MS {
            return;
        }
        let mut inner = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !inner.bundles.contains_key(&spread.bundle) && inner.bundles.len() >= MAX_BUNDLES {
            return;
        }
        let queue = inner.bundles.entry(spread.bundle.clone()).or_default();
        let at = match queue.iter().position(|r| r.digest == spread.digest) {
            Some(at) => at,
            None => {
                if queue.len() >= MAX_REVISIONS {
                    queue.pop_front();
                }
                queue.push_back(Spread { samples: Vec::new(), sampled: HashSet::new(), ..spread });
                queue.len() - 1
            }
        };
        let Some(r) = queue.get_mut(at) else { return };
        if r.samples.len() < MAX_SAMPLES && r.sampled.insert(name_hash(instance)) {
            r.samples.push(took);
        }
    }

    /// A tracked revision (without its samples), to add a sample to.
    pub fn tracked(&self, bundle: &str, digest: &str) -> Option<Spread> {
        let inner = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let r = inner.bundles.get(bundle)?.iter().find(|r| r.digest == digest)?;
        Some(Spread::new(&r.bundle, r.revision.clone(), r.digest.clone(), r.published_at_ms))
    }

    /// Every tracked revision of the bundles `visible` accepts, newest publish first.
    pub fn revisions(&self, visible: impl Fn(&str) -> bool) -> Vec<Spread> {
        let inner = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out: Vec<Spread> =
            inner.bundles.iter().filter(|(b, _)| visible(b)).flat_map(|(_, q)| q.iter().cloned()).collect();
        out.sort_by(|a, b| b.published_at_ms.cmp(&a.published_at_ms).then_with(|| a.revision.cmp(&b.revision)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spread(bundle: &str, revision: &str, digest: &str, at: i64) -> Spread {
        Spread::new(bundle, revision.into(), digest.into(), at)
    }

    fn sight<'a>(instance: &'a str, digest: &'a str, activated: Option<i64>, at: i64) -> Sighting<'a> {
        Sighting { instance, bundle: "main", digest, activated_at_ms: activated, reported_at_ms: at }
    }

    #[test]
    fn a_move_to_a_new_digest_is_a_sample_once_per_gateway() {
        let p = Propagation::default();
        assert_eq!(p.sighting(&sight("gw-1", "d1", Some(1_000), 5_000)), Some(1_000));
        assert_eq!(p.sighting(&sight("gw-1", "d1", Some(1_000), 6_000)), None, "same digest again");
        p.record(spread("main", "r1", "d1", 400), "gw-1", 1_000);
        p.record(spread("main", "r1", "d1", 400), "gw-1", 9_000);
        let revisions = p.revisions(|_| true);
        assert_eq!(revisions.len(), 1);
        assert_eq!(revisions[0].samples, vec![600]);
    }

    #[test]
    fn a_first_report_without_an_activation_time_is_no_sample() {
        let p = Propagation::default();
        assert_eq!(p.sighting(&sight("gw-1", "d1", None, 5_000)), None, "when it moved is unknown");
        assert_eq!(p.sighting(&sight("gw-1", "d2", None, 7_000)), Some(7_000), "the move is bounded by the report");
    }

    #[test]
    fn an_activation_long_after_the_publish_is_no_propagation() {
        let p = Propagation::default();
        p.record(spread("main", "r1", "d1", 0), "late-starter", WINDOW_MS + 1);
        p.record(spread("main", "r1", "d1", 0), "gw-1", 2_000);
        assert_eq!(p.revisions(|_| true)[0].samples, vec![2_000]);
    }

    #[test]
    fn a_hostile_reporter_cannot_grow_it_without_bound() {
        let p = Propagation::default();
        for i in 0..(MAX_REVISIONS + 10) {
            p.record(spread("main", &format!("r{i}"), &format!("d{i}"), i as i64), "gw", 10);
        }
        for i in 0..(MAX_BUNDLES + 10) {
            p.record(spread(&format!("b{i}"), "r", "d", 0), "gw", 10);
        }
        let all = p.revisions(|_| true);
        assert_eq!(all.iter().filter(|r| r.bundle == "main").count(), MAX_REVISIONS);
        assert!(all.iter().map(|r| &r.bundle).collect::<std::collections::HashSet<_>>().len() <= MAX_BUNDLES);
        for i in 0..(MAX_INSTANCES + 5) {
            p.sighting(&sight(&format!("gw-{i}"), "d", Some(1), 1));
        }
        assert!(p.0.lock().unwrap().seen.len() <= MAX_INSTANCES);
    }
}
