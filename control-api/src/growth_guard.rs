//! The growth guard: a publish is compared with the bundle's active revision, figure by figure
//! ([`Figures`]: compressed, uncompressed and compiled size, compile time, routes, upstreams).
//! One that grows past `max_growth` or drops more than `max_removed` of the routes or upstreams is
//! refused with 409, naming each figure that moved and by how much, unless the publisher forces
//! it with a reason (`x-force-reason`), which the revision history keeps.

use policy_bundles::budget::{human, Figures};
use serde::Serialize;

use crate::config::GrowthGuard;

/// One figure past the guard.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Moved {
    /// `uncompressed_bytes`, `routes`, ...
    pub figure: &'static str,
    pub active: u64,
    pub candidate: u64,
    /// What happened, for people: `3.1x larger (119.0 MiB, was 38.4 MiB; limit 2x)`.
    pub change: String,
}

/// Every figure of `candidate` past the guard's ratios, compared with `active`.
pub fn compare(active: &Figures, candidate: &Figures, g: &GrowthGuard) -> Vec<Moved> {
    let mut moved = Vec::new();
    let sizes = [
        ("compressed_bytes", active.compressed_bytes, candidate.compressed_bytes),
        ("uncompressed_bytes", active.uncompressed_bytes, candidate.uncompressed_bytes),
        ("compiled_bytes", active.compiled_bytes, candidate.compiled_bytes),
    ];
    for (figure, was, now) in sizes {
        if grew(was, now, g.max_growth) {
            moved.push(Moved {
                figure,
                active: was,
                candidate: now,
                change: format!(
                    "{:.1}x larger ({}, was {}; limit {}x)",
                    now as f64 / was.max(1) as f64,
                    human(now),
                    human(was),
                    g.max_growth
                ),
            });
        }
    }
    let min_ms = g.min_compile_time.as_millis() as u64;
    if candidate.compile_ms >= min_ms && grew(active.compile_ms.max(1), candidate.compile_ms, g.max_growth) {
        moved.push(Moved {
            figure: "compile_ms",
            active: active.compile_ms,
            candidate: candidate.compile_ms,
            change: format!(
                "{:.1}x slower to compile ({} ms, was {} ms; limit {}x)",
                candidate.compile_ms as f64 / active.compile_ms.max(1) as f64,
                candidate.compile_ms,
                active.compile_ms,
                g.max_growth
            ),
        });
    }
    let counts = [("routes", active.routes, candidate.routes), ("upstreams", active.upstreams, candidate.upstreams)];
    for (figure, was, now) in counts {
        let removed = was.saturating_sub(now);
        if was > 0 && removed as f64 / was as f64 > g.max_removed {
            moved.push(Moved {
                figure,
                active: was as u64,
                candidate: now as u64,
                change: format!(
                    "{removed} of {was} {figure} removed ({:.0}%; limit {:.0}%)",
                    removed as f64 * 100.0 / was as f64,
                    g.max_removed * 100.0
                ),
            });
        }
    }
    moved
}

fn grew(was: u64, now: u64, ratio: f64) -> bool {
    was > 0 && now as f64 > was as f64 * ratio
}

/// The guard's 409 message: every figure that moved.
pub fn message(moved: &[Moved]) -> String {
    let list: Vec<String> = moved.iter().map(|m| format!("{}: {}", m.figure, m.change)).collect();
    format!(
        "the growth guard refused this publish against the active revision: {}; publish it anyway with a reason \
         (bundlectl push --force --reason \"...\", or the header x-force-reason)",
        list.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(bytes: u64, routes: usize) -> Figures {
        Figures {
            compressed_bytes: bytes / 10,
            uncompressed_bytes: bytes,
            compiled_bytes: bytes * 3,
            compile_ms: 20,
            modules: 3,
            routes,
            upstreams: 2,
            peak_rss_bytes: None,
        }
    }

    #[test]
    fn a_three_times_larger_bundle_names_each_size_that_grew() {
        let moved = compare(&figures(1 << 20, 10), &figures(3 << 20, 10), &GrowthGuard::default());
        let names: Vec<&str> = moved.iter().map(|m| m.figure).collect();
        assert_eq!(names, ["compressed_bytes", "uncompressed_bytes", "compiled_bytes"]);
        assert!(moved[1].change.starts_with("3.0x larger (3.0 MiB, was 1.0 MiB"), "{}", moved[1].change);
    }

    #[test]
    fn dropping_most_routes_is_named_with_the_share() {
        let moved = compare(&figures(1 << 20, 10), &figures(1 << 20, 1), &GrowthGuard::default());
        assert_eq!(moved.len(), 1, "{moved:?}");
        assert_eq!(moved[0].change, "9 of 10 routes removed (90%; limit 20%)");
    }

    #[test]
    fn small_moves_and_fast_compiles_pass() {
        let mut slow = figures(1 << 20, 9);
        slow.compile_ms = 900; // 45x slower, but under min_compile_time
        assert!(compare(&figures(1 << 20, 10), &slow, &GrowthGuard::default()).is_empty());
        slow.compile_ms = 1500;
        let moved = compare(&figures(1 << 20, 10), &slow, &GrowthGuard::default());
        assert_eq!(moved.iter().map(|m| m.figure).collect::<Vec<_>>(), ["compile_ms"]);
    }
}
