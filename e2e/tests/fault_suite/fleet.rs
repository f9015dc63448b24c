//! Faults of the control plane and of the gateways' caches: three gateways polling the real
//! control-api.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e::{example_tarball, gateway_fleet, get_as_reader, push, start_control_api, ControlApi, Gateway, PUBLISH_TOKEN};
use serde_json::Value;
use test_support::http::{bearer, get, request_within};
use test_support::wait::eventually;

use super::report::Row;
use super::streams::Streams;
use super::{
    failures, faults_on, last_error, m, ms, wait_for, Fault, Fixture, On, NOT_MODIFIED, POLL, STALE, SYNC_ERRORS,
};

pub struct PhaseB {
    pub dir: PathBuf,
    pub upstream: String,
    pub cp: ControlApi,
    pub gws: Vec<Gateway>,
    pub names: Vec<&'static str>,
    pub streams: Streams,
    pub next: u32,
    /// The revision the control plane serves.
    pub current: String,
    /// Rows of a fault sequence that yields several, kept for the faults that read them.
    rows: HashMap<String, Row>,
}

/// Publishes through the HTTP API: the status of a 2xx answer, or what went wrong.
pub fn publish(cp: &str, bytes: &[u8]) -> Result<u16, String> {
    let auth = bearer(PUBLISH_TOKEN);
    let headers = [("authorization", auth.as_str()), ("content-type", "application/gzip")];
    let r = request_within(Duration::from_secs(30), "PUT", &format!("{cp}/v1/bundles/main"), &headers, Some(bytes));
    match r.status {
        200..=299 => Ok(r.status),
        0 => Err(r.error.unwrap_or_default()),
        c => Err(format!("{c}: {}", r.text())),
    }
}

/// The revision a gateway's `/status` shows; empty when it does not answer.
pub fn revision_at(admin: &str) -> String {
    let r = get(&format!("{admin}/status"), &[]);
    if r.status != 200 {
        return String::new();
    }
    serde_json::from_slice::<Value>(&r.body)
        .ok()
        .and_then(|v| v["bundle"]["revision"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Checks a persisted cache the way a booting gateway would: `main.json` names a tarball whose
/// SHA-256 is the one it records. Returns its revision.
fn cache_revision(cache: &Path) -> Result<String, String> {
    let meta: Value =
        serde_json::from_slice(&std::fs::read(cache.join("main.json")).map_err(|e| format!("main.json: {e}"))?)
            .map_err(|e| format!("main.json: {e}"))?;
    let digest = meta["digest"].as_str().ok_or("main.json has no digest")?;
    let bytes = std::fs::read(cache.join(format!("main.{digest}.tar.gz"))).map_err(|e| format!("tarball: {e}"))?;
    if policy_bundles::digest(&bytes) != digest {
        return Err("tarball does not match its recorded digest".into());
    }
    Ok(meta["revision"].as_str().unwrap_or("").to_owned())
}

impl PhaseB {
    pub fn start(dir: &Path, upstream: &str) -> PhaseB {
        let cp = start_control_api(dir, None);
        push(&cp.base, &example_tarball(upstream, "b1"), dir);
        let names = vec!["gw-a", "gw-b", "gw-c"];
        // The gateways' own activation priority: the storm trials measure what it does for serving.
        let gws = gateway_fleet(dir, &names, &[&cp.base], &format!("{POLL}  activation_nice: 10\n"));
        let streams = Streams::start(&names.iter().copied().zip(gws.iter()).collect::<Vec<_>>());
        PhaseB {
            dir: dir.to_owned(),
            upstream: upstream.to_owned(),
            cp,
            gws,
            names,
            streams,
            next: 1,
            current: "b1".into(),
            rows: HashMap::new(),
        }
    }

    pub fn cache(&self, i: usize) -> PathBuf {
        self.dir.join(format!("cache-{}", self.names[i]))
    }

    /// Publishes a new revision through the HTTP API; returns it.
    pub fn publish_next(&mut self) -> String {
        self.next += 1;
        let rev = format!("b{}", self.next);
        let code = publish(&self.cp.base, &example_tarball(&self.upstream, &rev)).expect("publish");
        assert!(code == 201 || code == 200, "publish answered {code}");
        self.current = rev.clone();
        rev
    }

    pub fn all_at(&self, rev: &str) -> bool {
        self.gws.iter().all(|g| revision_at(&g.admin) == rev)
    }

    fn downloads(&self, code: u16) -> f64 {
        self.cp.metric(&format!("control_api_bundle_downloads_total{{code=\"{code}\"}}")).unwrap_or(0.0)
    }
}

/// A new revision rolled out to three gateways: publish-to-activation time per gateway.
fn rollout(b: &mut PhaseB, mut row: Row) -> Row {
    let t0 = b.streams.snapshot();
    // Every gateway holding a long poll.
    let held = wait_for(Duration::from_secs(3), || b.cp.metric("control_api_long_poll_waiters").unwrap_or(0.0) >= 3.0);
    row.note(if held.is_some() {
        "published while all three gateways held a long poll".to_owned()
    } else {
        "not all three gateways were holding a long poll when the revision was published".to_owned()
    });
    b.next += 1;
    let rev = format!("b{}", b.next);
    let tarball = example_tarball(&b.upstream, &rev);
    let admins: Vec<String> = b.gws.iter().map(|g| g.admin.clone()).collect();
    let published = Instant::now();
    let (put, times) = std::thread::scope(|s| {
        let watchers: Vec<_> = admins
            .iter()
            .map(|admin| {
                let rev = rev.clone();
                s.spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while Instant::now() < deadline {
                        if revision_at(admin) == rev {
                            return Some(published.elapsed());
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    None
                })
            })
            .collect();
        let put = publish(&b.cp.base, &tarball).map(|c| (c, published.elapsed()));
        (put, watchers.into_iter().map(|w| w.join().unwrap_or(None)).collect::<Vec<_>>())
    });
    match &put {
        Ok((code, took)) => {
            row.check(*code == 201, format!("publish answered {code}"));
            row.note(format!("PUT answered {code} after {} ms", ms(*took)));
        }
        Err(e) => {
            row.check(false, format!("publish failed: {e}"));
        }
    }
    b.current = rev.clone();
    let per: Vec<String> = b
        .names
        .iter()
        .zip(&times)
        .map(|(n, t)| format!("{n} {}", t.map(|t| format!("{} ms", ms(t))).unwrap_or_else(|| "never".into())))
        .collect();
    row.note(format!("publish-to-activation (from the PUT being sent): {}", per.join(", ")));
    let all = times.iter().all(Option::is_some);
    row.recovered = Some(row.check(all, format!("not every gateway activated {rev} within 10 s: {per:?}")));
    row.recover = times.iter().copied().collect::<Option<Vec<_>>>().and_then(|v| v.into_iter().max());
    // The fleet view sees the convergence through the gateways' status reports.
    let fleet = wait_for(Duration::from_secs(10), || {
        let r = get_as_reader(&format!("{}/v1/fleet", b.cp.base));
        r.status == 200
            && serde_json::from_slice::<Value>(&r.body)
                .ok()
                .and_then(|v| v.as_array().map(|a| a.iter().filter(|g| g["revision"] == rev.as_str()).count() >= 3))
                .unwrap_or(false)
    });
    row.check(fleet.is_some(), "GET /v1/fleet did not show three gateways on the new revision within 10 s");
    if let Some(d) = fleet {
        row.note(format!("/v1/fleet listed all three on {rev} {} ms later", ms(d)));
    }
    std::thread::sleep(Duration::from_millis(300));
    row.traffic(&t0, &b.streams.snapshot());
    row
}

/// SIGKILL of control-api while every gateway holds a long poll; it comes back at once.
fn kill_mid_long_poll(b: &mut PhaseB, mut row: Row) -> Row {
    let t0 = b.streams.snapshot();
    let held = wait_for(Duration::from_secs(5), || b.cp.metric("control_api_long_poll_waiters").unwrap_or(0.0) >= 3.0);
    row.check(held.is_some(), "the three gateways were not all holding a long poll");
    row.note("control-api held 3 long polls (`control_api_long_poll_waiters`) when it was killed".to_owned());
    let errors0: Vec<f64> = b.gws.iter().map(|g| m(g, SYNC_ERRORS)).collect();
    b.cp.kill9();
    let counted = wait_for(Duration::from_secs(10), || b.gws.iter().zip(&errors0).all(|(g, e)| m(g, SYNC_ERRORS) > *e));
    row.counted = Some(row.check(counted.is_some(), "a gateway did not count a sync error"));
    let mut shown = true;
    for (g, n) in b.gws.iter().zip(&b.names) {
        let st = g.status();
        let err = last_error(&st);
        shown &= err.contains(&b.cp.base);
        row.note(format!("{n} /status sync.last_error: `{err}`"));
    }
    row.shown = Some(row.check(shown, "/status last_error does not name the control plane"));
    let lkg = b.gws.iter().all(|g| g.revision() == b.current && g.ready());
    row.lkg = Some(row.check(lkg, "a gateway lost its bundle or readiness"));
    std::thread::sleep(Duration::from_millis(500));

    let nm0: Vec<f64> = b.gws.iter().map(|g| m(g, NOT_MODIFIED)).collect();
    let back = Instant::now();
    b.cp.restart();
    let up = back.elapsed();
    let rec = wait_for(Duration::from_secs(10), || b.gws.iter().zip(&nm0).all(|(g, n)| m(g, NOT_MODIFIED) > *n));
    row.recovered =
        Some(row.check(rec.is_some(), "not every gateway confirmed with a 304 after control-api came back"));
    row.recover = rec.map(|_| back.elapsed());
    row.note(format!("control-api answered /healthz {} ms after being started again", ms(up)));
    let downloads = b.downloads(200);
    row.check(downloads == 0.0, format!("{downloads} full downloads after the restart: ETags were not kept"));
    row.traffic(&t0, &b.streams.snapshot());
    row
}

/// The `GatewayBundleStale` rule of config/alerts.yaml, evaluated on scraped values: does it read
/// `gateway_bundle_stale` and would its expression be true for every gateway?
fn stale_alert(gws: &[Gateway]) -> (bool, String) {
    let rules =
        std::fs::read_to_string(test_support::paths::repo_root().join("config/alerts.yaml")).unwrap_or_default();
    let mut lines = rules.lines().skip_while(|l| !l.contains("alert: GatewayBundleStale"));
    let expr = lines.find_map(|l| l.trim().strip_prefix("expr:")).map(str::trim).unwrap_or("").to_owned();
    let form = expr.replace(' ', "") == "maxby(instance)(gateway_bundle_stale)==1";
    let values: Vec<f64> = gws.iter().map(|g| m(g, STALE)).collect();
    let fires = form && values.iter().all(|v| *v == 1.0);
    (fires, format!("GatewayBundleStale expr `{expr}`; gateway_bundle_stale per gateway {values:?}"))
}

const DOWN: &str = "control-api stopped longer than max_staleness (3 s)";
const BOOT: &str = "gateway restarted while the control plane is down";
const BACK: &str = "control-api back (staleness clears, ETags kept)";

/// control-api down past max_staleness; a gateway restarted meanwhile boots from cache;
/// control-api back: staleness clears and nothing is downloaded again. One sequence, three rows.
fn outage(b: &mut PhaseB) -> [Row; 3] {
    let mut down = Row::new(1, DOWN);
    let mut boot = Row::new(5, BOOT);
    let mut back = Row::new(1, BACK);
    let t0 = b.streams.snapshot();
    b.cp.kill9();
    let killed = Instant::now();
    let stale = wait_for(Duration::from_secs(10), || b.gws.iter().all(|g| m(g, STALE) == 1.0));
    down.counted = Some(down.check(stale.is_some(), "gateway_bundle_stale did not reach 1 on every gateway"));
    if stale.is_some() {
        down.note(format!("gateway_bundle_stale = 1 on all three {} ms after the kill", ms(killed.elapsed())));
    }
    let (fires, alert) = stale_alert(&b.gws);
    down.note(alert);
    down.check(fires, "the GatewayBundleStale expression would not fire");
    down.note("its `for: 1m` is not waited for here".to_owned());
    let mut shown = true;
    for g in &b.gws {
        let st = g.status();
        shown &= st["sync"]["stale"] == true && last_error(&st).contains(&b.cp.base);
    }
    down.shown = Some(down.check(shown, "/status does not show sync.stale = true and the error"));
    let age = m(&b.gws[0], "gateway_bundle_age_seconds");
    down.note(format!("gateway_bundle_age_seconds on gw-a: {age}"));
    let lkg = b.gws.iter().all(|g| g.revision() == b.current && g.ready());
    down.lkg = Some(down.check(lkg, "a gateway lost its bundle or /readyz 200 while stale"));
    let t1 = b.streams.snapshot();
    down.traffic(&t0, &t1);

    // Restart gw-a while control-api is down: it boots from its cache and serves.
    b.streams.pause("gw-a");
    b.gws[0].restart();
    let up = wait_for(Duration::from_secs(15), || b.gws[0].ready());
    boot.check(up.is_some(), "gw-a did not become ready from its cache");
    if let Some(d) = up {
        boot.note(format!("gw-a ready {} ms after being started (its own stream paused meanwhile)", ms(d)));
    }
    b.streams.resume("gw-a");
    let st = b.gws[0].status();
    boot.note(format!("/status bundle.source `{}`, revision `{}`", st["bundle"]["source"], st["bundle"]["revision"]));
    boot.lkg = Some(boot.check(
        st["bundle"]["source"] == "cache" && st["bundle"]["revision"] == b.current.as_str(),
        "gw-a did not boot the cached last-known-good",
    ));
    let errs = wait_for(Duration::from_secs(5), || m(&b.gws[0], SYNC_ERRORS) >= 1.0);
    boot.counted = Some(boot.check(errs.is_some(), "gw-a did not count its failing polls"));
    boot.shown =
        Some(boot.check(last_error(&b.gws[0].status()).contains(&b.cp.base), "gw-a /status shows no sync error"));
    std::thread::sleep(Duration::from_secs(1));
    let t2 = b.streams.snapshot();
    boot.traffic(&t1, &t2);

    // control-api back on the same store.
    let started = Instant::now();
    b.cp.restart();
    let healthy = started.elapsed();
    let cleared =
        wait_for(Duration::from_secs(10), || b.gws.iter().all(|g| m(g, STALE) == 0.0)).map(|_| started.elapsed());
    back.recovered = Some(back.check(cleared.is_some(), "staleness did not clear on every gateway"));
    back.recover = cleared;
    back.note(format!("control-api answered /healthz {} ms after being started again", ms(healthy)));
    std::thread::sleep(Duration::from_millis(300));
    let (d200, d304) = (b.downloads(200), b.downloads(304));
    back.note(format!("control-api after its restart: {d200} bundle downloads (200), {d304} not-modified (304)"));
    back.counted = Some(back.check(d200 == 0.0 && d304 >= 3.0, "recovery was not 304s only: ETags were not kept"));
    let sources: Vec<String> =
        b.gws.iter().map(|g| g.status()["sync"]["source"].as_str().unwrap_or("").to_owned()).collect();
    back.shown = Some(back.check(
        b.gws.iter().all(|g| g.status()["sync"]["stale"] == false),
        format!("/status still stale (sources {sources:?})"),
    ));
    back.lkg = Some(back.check(b.all_at(&b.current), "a revision changed"));
    let t3 = b.streams.snapshot();
    back.traffic(&t2, &t3);
    for r in [&mut down, &mut boot] {
        r.recovered = back.recovered;
        r.recover = cleared;
    }
    let gw_a = b.gws[0].status();
    boot.check(
        gw_a["sync"]["stale"] == false && gw_a["sync"]["source"] == b.cp.base.as_str(),
        "gw-a did not confirm with the control plane",
    );
    [down, boot, back]
}

/// The row `title` of the outage sequence: run now, or kept from when an earlier fault of this
/// fixture ran it.
fn outage_row(b: &mut PhaseB, title: &str) -> Row {
    if let Some(row) = b.rows.remove(title) {
        return row;
    }
    for row in outage(b) {
        b.rows.insert(row.fault.clone(), row);
    }
    b.rows.remove(title).expect("the outage yields this row")
}

/// The tarball in a gateway's cache, if there is one.
fn cached_tarball(cache: &Path) -> Option<PathBuf> {
    std::fs::read_dir(cache).ok()?.flatten().map(|e| e.path()).find(|p| p.to_string_lossy().ends_with(".tar.gz"))
}

/// The cache file corrupted (or deleted) while running; a later restart, source up, recovers.
fn cache_damaged(b: &mut PhaseB, i: usize, delete: bool, mut row: Row) -> Row {
    let name = b.names[i];
    let t0 = b.streams.snapshot();
    let cache = b.cache(i);
    // Persisted just after activation: a gateway that has only just become ready may not be there.
    eventually(Duration::from_secs(5), "a cached tarball", || cached_tarball(&cache).is_some());
    let tarball = cached_tarball(&cache).expect("a cached tarball");
    if delete {
        std::fs::remove_file(&tarball).expect("delete");
    } else {
        std::fs::write(&tarball, b"\x1f\x8b corrupted on purpose").expect("corrupt");
    }
    std::thread::sleep(Duration::from_secs(1));
    let lkg = b.gws[i].revision() == b.current && b.gws[i].ready();
    row.lkg = Some(row.check(lkg, format!("{name} lost its bundle while its cache was damaged")));
    row.note(format!(
        "{} {} while {name} served from memory",
        if delete { "deleted" } else { "overwrote" },
        tarball.display()
    ));

    b.streams.pause(name);
    let restarted = Instant::now();
    b.gws[i].restart();
    let up = wait_for(Duration::from_secs(15), || b.gws[i].ready());
    b.streams.resume(name);
    row.recovered = Some(row.check(up.is_some(), format!("{name} did not become ready from the source")));
    row.recover = up.map(|_| restarted.elapsed());
    row.note(format!(
        "{name}'s own stream paused from its kill until /readyz 200 ({} ms: the restart, plus one download since the cache was unusable)",
        up.map(ms).unwrap_or(0)
    ));
    let cache_fail = m(&b.gws[i], &failures("cache"));
    row.counted = Some(row.check(cache_fail == 1.0, format!("{} = {cache_fail}, expected 1", failures("cache"))));
    let st = b.gws[i].status();
    let err = last_error(&st);
    row.note(format!("/status sync.last_error: `{err}`"));
    row.shown = Some(row.check(err.starts_with("cache:"), "/status does not show the cache error"));
    row.check(st["bundle"]["revision"] == b.current.as_str(), "wrong revision after the restart");
    row.check(st["bundle"]["source"] != "cache", "booted from a damaged cache");
    let repaired = wait_for(Duration::from_secs(5), || cache_revision(&cache).is_ok_and(|r| r == b.current));
    row.check(repaired.is_some(), format!("the cache was not written again: {:?}", cache_revision(&cache)));
    std::thread::sleep(Duration::from_millis(500));
    row.traffic(&t0, &b.streams.snapshot());
    row
}

/// cache_dir unwritable (a file where the directory should be): serving continues, the
/// persist failure is counted and shown; once writable again the next activation persists.
fn cache_unwritable(b: &mut PhaseB, mut row: Row) -> Row {
    let t0 = b.streams.snapshot();
    let cache = b.cache(0);
    std::fs::remove_dir_all(&cache).expect("remove cache dir");
    std::fs::write(&cache, b"a file where cache_dir should be").expect("block cache dir");
    let persist0 = m(&b.gws[0], &failures("persist"));
    let rev = b.publish_next();
    let active = wait_for(Duration::from_secs(10), || b.all_at(&rev));
    row.lkg = Some(row.check(active.is_some() && b.gws[0].ready(), format!("{rev} not served everywhere")));
    row.note(format!("published {rev}: activated and served from memory although it cannot be persisted"));
    let counted = wait_for(Duration::from_secs(5), || m(&b.gws[0], &failures("persist")) > persist0);
    row.counted = Some(row.check(counted.is_some(), format!("{} did not grow", failures("persist"))));
    let err = last_error(&b.gws[0].status());
    row.note(format!("/status sync.last_error: `{err}`"));
    row.shown = Some(row.check(err.contains("cannot persist"), "/status does not show the persist error"));

    std::fs::remove_file(&cache).expect("unblock");
    std::fs::create_dir(&cache).expect("mkdir");
    let fixed = Instant::now();
    let rev = b.publish_next();
    let persisted = wait_for(Duration::from_secs(10), || cache_revision(&cache).is_ok_and(|r| r == rev));
    row.recovered =
        Some(row.check(persisted.is_some(), format!("{rev} was not persisted once cache_dir was writable")));
    row.recover = persisted.map(|_| fixed.elapsed());
    row.note(format!("cache_dir writable again, {rev} published: persisted"));
    row.traffic(&t0, &b.streams.snapshot());
    row
}

/// kill -9 of a gateway moments after each of several publishes (while it fetches, activates,
/// persists), then a restart with the control plane down: it boots from the cache.
fn kill_during_persist(b: &mut PhaseB, mut row: Row) -> Row {
    const ROUNDS: u64 = 8;
    let t0 = b.streams.snapshot();
    let (i, name) = (2, b.names[2]);
    let cache = b.cache(i);
    b.streams.pause(name);
    let mut published = vec![b.current.clone()];
    let mut torn = Vec::new();
    for round in 1..=ROUNDS {
        published.push(b.publish_next());
        std::thread::sleep(Duration::from_millis(15 * round));
        b.gws[i].proc.kill9();
        if let Err(e) = cache_revision(&cache) {
            torn.push(format!("round {round}: {e}"));
        }
        b.gws[i].restart();
    }
    row.note(format!(
        "{ROUNDS} rounds: publish, wait 15–{} ms, SIGKILL {name}, check its cache, start it again; the other gateways served and activated every revision meanwhile",
        15 * ROUNDS
    ));
    row.check(torn.is_empty(), format!("a kill left a cache that cannot boot: {torn:?}"));
    let up = wait_for(Duration::from_secs(15), || b.gws[i].ready());
    row.check(up.is_some(), format!("{name} not ready after the last restart"));

    b.cp.kill9();
    b.gws[i].restart();
    let booted = wait_for(Duration::from_secs(15), || b.gws[i].ready());
    b.streams.resume(name);
    let st = b.gws[i].status();
    let rev = st["bundle"]["revision"].as_str().unwrap_or("").to_owned();
    row.note(format!("restarted with control-api down: source `{}`, revision `{rev}`", st["bundle"]["source"]));
    row.lkg = Some(row.check(
        booted.is_some() && st["bundle"]["source"] == "cache" && published.contains(&rev),
        "did not boot from the cache",
    ));
    let cache_fail = m(&b.gws[i], &failures("cache"));
    row.counted = Some(row.check(cache_fail == 0.0, format!("the cache was refused at boot ({cache_fail})")));
    let errs = wait_for(Duration::from_secs(5), || m(&b.gws[i], SYNC_ERRORS) >= 1.0);
    row.shown = Some(
        row.check(errs.is_some() && last_error(&b.gws[i].status()).contains(&b.cp.base), "the outage is not shown"),
    );
    std::thread::sleep(Duration::from_secs(1));

    let back = Instant::now();
    b.cp.restart();
    let current = b.current.clone();
    let rec = wait_for(Duration::from_secs(10), || b.all_at(&current)).map(|_| back.elapsed());
    row.recovered = Some(row.check(rec.is_some(), format!("the fleet did not converge on {current}")));
    row.recover = rec;
    row.traffic(&t0, &b.streams.snapshot());
    row
}

fn corrupted(b: &mut PhaseB, row: Row) -> Row {
    cache_damaged(b, 1, false, row)
}

fn deleted(b: &mut PhaseB, row: Row) -> Row {
    cache_damaged(b, 2, true, row)
}

fn down(b: &mut PhaseB, _: Row) -> Row {
    outage_row(b, DOWN)
}

fn boot(b: &mut PhaseB, _: Row) -> Row {
    outage_row(b, BOOT)
}

fn back(b: &mut PhaseB, _: Row) -> Row {
    outage_row(b, BACK)
}

/// Every fault of the control plane and the caches, in the order they run (the storms second).
pub fn faults() -> Vec<Fault> {
    let first: On<PhaseB> =
        ("rollout_reaches_three_gateways_under_long_poll", 7, "new revision rolled out to three gateways", rollout);
    let rest: [On<PhaseB>; 8] = [
        (
            "control_api_killed_mid_long_poll_is_recovered_by_304s",
            1,
            "control-api SIGKILL mid long poll",
            kill_mid_long_poll,
        ),
        ("control_api_down_past_max_staleness_marks_stale_and_keeps_serving", 1, DOWN, down),
        ("gateway_restarted_while_control_plane_down_boots_from_cache", 5, BOOT, boot),
        ("control_api_back_clears_staleness_without_downloads", 1, BACK, back),
        (
            "cache_file_corrupted_is_refused_at_restart_and_written_again",
            5,
            "cache file corrupted while running, then restart",
            corrupted,
        ),
        (
            "cache_file_deleted_is_refused_at_restart_and_written_again",
            5,
            "cache file deleted while running, then restart",
            deleted,
        ),
        ("cache_dir_unwritable_keeps_serving_and_persists_once_writable", 5, "cache_dir unwritable", cache_unwritable),
        (
            "kill_during_persist_never_leaves_a_cache_that_cannot_boot",
            5,
            "kill -9 during persist (×8), then restart with control-api down",
            kill_during_persist,
        ),
    ];
    let mut all = faults_on(Fixture::fleet, [first]);
    all.extend(super::storms::faults());
    all.extend(faults_on(Fixture::fleet, rest));
    all
}
