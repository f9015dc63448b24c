//! Faults of the bundle source: a gateway (and a second one requiring signatures) polling
//! `hostile-source`, whose every answer is scripted.

use std::path::Path;
use std::time::{Duration, Instant};

use e2e::{spawn_gateway, Gateway};
use serde_json::Value;

use super::bundles;
use super::hostile::{self, Hostile};
use super::report::Row;
use super::streams::Streams;
use super::{failures, last_error, m, ms, wait_for, Fault, NOT_MODIFIED, POLL, SYNC_ERRORS};

/// Failed polls each source fault must show before it ends: a fault that lasts.
const MIN_FAILED_POLLS: f64 = 2.0;
/// How long a fault's failed polls may take to show.
const NOTICE_WITHIN: Duration = Duration::from_secs(30);

/// A host name that can never resolve, and whose lookup never leaves the machine: its first
/// label is 64 octets, one more than DNS allows, so the stub resolver refuses it before building
/// a query (unlike `nonexistent.invalid`, which glibc does send to the configured nameserver).
fn unresolvable_url() -> String {
    format!("http://{}.invalid:1/v1/bundles/main", "x".repeat(64))
}

pub struct PhaseA {
    upstream: String,
    hs: Hostile,
    gw: Gateway,
    /// The bundle `hs` serves when no fault is on.
    good: Vec<u8>,
    hs_sig: Hostile,
    gw_sig: Gateway,
    good_sig: Vec<u8>,
    streams: Streams,
    next: u32,
}

fn signing_config() -> String {
    let key = test_support::paths::repo_root().join("test-support/keys/demo-es256.pub.pem");
    format!(
        "  signing:\n    required: true\n    keys: [{{ id: k1, algorithm: ES256, public_key_file: {} }}]\n",
        key.display()
    )
}

impl PhaseA {
    pub fn start(dir: &Path, upstream: &str) -> PhaseA {
        let good = bundles::tar_gz(&bundles::files(upstream, "a0"));
        let hs = Hostile::start();
        hs.set(&hostile::bundle(&good));
        let good_sig = bundles::signed(bundles::files(upstream, "s0"), "demo-es256.pem", "ES256");
        let hs_sig = Hostile::start();
        hs_sig.set(&hostile::bundle(&good_sig));
        // Both start together; each is ready before any fault begins.
        // gw-h follows redirects (`bundle.follow_redirects`, off by default) so that a redirect
        // to an unresolvable host can stand for a DNS failure of its source.
        let gw = spawn_gateway(dir, "gw-h", &[&hs.url], &format!("{POLL}  max_size: 1MiB\n  follow_redirects: true\n"));
        let gw_sig = spawn_gateway(dir, "gw-s", &[&hs_sig.url], &format!("{POLL}{}", signing_config()));
        gw.wait_ready();
        gw_sig.wait_ready();
        let streams = Streams::start(&[("gw-h", &gw), ("gw-s", &gw_sig)]);
        PhaseA { upstream: upstream.to_owned(), hs, gw, good, hs_sig, gw_sig, good_sig, streams, next: 1 }
    }

    fn next_revision(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}{}", self.next)
    }

    fn files(&self, revision: &str) -> policy_bundles::archive::Files {
        bundles::files(&self.upstream, revision)
    }
}

enum Inject {
    Script(Value),
    /// SIGKILL the source: connections are refused until it comes back.
    Kill,
}

/// What a fault looked like from the source and the gateway, for fault-specific checks.
struct Seen {
    /// The source's log of the requests answered during the fault.
    during: Vec<Value>,
    /// From injection to the failure being counted.
    counted_after: Option<Duration>,
}

struct SourceFault<'a> {
    inject: Inject,
    /// What `/status` `sync.last_error` must mention.
    error_text: &'a str,
    /// The `gateway_bundle_activation_failures_total` reason that must grow; `None`: a sync error.
    reason: Option<&'a str>,
    /// Recover with a new revision (it must activate) rather than the good bundle again (which
    /// must be a 304: the ETag was kept and nothing is downloaded again).
    recover_new: bool,
    /// The gateway requiring signatures, rather than the plain one.
    signing: bool,
}

/// A fault of the plain gateway's source.
fn plain<'a>(inject: Inject, error_text: &'a str, reason: Option<&'a str>, recover_new: bool) -> SourceFault<'a> {
    SourceFault { inject, error_text, reason, recover_new, signing: false }
}

/// Injects a source fault while traffic flows, checks everything a fault must show (counted,
/// shown, last-known-good and its ETag kept, serving untouched), ends it and measures the recovery;
/// `extra` adds the fault's own checks.
fn source_fault(a: &mut PhaseA, mut row: Row, f: SourceFault<'_>, extra: impl FnOnce(&mut Row, &Seen)) -> Row {
    let recovery_bundle = if f.recover_new {
        let rev = a.next_revision(if f.signing { "s" } else { "a" });
        let files = a.files(&rev);
        Some((rev, if f.signing { bundles::signed(files, "demo-es256.pem", "ES256") } else { bundles::tar_gz(&files) }))
    } else {
        None
    };
    let (gw, hs, good) =
        if f.signing { (&a.gw_sig, &mut a.hs_sig, &mut a.good_sig) } else { (&a.gw, &mut a.hs, &mut a.good) };

    let st0 = gw.status();
    let rev0 = st0["bundle"]["revision"].as_str().unwrap_or("").to_owned();
    let etag0 = st0["sync"]["etag"].as_str().unwrap_or("").to_owned();
    row.check(!rev0.is_empty() && !etag0.is_empty(), format!("no active bundle before the fault: {st0}"));
    let counter = f.reason.map(failures).unwrap_or_else(|| SYNC_ERRORS.to_owned());
    let count0 = m(gw, &counter);
    let errors0 = m(gw, SYNC_ERRORS);
    let log0 = hs.next_n();
    let t0 = a.streams.snapshot();

    let killed = matches!(f.inject, Inject::Kill);
    let injected = Instant::now();
    match &f.inject {
        Inject::Script(v) => hs.set(v),
        Inject::Kill => hs.kill9(),
    }
    // Bounds on noticing, not the claim (last-known-good serving is): every poll of a bad bundle
    // runs the budget's child again, and a child inflating a 272 MiB bomb took 5 s a poll beside
    // the rest of the test run on a slower machine of this kind (two polls: 23 s).
    let counted_after = wait_for(NOTICE_WITHIN, || m(gw, &counter) > count0);
    row.counted = Some(row.check(counted_after.is_some(), format!("{counter} did not grow within 30 s")));
    if let Some(d) = counted_after {
        row.note(format!("`{counter}` grew {} ms after the fault began", ms(d)));
    }
    let lasted = wait_for(NOTICE_WITHIN, || m(gw, SYNC_ERRORS) >= errors0 + MIN_FAILED_POLLS);
    row.check(lasted.is_some(), format!("fewer than {MIN_FAILED_POLLS} failed polls within 30 s"));

    // During the fault: last-known-good active and ready, its ETag kept, the error shown.
    let st = gw.status();
    let rev = st["bundle"]["revision"].as_str().unwrap_or("").to_owned();
    let etag = st["sync"]["etag"].as_str().unwrap_or("").to_owned();
    let is_ready = gw.ready();
    row.lkg = Some(row.check(
        rev == rev0 && etag == etag0 && is_ready,
        format!("last-known-good lost: revision {rev0} -> {rev}, etag {etag0} -> {etag}, ready {is_ready}"),
    ));
    let err = last_error(&st);
    row.note(format!("/status sync.last_error: `{err}`"));
    row.shown =
        Some(row.check(err.contains(f.error_text), format!("/status last_error should mention {:?}", f.error_text)));

    let during = if killed { Vec::new() } else { hs.requests(log0) };
    if !killed {
        row.check(!during.is_empty(), "the source saw no request during the fault");
        let other: Vec<&Value> =
            during.iter().filter(|e| e["if_none_match"].as_str() != Some(etag0.as_str())).collect();
        row.check(other.is_empty(), format!("requests during the fault without the last-known-good ETag: {other:?}"));
        row.note(format!("{} polls during the fault, each with `If-None-Match: {etag0}`", during.len()));
    }
    extra(&mut row, &Seen { during, counted_after });

    // End the fault and measure the recovery.
    if killed {
        hs.restart();
    }
    let log1 = hs.next_n();
    let not_modified0 = m(gw, NOT_MODIFIED);
    let recovered = match &recovery_bundle {
        Some((rev, bytes)) => {
            hs.set(&hostile::bundle(bytes));
            let r = wait_for(Duration::from_secs(15), || gw.revision() == *rev);
            if r.is_some() {
                *good = bytes.clone();
                row.note(format!("recovered by activating the new revision {rev}"));
            }
            r
        }
        None => {
            hs.set(&hostile::bundle(good));
            let r = wait_for(Duration::from_secs(15), || m(gw, NOT_MODIFIED) > not_modified0);
            let after = hs.requests(log1);
            let downloads = after.iter().filter(|e| e["answered"] == 200).count();
            let confirmed = after.iter().filter(|e| e["answered"] == 304).count();
            row.check(
                downloads == 0 && confirmed > 0,
                format!("recovery must be a 304, not a download: {downloads} × 200, {confirmed} × 304"),
            );
            row.check(gw.revision() == rev0, "the revision changed on recovery");
            if r.is_some() {
                row.note(format!("recovered by a 304 for `{etag0}` ({confirmed} × 304, no download)"));
            }
            r
        }
    };
    row.recovered = Some(row.check(recovered.is_some(), "no recovery within 15 s of the fault ending"));
    row.recover = recovered;
    row.note(format!("fault lasted {} ms", ms(injected.elapsed())));
    row.traffic(&t0, &a.streams.snapshot());
    row
}

/// A fault scripted on the plain gateway's source, recovered by the good bundle again (a 304).
fn scripted(name: &'static str, group: u8, title: &str, script: Value, error_text: &str) -> Fault {
    let error_text = error_text.to_owned();
    Fault::new(name, group, title, move |fx, row| {
        source_fault(fx.source(), row, plain(Inject::Script(script), &error_text, None, false), |_, _| {})
    })
}

/// A bad bundle (built from the fixture's files) served by the plain gateway's source; recovered
/// by a good new revision.
fn bad_bundle(
    name: &'static str,
    title: &str,
    bundle: impl FnOnce(&PhaseA) -> Value + Send + 'static,
    error_text: &'static str,
    reason: Option<&'static str>,
) -> Fault {
    Fault::new(name, 3, title, move |fx, row| {
        let a = fx.source();
        let script = bundle(a);
        source_fault(a, row, plain(Inject::Script(script), error_text, reason, true), |_, _| {})
    })
}

/// A bundle the gateway requiring signatures must refuse.
fn unsigned_or_wrongly_signed(
    name: &'static str,
    title: &str,
    bytes: impl FnOnce(&PhaseA) -> Vec<u8> + Send + 'static,
    error_text: &'static str,
) -> Fault {
    Fault::new(name, 3, title, move |fx, row| {
        let a = fx.source();
        let inject = Inject::Script(hostile::bundle(&bytes(a)));
        let f = SourceFault { inject, error_text, reason: Some("signature"), recover_new: true, signing: true };
        source_fault(a, row, f, |_, _| {})
    })
}

/// 2 MiB that do not compress: over the plain gateway's `max_size` of 1 MiB.
fn incompressible_2mib() -> Vec<u8> {
    let mut big = Vec::with_capacity(2 << 20);
    let mut x: u32 = 0x9e37_79b9;
    while big.len() < 2 << 20 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        big.extend_from_slice(&x.to_le_bytes());
    }
    big
}

/// A hang or trickle: cut by the timeout (1 s), serving unaffected.
fn slow(name: &'static str, title: &str, script: impl FnOnce(&PhaseA) -> Value + Send + 'static) -> Fault {
    Fault::new(name, 4, title, move |fx, row| {
        let a = fx.source();
        let script = script(a);
        source_fault(a, row, plain(Inject::Script(script), "not received within", None, true), |row, seen| {
            let cut = seen.counted_after.unwrap_or(Duration::MAX);
            row.note(format!("cut {} ms after the fault began (timeout 1 s)", ms(cut)));
            row.check(cut < Duration::from_secs(3), format!("not cut by the 1 s timeout: {cut:?}"));
        })
    })
}

/// After each 429, the next poll waits at least Retry-After (backoff alone is ≤ 500 ms).
fn retry_after_honoured(row: &mut Row, seen: &Seen) {
    let gaps: Vec<u64> = seen
        .during
        .windows(2)
        .filter(|w| w[0]["answered"] == 429)
        .map(|w| w[1]["at_ms"].as_u64().unwrap_or(0).saturating_sub(w[0]["answered_ms"].as_u64().unwrap_or(0)))
        .collect();
    row.note(format!("gaps after each 429 before the next poll: {gaps:?} ms"));
    row.check(!gaps.is_empty(), "no poll followed a 429 during the fault");
    row.check(gaps.iter().all(|g| *g >= 1900), format!("Retry-After: 2 not honoured: gaps {gaps:?} ms"));
    row.note("recovery waits out the last Retry-After, as it should".to_owned());
}

/// The source answering errors, refusing, unresolvable, speaking TLS, closing.
fn source_errors() -> Vec<Fault> {
    let status = |name, code: u16| {
        scripted(name, 2, &format!("source answers {code}"), hostile::status(code, None), &format!("HTTP {code}"))
    };
    vec![
        status("source_answering_500_keeps_last_good", 500),
        status("source_answering_502_keeps_last_good", 502),
        status("source_answering_503_keeps_last_good", 503),
        status("source_answering_404_keeps_last_good", 404),
        status("source_answering_403_keeps_last_good", 403),
        Fault::new(
            "source_answering_429_is_retried_after_retry_after",
            2,
            "source answers 429 with Retry-After: 2",
            |fx, row| {
                let f = plain(Inject::Script(hostile::status(429, Some(2))), "HTTP 429", None, false);
                source_fault(fx.source(), row, f, retry_after_honoured)
            },
        ),
        Fault::new(
            "source_refusing_connections_keeps_last_good",
            2,
            "connection refused (source killed)",
            |fx, row| source_fault(fx.source(), row, plain(Inject::Kill, "request failed", None, false), |_, _| {}),
        ),
        Fault::new("source_host_name_unresolvable_keeps_last_good", 2, "bad host name (DNS failure)", |fx, row| {
            let f = plain(Inject::Script(hostile::redirect(&unresolvable_url())), "request failed", None, false);
            source_fault(fx.source(), row, f, |row, _| {
                row.note("the source redirects to a host whose 64-octet label no resolver can encode: the gateway's own lookup fails, locally".to_owned());
            })
        }),
        scripted(
            "source_speaking_tls_keeps_last_good",
            2,
            "TLS where plain HTTP was expected",
            hostile::tls(),
            "request failed",
        ),
        scripted(
            "source_closing_without_an_answer_keeps_last_good",
            2,
            "connection closed without an answer",
            hostile::close(),
            "request failed",
        ),
    ]
}

/// A bundle of the example's files at `rev` with `path` added.
fn plus(a: &PhaseA, rev: &str, path: &str, content: &str) -> Value {
    hostile::bundle(&bundles::tar_gz(&bundles::with(a.files(rev), path, content)))
}

/// A bundle of the example's files at `rev` with its settings edited.
fn edited(a: &PhaseA, rev: &str, from: &str, to: &str) -> Value {
    hostile::bundle(&bundles::tar_gz(&bundles::settings_replace(a.files(rev), from, to)))
}

/// A bundle of the example's files at `rev` plus a raw hostile entry.
fn hostile_entry(a: &PhaseA, rev: &str, entry: bundles::Entry) -> Value {
    hostile::bundle(&bundles::hostile_tar_gz(&a.files(rev), &[entry]))
}

/// The source serving bad bundles: each refused for its own reason, counted under it.
fn bad_bundles() -> Vec<Fault> {
    let zero_etag = format!("\"{}\"", "0".repeat(64));
    vec![
        bad_bundle(
            "source_returns_garbage_keeps_last_good",
            "garbage bytes",
            |_| hostile::body(b"definitely not a bundle", "\"garbage\""),
            "not a gzip",
            Some("archive"),
        ),
        bad_bundle(
            "source_returns_truncated_gzip_keeps_last_good",
            "truncated gzip",
            |a| {
                let mut truncated = bundles::tar_gz(&a.files("never-a"));
                truncated.truncate(truncated.len() / 2);
                hostile::body(&truncated, "\"truncated\"")
            },
            "bundle refused",
            Some("archive"),
        ),
        bad_bundle(
            "source_digest_not_matching_the_etag_keeps_last_good",
            "digest does not match the ETag",
            move |a| hostile::body(&bundles::tar_gz(&a.files("never-a")), &zero_etag),
            "digest mismatch",
            Some("digest"),
        ),
        bad_bundle(
            "source_rego_not_compiling_keeps_last_good",
            "Rego that does not compile",
            |a| plus(a, "never-b", "http/bad.rego", "package http.bad\nallow if {\n"),
            "http/bad.rego",
            Some("rego"),
        ),
        bad_bundle(
            "source_route_naming_a_missing_upstream_keeps_last_good",
            "route naming a missing upstream",
            |a| edited(a, "never-c", "upstream: backend", "upstream: ghost"),
            "names upstream `ghost`",
            Some("settings"),
        ),
        bad_bundle(
            "source_route_naming_a_missing_rule_keeps_last_good",
            "route naming a missing rule",
            |a| edited(a, "never-d", "policy: data.http.public.allow", "policy: data.http.public.ghost"),
            "data.http.public.ghost",
            Some("settings"),
        ),
        bad_bundle(
            "source_data_outside_the_roots_keeps_last_good",
            "data outside the manifest roots",
            |a| plus(a, "never-e", "other/data.json", "{\"x\": 1}"),
            "other",
            Some("roots"),
        ),
        bad_bundle(
            "source_path_traversal_keeps_last_good",
            "path traversal",
            |a| hostile_entry(a, "never-f", bundles::file("../escape.rego", b"package http.x\n")),
            "traversal",
            Some("archive"),
        ),
        bad_bundle(
            "source_absolute_path_keeps_last_good",
            "absolute path",
            |a| hostile_entry(a, "never-g", bundles::file("/etc/escape.rego", b"package http.x\n")),
            "absolute",
            Some("archive"),
        ),
        bad_bundle(
            "source_symlink_keeps_last_good",
            "symlink",
            |a| hostile_entry(a, "never-h", bundles::symlink("http/link.rego", "/etc/passwd")),
            "links are not allowed",
            Some("archive"),
        ),
        bad_bundle(
            "source_decompression_bomb_of_many_files_keeps_last_good",
            "decompression bomb (17 × 16 MiB of zeros in ~300 KiB)",
            |a| hostile::bundle(&bundles::bomb(&a.files("never-i"), 17, 16)),
            "decompression bomb",
            Some("archive"),
        ),
        bad_bundle(
            "source_decompression_bomb_of_one_file_keeps_last_good",
            "decompression bomb (one 512 MiB file)",
            |a| hostile::bundle(&bundles::bomb(&a.files("never-j"), 1, 512)),
            "per-file limit",
            Some("archive"),
        ),
        bad_bundle(
            "source_body_over_max_size_keeps_last_good",
            "body over max_size (2 MiB, limit 1 MiB)",
            |_| hostile::body(&incompressible_2mib(), "\"big\""),
            "larger than max_size",
            None,
        ),
        // ... and with signing required, on the second gateway.
        unsigned_or_wrongly_signed(
            "source_missing_signature_keeps_last_good",
            "missing signature (signing required)",
            |a| bundles::tar_gz(&a.files("never-k")),
            "not signed",
        ),
        unsigned_or_wrongly_signed(
            "source_wrong_signature_keeps_last_good",
            "wrong signature (signing required)",
            |a| bundles::signed(a.files("never-l"), "demo-rs256.pem", "RS256"),
            "signature",
        ),
    ]
}

/// Every fault of the bundle source, in the order they run.
pub fn faults() -> Vec<Fault> {
    let mut all = source_errors();
    all.extend(bad_bundles());
    all.push(slow("source_hanging_after_headers_is_cut_by_the_timeout", "source hangs after headers", |_| {
        hostile::hang()
    }));
    all.push(slow("source_trickling_is_cut_by_the_timeout", "source trickles one byte a second", |a| {
        hostile::trickle(&bundles::tar_gz(&a.files("never-m")), 1000)
    }));
    all
}
