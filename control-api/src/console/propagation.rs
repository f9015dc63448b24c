//! The propagation page: how long each revision took from publish to enforcement on each gateway
//! ([`crate::propagation`]), per revision and as a histogram, drawn as inline SVG (no script, no
//! third-party library).

use axum::extract::State;
use axum::response::Html;
use maud::{html, Markup};

use super::{page, ConsoleError, Viewer};
use crate::app_state::AppState;
use crate::auth::Scope;
use crate::propagation::Spread;

/// Upper bounds of the histogram's buckets, in milliseconds (the last is everything above).
const BUCKETS: [(i64, &str); 9] = [
    (500, "≤0.5 s"),
    (1_000, "≤1 s"),
    (2_000, "≤2 s"),
    (5_000, "≤5 s"),
    (10_000, "≤10 s"),
    (30_000, "≤30 s"),
    (60_000, "≤1 min"),
    (300_000, "≤5 min"),
    (i64::MAX, ">5 min"),
];

pub(super) async fn page(State(state): State<AppState>, viewer: Viewer) -> Result<Html<String>, ConsoleError> {
    viewer.needs(Scope::Read, "propagation")?;
    let revisions = state.0.propagation.revisions(|b| viewer.0.may_touch(b));
    let all: Vec<i64> = revisions.iter().flat_map(|r| r.samples.iter().copied()).collect();
    let body = html! {
        p.hint { "From a revision's publish to its activation on each gateway (the gateway's own "
                 code { "activated_at_ms" } "), as this control-api replica saw in status reports since it started; \
                 with a staged rollout, the gateways outside the canary include the bake." }
        @if all.is_empty() {
            p { "No gateway has reported a newly published revision yet." }
        } @else {
            h2 { "All revisions: " (all.len()) " activations" }
            (histogram(&all))
            h2 { "Per revision" }
            (per_revision(&revisions))
        }
    };
    Ok(page::layout("Propagation", &viewer.0, body))
}

/// The `p`-th percentile (0–100) of sorted values, nearest rank.
fn percentile(sorted: &[i64], p: usize) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len()).div_ceil(100).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub(super) fn histogram(samples: &[i64]) -> Markup {
    let mut counts = [0usize; BUCKETS.len()];
    for ms in samples {
        let i = BUCKETS.iter().position(|(upper, _)| ms <= upper).unwrap_or(BUCKETS.len() - 1);
        counts[i] += 1;
    }
    let max = counts.iter().copied().max().unwrap_or(1).max(1);
    let (bar, gap, height) = (64usize, 8usize, 160usize);
    let width = BUCKETS.len() * (bar + gap);
    html! {
        svg.histogram role="img" aria-label="publish-to-enforce histogram" viewBox={ "0 0 " (width) " " (height + 40) }
            width=(width) height=(height + 40) xmlns="http://www.w3.org/2000/svg" {
            @for (i, ((_, label), n)) in BUCKETS.iter().zip(counts).enumerate() {
                @let h = n * height / max;
                @let x = i * (bar + gap);
                rect.bar x=(x) y=(height - h) width=(bar) height=(h) { title { (label) ": " (n) } }
                text x=(x + bar / 2) y=((height - h).saturating_sub(4).max(12)) text-anchor="middle" class="n" { (n) }
                text x=(x + bar / 2) y=(height + 18) text-anchor="middle" { (label) }
            }
        }
    }
}

fn sorted_samples(r: &Spread) -> Vec<i64> {
    let mut sorted = r.samples.clone();
    sorted.sort_unstable();
    sorted
}

fn per_revision(revisions: &[Spread]) -> Markup {
    html! {
        table.propagation {
            thead { tr { th { "Bundle" } th { "Revision" } th { "Published" } th { "Gateways" } th { "Median" }
                         th { "p90" } th { "Slowest" } } }
            tbody { @for r in revisions {
                @let sorted = sorted_samples(r);
                tr data-revision=(r.revision) {
                    td { code { (r.bundle) } } td { code { (r.revision) } } td { (page::time(r.published_at_ms)) }
                    td { (sorted.len()) }
                    td { (page::seconds(percentile(&sorted, 50))) }
                    td { (page::seconds(percentile(&sorted, 90))) }
                    td { (page::seconds(sorted.last().copied().unwrap_or(0))) }
                }
            } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_counts_each_sample_in_its_bucket() {
        let svg = histogram(&[100, 400, 900, 70_000, 400_000]).into_string();
        assert!(svg.contains("≤0.5 s: 2"), "{svg}");
        assert!(svg.contains("≤1 s: 1"), "{svg}");
        assert!(svg.contains("≤5 min: 1"), "{svg}");
        assert!(svg.contains("&gt;5 min: 1"), "{svg}");
        assert_eq!(percentile(&[1, 2, 3, 4], 50), 2);
        assert_eq!(percentile(&[1, 2, 3, 4], 90), 4);
    }
}
