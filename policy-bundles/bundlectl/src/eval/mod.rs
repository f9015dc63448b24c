//! `bundlectl eval`: one request described on the command line, decided by a bundle exactly as
//! the gateway decides it. The request is made canonical as the gateway makes it ([`request`]);
//! the route's limit on bodies is applied; then the gateway's own pipeline decides it
//! ([`policy_bundles::authorize`]: route match, bearer-token verification against the bundle's
//! `jwt`, the route's rule, the decision), and what the gateway would answer is read from its
//! outcome ([`report`]).
//!
//! Not modelled, since they are the gateway's config or state rather than the bundle's: trusted
//! proxies, `limits.max_body`, non-default path and header rules, TLS certificates, rate-limit
//! counters (a decision's `rate_limit` is shown; whether the limit is reached is not) and shadow
//! rules.

mod report;
mod request;

use std::io::Read;
use std::path::Path;

use anyhow::{anyhow, Context};
use policy_bundles::authorize::{self, Outcome, RequestView};
use policy_bundles::input::Connection;
use policy_bundles::snapshot::Request;
use policy_bundles::{Bundle, Limits, Snapshot};
use serde_json::{json, Value as Json};

use crate::cli::EvalArgs;
use crate::Ran;

/// `bundlectl eval`: prints the report (text, or JSON with `--json`); [`Ran::Clean`] when the
/// gateway would forward the request, [`Ran::Denied`] when it would answer it itself.
pub fn eval(args: &EvalArgs) -> anyhow::Result<Ran> {
    let timeout = config_files::parse_duration(&args.policy_timeout).map_err(|e| anyhow!("--policy-timeout: {e}"))?;
    policy_bundles::set_evaluation_time_limit(timeout);
    let bundle = Bundle::from_path(&args.bundle, &Limits::default())
        .and_then(|b| Snapshot::compile(&b))
        .map_err(|e| anyhow!("{}: {e}", args.bundle.display()))?;
    let body = read_body(args.body.as_deref())?;
    let https = args.scheme == "https";
    let report = match request::canonicalize(
        &args.method,
        &args.path,
        &args.headers,
        https,
        body.as_ref().map(Vec::len),
        &bundle,
    ) {
        Ok(mut req) => decide(&bundle, &mut req, body.as_deref(), args),
        Err(refusal) => {
            let d = report::own_answer(refusal.status(), refusal.error(), Some(refusal.message().into()));
            let host = args.headers.iter().find(|(n, _)| n == "host").map_or("localhost", |(_, v)| v.as_str());
            let request = json!({"method": args.method, "scheme": args.scheme, "host": host, "path": args.path,
                    "client_ip": args.client_ip.to_string()});
            assemble(request, Json::Null, d, "canonicalization", None, args.input.then_some(Json::Null))
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report::to_text(&report));
    }
    Ok(if report["decision"]["allowed"] == true { Ran::Clean } else { Ran::Denied })
}

/// Routes the canonical request, applies the route's body limit and forwarding headers, and
/// asks [`authorize::authorize_route`]; the report of what the gateway does.
fn decide(snap: &Snapshot, req: &mut request::Canonical, body: Option<&[u8]>, args: &EvalArgs) -> Json {
    let client_ip = args.client_ip.to_string();
    let route_ix = snap.table.lookup(&req.host, &req.path, &req.method);
    let route = route_ix.and_then(|i| snap.routes.get(i));
    if let Some(r) = route {
        req.forward(r, &client_ip, &args.scheme);
    }
    let request = json!({
        "method": req.method, "scheme": args.scheme, "host": req.host, "path": req.path, "query": req.query,
        "client_ip": client_ip,
        "removed_headers": req.removed.iter().map(|(n, why)| json!({"name": n, "why": why})).collect::<Vec<_>>(),
    });
    let max_body = route.and_then(|r| r.body);
    // As the gateway: a declared length past the limit is refused before any byte is read.
    let declared = req.header("content-length").and_then(|l| l.parse::<u64>().ok());
    if let Some(max) = max_body {
        if declared.is_some_and(|l| l > max) || body.is_some_and(|b| b.len() as u64 > max) {
            let why = format!("the request body is larger than {max} bytes (the route's body.max_bytes)");
            let d = report::own_answer(413, "payload too large", Some(why));
            return assemble(request, report::route(snap, route_ix), d, "body", None, args.input.then_some(Json::Null));
        }
    }
    let req = &*req;
    let view = || RequestView {
        parts: Request {
            method: &req.method,
            path: &req.path,
            query: req.query.as_deref(),
            host: &req.host,
            scheme: &args.scheme,
            client_ip: &client_ip,
            // A route that reads bodies gives its rule one, empty when the request has none.
            body: max_body.map(|_| body.unwrap_or_default()),
            content_type: req.header("content-type"),
            conn: Connection { protocol: "HTTP/1.1", ..Connection::default() },
        },
        authorization: req.header("authorization").map(str::as_bytes),
        headers: req.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())),
    };
    let outcome = match route_ix {
        Some(i) => authorize::authorize_route(snap, i, view()),
        None => Outcome::NoRoute,
    };
    let input = match &outcome {
        Outcome::Evaluated { route, jwt, .. } if args.input => {
            Some(serde_json::to_value(authorize::input(snap, *route, view(), jwt.as_deref())).unwrap_or_default())
        }
        _ => args.input.then_some(Json::Null),
    };
    let (decision, stage, took) = report::decision(&outcome);
    assemble(request, report::route(snap, outcome.route()), decision, stage, took, input)
}

/// The whole report: `input` is `None` without `--input`, `Some(null)` when the rule did not run.
fn assemble(
    request: Json,
    route: Json,
    decision: Json,
    stage: &str,
    took: Option<std::time::Duration>,
    input: Option<Json>,
) -> Json {
    let took_us = took.map(|t| u64::try_from(t.as_micros()).unwrap_or(u64::MAX));
    let mut r = json!({
        "request": request, "route": route, "stage": stage, "evaluated": took.is_some(),
        "decision": decision, "took_us": took_us,
    });
    if let Some(input) = input {
        r["input"] = input;
    }
    r
}

/// The body from a file, or from stdin for `-`.
fn read_body(path: Option<&Path>) -> anyhow::Result<Option<Vec<u8>>> {
    let Some(path) = path else { return Ok(None) };
    if path == Path::new("-") {
        let mut body = Vec::new();
        std::io::stdin().read_to_end(&mut body).context("reading the body from stdin")?;
        return Ok(Some(body));
    }
    std::fs::read(path).map(Some).with_context(|| format!("reading the body from {}", path.display()))
}
