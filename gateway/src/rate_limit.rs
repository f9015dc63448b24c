//! The counts behind a bundle's rate limits (`policy_bundles::rate_limits`), kept by this
//! gateway: one table of GCRA buckets per limit, checked on the request path.
//!
//! * **GCRA** (the generic cell rate algorithm, a token bucket kept as one number): a key's
//!   "theoretical arrival time" advances by the limit's emission interval per request; a request
//!   that would put it more than `burst` intervals ahead of now is refused, and told when it
//!   would not be (`Retry-After`).
//! * **No lock shared by all workers**: a table is 64 shards, each behind its own mutex, held
//!   for a few instructions.
//! * **Bounded memory**: a table holds a fixed number of keys (`limits.rate_limit_keys`), in
//!   two-way sets; a new key takes the slot of the two whose bucket is emptier (a full bucket is
//!   the same as no entry, so evicting one changes nothing). Evicting a key that still held
//!   state is counted (`gateway_rate_limit_evictions_total`): the key starts afresh.
//! * **Keyed hashing**: clients choose keys (addresses, API keys, subjects), so slots are found
//!   by a hash with a per-process random key (`ahash`): no one can aim keys at one set.
//!
//! Not `governor`: its keyed limiter keeps every key in a `DashMap` that grows with each new key
//! until it is pruned, so a flood of distinct keys is a flood of memory. Not `pingora-limits`:
//! its count-min estimates over-count under many keys, refusing clients who sent little.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use policy_bundles::rate_limits::RateLimit;
use prometheus::IntCounter;

const SHARDS: usize = 64;
const WAYS: usize = 2;

/// One key's bucket: the key's hash (0: empty) and its theoretical arrival time (nanoseconds
/// on [`now_ns`]'s clock).
#[derive(Clone, Copy, Default)]
struct Slot {
    tag: u64,
    tat: u64,
}

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Admitted; `remaining` more requests would be admitted right now.
    Allowed { remaining: u64 },
    /// Over the limit: admitted again after `retry_after`.
    Limited { retry_after: Duration },
}

/// The keys' state of one limit: kept across bundles while the limit keeps its name and key.
pub struct Table {
    sets: usize,
    shards: Box<[Mutex<Vec<Slot>>]>,
    hasher: ahash::RandomState,
    evicted: IntCounter,
}

/// One limit as the active bundle says it (rate, burst), over its [`Table`].
pub struct Buckets {
    pub limit: RateLimit,
    emission: u64,
    tolerance: u64,
    table: Arc<Table>,
}

/// Nanoseconds on a monotonic clock that starts with the process (never 0).
pub fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(|| {
        let now = Instant::now();
        now.checked_sub(Duration::from_secs(1)).unwrap_or(now)
    });
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

impl Buckets {
    /// A new table for `limit` holding at most `keys` keys (rounded up to whole sets).
    pub fn new(limit: RateLimit, keys: usize, evicted: IntCounter) -> Buckets {
        let sets = keys.div_ceil(SHARDS * WAYS).max(1);
        let table = Table {
            sets,
            shards: (0..SHARDS).map(|_| Mutex::new(vec![Slot::default(); sets * WAYS])).collect(),
            hasher: ahash::RandomState::new(),
            evicted,
        };
        Buckets::over(limit, Arc::new(table))
    }

    /// `limit` over an existing table: its keys keep their state.
    pub fn over(limit: RateLimit, table: Arc<Table>) -> Buckets {
        let emission = u64::try_from(limit.emission().as_nanos()).unwrap_or(u64::MAX).max(1);
        Buckets { tolerance: emission.saturating_mul(u64::from(limit.burst)), emission, limit, table }
    }

    pub fn table(&self) -> &Arc<Table> {
        &self.table
    }

    /// How many keys it holds at most.
    pub fn capacity(&self) -> usize {
        self.table.sets * WAYS * SHARDS
    }

    /// Counts one request of `key` at `now` (nanoseconds, [`now_ns`]).
    pub fn check(&self, key: &[u8], now: u64) -> Check {
        self.count(key, now, true)
    }

    /// What [`Buckets::check`] would say, spending nothing: a request past another of its limits
    /// must not spend this one's quota.
    pub fn peek(&self, key: &[u8], now: u64) -> Check {
        self.count(key, now, false)
    }

    fn count(&self, key: &[u8], now: u64, spend: bool) -> Check {
        let t = &*self.table;
        let raw = t.hasher.hash_one(key);
        // The top bits pick the shard, the low ones the set; a tag is never 0 (empty).
        let (shard, set, hash) = ((raw >> 58) as usize % SHARDS, (raw % t.sets as u64) as usize, raw.max(1));
        // A shard holds plain numbers, never half-updated: a lock poisoned by a panic elsewhere
        // is safe to keep using.
        let mut slots = t.shards[shard].lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let ways = &mut slots[set * WAYS..(set + 1) * WAYS];
        let at = match ways.iter().position(|s| s.tag == hash) {
            Some(at) => at,
            None => {
                // The emptier bucket makes room: the earlier its arrival time, the less it holds.
                let at = if ways[0].tat <= ways[1].tat { 0 } else { 1 };
                if ways[at].tag != 0 && ways[at].tat > now {
                    t.evicted.inc();
                }
                ways[at] = Slot { tag: hash, tat: 0 };
                at
            }
        };
        let slot = &mut ways[at];
        let next = slot.tat.max(now).saturating_add(self.emission);
        let ahead = next - now;
        if ahead > self.tolerance {
            return Check::Limited { retry_after: Duration::from_nanos(ahead - self.tolerance) };
        }
        if spend {
            slot.tat = next;
        }
        Check::Allowed { remaining: (self.tolerance - ahead) / self.emission }
    }

    /// Whether this table can count for `limit`: the same name and key (a new rate, burst or
    /// mode keeps every key's state: it is an absolute time, read against the new rate).
    pub fn serves(&self, limit: &RateLimit) -> bool {
        self.limit.name == limit.name && self.limit.key == limit.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_bundles::rate_limits::{LimitKey, LimitMode};

    fn limit(quota: u32, burst: u32) -> RateLimit {
        RateLimit {
            name: "l".into(),
            key: LimitKey::ClientIp,
            quota,
            window: Duration::from_secs(1),
            burst,
            mode: LimitMode::Enforce,
            before_auth: false,
            scope: policy_bundles::rate_limits::LimitScope::Local,
        }
    }

    fn counter() -> IntCounter {
        IntCounter::new("evicted", "evicted").expect("counter")
    }

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_burst_is_admitted_at_once_then_the_rate_and_retry_after_says_when() {
        let b = Buckets::new(limit(100, 20), 1024, counter());
        let t0 = 10 * SEC;
        for i in 0..20 {
            assert_eq!(b.check(b"alice", t0), Check::Allowed { remaining: 19 - i });
        }
        assert_eq!(b.check(b"alice", t0), Check::Limited { retry_after: Duration::from_millis(10) });
        // Another key is untouched.
        assert_eq!(b.check(b"bob", t0), Check::Allowed { remaining: 19 });
        // One emission interval later, one more.
        assert!(matches!(b.check(b"alice", t0 + SEC / 100), Check::Allowed { .. }));
        assert!(matches!(b.check(b"alice", t0 + SEC / 100), Check::Limited { .. }));
    }

    #[test]
    fn over_ten_seconds_a_flood_gets_the_burst_plus_the_rate() {
        let b = Buckets::new(limit(100, 20), 1024, counter());
        let (mut admitted, t0) = (0, 5 * SEC);
        // 1,000 requests a second for ten seconds.
        for i in 0..10_000u64 {
            if matches!(b.check(b"alice", t0 + i * SEC / 1000), Check::Allowed { .. }) {
                admitted += 1;
            }
        }
        assert!((1015..=1021).contains(&admitted), "{admitted}");
    }

    #[test]
    fn a_million_distinct_keys_stay_within_the_table_and_evictions_are_counted() {
        let evicted = counter();
        let b = Buckets::new(limit(1, 1), 4096, evicted.clone());
        assert_eq!(b.capacity(), 4096);
        let t0 = 5 * SEC;
        for i in 0..1_000_000u32 {
            assert!(matches!(b.check(&i.to_le_bytes(), t0), Check::Allowed { .. }));
        }
        let held: usize =
            b.table.shards.iter().map(|s| s.lock().map(|v| v.iter().filter(|x| x.tag != 0).count()).unwrap_or(0)).sum();
        assert_eq!(held, 4096);
        assert!(evicted.get() >= 1_000_000 - 4096, "{}", evicted.get());
        // An idle key's full bucket is evicted without a count.
        let quiet = counter();
        let b = Buckets::new(limit(1000, 1), 64, quiet.clone());
        for i in 0..1000u32 {
            b.check(&i.to_le_bytes(), t0 + u64::from(i) * SEC);
        }
        assert_eq!(quiet.get(), 0);
    }
}
