//! `logs` and `replay`: decision events read back from control-api.

use anyhow::Context;

use crate::cli::{LogFilter, Remote};
use crate::http::{agent, send};

/// `GET /v1/logs` for bundle `name` with `f`'s filters, as text.
pub fn fetch_logs(name: &str, f: &LogFilter, remote: &Remote) -> anyhow::Result<String> {
    let mut req = agent().get(&format!("{}/v1/logs", remote.server.trim_end_matches('/'))).query("bundle", name);
    let limit = f.limit.map(|n| n.to_string());
    let params = [
        ("route", &f.route),
        ("decision", &f.decision),
        ("revision", &f.revision),
        ("since", &f.since),
        ("until", &f.until),
        ("limit", &limit),
    ];
    for (k, v) in params {
        if let Some(v) = v {
            req = req.query(k, v);
        }
    }
    Ok(send(req, remote, None)?.1)
}

pub fn parse_events(text: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    serde_json::from_str(text).context("control-api answered GET /v1/logs with something other than a JSON array")
}

/// Up to `limit` events matching `f`, newest first: pages of at most 10,000 (control-api's
/// bound), each ending where the last one's oldest event was; events seen twice at a page's
/// edge are kept once.
pub fn logged(name: &str, f: &LogFilter, limit: usize, remote: &Remote) -> anyhow::Result<Vec<serde_json::Value>> {
    let (mut events, mut seen) = (Vec::new(), std::collections::HashSet::new());
    let mut page = f.clone();
    while events.len() < limit {
        let want = (limit - events.len()).min(10_000);
        page.limit = u32::try_from(want).ok();
        let batch = parse_events(&fetch_logs(name, &page, remote)?)?;
        let (got, oldest) = (batch.len(), batch.last().and_then(|e| e["timestamp"].as_str()).map(str::to_owned));
        let mut added = 0;
        for e in batch {
            if seen.insert(e["decision_id"].as_str().unwrap_or_default().to_owned()) {
                events.push(e);
                added += 1;
            }
        }
        if got < want || added == 0 || oldest.is_none() {
            break;
        }
        page.until = oldest;
    }
    Ok(events)
}

/// `bundlectl logs`: the bundle's decision events, newest first.
pub fn logs(name: &str, f: &LogFilter, json: bool, remote: &Remote) -> anyhow::Result<()> {
    let text = fetch_logs(name, f, remote)?;
    if json {
        println!("{}", text.trim_end());
        return Ok(());
    }
    let events = parse_events(&text)?;
    if events.is_empty() {
        eprintln!("no decision events of bundle {name} match");
    }
    for e in &events {
        println!("{}", log_line(e));
    }
    Ok(())
}

/// One event as a line: timestamp, decision, status, route, method, path, decision id, and the
/// reason (the decision's, or the evaluation error) when there is one.
pub fn log_line(e: &serde_json::Value) -> String {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let route = if e["route"].is_null() { &e["input"]["route"] } else { &e["route"] };
    let request = &e["input"]["request"];
    let reason = e["result"]["reason"].as_str().or(e["error"].as_str()).unwrap_or("");
    let line = format!(
        "{} {:<5} {:>3} {} {} {} {}",
        text(&e["timestamp"]),
        text(&e["decision"]),
        text(&e["status"]),
        text(route),
        text(&request["method"]),
        text(&request["path"]),
        text(&e["decision_id"])
    );
    if reason.is_empty() {
        line
    } else {
        format!("{line} {reason}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_has_every_column_and_the_reason_or_error() {
        let deny = serde_json::json!({
            "decision_id": "6f1c", "timestamp": "2026-12-03T09:01:02.123Z", "decision": "deny", "status": 403,
            "route": "orders", "input": { "request": { "method": "GET", "path": "/orders/7" } },
            "result": { "allow": false, "reason": "not your order" }
        });
        assert_eq!(log_line(&deny), "2026-12-03T09:01:02.123Z deny  403 orders GET /orders/7 6f1c not your order");
        let error = serde_json::json!({
            "decision_id": "e1", "timestamp": "t", "decision": "error", "status": 403,
            "input": { "route": "orders" }, "error": "undefined function"
        });
        assert_eq!(log_line(&error), "t error 403 orders - - e1 undefined function");
    }
}
