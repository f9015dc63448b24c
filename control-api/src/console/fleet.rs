//! The fleet page: every gateway, its bundle, revision, cohort and staleness (coloured against
//! the gateway's own alert threshold), how many run each revision. The table is a fragment the
//! page's script fetches again every second (`/ui/fleet/live`).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::Html;
use maud::{html, Markup};

use super::{page, ConsoleError, Viewer};
use crate::api::fleet::{members, FleetMember};
use crate::app_state::AppState;
use crate::auth::Scope;
use crate::clock;

/// A gateway's threshold when it reports none: the gateway's default `bundle.max_staleness`.
const DEFAULT_MAX_STALENESS: f64 = 300.0;

pub(super) async fn page(State(state): State<AppState>, viewer: Viewer) -> Result<Html<String>, ConsoleError> {
    viewer.needs(Scope::Read, "the fleet")?;
    let live = table(&members(&state.0, &viewer.0).await?);
    let body = html! {
        p.hint { "Refreshed every second. Staleness is coloured against each gateway's own "
                 code { "bundle.max_staleness" } ": amber past half of it, red past it." }
        div #fleet data-refresh="/ui/fleet/live" { (live) }
    };
    Ok(page::layout("Fleet", &viewer.0, body))
}

/// `GET /ui/fleet/live`: the fleet's fragment alone.
pub(super) async fn live(State(state): State<AppState>, viewer: Viewer) -> Result<Html<String>, ConsoleError> {
    viewer.needs(Scope::Read, "the fleet")?;
    Ok(Html(table(&members(&state.0, &viewer.0).await?).into_string()))
}

/// The gateway's alert threshold in seconds: what it reports, else the gateway's default.
fn threshold(m: &FleetMember) -> f64 {
    m.max_staleness_seconds.filter(|l| *l > 0.0).unwrap_or(DEFAULT_MAX_STALENESS)
}

/// `ok`, `warn` (past half the threshold) or `stale` (past it).
pub(super) fn staleness_class(m: &FleetMember) -> &'static str {
    let limit = threshold(m);
    match m.staleness_seconds {
        Some(s) if s > limit => "stale",
        Some(s) if s > limit / 2.0 => "warn",
        Some(_) => "ok",
        None => "unknown",
    }
}

fn table(fleet: &[FleetMember]) -> Markup {
    let now = clock::now_ms();
    let mut on: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for m in fleet {
        *on.entry((m.bundle.as_str(), m.revision.as_deref().unwrap_or("(none)"))).or_default() += 1;
    }
    html! {
        @if fleet.is_empty() {
            p { "No gateway has reported yet." }
        } @else {
            ul.counts {
                @for ((bundle, revision), n) in &on {
                    li { code { (bundle) } " revision " code.revision { (revision) } ": " strong.count { (n) }
                         @if *n == 1 { " gateway" } @else { " gateways" } }
                }
            }
            table.fleet {
                thead { tr { th { "Gateway" } th { "Bundle" } th { "Revision" } th { "Cohort" } th { "Staleness" }
                             th { "Last report" } th { "State" } } }
                tbody {
                    @for m in fleet { (row(m, now)) }
                }
            }
        }
    }
}

fn row(m: &FleetMember, now: i64) -> Markup {
    let last =
        clock::parse_rfc3339(&m.last_report).map(|ms| page::ago(ms, now)).unwrap_or_else(|| m.last_report.clone());
    let state = match (m.silent, m.current) {
        (true, _) => ("silent", "silent"),
        (false, true) => ("current", "current"),
        (false, false) => ("behind", "behind its target"),
    };
    let limit = threshold(m);
    html! {
        tr data-instance=(m.instance) {
            td { code { (m.instance) } }
            td { a href={ "/ui/bundles/" (page::q(&m.bundle)) } { (m.bundle) } }
            td.revision { code { (m.revision.as_deref().unwrap_or("(none)")) }
                @if let Some(t) = m.target_revision.as_deref().filter(|t| Some(*t) != m.revision.as_deref()) {
                    " → " code { (t) }
                }
            }
            td { (m.cohort.unwrap_or("—")) }
            td class={ "staleness " (staleness_class(m)) } title={ "alert past " (limit) " s" } {
                @match m.staleness_seconds { Some(s) => { (format!("{s:.0} s")) }, None => { "—" } }
            }
            td title=(m.last_report) { (last) }
            td class={ "state " (state.0) } { (state.1) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, staleness: Option<f64>, max: Option<f64>) -> FleetMember {
        FleetMember {
            instance: name.into(),
            bundle: "main".into(),
            revision: Some("r1".into()),
            digest: None,
            last_sync: None,
            staleness_seconds: staleness,
            max_staleness_seconds: max,
            last_report: "2026-12-08T00:00:00.000Z".into(),
            silent: false,
            current: true,
            cohort: None,
            target_revision: Some("r1".into()),
            token: "gw".into(),
            health: None,
        }
    }

    #[test]
    fn staleness_is_coloured_against_the_gateways_own_threshold() {
        assert_eq!(staleness_class(&member("a", Some(10.0), Some(60.0))), "ok");
        assert_eq!(staleness_class(&member("a", Some(31.0), Some(60.0))), "warn");
        assert_eq!(staleness_class(&member("a", Some(61.0), Some(60.0))), "stale");
        assert_eq!(staleness_class(&member("a", Some(200.0), None)), "warn", "the default threshold is 300 s");
        assert_eq!(staleness_class(&member("a", None, None)), "unknown");
    }

    #[test]
    fn a_hostile_instance_name_is_text_in_the_fleet_table() {
        let html = table(&[member("<img src=x onerror=alert(1)>", Some(1.0), None)]).into_string();
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"), "{html}");
    }
}
