//! Bearer tokens signed with the demo keys (RS256, ES256, EdDSA) verify against the example
//! bundle's trust roots, and every kind of bad token is refused.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use policy_bundles::jwt::{JwtError, TrustRoots};
use policy_bundles::{Bundle, Limits, Snapshot};
use serde_json::{json, Value};

const ISSUER: &str = "https://id.example.test";
const AUDIENCE: &str = "orders-api";

fn keys_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../test-support/keys")
}

fn example() -> Bundle {
    Bundle::from_path(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/api-gateway"), &Limits::default())
        .unwrap()
}

fn trust_roots() -> TrustRoots {
    Snapshot::compile(&example()).unwrap().jwt.expect("the example bundle trusts an issuer")
}

/// (alg, kid, private key) for each demo key.
fn demo_keys() -> Vec<(Algorithm, &'static str, EncodingKey)> {
    let pem = |f: &str| std::fs::read(keys_dir().join(f)).unwrap();
    vec![
        (Algorithm::RS256, "demo-rs256", EncodingKey::from_rsa_pem(&pem("demo-rs256.pem")).unwrap()),
        (Algorithm::ES256, "demo-es256", EncodingKey::from_ec_pem(&pem("demo-es256.pem")).unwrap()),
        (Algorithm::EdDSA, "demo-ed25519", EncodingKey::from_ed_pem(&pem("demo-ed25519.pem")).unwrap()),
    ]
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn claims() -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "roles": ["reader"],
        "iat": now(),
        "nbf": now() - 10,
        "exp": now() + 600,
    })
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, key).unwrap()
}

fn with_claim(key: &str, value: Value) -> Value {
    let mut c = claims();
    c[key] = value;
    c
}

fn assert_invalid(result: Result<policy_bundles::jwt::Verified, JwtError>, needle: &str, what: &str) {
    match result {
        Err(JwtError::Invalid(m)) => assert!(m.contains(needle), "{what}: expected `{needle}` in `{m}`"),
        other => panic!("{what}: expected Invalid({needle}), got {other:?}"),
    }
}

#[test]
fn the_example_bundle_embeds_the_demo_jwks() {
    let bundle = example();
    let jwt = bundle.settings.jwt.as_ref().unwrap();
    assert_eq!(jwt.issuers.len(), 1);
    assert_eq!(jwt.issuers[0].issuer, ISSUER);
    assert_eq!(jwt.issuers[0].audiences, [AUDIENCE]);
    let demo: Value = serde_json::from_slice(&std::fs::read(keys_dir().join("demo-jwks.json")).unwrap()).unwrap();
    let embedded = serde_json::to_value(&jwt.issuers[0].jwks).unwrap();
    let demo_set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(demo).unwrap();
    assert_eq!(embedded, serde_json::to_value(&demo_set).unwrap());
}

#[test]
fn tokens_signed_with_each_demo_key_verify() {
    let roots = trust_roots();
    for (alg, kid, key) in demo_keys() {
        let c = claims();
        let v = roots.verify(&sign(alg, Some(kid), &key, &c)).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(v.issuer, ISSUER);
        assert_eq!(v.claims["sub"], "alice", "{alg:?}");
        assert_eq!(v.claims["roles"], json!(["reader"]), "{alg:?}");
        assert_eq!(v.expires_at, c["exp"].as_u64().unwrap(), "{alg:?}");
        // Without a `kid`, every key of the header's algorithm is tried.
        roots.verify(&sign(alg, None, &key, &c)).unwrap_or_else(|e| panic!("{alg:?} without kid: {e}"));
    }
}

#[test]
fn expired_tokens_are_refused() {
    let roots = trust_roots();
    for (alg, kid, key) in demo_keys() {
        let t = sign(alg, Some(kid), &key, &with_claim("exp", json!(now() - 3600)));
        assert_invalid(roots.verify(&t), "ExpiredSignature", &format!("{alg:?}"));
    }
}

#[test]
fn expiry_within_the_leeway_is_accepted_and_past_it_refused() {
    let roots = trust_roots();
    let (alg, kid, key) = demo_keys().remove(1);
    roots.verify(&sign(alg, Some(kid), &key, &with_claim("exp", json!(now() - 5)))).unwrap();
    assert_invalid(
        roots.verify(&sign(alg, Some(kid), &key, &with_claim("exp", json!(now() - 120)))),
        "ExpiredSignature",
        "past the 30s leeway",
    );
}

#[test]
fn tokens_without_an_expiry_are_refused() {
    let roots = trust_roots();
    let (alg, kid, key) = demo_keys().remove(0);
    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    match roots.verify(&sign(alg, Some(kid), &key, &c)) {
        Err(JwtError::Invalid(m)) => assert!(m.contains("exp"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn not_yet_valid_tokens_are_refused() {
    let roots = trust_roots();
    for (alg, kid, key) in demo_keys() {
        let t = sign(alg, Some(kid), &key, &with_claim("nbf", json!(now() + 3600)));
        assert_invalid(roots.verify(&t), "ImmatureSignature", &format!("{alg:?}"));
    }
}

#[test]
fn tokens_for_another_audience_are_refused() {
    let roots = trust_roots();
    for (alg, kid, key) in demo_keys() {
        let t = sign(alg, Some(kid), &key, &with_claim("aud", json!("billing-api")));
        assert_invalid(roots.verify(&t), "InvalidAudience", &format!("{alg:?}"));
    }
    let (alg, kid, key) = demo_keys().remove(0);
    let mut c = claims();
    c.as_object_mut().unwrap().remove("aud");
    assert!(roots.verify(&sign(alg, Some(kid), &key, &c)).is_err(), "a token without `aud` must be refused");
}

#[test]
fn tokens_from_an_unknown_issuer_are_refused() {
    let roots = trust_roots();
    for (alg, kid, key) in demo_keys() {
        let t = sign(alg, Some(kid), &key, &with_claim("iss", json!("https://evil.example")));
        assert_eq!(roots.verify(&t).unwrap_err(), JwtError::UnknownIssuer, "{alg:?}");
    }
    let (alg, kid, key) = demo_keys().remove(0);
    let mut c = claims();
    c.as_object_mut().unwrap().remove("iss");
    assert_eq!(roots.verify(&sign(alg, Some(kid), &key, &c)).unwrap_err(), JwtError::UnknownIssuer);
}

#[test]
fn tokens_naming_an_unknown_key_are_refused() {
    let roots = trust_roots();
    for (alg, _, key) in demo_keys() {
        let t = sign(alg, Some("rotated-away"), &key, &claims());
        assert_eq!(roots.verify(&t).unwrap_err(), JwtError::UnknownKey, "{alg:?}");
    }
    // A kid of a key of another algorithm: the RSA key signs, the header names the EC key.
    let (_, _, rsa) = demo_keys().remove(0);
    let t = sign(Algorithm::RS256, Some("demo-es256"), &rsa, &claims());
    assert_eq!(roots.verify(&t).unwrap_err(), JwtError::UnknownKey);
}

#[test]
fn tampered_tokens_are_refused() {
    let roots = trust_roots();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    for (alg, kid, key) in demo_keys() {
        let t = sign(alg, Some(kid), &key, &claims());
        let parts: Vec<&str> = t.split('.').collect();
        // The payload rewritten (a reader promoting herself), the signature kept.
        let forged = b64.encode(serde_json::to_vec(&with_claim("roles", json!(["admin"]))).unwrap());
        let t2 = format!("{}.{forged}.{}", parts[0], parts[2]);
        assert_invalid(roots.verify(&t2), "InvalidSignature", &format!("{alg:?} payload"));
        // One signature byte flipped.
        let mut sig = b64.decode(parts[2]).unwrap();
        sig[5] ^= 0x01;
        let t3 = format!("{}.{}.{}", parts[0], parts[1], b64.encode(&sig));
        assert!(roots.verify(&t3).is_err(), "{alg:?}: a flipped signature bit must be refused");
        // The signature removed.
        assert!(roots.verify(&format!("{}.{}.", parts[0], parts[1])).is_err(), "{alg:?}: no signature");
    }
}

#[test]
fn unsigned_and_symmetric_tokens_are_refused() {
    let roots = trust_roots();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = b64.encode(serde_json::to_vec(&claims()).unwrap());
    let none = format!("{}.{payload}.", b64.encode(br#"{"alg":"none","typ":"JWT"}"#));
    assert!(roots.verify(&none).is_err());
    // HS256 keyed with the public JWKS text: the classic algorithm-confusion forgery.
    let jwks = std::fs::read(keys_dir().join("demo-jwks.json")).unwrap();
    let t = sign(Algorithm::HS256, Some("demo-rs256"), &EncodingKey::from_secret(&jwks), &claims());
    assert_eq!(roots.verify(&t).unwrap_err(), JwtError::UnknownKey);
    assert_eq!(roots.verify("not a token").unwrap_err(), JwtError::Malformed);
}

#[test]
fn verified_tokens_are_cached_per_trust_roots_and_refused_ones_are_not() {
    let roots = trust_roots();
    let (alg, kid, key) = demo_keys().remove(0);
    let token = sign(alg, Some(kid), &key, &claims());
    let first = roots.verify_cached(&token).unwrap();
    let second = roots.verify_cached(&token).unwrap();
    assert!(std::sync::Arc::ptr_eq(&first, &second), "the second lookup must be a cache hit");
    // Another bundle's trust roots share nothing.
    let other = trust_roots();
    assert!(!std::sync::Arc::ptr_eq(&first, &other.verify_cached(&token).unwrap()));
    // A refused token stays refused (nothing cached for it).
    let bad = sign(alg, Some(kid), &key, &with_claim("aud", json!("billing-api")));
    assert!(roots.verify_cached(&bad).is_err());
    assert!(roots.verify_cached(&bad).is_err());
}

#[test]
fn a_bundle_with_the_same_trust_settings_keeps_the_verified_tokens() {
    let (alg, kid, key) = demo_keys().remove(1);
    let token = sign(alg, Some(kid), &key, &claims());
    let old = trust_roots();
    old.verify_cached(&token).expect("verifies");
    assert_eq!(old.cached_tokens(), 1);

    // Another revision, same jwt settings: the cache carries over.
    let mut same = trust_roots();
    assert_eq!(same.cached_tokens(), 0);
    assert!(same.inherit_cache(&old));
    assert_eq!(same.cached_tokens(), 1);
    assert!(same.verify_cached(&token).is_ok());

    // One key fewer (say, revoked): a fresh cache, and the token is checked against the new keys.
    let mut files = policy_bundles::archive::read_dir(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/api-gateway"),
        &Limits::default(),
    )
    .unwrap();
    let data = String::from_utf8(files["gateway/data.yaml"].clone()).unwrap();
    let es256 = data.find("- kty: \"EC\"").expect("the ES256 key");
    let next = data[es256 + 1..].find("- kty:").map(|i| es256 + 1 + i).expect("a key after it");
    let without = format!("{}{}", &data[..es256], &data[next..]);
    files.insert("gateway/data.yaml".into(), without.into_bytes());
    let mut revoked = Snapshot::compile(&Bundle::from_files(files).unwrap()).unwrap().jwt.unwrap();
    assert!(!revoked.inherit_cache(&old));
    assert_eq!(revoked.cached_tokens(), 0);
    assert!(revoked.verify_cached(&token).is_err(), "the revoked key's token must not come from the old cache");
}
