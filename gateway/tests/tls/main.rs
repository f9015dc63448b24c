//! TLS termination through the real binary: certificates chosen by SNI, reloaded from disk
//! without a restart (and a bad replacement refused, the old one serving on), Host and SNI
//! made to agree (421), HTTP/2 by ALPN and h2c by opt-in, and the policy seeing one input
//! whichever protocol carried the request.

mod client;
#[path = "../common/mod.rs"]
mod common;
mod upstream;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use client::{curl, peer_names, Tls};
use common::*;
use test_support::certs::{Ca, Leaf};

/// A rule that allows and hands the upstream what it saw, so a test reads the policy's input.
const SEEN: &str = r#"package http.seen

import rego.v1

decision := {"allow": true, "headers": {
	"x-seen-scheme": input.request.scheme,
	"x-seen-host": input.request.host,
	"x-seen-path": input.request.path,
	"x-seen-method": input.request.method,
}}
"#;

const SEEN_ROUTE: &str =
    "  - name: seen\n    match: { path_prefix: /seen }\n    upstream: backend\n    policy: data.http.seen.decision\n";

/// Three certificates in the order the config lists them: the default first, a wildcard, an exact name.
pub struct Certs {
    pub ca: Ca,
    pub ca_file: PathBuf,
    pub files: Vec<(PathBuf, PathBuf)>,
}

pub fn three_certs(dir: &Path) -> Certs {
    let ca = Ca::new("gateway test CA");
    let ca_file = ca.write(dir, "ca");
    let files = [("default", &["default.localhost"][..]), ("wild", &["*.apps.localhost"]), ("api", &["api.localhost"])]
        .iter()
        .map(|(stem, names)| ca.issue(names).write(dir, stem))
        .collect();
    Certs { ca, ca_file, files }
}

/// A TLS gateway in `dir` on the example bundle plus the `seen` route; `extra` is appended to its config.
pub fn tls_gateway(dir: &Path, certs: &Certs, extra: &str) -> (Gateway, Upstream) {
    let upstream = echo_upstream("backend");
    let bundle = example_bundle(dir, &upstream.addr.to_string(), "", SEEN_ROUTE, &[("http/seen.rego", SEEN)]);
    (tls_gateway_on(dir, certs, &bundle, extra), upstream)
}

/// A TLS gateway on `bundle`, ready.
pub fn tls_gateway_on(dir: &Path, certs: &Certs, bundle: &Path, extra: &str) -> Gateway {
    let list: String = certs
        .files
        .iter()
        .map(|(c, k)| format!("    - {{ cert_file: {}, key_file: {} }}\n", c.display(), k.display()))
        .collect();
    // `extra` lands right after the certificate list, inside `tls:`.
    gateway_config(dir).tls().top(&format!("tls:\n  certificates:\n{list}{extra}")).bundle_file(bundle).start()
}

#[test]
fn sni_selects_the_exact_name_then_the_wildcard_then_the_first_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = three_certs(dir.path());
    let (gw, _up) = tls_gateway(dir.path(), &certs, "");
    let port = port_of(&gw.base);
    let tls = Tls::trusting(&certs.ca.cert_pem());
    let cases = [
        (Some("api.localhost"), "api.localhost"),
        (Some("web.apps.localhost"), "*.apps.localhost"),
        (Some("unknown.localhost"), "default.localhost"),
        (Some("a.b.apps.localhost"), "default.localhost"),
        (None, "default.localhost"),
    ];
    for (sni, want) in cases {
        let conn = tls.connect(port, sni).unwrap_or_else(|e| panic!("{sni:?}: {e}"));
        assert_eq!(peer_names(&conn), vec![want.to_string()], "SNI {sni:?}");
    }
}

#[test]
fn policy_sees_https_and_the_same_input_over_http1_and_http2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = three_certs(dir.path());
    let (gw, _up) = tls_gateway(dir.path(), &certs, "");
    let port = port_of(&gw.base);
    let url = format!("https://api.localhost:{port}/seen/a/../b?x=1");
    let resolve = format!("api.localhost:{port}:127.0.0.1");
    let mut seen = Vec::new();
    for proto in ["--http1.1", "--http2"] {
        let r = curl(&[
            proto,
            "--cacert",
            &certs.ca_file.display().to_string(),
            "--resolve",
            &resolve,
            "--path-as-is",
            &url,
        ]);
        assert_eq!(r.status, 200, "{proto}: {r:?}");
        let want_version = if proto == "--http2" { "2" } else { "1.1" };
        assert_eq!(r.version, want_version, "{proto}: ALPN should pick {want_version}");
        let h = &r.json()["headers"];
        assert_eq!(h["x-forwarded-proto"], "https", "{proto}: {h}");
        seen.push((
            h["x-seen-scheme"].clone(),
            h["x-seen-host"].clone(),
            h["x-seen-path"].clone(),
            h["x-seen-method"].clone(),
        ));
    }
    assert_eq!(seen[0], seen[1], "h1 and h2 must give the policy the same input");
    assert_eq!(seen[0].0, "https");
    assert_eq!(seen[0].1, "api.localhost");
    assert_eq!(seen[0].2, "/seen/b");
}

#[test]
fn a_host_the_connection_certificate_does_not_cover_is_421_misdirected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = three_certs(dir.path());
    let (gw, _up) = tls_gateway(dir.path(), &certs, "");
    let port = port_of(&gw.base);
    let tls = Tls::trusting(&certs.ca.cert_pem());
    // Domain fronting: a connection made for api.localhost asks for another tenant's host.
    for (sni, host, want) in [
        (Some("api.localhost"), "web.apps.localhost", 421),
        (Some("api.localhost"), "api.localhost", 200),
        (Some("api.localhost"), "API.localhost.", 200),
        (Some("web.apps.localhost"), "shop.apps.localhost", 200),
        (Some("web.apps.localhost"), "api.localhost", 421),
        (None, "api.localhost", 421),
    ] {
        let mut conn = tls.connect(port, sni).expect("handshake");
        let (status, body) = client::get(&mut conn, host, "/seen/x");
        assert_eq!(status, want, "SNI {sni:?}, Host {host}: {body}");
    }
    // Over HTTP/2 the authority is the host.
    let r = curl(&[
        "--http2",
        "--cacert",
        &certs.ca_file.display().to_string(),
        "--resolve",
        &format!("api.localhost:{port}:127.0.0.1"),
        "-H",
        "Host: web.apps.localhost",
        &format!("https://api.localhost:{port}/seen/x"),
    ]);
    assert_eq!((r.status, r.version.as_str()), (421, "2"), "{r:?}");
    let refused = metric_settled(&gw.admin, "gateway_requests_refused_total{reason=\"misdirected\"}", 4.0);
    assert_eq!(refused, Some(4.0));
}

#[test]
fn a_replaced_certificate_is_served_on_new_connections_while_open_ones_continue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = three_certs(dir.path());
    let (gw, _up) = tls_gateway(dir.path(), &certs, "");
    let port = port_of(&gw.base);
    let tls = Tls::trusting(&certs.ca.cert_pem());
    let mut open = tls.connect(port, Some("api.localhost")).expect("handshake");
    let old = client::leaf_der(&open);
    assert_eq!(client::get(&mut open, "api.localhost", "/seen/1").0, 200);

    let later = time::OffsetDateTime::now_utc() + time::Duration::days(200);
    let renewed =
        certs.ca.issue_valid(&["api.localhost"], time::OffsetDateTime::now_utc() - time::Duration::hours(1), later);
    replace_pair(&certs.files[2], &renewed);
    let swapped_at = Instant::now();
    eventually(Duration::from_secs(2), "new connections to get the renewed certificate", || {
        tls.connect(port, Some("api.localhost")).is_ok_and(|c| client::leaf_der(&c) != old)
    });
    assert!(swapped_at.elapsed() < Duration::from_secs(2));
    // The connection opened before the swap goes on, on its certificate.
    assert_eq!(client::get(&mut open, "api.localhost", "/seen/2").0, 200);
    assert_eq!(client::leaf_der(&open), old);
    assert_eq!(
        metric_settled(&gw.admin, "gateway_tls_certificate_reloads_total{name=\"api\",result=\"ok\"}", 1.0),
        Some(1.0)
    );
    let expiry = metric(&gw.admin, "gateway_tls_certificate_expiry_timestamp_seconds{name=\"api\"}");
    assert_eq!(expiry, Some(later.unix_timestamp() as f64), "the expiry gauge follows the renewed certificate");
}

#[test]
fn a_corrupt_mismatched_or_expired_replacement_keeps_the_old_certificate_and_is_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = three_certs(dir.path());
    let (gw, _up) = tls_gateway(dir.path(), &certs, "");
    let port = port_of(&gw.base);
    let tls = Tls::trusting(&certs.ca.cert_pem());
    let old = client::leaf_der(&tls.connect(port, Some("api.localhost")).expect("handshake"));
    let (cert_file, key_file) = &certs.files[2];
    let good_cert = std::fs::read(cert_file).expect("cert");
    let errors = "gateway_tls_certificate_reloads_total{name=\"api\",result=\"error\"}";

    std::fs::write(key_file, b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n").expect("corrupt");
    assert_eq!(metric_settled(&gw.admin, errors, 1.0), Some(1.0), "a corrupt key is counted");
    // Counted once, not once per re-read.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(metric(&gw.admin, errors), Some(1.0));
    let st = status(&gw);
    let cert_status = &st["tls"]["certificates"][2];
    assert!(cert_status["last_error"].as_str().unwrap_or("").contains(&key_file.display().to_string()), "{st}");

    // A certificate whose key belongs to another certificate.
    let other = certs.ca.issue(&["api.localhost"]);
    std::fs::write(key_file, other.key_pem.as_bytes()).expect("write key");
    assert_eq!(metric_settled(&gw.admin, errors, 2.0), Some(2.0), "a key that does not match is counted");

    // An expired certificate with its own key.
    let now = time::OffsetDateTime::now_utc();
    let expired =
        certs.ca.issue_valid(&["api.localhost"], now - time::Duration::days(30), now - time::Duration::days(1));
    replace_pair(&certs.files[2], &expired);
    assert_eq!(metric_settled(&gw.admin, errors, 3.0), Some(3.0), "an expired certificate is counted");

    assert_ne!(std::fs::read(cert_file).expect("cert"), good_cert, "the files on disk did change");
    let still = client::leaf_der(&tls.connect(port, Some("api.localhost")).expect("handshake"));
    assert_eq!(still, old, "the old certificate serves on");
    let ok = metric(&gw.admin, "gateway_tls_certificate_reloads_total{name=\"api\",result=\"ok\"}");
    assert_eq!(ok.unwrap_or(0.0), 0.0, "nothing bad was swapped in");
}

/// Writes a new pair over the files, key first, then the certificate (as a renewal tool might).
fn replace_pair((cert, key): &(PathBuf, PathBuf), leaf: &Leaf) {
    std::fs::write(key, leaf.key_pem.as_bytes()).expect("write key");
    std::fs::write(cert, leaf.cert_pem.as_bytes()).expect("write cert");
}

#[test]
fn h2c_is_served_on_the_plaintext_listener_only_when_asked() {
    for h2c in [true, false] {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = three_certs(dir.path());
        let plain = free_port();
        let extra = format!("plaintext_listen: 127.0.0.1:{plain}\nh2c: {h2c}\n");
        let (_gw, _up) = tls_gateway(dir.path(), &certs, &extra);
        let url = format!("http://127.0.0.1:{plain}/seen/x");
        let r = curl(&["--http2-prior-knowledge", &url]);
        if h2c {
            assert_eq!((r.status, r.version.as_str()), (200, "2"), "{r:?}");
            assert_eq!(r.json()["headers"]["x-seen-scheme"], "http");
        } else {
            assert_ne!(r.version, "2", "h2c must be opt-in: {r:?}");
        }
        let r = curl(&["--http1.1", &url]);
        assert_eq!((r.status, r.version.as_str()), (200, "1.1"), "{r:?}");
    }
}

#[test]
fn check_config_checks_certificates_and_names_the_bad_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = three_certs(dir.path());
    let bundle = example_bundle(dir.path(), "127.0.0.1:9", "", "", &[]);
    let write = |cert: &Path, key: &Path| {
        let config = dir.path().join("check.yaml");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:1\nbundle:\n  name: main\n  file: {}\ntls:\n  certificates:\n    - {{ cert_file: {}, key_file: {} }}\n",
                bundle.display(),
                cert.display(),
                key.display()
            ),
        )
        .expect("config");
        Command::new(env!("CARGO_BIN_EXE_gateway")).arg("--check-config").arg(&config).output().expect("run")
    };
    let (api_cert, api_key) = &certs.files[2];
    let ok = write(api_cert, api_key);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("api.localhost"), "{}", String::from_utf8_lossy(&ok.stdout));

    let (_, wild_key) = &certs.files[1];
    let bad = write(api_cert, wild_key);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{err}");
    assert!(err.contains(&wild_key.display().to_string()) && err.contains("does not match"), "{err}");

    let missing = dir.path().join("nope.pem");
    let bad = write(&missing, api_key);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");
}

#[test]
fn tls_12_is_the_default_minimum_and_min_version_13_refuses_a_tls_12_client() {
    for (min, tls12_ok) in [("", true), ("  min_version: \"1.3\"\n", false)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = three_certs(dir.path());
        // `extra` lands right after the certificate list, inside `tls:`.
        let (gw, _up) = tls_gateway(dir.path(), &certs, min);
        let port = port_of(&gw.base);
        let url = format!("https://api.localhost:{port}/seen/x");
        let resolve = format!("api.localhost:{port}:127.0.0.1");
        let ca = certs.ca_file.display().to_string();
        let old = curl(&["--tlsv1.2", "--tls-max", "1.2", "--cacert", &ca, "--resolve", &resolve, &url]);
        assert_eq!(old.status == 200, tls12_ok, "TLS 1.2 client with {min:?}: {old:?}");
        let new = curl(&["--tlsv1.3", "--cacert", &ca, "--resolve", &resolve, &url]);
        assert_eq!(new.status, 200, "TLS 1.3 client with {min:?}: {new:?}");
    }
}
