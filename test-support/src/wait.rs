//! Waiting for something to become true, the one way tests of this workspace do it.

use std::time::{Duration, Instant};

/// How often [`eventually`] looks again.
pub const POLL: Duration = Duration::from_millis(20);

/// Waits until `cond` holds, looking every [`POLL`] (20 ms); panics naming `what` after
/// `limit`. Returns how long it took.
pub fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    until(limit, what, || Ok(cond())).unwrap_or_else(|e| panic!("{e}"))
}

/// [`eventually`] for a caller that reports rather than panics, and for a wait that can tell
/// it is hopeless: `cond` answers `Ok(true)` (done), `Ok(false)` (not yet) or `Err(why)` (give
/// up now, for instance because the process being waited for has exited). Returns how long it
/// took, or what went wrong: `why`, or a timeout naming `what` after `limit`.
pub fn until(limit: Duration, what: &str, mut cond: impl FnMut() -> Result<bool, String>) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        if cond()? {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= limit {
            return Err(format!("timed out after {limit:?} waiting for: {what}"));
        }
        std::thread::sleep(POLL);
    }
}

/// Looks at `value` every [`POLL`] until `done` accepts it or `limit` passes; returns the last
/// value either way (for counters that land just after the response they count).
pub fn settle<T>(limit: Duration, mut value: impl FnMut() -> T, done: impl Fn(&T) -> bool) -> T {
    let deadline = Instant::now() + limit;
    loop {
        let v = value();
        if done(&v) || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "waiting for: never")]
    fn eventually_names_what_it_waited_for() {
        eventually(Duration::from_millis(50), "never", || false);
    }

    #[test]
    fn settle_returns_the_last_value_when_it_never_settles() {
        let mut n = 0;
        let v = settle(
            Duration::from_millis(60),
            || {
                n += 1;
                n
            },
            |_| false,
        );
        assert!(v >= 2, "{v}");
    }
}
