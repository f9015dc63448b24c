//! The console in real Chromium (Debian's, over WebDriver) against the real control-api with
//! three real gateways (`gw-a`, `gw-b`, `gw-c`) shipping their decision logs to it. What a person
//! sees: the fleet moving within 2 s of a publish (every gateway at once; then, with staged
//! rollouts switched on, the canary `gw-a` first), a rollout's canary and the reason of its
//! rollback, a revision diff, a deny found by its `x-decision-id`, the propagation plot; and what
//! an attacker cannot do: script the page through a route's name, or roll back with a read token.
//!
//! `CONSOLE_SCREENSHOTS=DIR` saves a screenshot of each page into DIR (the README's come from
//! `CONSOLE_SCREENSHOTS=docs/src/images cargo nextest run -p e2e --test console`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use e2e::{
    bound_token, bound_tokens_yaml, echo_upstream, gateway_config_with_token, get_as_reader, push,
    start_control_api_with_tokens, ControlApi, Gateway, PUBLISH_TOKEN, READ_TOKEN,
};
use policy_bundles::archive::{write_tar_gz, Files};
use test_support::browser::Browser;
use test_support::http::get;

const NAMES: [&str; 3] = ["gw-a", "gw-b", "gw-c"];
const LOGS_TOKEN: &str = "e2e-console-logs-token";
/// A canary long enough to be looked at; the rest as an operator would set it.
const ROLLOUT: &str =
    "rollout:\n  canary: [gw-a]\n  bake: 6s\n  silent_after: 5s\n  max_error_rate: 0.05\n  min_requests: 20\n";
/// Long polls, a report every second, decision logs to control-api.
fn bundle_keys() -> &'static str {
    "  long_poll: 20s\n  min_delay: 200ms\n  max_delay: 400ms\n  backoff_max: 500ms\n  timeout: 2s\n  report_interval: 1s\n"
}
const HOSTILE_ROUTE: &str = "<img src=x onerror=alert(1)>";

struct Stack {
    dir: tempfile::TempDir,
    upstream: String,
    cp: ControlApi,
    gws: Vec<Gateway>,
    _up: test_support::process::Proc,
}

/// The example bundle at `revision`, its upstream at `upstream`, edited by `edit`.
fn bundle(upstream: &str, revision: &str, edit: impl FnOnce(&mut Files)) -> Vec<u8> {
    let mut files = test_support::bundles::example_files();
    test_support::bundles::set_revision(&mut files, revision);
    test_support::bundles::retarget(&mut files, upstream, "500ms");
    edit(&mut files);
    write_tar_gz(&files).expect("tarball")
}

fn replace(files: &mut Files, path: &str, from: &str, to: &str) {
    let text = String::from_utf8(files[path].clone()).expect("UTF-8");
    assert!(text.contains(from), "{path} has no {from:?}");
    files.insert(path.into(), text.replacen(from, to, 1).into_bytes());
}

/// s2's edits: the orders rule's read methods changed, and a route whose name is markup.
fn second_edits(f: &mut Files) {
    replace(f, "http/orders.rego", "{\"GET\", \"HEAD\"}", "{\"GET\", \"HEAD\", \"OPTIONS\"}");
    let route = format!(
        "  - name: \"{HOSTILE_ROUTE}\"\n    match: {{ path_prefix: /hostile }}\n    upstream: backend\n    policy: data.http.public.allow\n\n  - name: orders\n"
    );
    replace(f, "gateway/data.yaml", "  - name: orders\n", &route);
}

fn start() -> Stack {
    let dir = tempfile::tempdir().expect("tempdir");
    let (up, addr) = echo_upstream("backend");
    let upstream = addr.to_string();
    let logs = format!(
        "  - {{ name: auditor, scope: logs, sha256: {} }}\n",
        test_support::control_api::hash_token(LOGS_TOKEN)
    );
    let tokens = format!("{}{logs}", bound_tokens_yaml(&NAMES));
    // Unstaged at first: a publish goes to every gateway at once ([`staging_on`] changes that).
    let cp = start_control_api_with_tokens(dir.path(), None, "", &tokens);
    push(&cp.base, &bundle(&upstream, "s1", |_| {}), dir.path());
    let gws: Vec<Gateway> = NAMES
        .iter()
        .map(|n| {
            let token_file = dir.path().join(format!("{n}.token"));
            let logs = format!(
                "decision_logs:\n  sinks: [\"{}/v1/logs\"]\n  token_file: {}\n  flush_interval: 200ms\n",
                cp.base,
                token_file.display()
            );
            gateway_config_with_token(dir.path(), n, &[&cp.base], bundle_keys(), &bound_token(n)).top(&logs).spawn()
        })
        .collect();
    for gw in &gws {
        gw.wait_ready();
    }
    Stack { dir, upstream, cp, gws, _up: up }
}

fn shots() -> Option<PathBuf> {
    std::env::var_os("CONSOLE_SCREENSHOTS").map(|d| test_support::paths::repo_root().join(d))
}

fn shoot(b: &Browser, name: &str) {
    if let Some(dir) = shots() {
        std::fs::create_dir_all(&dir).expect("screenshot folder");
        b.screenshot(&dir.join(format!("console-{name}.png"))).expect("screenshot");
    }
}

fn sign_in(b: &Browser, cp: &ControlApi, token: &str) {
    b.goto(&cp.url("/ui/")).expect("open the console");
    assert!(b.url().expect("url").ends_with("/ui/login"), "without a session the console asks for a token");
    b.type_into("#token", token).expect("type the token");
    b.click("form[action='/ui/login'] button").expect("sign in");
    let url = b.wait_url(Duration::from_secs(10), |u| !u.ends_with("/ui/login")).expect("signed in");
    assert!(!url.contains(token), "the token is never in a URL");
}

fn sign_out(b: &Browser) {
    b.click("form[action='/ui/logout'] button").expect("sign out");
    b.wait_url(Duration::from_secs(10), |u| u.ends_with("/ui/login")).expect("signed out");
}

/// The fleet table's row of `instance`: its revision cell.
fn revision_cell(instance: &str) -> String {
    format!("tr[data-instance='{instance}'] td.revision")
}

fn rollout_state(cp: &ControlApi) -> serde_json::Value {
    let r = get_as_reader(&cp.url("/v1/bundles/main/rollout"));
    serde_json::from_slice(&r.body).unwrap_or_default()
}

fn active_revision(cp: &ControlApi) -> String {
    let r = get_as_reader(&cp.url("/v1/bundles/main/revisions"));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    let list = v.as_array().cloned().or_else(|| v["revisions"].as_array().cloned()).unwrap_or_default();
    list.iter().find(|r| r["active"] == true).and_then(|r| r["revision"].as_str()).unwrap_or("").to_owned()
}

/// The fleet follows a publish live; the rollout's canary, bake and rollback reason show on the
/// bundle page; the diff shows the changed rule; propagation is plotted.
/// Waits until the fleet page shows every gateway on `revision`; how long since `since`.
fn fleet_on(b: &Browser, revision: &str, since: Instant) -> Duration {
    for n in NAMES {
        b.wait_text(&revision_cell(n), Duration::from_secs(10), |t| t.starts_with(revision))
            .unwrap_or_else(|e| panic!("the fleet page never showed {n} on {revision}: {e}"));
    }
    since.elapsed()
}

/// Stages rollouts from now on: `rollout` (canary gw-a) added to control-api's config, and
/// control-api restarted on it (same store, same port; the gateways reconnect by themselves).
fn staging_on(s: &mut Stack) {
    let mut config = std::fs::read_to_string(&s.cp.config).expect("control-api config");
    config.push_str(ROLLOUT);
    std::fs::write(&s.cp.config, config).expect("write the config");
    s.cp.restart();
}

/// The fleet page follows a publish live: every gateway's row within 2 s of it.
fn fleet_follows_a_publish(s: &Stack, b: &Browser) {
    sign_in(b, &s.cp, READ_TOKEN);
    fleet_on(b, "s1", Instant::now());
    let published = Instant::now();
    push(&s.cp.base, &bundle(&s.upstream, "s2", second_edits), s.dir.path());
    let took = fleet_on(b, "s2", published);
    eprintln!("fleet page: every gateway on s2 {} ms after the publish", took.as_millis());
    assert!(took <= Duration::from_secs(2), "the fleet page showed the publish {took:?} after it");
}

/// With staged rollouts: the canary's row moves first, the bundle page shows the canary, its
/// cohort, bake and health, the fleet follows the promotion; the diff; a rolled-back revision
/// and why; the propagation plot.
fn rollout_diff_and_propagation(s: &mut Stack, b: &Browser) {
    staging_on(s);
    b.goto(&s.cp.url("/ui/fleet")).expect("fleet page");
    let published = Instant::now();
    push(
        &s.cp.base,
        &bundle(&s.upstream, "s3", |f| {
            second_edits(f);
            replace(f, "http/orders.rego", "# The orders API", "# The orders API (s3)");
        }),
        s.dir.path(),
    );
    b.wait_text(&revision_cell("gw-a"), Duration::from_secs(10), |t| t.starts_with("s3"))
        .expect("the canary's row shows s3");
    let since_publish = published.elapsed();
    eprintln!("fleet page: the canary gw-a on s3 {} ms after the publish", since_publish.as_millis());
    assert!(since_publish <= Duration::from_secs(2), "the canary's move showed {since_publish:?} after the publish");
    // The canary moved, the rest are still on s2: the page counts both revisions.
    b.wait_text("ul.counts", Duration::from_secs(5), |t| t.contains("s3: 1 gateway") && t.contains("s2: 2 gateways"))
        .expect("the per-revision counts");
    shoot(b, "fleet");

    // The bundle page during the bake: the canary, its timer and its health.
    b.goto(&s.cp.url("/ui/bundles/main")).expect("bundle page");
    let rollout = b.text("#rollout").expect("rollout");
    assert!(rollout.contains("canary") && rollout.contains("s3"), "the rollout shows its canary: {rollout}");
    assert!(rollout.contains("bake ends in"), "the bake timer shows: {rollout}");
    assert!(rollout.contains("Canary cohort: gw-a"), "the cohort shows: {rollout}");
    assert!(b.text("table.canaries").expect("canary table").contains("gw-a"), "the canary's health row shows");
    shoot(b, "rollout");

    // After the bake: promoted, and the whole fleet follows within 2 s of the promotion.
    let promoted = test_support::wait::until(Duration::from_secs(20), "promotion", || {
        Ok(rollout_state(&s.cp)["rollout"]["state"] == "promoted")
    });
    assert!(promoted.is_ok(), "s3 was not promoted: {}", rollout_state(&s.cp));
    let promoted_at = Instant::now();
    b.goto(&s.cp.url("/ui/fleet")).expect("fleet");
    let took = fleet_on(b, "s3", promoted_at);
    eprintln!("fleet page: every gateway on s3 {} ms after the promotion", took.as_millis());
    assert!(took <= Duration::from_secs(2), "the fleet followed the promotion in {took:?}");

    // The diff of s1 → s2: the changed rule line, the added route as text.
    b.goto(&s.cp.url("/ui/bundles/main/diff?from=s1&to=s2")).expect("diff");
    let added = b.text("pre.diff .add").expect("an added line");
    assert!(added.contains("read_methods := {\"GET\", \"HEAD\", \"OPTIONS\"}"), "the changed rule shows: {added}");
    let removed = b.text("pre.diff .del").expect("a removed line");
    assert!(removed.contains("read_methods := {\"GET\", \"HEAD\"}"), "the old rule shows: {removed}");
    assert_hostile_route_is_text(b, "ul.items");
    shoot(b, "diff");

    // A revision its canary cannot activate: rolled back, and the page says why.
    let s4 = bundle(&s.upstream, "s4-unresolvable", |f| {
        second_edits(f);
        let target = format!("\"{}\"", s.upstream);
        replace(f, "gateway/data.yaml", &target, &format!("\"{}.invalid:80\"", "x".repeat(64)));
    });
    push(&s.cp.base, &s4, s.dir.path());
    b.goto(&s.cp.url("/ui/bundles/main")).expect("bundle page");
    let (why, _) = b
        .wait_text("#rollout", Duration::from_secs(20), |t| t.contains("rolled back") && t.contains("Why it ended"))
        .expect("the rollback and its reason show, live");
    assert!(why.contains("gw-a failed to activate it"), "the reason names the canary and the cause: {why}");
    shoot(b, "bundle");

    b.goto(&s.cp.url("/ui/propagation")).expect("propagation");
    let table = b.text("table.propagation").expect("per revision");
    assert!(table.contains("s3"), "s3's propagation is listed (this control-api started before it): {table}");
    assert_eq!(b.count("svg.histogram rect.bar").expect("bars"), 9, "the histogram is drawn");
    shoot(b, "propagation");
    sign_out(b);
}

/// The route's markup name is shown as text: no element was made of it, no script ran.
fn assert_hostile_route_is_text(b: &Browser, css: &str) {
    let text = b.text(css).expect("the hostile name's element");
    assert!(text.contains(HOSTILE_ROUTE), "the route name reads as typed: {text}");
    let imgs = b.js("return document.querySelectorAll('main img').length").expect("count images");
    assert_eq!(imgs, serde_json::json!(0), "the name became an element");
    assert_eq!(b.alert(), None, "a script ran");
}

/// A deny is found by the `x-decision-id` the client got, and its route's markup name is text.
fn decisions(s: &Stack, b: &Browser) {
    let gw = &s.gws[1];
    let deny = get(&format!("http://{}/orders/7", gw.addr()), &[]);
    assert_eq!(deny.status, 401, "a request without a token is refused");
    let id = deny.header("x-decision-id").expect("x-decision-id").to_owned();
    let hostile = get(&format!("http://{}/hostile/x", gw.addr()), &[]);
    assert_eq!(hostile.status, 200, "the hostile route is public.allow: a GET passes");
    sign_in(b, &s.cp, LOGS_TOKEN);
    assert!(b.url().expect("url").ends_with("/ui/decisions"), "a logs token lands on decisions");
    let found = test_support::wait::until(Duration::from_secs(10), "the deny shipped", || {
        b.goto(&s.cp.url("/ui/decisions")).map_err(|e| e.to_string())?;
        b.type_into("input[name=id]", &id).map_err(|e| e.to_string())?;
        b.click("form.filter button").map_err(|e| e.to_string())?;
        Ok(b.count(&format!("details[data-decision-id='{id}']")).map_err(|e| e.to_string())? == 1)
    });
    assert!(found.is_ok(), "the deny {id} was not found by its id");
    let summary = b.text(&format!("details[data-decision-id='{id}'] summary")).expect("the event");
    assert!(summary.contains("deny") && summary.contains("401") && summary.contains("orders"), "{summary}");
    b.click(&format!("details[data-decision-id='{id}'] summary span.time")).expect("open the event");
    let input = b.text(&format!("details[data-decision-id='{id}'] pre.json")).expect("input");
    assert!(input.contains("/orders/7"), "the event's input shows: {input}");
    shoot(b, "decisions");
    b.goto(&s.cp.url("/ui/decisions?route=")).expect("all decisions");
    let hostile_events = b.count("details.event").expect("events");
    assert!(hostile_events >= 2, "both requests are listed: {hostile_events}");
    b.goto(&s.cp.url(&format!("/ui/decisions?q={}", "hostile"))).expect("search by text");
    assert_hostile_route_is_text(b, "details.event summary code.route");
    sign_out(b);
}

/// A read token sees no rollback button, its confirmation page is refused, and a POST forged
/// from the page itself is refused: the active revision does not move. A publish token can.
fn read_token_cannot_roll_back(s: &Stack, b: &Browser) {
    let before = active_revision(&s.cp);
    sign_in(b, &s.cp, READ_TOKEN);
    b.goto(&s.cp.url("/ui/bundles/main")).expect("bundle page");
    assert_eq!(b.count("a.rollback").expect("buttons"), 0, "a read token is offered no rollback");
    b.goto(&s.cp.url("/ui/bundles/main/rollback?to=s1")).expect("confirmation page");
    assert!(b.text("main").expect("page").contains("needs a publish token"), "the confirmation is refused");
    let status = b
        .js_async(
            "const done = arguments[0];
             fetch('/ui/bundles/main/rollback', {method: 'POST', body: new URLSearchParams({to: 's1'})})
               .then(r => done(r.status), e => done(String(e)));",
        )
        .expect("a forged POST");
    assert_eq!(status, serde_json::json!(403), "a read token's POST is refused");
    assert_eq!(active_revision(&s.cp), before, "the active revision moved");
    b.goto(&s.cp.url("/ui/bundles/main")).expect("bundle page");
    sign_out(b);
    sign_in(b, &s.cp, PUBLISH_TOKEN);
    b.goto(&s.cp.url("/ui/bundles/main")).expect("bundle page");
    b.click("tr[data-revision='s1'] a.rollback").expect("roll back to s1");
    b.wait_url(Duration::from_secs(10), |u| u.contains("/rollback?to=s1")).expect("the confirmation page");
    assert!(b.text("p.confirm").expect("confirmation").contains("s1"));
    assert_eq!(active_revision(&s.cp), before, "the confirmation page changed nothing");
    b.click("form[action='/ui/bundles/main/rollback'] button").expect("confirm");
    b.wait_url(Duration::from_secs(10), |u| u.ends_with("/ui/bundles/main")).expect("back on the bundle page");
    assert_eq!(active_revision(&s.cp), "s1", "the publish token's confirmed rollback took effect");
    sign_out(b);
}

#[test]
fn the_console_shows_fleet_rollouts_diffs_decisions_and_propagation_and_cannot_be_scripted_or_misused() {
    let mut s = start();
    let b = Browser::start().expect("Chromium");
    fleet_follows_a_publish(&s, &b);
    rollout_diff_and_propagation(&mut s, &b);
    decisions(&s, &b);
    read_token_cannot_roll_back(&s, &b);
}
