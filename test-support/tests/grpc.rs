//! The gRPC fixture (`test-support/grpc/`) on its own, no gateway: `server.py` started by
//! `test_support::grpc::server`, called with `call.py` through `test_support::grpc::call`.
//! These tests need python3 with grpcio (`scripts/py-deps`, which `.ci/run` runs).

use std::process::Command;

use test_support::certs::Ca;
use test_support::grpc::{self, CallOpts};

const SAY: &str = "/demo.Echo/Say";

fn python() -> std::path::PathBuf {
    grpc::python().expect("python3 with grpcio is needed: run scripts/py-deps")
}

#[test]
fn a_unary_call_is_echoed_with_the_authorization_the_server_saw() {
    python();
    let (_server, addr) = grpc::server();
    let v = grpc::call(&addr.to_string(), SAY, "hi", &CallOpts::default());
    assert_eq!((v["code"].as_str(), v["code_number"].as_u64()), (Some("OK"), Some(0)), "{v}");
    assert_eq!(v["reply"], "echo:hi", "{v}");
    assert_eq!(v["trailers"]["x-seen-authorization"], "", "{v}");

    let with_token = CallOpts { token: Some("t0k".into()), ..CallOpts::default() };
    let v = grpc::call(&addr.to_string(), SAY, "again", &with_token);
    assert_eq!((v["code"].as_str(), v["reply"].as_str()), (Some("OK"), Some("echo:again")), "{v}");
    assert_eq!(v["trailers"]["x-seen-authorization"], "Bearer t0k", "{v}");
}

#[test]
fn an_unknown_method_is_unimplemented_and_a_stopped_server_unavailable() {
    python();
    let (server, addr) = grpc::server();
    let v = grpc::call(&addr.to_string(), "/other.Service/Call", "hi", &CallOpts::default());
    assert_eq!((v["code"].as_str(), v["code_number"].as_u64()), (Some("UNIMPLEMENTED"), Some(12)), "{v}");
    assert_eq!(v["reply"], serde_json::Value::Null, "{v}");
    server.kill9();
    let v = grpc::call(&addr.to_string(), SAY, "hi", &CallOpts::default());
    assert_eq!((v["code"].as_str(), v["code_number"].as_u64()), (Some("UNAVAILABLE"), Some(14)), "{v}");
}

#[test]
fn a_tls_call_needs_the_ca_and_a_name_the_certificate_holds() {
    python();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("grpc test CA");
    let ca_file = ca.write(dir.path(), "ca");
    let (cert, key) = ca.issue(&["api.localhost"]).write(dir.path(), "api");
    let (_server, addr) = grpc::server_tls(&cert, &key);
    let target = addr.to_string();
    let opts = |ca: &std::path::Path, authority: &str| CallOpts {
        ca: Some(ca.to_path_buf()),
        authority: Some(authority.into()),
        token: Some("tls".into()),
    };

    let v = grpc::call(&target, SAY, "hi", &opts(&ca_file, "api.localhost"));
    assert_eq!((v["code"].as_str(), v["reply"].as_str()), (Some("OK"), Some("echo:hi")), "{v}");
    assert_eq!(v["trailers"]["x-seen-authorization"], "Bearer tls", "{v}");
    let v = grpc::call(&target, SAY, "hi", &opts(&ca_file, "other.localhost"));
    assert_eq!(v["code"], "UNAVAILABLE", "a name the certificate does not hold: {v}");
    let stranger = Ca::new("another CA").write(dir.path(), "stranger");
    let v = grpc::call(&target, SAY, "hi", &opts(&stranger, "api.localhost"));
    assert_eq!(v["code"], "UNAVAILABLE", "a CA that did not sign it: {v}");
    let v = grpc::call(&target, SAY, "hi", &CallOpts::default());
    assert_ne!(v["code"], "OK", "plaintext to a TLS port: {v}");
}

#[test]
fn call_py_fails_only_on_bad_usage() {
    let script = grpc::scripts_dir().join("call.py");
    let out = Command::new(python()).arg(&script).args(["--target", "127.0.0.1:1"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty());
    let out = Command::new(python())
        .arg(&script)
        .args(["--target", "127.0.0.1:1", "--method", SAY, "--message", "m", "--ca", "/nonexistent.pem"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}
