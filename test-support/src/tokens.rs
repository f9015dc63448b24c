//! Demo JWTs signed with the demo keys in `test-support/keys`, which the example bundle's
//! JWKS trusts.

use std::time::{SystemTime, UNIX_EPOCH};

/// The example bundle's issuer and audience.
pub const ISSUER: &str = "https://id.example.test";
pub const AUDIENCE: &str = "orders-api";

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

/// Signs `claims` with a demo key (`es256`, `rs256` or `ed25519`), `kid` = `demo-<key>`.
pub fn token_with(key: &str, claims: serde_json::Value) -> String {
    let pem = std::fs::read(crate::paths::repo_root().join(format!("test-support/keys/demo-{key}.pem")))
        .unwrap_or_else(|e| panic!("demo key {key}: {e}"));
    let (alg, enc) = match key {
        "es256" => (jsonwebtoken::Algorithm::ES256, jsonwebtoken::EncodingKey::from_ec_pem(&pem)),
        "rs256" => (jsonwebtoken::Algorithm::RS256, jsonwebtoken::EncodingKey::from_rsa_pem(&pem)),
        "ed25519" => (jsonwebtoken::Algorithm::EdDSA, jsonwebtoken::EncodingKey::from_ed_pem(&pem)),
        other => panic!("no demo key {other}: es256, rs256 or ed25519"),
    };
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = Some(format!("demo-{key}"));
    jsonwebtoken::encode(&header, &claims, &enc.expect("demo key PEM")).expect("sign")
}

/// A valid ES256 token for `sub` with `roles`, good for ten minutes.
pub fn token(sub: &str, roles: &[&str]) -> String {
    token_with(
        "es256",
        serde_json::json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "roles": roles, "iat": now(), "exp": now() + 600}),
    )
}
