//! How the gateway treats an upstream that fails (`data.gateway.upstreams.<name>`: `retries`,
//! `outlier`, `max_connections`, `max_pending`, `pending_timeout`), compiled with safe defaults
//! for a bundle that says nothing: a connection that could not be made, or was reset before any
//! response byte, is tried once more on another target within a budget of 20% of requests; five
//! failures in a row eject a target for 30 s, never more than half of them; at most 1024
//! requests in flight per upstream and per gateway, 1024 more waiting up to 1 s.

use std::time::Duration;

use crate::settings::UpstreamSpec;

/// A failure a retry may follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    /// No connection could be made: nothing of the request was sent.
    ConnectFailure,
    /// The connection failed before any byte of a response.
    Reset,
    /// An HTTP/2 upstream refused the stream (`REFUSED_STREAM`: not processed).
    RefusedStream,
    /// The target answered this status.
    Status(u16),
}

impl RetryOn {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            RetryOn::ConnectFailure => "connect_failure",
            RetryOn::Reset => "reset",
            RetryOn::RefusedStream => "refused_stream",
            RetryOn::Status(502) => "502",
            RetryOn::Status(503) => "503",
            RetryOn::Status(_) => "504",
        }
    }

    fn parse(s: &str) -> Result<RetryOn, String> {
        Ok(match s {
            "connect_failure" => RetryOn::ConnectFailure,
            "reset" => RetryOn::Reset,
            "refused_stream" => RetryOn::RefusedStream,
            "502" => RetryOn::Status(502),
            "503" => RetryOn::Status(503),
            "504" => RetryOn::Status(504),
            other => {
                return Err(format!(
                    "`retries.on`: `{other}` is not connect_failure, reset, refused_stream, \"502\", \"503\" or \"504\""
                ))
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Retries {
    /// Tries in all, the first included (1: no retry).
    pub attempts: u32,
    pub on: Vec<RetryOn>,
    /// Bound of each try's wait for a response head; none: the upstream's `read_timeout`.
    pub per_try_timeout: Option<Duration>,
    /// Retries may be at most this share of the upstream's requests over the last 10 s ...
    pub budget_ratio: f64,
    /// ... or this many a second, whichever allows more.
    pub budget_min_per_second: u32,
}

impl Retries {
    pub fn retries(&self, on: RetryOn) -> bool {
        self.attempts > 1 && self.on.contains(&on)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Outlier {
    /// Failures in a row that eject a target (0: never).
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    /// The largest share of the targets ejected at once (the last healthy one never is).
    pub max_ejected: f64,
}

impl Outlier {
    /// How long the `n`th ejection in a row lasts (`n` from 1): the base, doubled each time,
    /// at most ten times the base.
    pub fn ejection(&self, n: u32) -> Duration {
        let factor = 1u32 << n.saturating_sub(1).min(4);
        (self.base_ejection * factor).min(self.base_ejection * 10)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Resilience {
    pub retries: Retries,
    pub outlier: Outlier,
    /// Requests in flight to the upstream at once (HTTP/1.1 connections and h2 streams alike).
    pub max_connections: u32,
    /// Requests waiting for one of them; past it, or after `pending_timeout`, 503.
    pub max_pending: u32,
    pub pending_timeout: Duration,
}

impl Resilience {
    /// What a bundle that says nothing gets.
    pub fn defaults() -> Resilience {
        Resilience {
            retries: Retries {
                attempts: 2,
                on: vec![RetryOn::ConnectFailure, RetryOn::Reset, RetryOn::RefusedStream],
                per_try_timeout: None,
                budget_ratio: 0.2,
                budget_min_per_second: 10,
            },
            outlier: Outlier { consecutive_failures: 5, base_ejection: Duration::from_secs(30), max_ejected: 0.5 },
            max_connections: 1024,
            max_pending: 1024,
            pending_timeout: Duration::from_secs(1),
        }
    }
}

/// Compiles an upstream's resilience settings; the message names the key that is wrong.
pub fn compile(spec: &UpstreamSpec) -> Result<Resilience, String> {
    let r = spec.retries.clone().unwrap_or_default();
    let attempts = r.attempts.unwrap_or(2);
    if !(1..=5).contains(&attempts) {
        return Err("`retries.attempts` must be from 1 to 5 (tries in all, the first included)".into());
    }
    let on = match &r.on {
        None => vec![RetryOn::ConnectFailure, RetryOn::Reset, RetryOn::RefusedStream],
        Some(list) => list.iter().map(|s| RetryOn::parse(s)).collect::<Result<_, _>>()?,
    };
    if r.per_try_timeout.is_some_and(|t| t.is_zero()) {
        return Err("`retries.per_try_timeout` must be more than 0".into());
    }
    let budget = r.budget.unwrap_or_default();
    let budget_ratio = budget.ratio.unwrap_or(0.2);
    if !(0.0..=1.0).contains(&budget_ratio) {
        return Err("`retries.budget.ratio` must be from 0 to 1".into());
    }
    let o = spec.outlier.clone().unwrap_or_default();
    let base_ejection = o.base_ejection.unwrap_or(Duration::from_secs(30));
    if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&base_ejection) {
        return Err("`outlier.base_ejection` must be from 100ms to 1h".into());
    }
    let max_ejected = o.max_ejected.unwrap_or(0.5);
    if !(max_ejected > 0.0 && max_ejected <= 1.0) {
        return Err("`outlier.max_ejected` must be more than 0 and at most 1".into());
    }
    let max_connections = spec.max_connections.unwrap_or(1024);
    if !(1..=1_000_000).contains(&max_connections) {
        return Err("`max_connections` must be from 1 to 1000000".into());
    }
    let max_pending = spec.max_pending.unwrap_or(1024);
    if max_pending > 1_000_000 {
        return Err("`max_pending` must be at most 1000000".into());
    }
    Ok(Resilience {
        retries: Retries {
            attempts,
            on,
            per_try_timeout: r.per_try_timeout,
            budget_ratio,
            budget_min_per_second: budget.min_per_second.unwrap_or(10),
        },
        outlier: Outlier { consecutive_failures: o.consecutive_failures.unwrap_or(5), base_ejection, max_ejected },
        max_connections,
        max_pending,
        pending_timeout: spec.pending_timeout.unwrap_or(Duration::from_secs(1)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> UpstreamSpec {
        yaml_serde::from_str(&format!("targets: [\"127.0.0.1:1\"]\n{yaml}")).expect("spec")
    }

    #[test]
    fn a_bundle_that_says_nothing_gets_safe_defaults() {
        let r = compile(&spec("")).expect("compiles");
        assert_eq!(r.retries.attempts, 2);
        assert!(r.retries.retries(RetryOn::ConnectFailure) && r.retries.retries(RetryOn::Reset));
        assert!(!r.retries.retries(RetryOn::Status(503)), "a 503 is the target's answer: not retried unless said");
        assert_eq!((r.retries.budget_ratio, r.retries.budget_min_per_second), (0.2, 10));
        assert_eq!(r.outlier.consecutive_failures, 5);
        assert_eq!((r.max_connections, r.max_pending, r.pending_timeout), (1024, 1024, Duration::from_secs(1)));
    }

    #[test]
    fn ejections_grow_with_each_repeat_up_to_ten_times_the_base() {
        let o = compile(&spec("outlier: { base_ejection: 1s }")).expect("compiles").outlier;
        let secs: Vec<u64> = (1..=6).map(|n| o.ejection(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn bad_settings_name_their_key() {
        for (yaml, key) in [
            ("retries: { attempts: 9 }", "retries.attempts"),
            ("retries: { on: [\"500\"] }", "retries.on"),
            ("retries: { budget: { ratio: 2 } }", "retries.budget.ratio"),
            ("retries: { per_try_timeout: 0s }", "retries.per_try_timeout"),
            ("outlier: { max_ejected: 0 }", "outlier.max_ejected"),
            ("outlier: { base_ejection: 1ms }", "outlier.base_ejection"),
            ("max_connections: 0", "max_connections"),
        ] {
            let e = compile(&spec(yaml)).expect_err(yaml);
            assert!(e.contains(key), "{yaml}: {e}");
        }
    }
}
