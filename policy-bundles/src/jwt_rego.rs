//! OPA's `io.jwt` builtins, which regorus does not have, added to every engine as extensions
//! ([`register`]): `io.jwt.decode`, `io.jwt.decode_verify` and the `io.jwt.verify_*` family,
//! with OPA's semantics. Pure functions: keys come from the arguments (a secret, a PEM key or
//! certificate, or a JWK / JWKS as JSON text), never from the network or the disk.
//!
//! Extensions run on regorus' interpreter only (its VM compiles builtins it knows), so a rule
//! that calls one is evaluated by the interpreter. Two things keep them cheap: keys parsed from
//! a `cert` are kept per thread by the text they came from, and so is the outcome of each
//! signature check (the token's text, the key text and the algorithm decide it). Neither cache
//! changes an answer: both are functions of their key.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{anyhow, bail};
use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};
use regorus::{Engine, Value};
use serde_json::Value as Json;

/// The builtins added, with their number of arguments.
pub const BUILTINS: &[(&str, u8)] = &[
    ("io.jwt.decode", 1),
    ("io.jwt.decode_verify", 2),
    ("io.jwt.verify_hs256", 2),
    ("io.jwt.verify_hs384", 2),
    ("io.jwt.verify_hs512", 2),
    ("io.jwt.verify_rs256", 2),
    ("io.jwt.verify_rs384", 2),
    ("io.jwt.verify_rs512", 2),
    ("io.jwt.verify_ps256", 2),
    ("io.jwt.verify_ps384", 2),
    ("io.jwt.verify_ps512", 2),
    ("io.jwt.verify_es256", 2),
    ("io.jwt.verify_es384", 2),
    ("io.jwt.verify_es512", 2),
    ("io.jwt.verify_eddsa", 2),
];

/// Adds every [`BUILTINS`] entry to `engine`.
pub fn register(engine: &mut Engine) -> anyhow::Result<()> {
    engine.add_extension("io.jwt.decode".into(), 1, Box::new(|args: Vec<Value>| decode(&text(&args, 0)?)))?;
    engine.add_extension(
        "io.jwt.decode_verify".into(),
        2,
        Box::new(|args: Vec<Value>| decode_verify(&text(&args, 0)?, args.get(1).unwrap_or(&Value::Undefined))),
    )?;
    for (name, _) in BUILTINS.iter().filter(|(n, _)| n.starts_with("io.jwt.verify_")) {
        let alg = Alg::of_builtin(name).ok_or_else(|| anyhow!("no algorithm for {name}"))?;
        engine.add_extension(
            (*name).to_owned(),
            2,
            Box::new(move |args: Vec<Value>| {
                let jwt = text(&args, 0)?;
                let token = Token::parse(&jwt)?;
                Ok(Value::from(verify(&token, alg, &text(&args, 1)?)?))
            }),
        )?;
    }
    Ok(())
}

fn text(args: &[Value], i: usize) -> anyhow::Result<String> {
    match args.get(i) {
        Some(Value::String(s)) => Ok(s.to_string()),
        Some(other) => bail!("operand {} must be a string, got {other}", i + 1),
        None => bail!("operand {} is missing", i + 1),
    }
}

/// The algorithms of JWS (RFC 7518) that OPA verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Alg {
    Hs256,
    Hs384,
    Hs512,
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    Es512,
    EdDsa,
}

impl Alg {
    fn of_builtin(name: &str) -> Option<Alg> {
        Alg::of_header(&name.strip_prefix("io.jwt.verify_")?.to_ascii_uppercase().replace("EDDSA", "EdDSA"))
    }

    /// The header's `alg`; `none` and anything unknown are `None`.
    fn of_header(alg: &str) -> Option<Alg> {
        Some(match alg {
            "HS256" => Alg::Hs256,
            "HS384" => Alg::Hs384,
            "HS512" => Alg::Hs512,
            "RS256" => Alg::Rs256,
            "RS384" => Alg::Rs384,
            "RS512" => Alg::Rs512,
            "PS256" => Alg::Ps256,
            "PS384" => Alg::Ps384,
            "PS512" => Alg::Ps512,
            "ES256" => Alg::Es256,
            "ES384" => Alg::Es384,
            "ES512" => Alg::Es512,
            "EdDSA" => Alg::EdDsa,
            _ => return None,
        })
    }

    fn symmetric(self) -> bool {
        matches!(self, Alg::Hs256 | Alg::Hs384 | Alg::Hs512)
    }

    /// jsonwebtoken's name for it; ES512 is verified here with `p521`.
    fn jwt(self) -> Option<Algorithm> {
        Some(match self {
            Alg::Hs256 => Algorithm::HS256,
            Alg::Hs384 => Algorithm::HS384,
            Alg::Hs512 => Algorithm::HS512,
            Alg::Rs256 => Algorithm::RS256,
            Alg::Rs384 => Algorithm::RS384,
            Alg::Rs512 => Algorithm::RS512,
            Alg::Ps256 => Algorithm::PS256,
            Alg::Ps384 => Algorithm::PS384,
            Alg::Ps512 => Algorithm::PS512,
            Alg::Es256 => Algorithm::ES256,
            Alg::Es384 => Algorithm::ES384,
            Alg::EdDsa => Algorithm::EdDSA,
            Alg::Es512 => return None,
        })
    }

    /// Whether a JWK's own `alg` (when it has one) allows this algorithm.
    fn named(self, jwk_alg: &str) -> bool {
        Alg::of_header(jwk_alg) == Some(self)
    }
}

/// A compact JWS split and its header and payload decoded.
struct Token<'a> {
    text: &'a str,
    /// `header.payload`: what the signature signs.
    signing_input: &'a str,
    signature: &'a str,
    header: Json,
    payload: Json,
}

impl<'a> Token<'a> {
    fn parse(text: &'a str) -> anyhow::Result<Token<'a>> {
        let mut parts = text.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            bail!("encoded JWT had no period separators");
        };
        let json = |part: &str, what: &str| -> anyhow::Result<Json> {
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part.trim_end_matches('='))
                .map_err(|e| anyhow!("JWT {what} had invalid encoding: {e}"))?;
            let v: Json = serde_json::from_slice(&bytes).map_err(|e| anyhow!("JWT {what} is not JSON: {e}"))?;
            if !v.is_object() {
                bail!("JWT {what} is not a JSON object");
            }
            Ok(v)
        };
        let header = json(h, "header")?;
        let payload = json(p, "payload")?;
        Ok(Token { text, signing_input: &text[..h.len() + 1 + p.len()], signature: s, header, payload })
    }

    fn alg(&self) -> Option<Alg> {
        self.header.get("alg").and_then(Json::as_str).and_then(Alg::of_header)
    }

    fn kid(&self) -> Option<&str> {
        self.header.get("kid").and_then(Json::as_str)
    }
}

/// `io.jwt.decode(jwt)`: `[header, payload, signature as hex]`, nothing verified.
fn decode(jwt: &str) -> anyhow::Result<Value> {
    let t = Token::parse(jwt)?;
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t.signature.trim_end_matches('='))
        .map_err(|e| anyhow!("JWT signature had invalid encoding: {e}"))?;
    Ok(Value::from(vec![Value::from(t.header), Value::from(t.payload), Value::from(hex::encode(sig))]))
}

/// One verification key, with what a JWK said about it.
enum Key {
    Jwt { key: DecodingKey, kid: Option<String>, alg: Option<String> },
    P521 { key: p521::ecdsa::VerifyingKey, kid: Option<String> },
}

impl Key {
    fn kid(&self) -> Option<&str> {
        match self {
            Key::Jwt { kid, .. } | Key::P521 { kid, .. } => kid.as_deref(),
        }
    }

    /// Whether this key may check a signature made with `alg`: a JWK that names its `alg` is
    /// used for that algorithm only. (A key of another family simply fails to verify.)
    fn fits(&self, alg: Alg) -> bool {
        match self {
            Key::Jwt { alg: Some(a), .. } => alg.named(a),
            Key::Jwt { .. } => alg != Alg::Es512,
            Key::P521 { .. } => alg == Alg::Es512,
        }
    }
}

/// Keys parsed from a `cert` (or `secret`) argument, by its text.
type KeyCache = HashMap<(Arc<str>, bool), Arc<Vec<Key>>>;
/// Signature checks done: (token text, key text, algorithm) → verified.
type CheckCache = HashMap<(String, Arc<str>, Alg), bool>;

thread_local! {
    static KEYS: RefCell<KeyCache> = RefCell::new(HashMap::new());
    static CHECKED: RefCell<CheckCache> = RefCell::new(HashMap::new());
}

/// Bound of each per-thread cache, in entries; a full cache is emptied.
const CACHE_ENTRIES: usize = 1024;

/// The keys a `cert` (PEM key, PEM certificate, JWK or JWKS) or `secret` names.
fn keys(text: &Arc<str>, secret: bool) -> anyhow::Result<Arc<Vec<Key>>> {
    let k = (text.clone(), secret);
    if let Some(found) = KEYS.with(|c| c.borrow().get(&k).cloned()) {
        return Ok(found);
    }
    let parsed = Arc::new(parse_keys(text, secret)?);
    KEYS.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= CACHE_ENTRIES {
            c.clear();
        }
        c.insert(k, parsed.clone());
    });
    Ok(parsed)
}

fn parse_keys(text: &str, secret: bool) -> anyhow::Result<Vec<Key>> {
    if secret {
        return Ok(vec![Key::Jwt { key: DecodingKey::from_secret(text.as_bytes()), kid: None, alg: None }]);
    }
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        let v: Json = serde_json::from_str(text).map_err(|e| anyhow!("failed to parse a JWK key (set): {e}"))?;
        let jwks: Vec<Json> = match v.get("keys") {
            Some(Json::Array(keys)) => keys.clone(),
            Some(_) => bail!("failed to parse a JWK key set: `keys` is not a list"),
            None => vec![v],
        };
        let mut out = Vec::new();
        for j in jwks {
            // A key this build cannot use (another `kty`, say) is skipped, as in a JWKS that
            // lists keys for other consumers.
            if let Some(k) = jwk_key(&j) {
                out.push(k);
            }
        }
        if out.is_empty() {
            bail!("the JWK key set holds no key that can verify a signature");
        }
        return Ok(out);
    }
    if trimmed.starts_with("-----BEGIN") {
        let pem = trimmed.as_bytes();
        let mut out = Vec::new();
        for key in [DecodingKey::from_rsa_pem(pem), DecodingKey::from_ec_pem(pem), DecodingKey::from_ed_pem(pem)]
            .into_iter()
            .flatten()
        {
            out.push(Key::Jwt { key, kid: None, alg: None });
        }
        if let Ok(pk) = <p521::PublicKey as p521::pkcs8::DecodePublicKey>::from_public_key_pem(trimmed) {
            use p521::elliptic_curve::sec1::ToEncodedPoint as _;
            if let Ok(key) = p521::ecdsa::VerifyingKey::from_sec1_bytes(pk.to_encoded_point(false).as_bytes()) {
                out.push(Key::P521 { key, kid: None });
            }
        }
        if out.is_empty() {
            bail!("failed to parse a PEM public key or certificate");
        }
        return Ok(out);
    }
    bail!("the certificate is neither a PEM public key or certificate nor a JWK (set)")
}

fn jwk_key(j: &Json) -> Option<Key> {
    let kid = j.get("kid").and_then(Json::as_str).map(str::to_owned);
    let alg = j.get("alg").and_then(Json::as_str).map(str::to_owned);
    if j.get("kty").and_then(Json::as_str) == Some("EC") && j.get("crv").and_then(Json::as_str) == Some("P-521") {
        let coord = |k: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(j.get(k)?.as_str()?.trim_end_matches('=')).ok()
        };
        let (x, y) = (coord("x")?, coord("y")?);
        if x.len() != 66 || y.len() != 66 {
            return None;
        }
        let mut point = vec![0x04];
        point.extend_from_slice(&x);
        point.extend_from_slice(&y);
        let key = p521::ecdsa::VerifyingKey::from_sec1_bytes(&point).ok()?;
        return Some(Key::P521 { key, kid });
    }
    let jwk: Jwk = serde_json::from_value(j.clone()).ok()?;
    let usable = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(p) => matches!(p.curve, EllipticCurve::P256 | EllipticCurve::P384),
        AlgorithmParameters::OctetKeyPair(p) => p.curve == EllipticCurve::Ed25519,
        AlgorithmParameters::RSA(_) | AlgorithmParameters::OctetKey(_) => true,
    };
    if !usable {
        return None;
    }
    Some(Key::Jwt { key: DecodingKey::from_jwk(&jwk).ok()?, kid, alg })
}

/// Whether `token`'s signature verifies with `alg` under one of the keys `key_text` names.
/// Malformed keys are an error (as in OPA); a bad signature is `false`.
fn verify(token: &Token<'_>, alg: Alg, key_text: &str) -> anyhow::Result<bool> {
    let key_text: Arc<str> = Arc::from(key_text);
    let cache_key = (token.text.to_owned(), key_text.clone(), alg);
    if let Some(done) = CHECKED.with(|c| c.borrow().get(&cache_key).copied()) {
        return Ok(done);
    }
    let keys = keys(&key_text, alg.symmetric())?;
    let kid = token.kid();
    // A token naming a key is checked with that key where the set names its keys.
    let by_kid = kid.is_some() && keys.iter().any(|k| k.kid() == kid);
    let ok = keys.iter().filter(|k| !by_kid || k.kid() == kid).filter(|k| k.fits(alg)).any(|k| check(token, alg, k));
    CHECKED.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= CACHE_ENTRIES {
            c.clear();
        }
        c.insert(cache_key, ok);
    });
    Ok(ok)
}

fn check(token: &Token<'_>, alg: Alg, key: &Key) -> bool {
    match (key, alg.jwt()) {
        (Key::Jwt { key, .. }, Some(a)) => {
            jsonwebtoken::crypto::verify(token.signature, token.signing_input.as_bytes(), key, a).unwrap_or(false)
        }
        (Key::P521 { key, .. }, None) => {
            use p521::ecdsa::signature::Verifier as _;
            let Ok(sig) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token.signature) else {
                return false;
            };
            let Ok(sig) = p521::ecdsa::Signature::from_slice(&sig) else { return false };
            key.verify(token.signing_input.as_bytes(), &sig).is_ok()
        }
        _ => false,
    }
}

/// A number of any representation as `f64`.
fn number(v: &Value) -> Option<f64> {
    v.as_u64().map(|n| n as f64).or_else(|_| v.as_i64().map(|n| n as f64)).or_else(|_| v.as_f64()).ok()
}

/// `io.jwt.decode_verify(jwt, constraints)`: `[true, header, payload]` when the signature
/// verifies with `cert` (asymmetric algorithms) or `secret` (HMAC) and the token meets `alg`,
/// `iss`, `aud` and the time (`time` in nanoseconds, default now) against `exp` and `nbf`;
/// `[false, {}, {}]` otherwise. Constraints that cannot be read are an error.
fn decode_verify(jwt: &str, constraints: &Value) -> anyhow::Result<Value> {
    let c = constraints.as_object().map_err(|_| anyhow!("operand 2 must be an object of constraints"))?;
    let (mut cert, mut secret, mut alg, mut iss, mut aud, mut time) = (None, None, None, None, None, None);
    for (k, v) in c.iter() {
        let name = k.as_string().map_err(|_| anyhow!("constraint keys must be strings"))?;
        let s = || v.as_string().map(|s| s.to_string()).map_err(|_| anyhow!("constraint `{name}` must be a string"));
        match name.as_ref() {
            "cert" => cert = Some(s()?),
            "secret" => secret = Some(s()?),
            "alg" => alg = Some(s()?),
            "iss" => iss = Some(s()?),
            "aud" => aud = Some(s()?),
            "time" => time = Some(number(v).ok_or_else(|| anyhow!("constraint `time` must be a number"))?),
            other => bail!("unknown token validation constraint: {other}"),
        }
    }
    let key = match (cert, secret) {
        (Some(c), None) => (c, false),
        (None, Some(s)) => (s, true),
        _ => bail!("exactly one of `cert` and `secret` must be given"),
    };
    let invalid = || Ok(Value::from(vec![Value::from(false), Value::new_object(), Value::new_object()]));
    let Ok(token) = Token::parse(jwt) else { return invalid() };
    let Some(token_alg) = token.alg() else { return invalid() };
    // A `cert` verifies asymmetric signatures only and a `secret` HMACs only: an HS256 token
    // "signed" with a public key's text never passes as signed by that key.
    if token_alg.symmetric() != key.1 || alg.as_deref().is_some_and(|a| Alg::of_header(a) != Some(token_alg)) {
        return invalid();
    }
    if !verify(&token, token_alg, &key.0)? {
        return invalid();
    }
    let claims = &token.payload;
    if let Some(want) = &iss {
        if claims.get("iss").and_then(Json::as_str) != Some(want.as_str()) {
            return invalid();
        }
    }
    let audiences: Option<Vec<&str>> = match claims.get("aud") {
        None => None,
        Some(Json::String(a)) => Some(vec![a.as_str()]),
        Some(Json::Array(a)) => Some(a.iter().filter_map(Json::as_str).collect()),
        Some(_) => return invalid(),
    };
    match (audiences, &aud) {
        (None, None) => {}
        (Some(list), Some(want)) if list.contains(&want.as_str()) => {}
        _ => return invalid(),
    }
    let now = match time {
        Some(ns) => ns / 1e9,
        None => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
    };
    let number = |k: &str| claims.get(k).map(|v| v.as_f64());
    match number("exp") {
        Some(Some(exp)) if now >= exp => return invalid(),
        Some(None) => return invalid(),
        _ => {}
    }
    match number("nbf") {
        Some(Some(nbf)) if now < nbf => return invalid(),
        Some(None) => return invalid(),
        _ => {}
    }
    Ok(Value::from(vec![Value::from(true), Value::from(token.header.clone()), Value::from(token.payload.clone())]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn key_file(name: &str) -> String {
        std::fs::read_to_string(format!("{}/../test-support/keys/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Json) -> String {
        let mut h = Header::new(alg);
        h.kid = kid.map(str::to_owned);
        encode(&h, claims, key).unwrap()
    }

    fn claims() -> Json {
        json!({"iss": "https://id", "aud": "api", "sub": "alice", "nbf": 1000, "exp": 2000})
    }

    fn tamper(t: &str) -> String {
        let (head, sig) = t.rsplit_once('.').unwrap();
        let mut s: Vec<char> = sig.chars().collect();
        s[3] = if s[3] == 'A' { 'B' } else { 'A' };
        format!("{head}.{}", s.into_iter().collect::<String>())
    }

    fn verify_text(token: &str, alg: &str, key: &str) -> bool {
        verify(&Token::parse(token).unwrap(), Alg::of_header(alg).unwrap(), key).unwrap()
    }

    /// (algorithm, signing key, the public key as PEM).
    fn asymmetric() -> Vec<(Algorithm, EncodingKey, String)> {
        let rsa = key_file("demo-rs256.pem");
        let ec = key_file("demo-es256.pem");
        let ed = key_file("demo-ed25519.pem");
        let rsa_key = || EncodingKey::from_rsa_pem(rsa.as_bytes()).unwrap();
        vec![
            (Algorithm::RS256, rsa_key(), key_file("demo-rs256.pub.pem")),
            (Algorithm::RS384, rsa_key(), key_file("demo-rs256.pub.pem")),
            (Algorithm::RS512, rsa_key(), key_file("demo-rs256.pub.pem")),
            (Algorithm::PS256, rsa_key(), key_file("demo-rs256.pub.pem")),
            (Algorithm::PS384, rsa_key(), key_file("demo-rs256.pub.pem")),
            (Algorithm::PS512, rsa_key(), key_file("demo-rs256.pub.pem")),
            (Algorithm::ES256, EncodingKey::from_ec_pem(ec.as_bytes()).unwrap(), key_file("demo-es256.pub.pem")),
            (Algorithm::EdDSA, EncodingKey::from_ed_pem(ed.as_bytes()).unwrap(), key_file("demo-ed25519.pub.pem")),
        ]
    }

    #[test]
    fn every_algorithm_verifies_and_a_tampered_signature_does_not() {
        for (alg, key, public) in asymmetric() {
            let t = sign(alg, &key, None, &claims());
            let name = format!("{alg:?}").replace("EdDSA", "EdDSA");
            assert!(verify_text(&t, &name, &public), "{name}");
            assert!(!verify_text(&tamper(&t), &name, &public), "{name} tampered");
        }
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let t = sign(alg, &EncodingKey::from_secret(b"s3cret"), None, &claims());
            assert!(verify_text(&t, &format!("{alg:?}"), "s3cret"));
            assert!(!verify_text(&t, &format!("{alg:?}"), "other"));
            assert!(!verify_text(&tamper(&t), &format!("{alg:?}"), "s3cret"));
        }
    }

    #[test]
    fn es384_and_es512_verify_with_their_curves() {
        // A P-384 key generated for this test (openssl ecparam -name secp384r1).
        let p384 = "-----BEGIN PRIVATE KEY-----
MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDDzErW4HKIlX5sEbC0k
3/HmnnWrXRQUnodHNSc6RRrzPPOQBulTIxiSNhVLqlyFmKqhZANiAAQ3X4sw2xQS
Mm/lItFi0DOOUhrW2slnGIlHDC4Rn8MB88RGkdAXYELj6Rin2T3seZBQ8Dj3Wm/4
Rdj2M1twq/kR83aM7G8GzCpmU8zftlQNDiKJxd4wJzIBU2SG9HjwsDk=
-----END PRIVATE KEY-----
";
        let p384_pub = "-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEN1+LMNsUEjJv5SLRYtAzjlIa1trJZxiJ
RwwuEZ/DAfPERpHQF2BC4+kYp9k97HmQUPA491pv+EXY9jNbcKv5EfN2jOxvBswq
ZlPM37ZUDQ4iicXeMCcyAVNkhvR48LA5
-----END PUBLIC KEY-----
";
        let t = sign(Algorithm::ES384, &EncodingKey::from_ec_pem(p384.as_bytes()).unwrap(), None, &claims());
        assert!(verify_text(&t, "ES384", p384_pub));
        assert!(!verify_text(&tamper(&t), "ES384", p384_pub));
        // ES512 (P-521), signed here with p521 itself.
        use p521::ecdsa::signature::Signer as _;
        let sk = p521::ecdsa::SigningKey::from_slice(&[1u8; 66]).unwrap();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let input = format!("{}.{}", b64(br#"{"alg":"ES512","kid":"p521"}"#), b64(claims().to_string().as_bytes()));
        let sig: p521::ecdsa::Signature = sk.sign(input.as_bytes());
        let token = format!("{input}.{}", b64(&sig.to_bytes()));
        let point = p521::ecdsa::VerifyingKey::from(&sk).to_encoded_point(false);
        let (x, y) = (point.x().unwrap(), point.y().unwrap());
        let jwk = json!({"kty": "EC", "crv": "P-521", "kid": "p521", "x": b64(x), "y": b64(y)}).to_string();
        assert!(verify_text(&token, "ES512", &jwk));
        assert!(!verify_text(&tamper(&token), "ES512", &jwk));
    }

    #[test]
    fn a_jwks_picks_the_key_by_kid_and_respects_each_keys_alg() {
        let jwks = key_file("demo-jwks.json");
        let ec = EncodingKey::from_ec_pem(key_file("demo-es256.pem").as_bytes()).unwrap();
        let rsa = EncodingKey::from_rsa_pem(key_file("demo-rs256.pem").as_bytes()).unwrap();
        assert!(verify_text(&sign(Algorithm::ES256, &ec, Some("demo-es256"), &claims()), "ES256", &jwks));
        assert!(verify_text(&sign(Algorithm::ES256, &ec, None, &claims()), "ES256", &jwks));
        assert!(verify_text(&sign(Algorithm::RS256, &rsa, Some("demo-rs256"), &claims()), "RS256", &jwks));
        // The RSA key's JWK says RS256: a PS256 signature by the same key is not accepted by it.
        assert!(!verify_text(&sign(Algorithm::PS256, &rsa, Some("demo-rs256"), &claims()), "PS256", &jwks));
        // A kid that names the wrong key: that key is the one tried, and fails.
        assert!(!verify_text(&sign(Algorithm::ES256, &ec, Some("demo-rs256"), &claims()), "ES256", &jwks));
    }

    fn dv(token: &str, constraints: Json) -> anyhow::Result<(bool, Json)> {
        let v = decode_verify(token, &Value::from(constraints))?;
        let payload = serde_json::from_str(&v[2].to_json_str()?)?;
        Ok((v[0] == Value::from(true), payload))
    }

    #[test]
    fn decode_verify_checks_time_issuer_audience_and_algorithm() {
        let jwks = key_file("demo-jwks.json");
        let ec = EncodingKey::from_ec_pem(key_file("demo-es256.pem").as_bytes()).unwrap();
        let t = sign(Algorithm::ES256, &ec, Some("demo-es256"), &claims());
        let at = |secs: u64| json!({"cert": jwks, "iss": "https://id", "aud": "api", "time": secs * 1_000_000_000});
        let (ok, payload) = dv(&t, at(1500)).unwrap();
        assert!(ok);
        assert_eq!(payload["sub"], "alice");
        assert!(!dv(&t, at(2000)).unwrap().0, "expired at exp");
        assert!(!dv(&t, at(999)).unwrap().0, "not yet valid");
        let mut c = at(1500);
        c["iss"] = json!("https://other");
        assert!(!dv(&t, c).unwrap().0, "wrong issuer");
        let mut c = at(1500);
        c["aud"] = json!("other");
        assert!(!dv(&t, c).unwrap().0, "wrong audience");
        let mut c = at(1500);
        c.as_object_mut().unwrap().remove("aud");
        assert!(!dv(&t, c).unwrap().0, "the token has an audience, the constraints none");
        let mut c = at(1500);
        c["alg"] = json!("RS256");
        assert!(!dv(&t, c).unwrap().0, "wrong alg");
        let no_aud = sign(Algorithm::ES256, &ec, None, &json!({"sub": "a"}));
        assert!(!dv(&no_aud, json!({"cert": jwks, "aud": "api"})).unwrap().0, "an audience asked of a token without");
        assert!(dv(&no_aud, json!({"cert": jwks})).unwrap().0, "no exp, no nbf, no aud: valid now");
        let many = sign(Algorithm::ES256, &ec, None, &json!({"aud": ["x", "api"]}));
        assert!(dv(&many, json!({"cert": jwks, "aud": "api"})).unwrap().0);
        assert!(!dv(&tamper(&t), at(1500)).unwrap().0);
        assert_eq!(dv(&t, at(2000)).unwrap().1, json!({}));
    }

    #[test]
    fn decode_verify_refuses_bad_constraints() {
        let t = sign(Algorithm::HS256, &EncodingKey::from_secret(b"k"), None, &claims());
        assert!(decode_verify(&t, &Value::from(json!({"secret": "k", "nope": 1}))).is_err());
        assert!(decode_verify(&t, &Value::from(json!({"secret": "k", "cert": "x"}))).is_err());
        assert!(decode_verify(&t, &Value::from(json!({}))).is_err());
        assert!(decode_verify(&t, &Value::from("k")).is_err());
        assert!(dv(&t, json!({"secret": "k", "aud": "api", "time": 1_500_000_000_000u64})).unwrap().0);
    }

    #[test]
    fn alg_none_and_the_hmac_with_a_public_key_confusion_never_verify() {
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let none = format!("{}.{}.", b64(br#"{"alg":"none"}"#), b64(br#"{"sub":"root"}"#));
        let jwks = key_file("demo-jwks.json");
        assert!(!dv(&none, json!({"cert": jwks})).unwrap().0);
        // HS256 "signed" with the RSA public key's PEM text as the HMAC secret: the classic
        // algorithm confusion. With `cert` only asymmetric algorithms are tried.
        let public = key_file("demo-rs256.pub.pem");
        let forged =
            sign(Algorithm::HS256, &EncodingKey::from_secret(public.as_bytes()), None, &json!({"sub": "root"}));
        assert!(!dv(&forged, json!({"cert": public})).unwrap().0);
        assert!(!verify_text(&forged, "RS256", &public));
    }

    #[test]
    fn hostile_tokens_and_keys_are_errors_or_false_never_panics() {
        let huge = "a".repeat(100_000);
        for t in ["", ".", "..", "a.b.c", "a.b", "a.b.c.d", &huge, &format!("{huge}.{huge}.{huge}")] {
            assert!(decode(t).is_err(), "{}", &t[..t.len().min(20)]);
            assert!(!dv(t, json!({"secret": "k"})).unwrap().0);
        }
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let array_header = format!("{}.{}.x", b64(b"[1]"), b64(b"{}"));
        assert!(decode(&array_header).is_err());
        let t = sign(
            Algorithm::RS256,
            &EncodingKey::from_rsa_pem(key_file("demo-rs256.pem").as_bytes()).unwrap(),
            None,
            &claims(),
        );
        let token = Token::parse(&t).unwrap();
        assert!(verify(&token, Alg::Rs256, "garbage").is_err());
        assert!(verify(&token, Alg::Rs256, "-----BEGIN PUBLIC KEY-----\nzzz\n-----END PUBLIC KEY-----").is_err());
        assert!(verify(&token, Alg::Rs256, r#"{"keys": []}"#).is_err());
        assert!(verify(&token, Alg::Rs256, &huge).is_err());
    }

    #[test]
    fn decode_returns_header_payload_and_signature_hex() {
        let t = sign(Algorithm::HS256, &EncodingKey::from_secret(b"k"), Some("k1"), &claims());
        let v = decode(&t).unwrap();
        assert_eq!(v[0]["kid"], Value::from("k1"));
        assert_eq!(v[1]["sub"], Value::from("alice"));
        assert_eq!(v[2].as_string().unwrap().len(), 64);
    }

    #[test]
    fn rules_call_them_through_regorus() {
        let mut engine = Engine::new();
        register(&mut engine).unwrap();
        let t = sign(Algorithm::HS256, &EncodingKey::from_secret(b"k"), None, &claims());
        engine
            .add_policy(
                "x.rego".into(),
                r#"package x
allow if {
	[valid, _, payload] := io.jwt.decode_verify(input.token, {"secret": "k", "aud": "api", "time": 1500000000000})
	valid
	payload.sub == "alice"
	[_, p, _] := io.jwt.decode(input.token)
	p.iss == "https://id"
	io.jwt.verify_hs256(input.token, "k")
	not io.jwt.verify_hs256(input.token, "other")
}
"#
                .into(),
            )
            .unwrap();
        engine.set_input(Value::from(json!({"token": t})));
        assert_eq!(engine.eval_rule("data.x.allow".into()).unwrap(), Value::from(true));
        engine.set_input(Value::from(json!({"token": tamper(&t)})));
        assert_eq!(engine.eval_rule("data.x.allow".into()).unwrap(), Value::Undefined);
    }
}
