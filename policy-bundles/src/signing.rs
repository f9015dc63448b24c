//! Bundle signatures in OPA's format: `.signatures.json` holds `{"signatures": [JWT]}` whose
//! payload lists every file of the bundle with its SHA-256 (`{"files": [{"name", "hash",
//! "algorithm": "SHA-256"}], "keyid"}`). Verifying checks the JWT against a locally configured
//! key, then that the listed files are exactly the bundle's files with those hashes.
//!
//! As in OPA, `.json` files are hashed in a canonical form (parsed, keys sorted, compact), so
//! re-formatting a JSON document does not break its signature; other files by their bytes.

use std::collections::BTreeMap;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::archive::Files;
use crate::bundle::SIGNATURES;

/// A public key that may sign bundles.
#[derive(Clone)]
pub struct VerificationKey {
    pub id: String,
    pub algorithm: Algorithm,
    pub key: DecodingKey,
}

/// Why a bundle's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("bundle is not signed (.signatures.json missing) and signing is required")]
    Missing,
    #[error(".signatures.json: {0}")]
    Malformed(String),
    #[error(".signatures.json: signed with unknown key `{0}`")]
    UnknownKey(String),
    #[error(".signatures.json: signature does not verify: {0}")]
    BadSignature(String),
    #[error("{0}: {1}")]
    File(String, &'static str),
}

/// Why a verification key could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key `{id}`: unsupported algorithm {algorithm}")]
    UnsupportedAlgorithm { id: String, algorithm: String },
    #[error("key `{id}`: not a {algorithm} public key in PEM: {message}")]
    NotAPublicKey { id: String, algorithm: String, message: String },
}

/// Why a bundle could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("unsupported algorithm {0}")]
    UnsupportedAlgorithm(String),
    #[error("not a {algorithm} private key in PEM ({message}); expected {expected}")]
    NotAPrivateKey { algorithm: String, message: String, expected: &'static str },
    #[error(transparent)]
    Jwt(#[from] jsonwebtoken::errors::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Manifest(String),
}

#[derive(Serialize, Deserialize)]
struct SignaturesFile {
    signatures: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct FileHash {
    name: String,
    hash: String,
    algorithm: String,
}

#[derive(Serialize, Deserialize)]
struct Payload {
    files: Vec<FileHash>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    keyid: Option<String>,
}

/// What a signature binds a bundle to beyond its files: `metadata.gateway` in the signed
/// `.manifest` (TUF's lessons, in OPA's signature format). A gateway with `signing.required`
/// refuses a bundle signed for another `bundle` name, one whose `sequence` is lower than the
/// highest it has activated (an older signed revision served again), and a new one past
/// `expires` (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub bundle: String,
    pub sequence: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
}

/// Why a bundle's signed identity was refused; [`FreshnessError::reason`] is a metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FreshnessError {
    #[error("signed for bundle `{got}`, not `{want}`")]
    Foreign { want: String, got: String },
    #[error("signed without `metadata.gateway` in its .manifest: not bound to a bundle name or a sequence (sign it with `bundlectl sign`)")]
    Unbound,
    #[error("signed sequence {sequence} is lower than {highest}, the highest this gateway has activated: an older signed bundle served again")]
    Replay { sequence: u64, highest: u64 },
    #[error("its signature expired at {expires} (Unix seconds; now {now})")]
    Expired { expires: u64, now: u64 },
    #[error(".manifest `metadata.gateway`: {0}")]
    Malformed(String),
}

impl FreshnessError {
    pub fn reason(&self) -> &'static str {
        match self {
            FreshnessError::Foreign { .. } | FreshnessError::Unbound => "foreign",
            FreshnessError::Replay { .. } => "replay",
            FreshnessError::Expired { .. } => "expired",
            FreshnessError::Malformed(_) => "signature",
        }
    }
}

/// Writes `identity` into the `.manifest` of `files` as `metadata.gateway` (creating the
/// manifest, keeping its other fields). Call it before [`sign`], so that the signature covers it.
pub fn bind(files: &mut Files, identity: &Identity) -> Result<(), SignError> {
    let mut manifest: serde_json::Value = match files.get(crate::bundle::MANIFEST) {
        Some(b) => serde_json::from_slice(b)?,
        None => serde_json::json!({}),
    };
    let Some(obj) = manifest.as_object_mut() else {
        return Err(SignError::Manifest("the .manifest is not a JSON object".into()));
    };
    let metadata = obj.entry("metadata").or_insert_with(|| serde_json::json!({}));
    let Some(metadata) = metadata.as_object_mut() else {
        return Err(SignError::Manifest("the .manifest's `metadata` is not an object".into()));
    };
    metadata.insert("gateway".into(), serde_json::to_value(identity)?);
    files.insert(crate::bundle::MANIFEST.into(), serde_json::to_vec_pretty(&manifest)?);
    Ok(())
}

/// The signed identity of a bundle's files, if its `.manifest` has one.
pub fn identity(files: &Files) -> Result<Option<Identity>, FreshnessError> {
    let Some(bytes) = files.get(crate::bundle::MANIFEST) else { return Ok(None) };
    let manifest: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| FreshnessError::Malformed(e.to_string()))?;
    match manifest.get("metadata").and_then(|m| m.get("gateway")) {
        None => Ok(None),
        Some(v) => serde_json::from_value(v.clone()).map(Some).map_err(|e| FreshnessError::Malformed(e.to_string())),
    }
}

/// Checks a verified bundle's identity for gateway `bundle`: bound to that name, a sequence of
/// at least `highest`, and (unless `allow_expired`: the persisted last-known-good at boot, which
/// keeps serving and raises an alert instead) not past `expires` at `now`.
pub fn check_identity(
    files: &Files,
    bundle: &str,
    highest: u64,
    now: u64,
    allow_expired: bool,
) -> Result<Identity, FreshnessError> {
    let id = identity(files)?.ok_or(FreshnessError::Unbound)?;
    if id.bundle != bundle {
        return Err(FreshnessError::Foreign { want: bundle.to_owned(), got: id.bundle });
    }
    if id.sequence < highest {
        return Err(FreshnessError::Replay { sequence: id.sequence, highest });
    }
    match id.expires {
        Some(expires) if now >= expires && !allow_expired => Err(FreshnessError::Expired { expires, now }),
        _ => Ok(id),
    }
}

/// Parses an algorithm name as configured (`RS256`, `ES256`, `EdDSA`).
pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    match name {
        "RS256" => Some(Algorithm::RS256),
        "ES256" => Some(Algorithm::ES256),
        "EdDSA" => Some(Algorithm::EdDSA),
        _ => None,
    }
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey").field("id", &self.id).field("algorithm", &self.algorithm).finish()
    }
}

impl VerificationKey {
    /// A key from its PEM public key.
    pub fn from_pem(id: &str, algorithm: &str, pem: &[u8]) -> Result<VerificationKey, KeyError> {
        let alg = parse_algorithm(algorithm)
            .ok_or_else(|| KeyError::UnsupportedAlgorithm { id: id.to_owned(), algorithm: algorithm.to_owned() })?;
        let key = match alg {
            Algorithm::RS256 => DecodingKey::from_rsa_pem(pem),
            Algorithm::ES256 => DecodingKey::from_ec_pem(pem),
            _ => DecodingKey::from_ed_pem(pem),
        }
        .map_err(|e| KeyError::NotAPublicKey {
            id: id.to_owned(),
            algorithm: algorithm.to_owned(),
            message: e.to_string(),
        })?;
        Ok(VerificationKey { id: id.to_owned(), algorithm: alg, key })
    }
}

/// The SHA-256 of a file as signed: canonical JSON for `.json` files, raw bytes otherwise.
pub fn file_hash(name: &str, bytes: &[u8]) -> String {
    if name.ends_with(".json") {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) {
            if let Ok(canonical) = serde_json::to_vec(&sorted(v)) {
                return hex::encode(Sha256::digest(&canonical));
            }
        }
    }
    hex::encode(Sha256::digest(bytes))
}

fn sorted(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => {
            let ordered: BTreeMap<String, serde_json::Value> = m.into_iter().map(|(k, v)| (k, sorted(v))).collect();
            serde_json::Value::Object(ordered.into_iter().collect())
        }
        serde_json::Value::Array(a) => serde_json::Value::Array(a.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// Signs every file (but `.signatures.json`) and returns the `.signatures.json` content.
pub fn sign(files: &Files, key_pem: &[u8], algorithm: &str, key_id: &str) -> Result<Vec<u8>, SignError> {
    let alg = parse_algorithm(algorithm).ok_or_else(|| SignError::UnsupportedAlgorithm(algorithm.to_owned()))?;
    let expected = match alg {
        Algorithm::RS256 => "`BEGIN PRIVATE KEY` (PKCS#8) or `BEGIN RSA PRIVATE KEY` (PKCS#1, as `openssl genrsa` writes)",
        Algorithm::ES256 => {
            "a P-256 key as `BEGIN PRIVATE KEY` (PKCS#8) or `BEGIN EC PRIVATE KEY` (SEC1, as `openssl ecparam -genkey` writes)"
        }
        _ => "an Ed25519 key as `BEGIN PRIVATE KEY` (PKCS#8, as `openssl genpkey -algorithm ed25519` writes)",
    };
    let not_a_key = |message: String| SignError::NotAPrivateKey { algorithm: algorithm.to_owned(), message, expected };
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(key_pem),
        Algorithm::ES256 => match sec1_der(key_pem) {
            Some(sec1) => Ok(EncodingKey::from_ec_der(&sec1_to_pkcs8(&sec1))),
            None => EncodingKey::from_ec_pem(key_pem),
        },
        _ => EncodingKey::from_ed_pem(key_pem),
    }
    .map_err(|e| not_a_key(e.to_string()))?;
    let payload = Payload {
        files: files
            .iter()
            .filter(|(n, _)| n.as_str() != SIGNATURES)
            .map(|(n, b)| FileHash { name: n.clone(), hash: file_hash(n, b), algorithm: "SHA-256".into() })
            .collect(),
        keyid: Some(key_id.to_owned()),
    };
    let mut header = Header::new(alg);
    header.kid = Some(key_id.to_owned());
    let jwt = jsonwebtoken::encode(&header, &payload, &key)?;
    Ok(serde_json::to_vec_pretty(&SignaturesFile { signatures: vec![jwt] })?)
}

/// The DER of a SEC1 `EC PRIVATE KEY` PEM block (`openssl ecparam -genkey` writes one, after an
/// `EC PARAMETERS` block), when the PEM holds one.
fn sec1_der(pem: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let text = std::str::from_utf8(pem).ok()?;
    let body = text.split("-----BEGIN EC PRIVATE KEY-----").nth(1)?.split("-----END EC PRIVATE KEY-----").next()?;
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// A SEC1 P-256 private key wrapped as PKCS#8 (RFC 5208 `PrivateKeyInfo`), the form ring reads.
/// A key of another curve still fails there, with ring's message.
fn sec1_to_pkcs8(sec1: &[u8]) -> Vec<u8> {
    fn der(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match body.len() {
            n if n < 0x80 => out.push(n as u8),
            n if n <= 0xff => out.extend([0x81, n as u8]),
            n => out.extend([0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(body);
        out
    }
    // AlgorithmIdentifier { id-ecPublicKey, prime256v1 }
    const ALG: &[u8] = &[
        0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d,
        0x03, 0x01, 0x07,
    ];
    let mut info = vec![0x02, 0x01, 0x00];
    info.extend_from_slice(ALG);
    info.extend(der(0x04, sec1));
    der(0x30, &info)
}

/// Verifies a bundle's files against `keys`. With `required`, an unsigned bundle is refused;
/// without it, an unsigned bundle passes but a present signature must still verify.
pub fn verify(files: &Files, keys: &[VerificationKey], required: bool) -> Result<(), SignatureError> {
    let Some(raw) = files.get(SIGNATURES) else {
        return if required { Err(SignatureError::Missing) } else { Ok(()) };
    };
    let sf: SignaturesFile = serde_json::from_slice(raw).map_err(|e| SignatureError::Malformed(e.to_string()))?;
    let [jwt] = sf.signatures.as_slice() else {
        return Err(SignatureError::Malformed(format!(
            "expected exactly one signature, found {}",
            sf.signatures.len()
        )));
    };
    let header = jsonwebtoken::decode_header(jwt).map_err(|e| SignatureError::Malformed(e.to_string()))?;
    let unverified: Payload = {
        use base64::Engine as _;
        let part = jwt.split('.').nth(1).ok_or_else(|| SignatureError::Malformed("not a JWT".into()))?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part.trim_end_matches('='))
            .map_err(|e| SignatureError::Malformed(e.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| SignatureError::Malformed(e.to_string()))?
    };
    let kid = unverified.keyid.or(header.kid).unwrap_or_else(|| "default".into());
    let key = keys.iter().find(|k| k.id == kid).ok_or_else(|| SignatureError::UnknownKey(kid.clone()))?;
    let mut validation = Validation::new(key.algorithm);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_aud = false;
    let payload = jsonwebtoken::decode::<Payload>(jwt, &key.key, &validation)
        .map_err(|e| SignatureError::BadSignature(e.to_string()))?
        .claims;
    let mut listed = BTreeMap::new();
    for f in &payload.files {
        if !f.algorithm.eq_ignore_ascii_case("SHA-256") {
            return Err(SignatureError::Malformed(format!("{}: unsupported hash algorithm {}", f.name, f.algorithm)));
        }
        listed.insert(crate::archive::normalize_path(&f.name).unwrap_or_else(|_| f.name.clone()), f.hash.as_str());
    }
    for (name, bytes) in files {
        if name == SIGNATURES {
            continue;
        }
        match listed.remove(name.as_str()) {
            None => return Err(SignatureError::File(name.clone(), "file is not covered by the signature")),
            Some(h) if !h.eq_ignore_ascii_case(&file_hash(name, bytes)) => {
                return Err(SignatureError::File(name.clone(), "file does not match its signed hash"))
            }
            Some(_) => {}
        }
    }
    if let Some((name, _)) = listed.into_iter().next() {
        return Err(SignatureError::File(name, "signed file is missing from the bundle"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/../test-support/keys/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    fn public_pem(private: &str) -> Vec<u8> {
        key(&private.replace(".pem", ".pub.pem"))
    }

    fn files() -> Files {
        let mut f = Files::new();
        f.insert("a/policy.rego".into(), b"package a\n".to_vec());
        f.insert("a/data.json".into(), br#"{"b": 1, "a": [1, 2]}"#.to_vec());
        f
    }

    #[test]
    fn signed_bundles_verify_and_tampering_is_caught() {
        let keys = [VerificationKey::from_pem("k1", "ES256", &public_pem("demo-es256.pem")).unwrap()];
        let mut f = files();
        let sig = sign(&f, &key("demo-es256.pem"), "ES256", "k1").unwrap();
        f.insert(SIGNATURES.into(), sig.clone());
        verify(&f, &keys, true).unwrap();

        // Re-formatted JSON keeps its signature; changed JSON does not.
        let mut reformatted = f.clone();
        reformatted.insert("a/data.json".into(), b"{\n  \"a\": [1,2],\n  \"b\": 1\n}".to_vec());
        verify(&reformatted, &keys, true).unwrap();
        let mut changed = f.clone();
        changed.insert("a/policy.rego".into(), b"package a\nallow := true\n".to_vec());
        assert!(matches!(verify(&changed, &keys, true), Err(SignatureError::File(n, _)) if n == "a/policy.rego"));
        let mut added = f.clone();
        added.insert("b.rego".into(), b"package b\n".to_vec());
        assert!(matches!(verify(&added, &keys, true), Err(SignatureError::File(n, _)) if n == "b.rego"));
        let mut removed = f.clone();
        removed.remove("a/policy.rego");
        assert!(matches!(verify(&removed, &keys, true), Err(SignatureError::File(..))));
    }

    #[test]
    fn unsigned_wrong_key_and_garbage_are_refused() {
        let keys = [VerificationKey::from_pem("k1", "ES256", &public_pem("demo-es256.pem")).unwrap()];
        assert_eq!(verify(&files(), &keys, true), Err(SignatureError::Missing));
        assert_eq!(verify(&files(), &keys, false), Ok(()));
        let mut f = files();
        f.insert(SIGNATURES.into(), sign(&f, &key("demo-es256.pem"), "ES256", "other").unwrap());
        assert!(matches!(verify(&f, &keys, true), Err(SignatureError::UnknownKey(_))));
        // Signed by another key under the trusted key's id.
        let mut f = files();
        f.insert(SIGNATURES.into(), sign(&f, &key("demo-rs256.pem"), "RS256", "k1").unwrap());
        assert!(verify(&f, &keys, true).is_err());
        let mut f = files();
        f.insert(SIGNATURES.into(), b"{not json".to_vec());
        assert!(matches!(verify(&f, &keys, true), Err(SignatureError::Malformed(_))));
    }

    #[test]
    fn keys_in_the_forms_openssl_writes_sign_and_others_are_named() {
        for (private, public, alg) in [
            ("demo-es256.sec1.pem", "demo-es256.pem", "ES256"),
            ("demo-rs256.pkcs1.pem", "demo-rs256.pem", "RS256"),
            ("demo-rs256.pem", "demo-rs256.pem", "RS256"),
        ] {
            let keys = [VerificationKey::from_pem("k1", alg, &public_pem(public)).unwrap()];
            let mut f = files();
            let sig = sign(&f, &key(private), alg, "k1").unwrap_or_else(|e| panic!("{private}: {e}"));
            f.insert(SIGNATURES.into(), sig);
            verify(&f, &keys, true).unwrap_or_else(|e| panic!("{private}: {e}"));
        }
        // An RSA key given for ES256: the message names the forms that would do.
        let e = sign(&files(), &key("demo-rs256.pkcs1.pem"), "ES256", "k1").unwrap_err().to_string();
        assert!(e.contains("BEGIN EC PRIVATE KEY") && e.contains("PKCS#8"), "{e}");
        let e = sign(&files(), b"garbage", "EdDSA", "k1").unwrap_err().to_string();
        assert!(e.contains("Ed25519"), "{e}");
    }

    #[test]
    fn a_bound_identity_is_signed_and_checked_for_name_sequence_and_expiry() {
        let keys = [VerificationKey::from_pem("k1", "ES256", &public_pem("demo-es256.pem")).unwrap()];
        let mut f = files();
        bind(&mut f, &Identity { bundle: "main".into(), sequence: 7, expires: Some(2000) }).unwrap();
        f.insert(SIGNATURES.into(), sign(&f, &key("demo-es256.pem"), "ES256", "k1").unwrap());
        verify(&f, &keys, true).unwrap();
        let id = check_identity(&f, "main", 7, 1000, false).unwrap();
        assert_eq!((id.sequence, id.expires), (7, Some(2000)));
        let e = check_identity(&f, "staging", 0, 1000, false).unwrap_err();
        assert_eq!(e.reason(), "foreign");
        assert_eq!(check_identity(&f, "main", 8, 1000, false).unwrap_err().reason(), "replay");
        assert_eq!(check_identity(&f, "main", 7, 2000, false).unwrap_err().reason(), "expired");
        assert!(check_identity(&f, "main", 7, 2000, true).is_ok(), "the last-known-good at boot");
        // The identity is inside the signed manifest: editing it breaks the signature.
        let mut edited = f.clone();
        bind(&mut edited, &Identity { bundle: "main".into(), sequence: 99, expires: None }).unwrap();
        assert!(matches!(verify(&edited, &keys, true), Err(SignatureError::File(n, _)) if n == ".manifest"));
        // A signed bundle without one is bound to nothing.
        let mut plain = files();
        plain.insert(SIGNATURES.into(), sign(&plain, &key("demo-es256.pem"), "ES256", "k1").unwrap());
        assert_eq!(check_identity(&plain, "main", 0, 0, false).unwrap_err(), FreshnessError::Unbound);
        // Other manifest fields are kept.
        let mut m = files();
        m.insert(".manifest".into(), br#"{"revision": "r1", "metadata": {"owner": "a"}}"#.to_vec());
        bind(&mut m, &Identity { bundle: "main".into(), sequence: 1, expires: None }).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&m[".manifest"]).unwrap();
        assert_eq!((v["revision"].as_str(), v["metadata"]["owner"].as_str()), (Some("r1"), Some("a")));
        assert_eq!(v["metadata"]["gateway"]["sequence"], 1);
    }
}
