//! OPA's `io.jwt` builtins for regorus, which has none: [`register`] adds `io.jwt.decode`,
//! `io.jwt.decode_verify` and every `io.jwt.verify_*` to an engine as extensions.
//!
//! The semantics are OPA's (`topdown/tokens.go`), down to the order in which problems are
//! found and whether a problem is an error or a `false`:
//!
//! * A token that is not three base64url parts with a JSON-object header (and, where the
//!   payload is read, a JSON-object payload) is an **error**, as is a key argument that is not
//!   a PEM `PUBLIC KEY` / `CERTIFICATE` block or a JWK / JWKS, and a malformed constraints
//!   object. A signature that does not verify, a key of the wrong type, or an unmet constraint
//!   is `false` (`[false, {}, {}]` for `decode_verify`).
//! * `verify_<alg>` checks the signature with that algorithm whatever the header's `alg` says;
//!   `decode_verify` takes the algorithm from the header (so `alg: none`, or an algorithm the
//!   keys cannot serve, never verifies) and can be pinned with the `alg` constraint.
//! * With a JWKS, a token whose `kid` names a key is checked with that key only; otherwise every
//!   key whose own `alg` (if it has one) matches the header's `alg` is tried.
//!
//! One deliberate difference: an HMAC "secret" whose text is public key material (a PEM public
//! key or certificate, or a JWK / JWKS) never verifies. OPA would compute the HMAC with it,
//! which is exactly the algorithm-confusion forgery: anyone holding the public key could sign.
//!
//! Where ring (jsonwebtoken's backend) is narrower than Go, the result is `false`: RSA keys of
//! fewer than 2048 bits, and ECDSA with a curve other than the algorithm's own (Go would check
//! an ES256 signature made with a P-384 key).
//!
//! Pure functions: keys come only from the arguments, never from the network or the disk.
//! Extensions run on regorus' interpreter (not its VM). A call that errors (a malformed token,
//! say, sent by a client) is undefined, as in OPA's default (non-strict) evaluation: the rule
//! built on it is undefined or takes its default, so a policy's "no valid token" answer (a 401
//! with its body) holds for garbage too, rather than the evaluation failing.
//!
//! Two per-thread caches keep repeated calls cheap, neither changing an answer (each is a
//! function of its key): the keys parsed from a `cert` argument, by its text, and the outcome of
//! each signature check, by the token's signed part and signature, the key text and the
//! algorithm.

use std::cmp::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Result};
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey};
use regorus::Value;
use x509_parser::prelude::FromDer as _;

/// (name, number of arguments) of every builtin registered.
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

/// Registers every io.jwt builtin on the engine.
pub fn register(engine: &mut regorus::Engine) -> Result<(), String> {
    for &(name, nargs) in BUILTINS {
        let extension: Box<dyn regorus::Extension> = match name {
            "io.jwt.decode" => Box::new(|args: Vec<Value>| jwt_decode(&args)),
            "io.jwt.decode_verify" => Box::new(|args: Vec<Value>| jwt_decode_verify(&args)),
            _ => {
                let alg = name
                    .strip_prefix("io.jwt.verify_")
                    .and_then(Alg::of_builtin_suffix)
                    .ok_or_else(|| format!("{name}: no such io.jwt builtin"))?;
                if alg.is_hmac() {
                    Box::new(move |args: Vec<Value>| jwt_verify_hmac(alg, &args))
                } else {
                    Box::new(move |args: Vec<Value>| jwt_verify_asymmetric(alg, &args))
                }
            }
        };
        engine.add_extension(name.to_owned(), nargs, non_strict(extension)).map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

/// A builtin whose errors are undefined, as OPA's are outside strict mode.
fn non_strict(mut f: Box<dyn regorus::Extension>) -> Box<dyn regorus::Extension> {
    Box::new(move |args: Vec<Value>| Ok(f(args).unwrap_or(Value::Undefined)))
}

/// Bound of each per-thread cache, in entries; a full cache is emptied.
const CACHE_ENTRIES: usize = 1024;

/// Parsed keys by the text they came from.
type KeyCache = std::collections::HashMap<String, std::sync::Arc<Vec<Key>>>;
/// Signature checks: (signed part and signature, key text, algorithm) → verified.
type CheckCache = std::collections::HashMap<(String, String, &'static str), bool>;

thread_local! {
    static KEYS: std::cell::RefCell<KeyCache> = std::cell::RefCell::new(KeyCache::new());
    static CHECKS: std::cell::RefCell<CheckCache> = std::cell::RefCell::new(CheckCache::new());
}

/// [`parse_keys`] through this thread's key cache (errors are not kept).
fn cached_keys(text: &str) -> Result<std::sync::Arc<Vec<Key>>> {
    if let Some(k) = KEYS.with(|c| c.borrow().get(text).cloned()) {
        return Ok(k);
    }
    let keys = std::sync::Arc::new(parse_keys(text)?);
    KEYS.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= CACHE_ENTRIES {
            c.clear();
        }
        c.insert(text.to_owned(), keys.clone());
    });
    Ok(keys)
}

/// `check()` through this thread's signature-check cache, keyed by the token's signed part and
/// signature (`token`), the key's text and the algorithm's name.
fn cached_check(token: &str, key_text: &str, alg: &'static str, check: impl FnOnce() -> bool) -> bool {
    let key = (token.to_owned(), key_text.to_owned(), alg);
    if let Some(done) = CHECKS.with(|c| c.borrow().get(&key).copied()) {
        return done;
    }
    let ok = check();
    CHECKS.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= CACHE_ENTRIES {
            c.clear();
        }
        c.insert(key, ok);
    });
    ok
}

// ---------------------------------------------------------------------------------------------
// Algorithms

/// The JWS algorithms OPA knows (its `tokenAlgorithms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    const ALL: [Alg; 13] = [
        Alg::Hs256,
        Alg::Hs384,
        Alg::Hs512,
        Alg::Rs256,
        Alg::Rs384,
        Alg::Rs512,
        Alg::Ps256,
        Alg::Ps384,
        Alg::Ps512,
        Alg::Es256,
        Alg::Es384,
        Alg::Es512,
        Alg::EdDsa,
    ];

    /// The name in a JOSE header (case-sensitive, as in RFC 7518).
    fn name(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::Hs384 => "HS384",
            Alg::Hs512 => "HS512",
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::Es512 => "ES512",
            Alg::EdDsa => "EdDSA",
        }
    }

    fn of_name(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.name() == name)
    }

    /// `hs256` in `io.jwt.verify_hs256`, `eddsa` in `io.jwt.verify_eddsa`.
    fn of_builtin_suffix(suffix: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.name().eq_ignore_ascii_case(suffix))
    }

    fn is_hmac(self) -> bool {
        matches!(self, Alg::Hs256 | Alg::Hs384 | Alg::Hs512)
    }

    /// jsonwebtoken's (ring's) implementation; ES512 is not among them and uses `p521`.
    fn jsonwebtoken(self) -> Option<Algorithm> {
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
}

// ---------------------------------------------------------------------------------------------
// Tokens

/// base64url as OPA's `base64url.decode` reads it: padded or not (a padded string must be
/// padded correctly), with non-zero trailing bits tolerated as Go's decoder does.
fn b64url_decode(s: &str) -> Result<Vec<u8>> {
    const PADDED: GeneralPurpose = GeneralPurpose::new(
        &alphabet::URL_SAFE,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
    );
    const UNPADDED: GeneralPurpose = GeneralPurpose::new(
        &alphabet::URL_SAFE,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::RequireNone),
    );
    if s.ends_with('=') {
        return PADDED.decode(s).map_err(|e| anyhow!("{e}"));
    }
    if s.len() % 4 == 1 {
        bail!("illegal base64url string");
    }
    UNPADDED.decode(s).map_err(|e| anyhow!("{e}"))
}

/// The three parts of a compact JWS, still encoded.
struct Parts<'a> {
    header: &'a str,
    payload: &'a str,
    signature: &'a str,
    /// `header.payload`: what the signature signs.
    signing_input: &'a str,
}

/// OPA's `decodeJWT`: the token split at its periods.
fn split_token(jwt: &str) -> Result<Parts<'_>> {
    if !jwt.contains('.') {
        bail!("encoded JWT had no period separators");
    }
    let mut it = jwt.split('.');
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some(header), Some(payload), Some(signature), None) => Ok(Parts {
            header,
            payload,
            signature,
            signing_input: jwt.get(..header.len() + 1 + payload.len()).unwrap_or_default(),
        }),
        _ => bail!("encoded JWT must have 3 sections, found {}", jwt.split('.').count()),
    }
}

/// OPA's `extractJSONObject`. Invalid UTF-8 becomes U+FFFD as in Go's JSON decoder.
fn json_object(bytes: &[u8]) -> Result<Value> {
    let text = String::from_utf8_lossy(bytes);
    let value = Value::from_json_str(&text).map_err(|e| anyhow!("invalid JSON: {e}"))?;
    if !matches!(value, Value::Object(_)) {
        bail!("decoded JSON type was not an Object");
    }
    Ok(value)
}

/// OPA's `decodeHeader`: the header as an object; a JWE (`enc`) is refused.
fn decode_header(part: &str) -> Result<Value> {
    let bytes = b64url_decode(part).map_err(|e| anyhow!("JWT header had invalid encoding: {e}"))?;
    let header = json_object(&bytes).map_err(|e| anyhow!("bad JWT header: {e}"))?;
    if header["enc"] != Value::Undefined {
        bail!("JWT is a JWE object, which is not supported");
    }
    Ok(header)
}

fn decode_signature(part: &str) -> Result<Vec<u8>> {
    b64url_decode(part).map_err(|e| anyhow!("JWT signature had invalid encoding: {e}"))
}

fn decode_payload_bytes(part: &str) -> Result<Vec<u8>> {
    b64url_decode(part).map_err(|e| anyhow!("JWT payload had invalid encoding: {e}"))
}

/// The header parameters OPA reads (its `tokenHeader`).
#[derive(Default)]
struct Header {
    alg: String,
    kid: String,
    cty: String,
    crit: Vec<String>,
    /// Parameters other than alg, kid, typ, cty and crit.
    unknown: Vec<String>,
}

impl Header {
    /// OPA's `parseTokenHeader`: alg, kid, typ and cty must be strings, crit a nonempty list.
    fn parse(header: &Value) -> Result<Header> {
        let mut out = Header::default();
        let Value::Object(fields) = header else {
            bail!("bad JWT header: decoded JSON type was not an Object");
        };
        for (k, v) in fields.iter() {
            let Value::String(name) = k else { continue };
            let text = |what: &str| -> Result<String> {
                match v {
                    Value::String(s) => Ok(s.to_string()),
                    _ => bail!("{what}: must be a string"),
                }
            };
            match name.as_ref() {
                "alg" => out.alg = text("alg")?,
                "kid" => out.kid = text("kid")?,
                "typ" => {
                    text("typ")?;
                }
                "cty" => out.cty = text("cty")?,
                "crit" => {
                    let Value::Array(items) = v else { bail!("crit: must be a list") };
                    // As OPA: the names up to the first one that is not a string.
                    out.crit = items
                        .iter()
                        .map_while(|i| match i {
                            Value::String(s) => Some(s.to_string()),
                            _ => None,
                        })
                        .collect();
                    if out.crit.is_empty() {
                        bail!("crit: must be a nonempty list");
                    }
                }
                other => out.unknown.push(other.to_owned()),
            }
        }
        Ok(out)
    }

    /// RFC 7515: `alg` must be present, and every critical parameter understood.
    fn valid(&self) -> bool {
        !self.alg.is_empty() && !self.unknown.iter().any(|u| self.crit.contains(u))
    }
}

fn string_operand(args: &[Value], i: usize) -> Result<&str> {
    match args.get(i) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => bail!("operand {} must be string but got {}", i + 1, type_name(other)),
        None => bail!("operand {} is missing", i + 1),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Set(_) => "set",
        Value::Object(_) => "object",
        Value::Undefined => "undefined",
    }
}

// ---------------------------------------------------------------------------------------------
// io.jwt.decode

/// `io.jwt.decode(jwt)`: `[header, payload, signature as hex]`, nothing verified. A token whose
/// `cty` is `JWT` is decoded down to the token it carries, as OPA does.
fn jwt_decode(args: &[Value]) -> Result<Value> {
    let mut token = string_operand(args, 0)?.to_owned();
    // Each round decodes a payload strictly shorter than the token it came from.
    loop {
        let parts = split_token(&token)?;
        let header = decode_header(parts.header)?;
        let payload = decode_payload_bytes(parts.payload)?;
        match &header["cty"] {
            Value::Undefined => {}
            Value::String(cty) if cty.as_ref() == "JWT" => {
                // A nested token may come quoted (as jwt.io makes them).
                let inner = String::from_utf8_lossy(&payload);
                token = inner.trim_matches(|c| c == '"' || c == '\'').to_owned();
                continue;
            }
            Value::String(_) => {}
            _ => bail!("cty: must be a string"),
        }
        let payload = json_object(&payload)?;
        let signature = decode_signature(parts.signature)?;
        return Ok(Value::from(vec![header, payload, Value::from(hex::encode(signature))]));
    }
}

// ---------------------------------------------------------------------------------------------
// Keys

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    /// Bytes of a coordinate or of a scalar.
    fn size(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }
}

/// A key's material, public parts only.
#[derive(Debug, Clone)]
enum Material {
    /// Modulus and exponent, big-endian without leading zeros.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed SEC1 point.
    Ec {
        curve: Curve,
        point: Vec<u8>,
    },
    Ed25519(Vec<u8>),
    /// A symmetric key (a JWK of `kty: oct`, or an HMAC secret).
    Oct(Vec<u8>),
    /// A key that parses but verifies nothing here (X25519, DSA, P-224, an unknown algorithm in
    /// a certificate): as in OPA, using it is `false`, not an error.
    Unusable,
}

/// A verification key and what a JWK said of it (empty when it said nothing).
#[derive(Debug, Clone)]
struct Key {
    material: Material,
    alg: String,
    kid: String,
}

impl Key {
    fn bare(material: Material) -> Key {
        Key { material, alg: String::new(), kid: String::new() }
    }
}

/// OPA's `getKeysFromCertOrJWK`: a PEM `CERTIFICATE` or `PUBLIC KEY` block (one, and nothing
/// after it), else a JWK or a JWKS.
fn parse_keys(text: &str) -> Result<Vec<Key>> {
    if let Some((block, rest)) = pem_decode(text.as_bytes()) {
        if !rest.is_empty() {
            bail!("extra data after a PEM certificate block");
        }
        return match block.kind.as_str() {
            "CERTIFICATE" => {
                let (rest, cert) = x509_parser::parse_x509_certificate(&block.bytes)
                    .map_err(|e| anyhow!("failed to parse a PEM certificate: {e}"))?;
                if !rest.is_empty() {
                    bail!("failed to parse a PEM certificate: trailing data");
                }
                let material = spki_material(cert.public_key(), true)
                    .map_err(|e| anyhow!("failed to parse a PEM certificate: {e}"))?;
                Ok(vec![Key::bare(material)])
            }
            "PUBLIC KEY" => {
                let (rest, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&block.bytes)
                    .map_err(|e| anyhow!("failed to parse a PEM public key: {e}"))?;
                if !rest.is_empty() {
                    bail!("failed to parse a PEM public key: trailing data after ASN.1 of public-key");
                }
                let material =
                    spki_material(&spki, false).map_err(|e| anyhow!("failed to parse a PEM public key: {e}"))?;
                Ok(vec![Key::bare(material)])
            }
            _ => bail!("failed to extract a Key from the PEM certificate"),
        };
    }
    parse_jwks(text).map_err(|e| anyhow!("failed to parse a JWK key (set): {e}"))
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    b.get(first..).unwrap_or_default()
}

/// The key in a SubjectPublicKeyInfo, read as Go's `x509.ParsePKIXPublicKey` reads it. In a
/// certificate an unknown algorithm is a key that verifies nothing, as in Go.
fn spki_material(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>, in_certificate: bool) -> Result<Material> {
    let oid = spki.algorithm.algorithm.to_id_string();
    let data: &[u8] = spki.subject_public_key.data.as_ref();
    match oid.as_str() {
        // rsaEncryption
        "1.2.840.113549.1.1.1" => {
            let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = spki.parsed() else {
                bail!("invalid RSA public key");
            };
            if rsa.modulus.first().is_some_and(|b| b & 0x80 != 0) || rsa.exponent.first().is_some_and(|b| b & 0x80 != 0)
            {
                bail!("RSA modulus or exponent is not a positive number");
            }
            let (n, e) = (strip_leading_zeros(rsa.modulus), strip_leading_zeros(rsa.exponent));
            if n.is_empty() || e.is_empty() {
                bail!("RSA modulus or exponent is not a positive number");
            }
            Ok(Material::Rsa { n: n.to_vec(), e: e.to_vec() })
        }
        // id-ecPublicKey
        "1.2.840.10045.2.1" => {
            let curve_oid = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
                .ok_or_else(|| anyhow!("failed to parse ECDSA parameters as named curve"))?;
            let curve = match curve_oid.as_str() {
                "1.2.840.10045.3.1.7" => Curve::P256,
                "1.3.132.0.34" => Curve::P384,
                "1.3.132.0.35" => Curve::P521,
                // P-224: Go parses it; nothing here verifies with it.
                "1.3.132.0.33" => return Ok(Material::Unusable),
                _ => bail!("unsupported elliptic curve"),
            };
            if data.len() != 1 + 2 * curve.size() || data.first() != Some(&4) {
                bail!("failed to unmarshal elliptic curve point");
            }
            Ok(Material::Ec { curve, point: data.to_vec() })
        }
        // Ed25519
        "1.3.101.112" => {
            if data.len() != 32 {
                bail!("Ed25519 key encoded with illegal parameters");
            }
            Ok(Material::Ed25519(data.to_vec()))
        }
        // X25519, DSA: keys Go reads, which verify no JWS here.
        "1.3.101.110" | "1.2.840.10040.4.1" => Ok(Material::Unusable),
        _ if in_certificate => Ok(Material::Unusable),
        _ => bail!("unknown public key algorithm"),
    }
}

/// A base64 field of a JWK: url-safe or standard alphabet, padded or not.
fn jwk_bytes(jwk: &serde_json::Map<String, serde_json::Value>, field: &str) -> Result<Vec<u8>> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &alphabet::URL_SAFE,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::RequireNone),
    );
    let text = match jwk.get(field) {
        Some(serde_json::Value::String(s)) => s,
        Some(_) => bail!("field {field:?} must be a string"),
        None => bail!("required field {field:?} is missing"),
    };
    let normalized: String = text
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    LENIENT.decode(normalized).map_err(|e| anyhow!("field {field:?}: {e}"))
}

fn jwk_string(jwk: &serde_json::Map<String, serde_json::Value>, field: &str) -> Result<String> {
    match jwk.get(field) {
        None => Ok(String::new()),
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(_) => bail!("field {field:?} must be a string"),
    }
}

/// A JWK (RFC 7517) or a JWKS, as lestrrat-go/jwx (OPA's) reads them: a key that cannot be
/// read fails the whole set; a key whose `alg` is no JWS algorithm OPA knows is left out.
fn parse_jwks(text: &str) -> Result<Vec<Key>> {
    let value: serde_json::Value = serde_json::from_str(text)?;
    let serde_json::Value::Object(obj) = &value else { bail!("not a JSON object") };
    let jwks: Vec<&serde_json::Value> = match obj.get("keys") {
        Some(serde_json::Value::Array(keys)) => keys.iter().collect(),
        Some(_) => bail!("\"keys\" must be a list"),
        None => vec![&value],
    };
    let mut out = Vec::with_capacity(jwks.len());
    for (i, jwk) in jwks.into_iter().enumerate() {
        let serde_json::Value::Object(jwk) = jwk else { bail!("key #{i} is not a JSON object") };
        let key = parse_jwk(jwk).map_err(|e| anyhow!("key #{i}: {e}"))?;
        if !key.alg.is_empty() && Alg::of_name(&key.alg).is_none() {
            continue;
        }
        out.push(key);
    }
    Ok(out)
}

fn parse_jwk(jwk: &serde_json::Map<String, serde_json::Value>) -> Result<Key> {
    let kty = match jwk.get("kty") {
        Some(serde_json::Value::String(s)) => s.as_str(),
        Some(_) => bail!("\"kty\" must be a string"),
        None => bail!("required field \"kty\" is missing"),
    };
    let alg = jwk_string(jwk, "alg")?;
    let kid = jwk_string(jwk, "kid")?;
    let material = match kty {
        "RSA" => {
            let (n, e) = (jwk_bytes(jwk, "n")?, jwk_bytes(jwk, "e")?);
            let (n, e) = (strip_leading_zeros(&n), strip_leading_zeros(&e));
            if n.is_empty() || e.is_empty() {
                bail!("RSA modulus or exponent is zero");
            }
            Material::Rsa { n: n.to_vec(), e: e.to_vec() }
        }
        "EC" => {
            let curve = match jwk_string(jwk, "crv")?.as_str() {
                "P-256" => Curve::P256,
                "P-384" => Curve::P384,
                "P-521" => Curve::P521,
                "" => bail!("required field \"crv\" is missing"),
                other => bail!("unsupported curve {other:?}"),
            };
            let size = curve.size();
            let mut point = vec![0u8; 1 + 2 * size];
            point[0] = 4;
            for (field, at) in [("x", 1), ("y", 1 + size)] {
                let raw = jwk_bytes(jwk, field)?;
                let coord = strip_leading_zeros(&raw);
                if coord.len() > size {
                    bail!("field {field:?} is too long for the curve");
                }
                let start = at + size - coord.len();
                point
                    .get_mut(start..at + size)
                    .ok_or_else(|| anyhow!("field {field:?} is too long for the curve"))?
                    .copy_from_slice(coord);
            }
            Material::Ec { curve, point }
        }
        "OKP" => match jwk_string(jwk, "crv")?.as_str() {
            "Ed25519" => {
                let x = jwk_bytes(jwk, "x")?;
                if x.len() != 32 {
                    bail!("an Ed25519 key must be 32 bytes");
                }
                Material::Ed25519(x)
            }
            "X25519" => {
                jwk_bytes(jwk, "x")?;
                Material::Unusable
            }
            "" => bail!("required field \"crv\" is missing"),
            other => bail!("unsupported curve {other:?}"),
        },
        "oct" => Material::Oct(jwk_bytes(jwk, "k")?),
        other => bail!("invalid key type {other:?}"),
    };
    Ok(Key { material, alg, kid })
}

/// One PEM block: its type and its decoded bytes.
struct PemBlock {
    kind: String,
    bytes: Vec<u8>,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Go's `getLine`: the line without its end (`\n` or `\r\n`) and trailing blanks, and the rest.
fn get_line(data: &[u8]) -> (&[u8], &[u8]) {
    let (mut line, rest) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (data.get(..i).unwrap_or_default(), data.get(i + 1..).unwrap_or_default()),
        None => (data, &data[data.len()..]),
    };
    if let Some(l) = line.strip_suffix(b"\r") {
        line = l;
    }
    while let Some(l) = line.strip_suffix(b" ").or_else(|| line.strip_suffix(b"\t")) {
        line = l;
    }
    (line, rest)
}

/// Go's `encoding/pem.Decode`: the first well-formed block anywhere in `data`, and what
/// follows the line that ends it. Written here rather than taken from the `pem` crate because
/// OPA's answers depend on Go's reading: text before the block is skipped, headers are
/// allowed, a malformed block is passed over in search of a later one, and whether anything
/// follows the block decides between a key and an error (`pem` parses one block strictly).
fn pem_decode(data: &[u8]) -> Option<(PemBlock, &[u8])> {
    const START: &[u8] = b"\n-----BEGIN ";
    const END: &[u8] = b"\n-----END ";
    const EOL: &[u8] = b"-----";
    const BODY: GeneralPurpose = GeneralPurpose::new(
        &alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
    );
    let mut rest = data;
    loop {
        if let Some(r) = rest.strip_prefix(&START[1..]) {
            rest = r;
        } else if let Some(i) = find(rest, START) {
            rest = rest.get(i + START.len()..)?;
        } else {
            return None;
        }
        let (type_line, after) = get_line(rest);
        rest = after;
        let Some(kind) = type_line.strip_suffix(EOL) else { continue };

        let mut has_headers = false;
        loop {
            if rest.is_empty() {
                return None;
            }
            let (line, next) = get_line(rest);
            if !line.contains(&b':') {
                break;
            }
            has_headers = true;
            rest = next;
        }

        let (end_index, end_trailer_index) = if !has_headers && rest.starts_with(&END[1..]) {
            (0, END.len() - 1)
        } else {
            match find(rest, END) {
                Some(i) => (i, i + END.len()),
                None => continue,
            }
        };
        let Some(end_trailer) = rest.get(end_trailer_index..) else { continue };
        let trailer_len = kind.len() + EOL.len();
        let (Some(trailer), Some(rest_of_end_line)) = (end_trailer.get(..trailer_len), end_trailer.get(trailer_len..))
        else {
            continue;
        };
        if !trailer.starts_with(kind) || !trailer.ends_with(EOL) {
            continue;
        }
        if !get_line(rest_of_end_line).0.is_empty() {
            continue;
        }
        let body: Vec<u8> = rest
            .get(..end_index)
            .unwrap_or_default()
            .iter()
            .copied()
            .filter(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
            .collect();
        let Ok(bytes) = BODY.decode(body) else { continue };
        let (_, remaining) = get_line(rest.get(end_index + END.len() - 1..).unwrap_or_default());
        return Some((PemBlock { kind: String::from_utf8_lossy(kind).into_owned(), bytes }, remaining));
    }
}

/// Public key material (a PEM public key or certificate, a JWK or JWKS) offered as an HMAC
/// secret: the algorithm-confusion forgery, never accepted (the one departure from OPA).
fn is_public_key_text(secret: &str) -> bool {
    if let Some((block, _)) = pem_decode(secret.as_bytes()) {
        if block.kind == "CERTIFICATE" || block.kind.ends_with("PUBLIC KEY") {
            return true;
        }
    }
    let trimmed = secret.trim();
    if trimmed.starts_with('{') {
        if let Ok(serde_json::Value::Object(o)) = serde_json::from_str::<serde_json::Value>(trimmed) {
            return o.contains_key("kty") || o.contains_key("keys");
        }
    }
    false
}

// ---------------------------------------------------------------------------------------------
// Signatures

fn b64url_encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An ECDSA signature as `r || s` of the curve's fixed size. Like Go's `verifyES`, the two
/// halves are read as big-endian numbers, so shorter (zero-stripped) halves are accepted.
fn ecdsa_fixed(signature: &[u8], size: usize) -> Option<Vec<u8>> {
    let (r, s) = signature.split_at(signature.len() / 2);
    let (r, s) = (strip_leading_zeros(r), strip_leading_zeros(s));
    if r.len() > size || s.len() > size {
        return None;
    }
    let mut out = vec![0u8; 2 * size];
    out.get_mut(size - r.len()..size)?.copy_from_slice(r);
    out.get_mut(2 * size - s.len()..)?.copy_from_slice(s);
    Some(out)
}

/// Whether `signature` over `message` verifies under `material` with `alg`. A key of another
/// type than the algorithm needs simply does not verify.
fn verify_signature(material: &Material, alg: Alg, message: &[u8], signature: &[u8]) -> bool {
    let key = match (alg, material) {
        (Alg::Hs256 | Alg::Hs384 | Alg::Hs512, Material::Oct(secret)) => DecodingKey::from_secret(secret),
        (Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512, Material::Rsa { n, e }) => {
            DecodingKey::from_rsa_raw_components(n, e)
        }
        (Alg::Es256, Material::Ec { curve: Curve::P256, point })
        | (Alg::Es384, Material::Ec { curve: Curve::P384, point }) => DecodingKey::from_ec_der(point),
        (Alg::Es512, Material::Ec { curve: Curve::P521, point }) => return verify_p521(point, message, signature),
        (Alg::EdDsa, Material::Ed25519(x)) => DecodingKey::from_ed_der(x),
        _ => return false,
    };
    let signature = match alg {
        Alg::Es256 => ecdsa_fixed(signature, Curve::P256.size()),
        Alg::Es384 => ecdsa_fixed(signature, Curve::P384.size()),
        _ => Some(signature.to_vec()),
    };
    let (Some(signature), Some(a)) = (signature, alg.jsonwebtoken()) else { return false };
    jsonwebtoken::crypto::verify(&b64url_encode(&signature), message, &key, a).unwrap_or(false)
}

fn verify_p521(point: &[u8], message: &[u8], signature: &[u8]) -> bool {
    use p521::ecdsa::signature::Verifier as _;
    let Ok(key) = p521::ecdsa::VerifyingKey::from_sec1_bytes(point) else { return false };
    let Some(fixed) = ecdsa_fixed(signature, Curve::P521.size()) else { return false };
    let Ok(signature) = p521::ecdsa::Signature::from_slice(&fixed) else { return false };
    key.verify(message, &signature).is_ok()
}

/// OPA's key selection: a key named by the header's `kid` alone decides; otherwise any key
/// whose `alg`, when it has one, is the header's.
fn verify_with_keys(keys: &[Key], header: &Header, alg: Alg, message: &[u8], signature: &[u8]) -> bool {
    if !header.kid.is_empty() {
        if let Some(key) = keys.iter().find(|k| k.kid == header.kid) {
            return verify_signature(&key.material, alg, message, signature);
        }
    }
    keys.iter()
        .filter(|k| k.alg.is_empty() || k.alg == header.alg)
        .any(|k| verify_signature(&k.material, alg, message, signature))
}

// ---------------------------------------------------------------------------------------------
// io.jwt.verify_*

/// `io.jwt.verify_hs256/384/512(jwt, secret)`. The header is not read, as in OPA.
fn jwt_verify_hmac(alg: Alg, args: &[Value]) -> Result<Value> {
    let jwt = string_operand(args, 0)?;
    let secret = string_operand(args, 1)?;
    let parts = split_token(jwt)?;
    let signature = decode_signature(parts.signature)?;
    if is_public_key_text(secret) {
        return Ok(Value::from(false));
    }
    let ok = cached_check(jwt, secret, alg.name(), || {
        verify_signature(&Material::Oct(secret.as_bytes().to_vec()), alg, parts.signing_input.as_bytes(), &signature)
    });
    Ok(Value::from(ok))
}

/// `io.jwt.verify_rs*/ps*/es*/eddsa(jwt, certificate)`: the signature checked with the
/// builtin's algorithm under the PEM key, the certificate's key, or the JWK(S).
fn jwt_verify_asymmetric(alg: Alg, args: &[Value]) -> Result<Value> {
    let jwt = string_operand(args, 0)?;
    let parts = split_token(jwt)?;
    let key_text = string_operand(args, 1)?;
    let keys = cached_keys(key_text)?;
    let signature = decode_signature(parts.signature)?;
    let header = Header::parse(&decode_header(parts.header)?)?;
    let ok = cached_check(jwt, key_text, alg.name(), || {
        verify_with_keys(&keys, &header, alg, parts.signing_input.as_bytes(), &signature)
    });
    Ok(Value::from(ok))
}

// ---------------------------------------------------------------------------------------------
// io.jwt.decode_verify

/// The constraints of `io.jwt.decode_verify`; an empty string is a constraint not given.
struct Constraints {
    keys: Option<std::sync::Arc<Vec<Key>>>,
    /// The `cert` or `secret` text: the signature-check cache's key.
    key_text: String,
    secret: String,
    alg: String,
    iss: String,
    aud: String,
    /// Nanoseconds since the epoch.
    time: f64,
}

/// A number as `f64`, rounding integers too large to be exact.
fn number_f64(v: &Value) -> Option<f64> {
    if !matches!(v, Value::Number(_)) {
        return None;
    }
    v.as_f64()
        .ok()
        .or_else(|| v.as_u64().ok().map(|n| n as f64))
        .or_else(|| v.as_i64().ok().map(|n| n as f64))
        .or_else(|| v.as_u128().ok().map(|n| n as f64))
        .or_else(|| v.as_i128().ok().map(|n| n as f64))
        .or_else(|| v.to_string().parse().ok())
}

fn now_ns() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_nanos() as f64)
}

impl Constraints {
    /// OPA's `parseTokenConstraints` and `validate`.
    fn parse(v: &Value) -> Result<Constraints> {
        let Value::Object(fields) = v else {
            bail!("operand 2 must be object but got {}", type_name(v));
        };
        let mut c = Constraints {
            keys: None,
            key_text: String::new(),
            secret: String::new(),
            alg: String::new(),
            iss: String::new(),
            aud: String::new(),
            time: -1.0,
        };
        for (k, v) in fields.iter() {
            let Value::String(name) = k else { bail!("unknown token validation constraint: {k}") };
            let text = || -> Result<String> {
                match v {
                    Value::String(s) => Ok(s.to_string()),
                    _ => bail!("{name} constraint: must be a string"),
                }
            };
            match name.as_ref() {
                "cert" => {
                    let Value::String(s) = v else { bail!("cert constraint: must be a string") };
                    c.keys = Some(cached_keys(s)?);
                    c.key_text = s.to_string();
                }
                "secret" => {
                    c.secret = text()?;
                    c.key_text.clone_from(&c.secret);
                }
                "alg" => c.alg = text()?,
                "iss" => c.iss = text()?,
                "aud" => c.aud = text()?,
                "time" => {
                    let t = number_f64(v).ok_or_else(|| anyhow!("token time constraint: must be a number"))?;
                    if !t.is_finite() {
                        bail!("token time constraint: invalid float64");
                    }
                    if t < 0.0 {
                        bail!("token time constraint: must not be negative");
                    }
                    c.time = t;
                }
                other => bail!("unknown token validation constraint: {other}"),
            }
        }
        if c.time < 0.0 {
            c.time = now_ns();
        }
        match (c.keys.is_some(), !c.secret.is_empty()) {
            (true, true) => bail!("duplicate key constraints"),
            (false, false) => bail!("no key constraint"),
            _ => Ok(c),
        }
    }

    /// The signature, with the header's algorithm, under the `cert` keys or the `secret`.
    fn verify(&self, header: &Header, message: &[u8], signature: &[u8]) -> bool {
        let Some(alg) = Alg::of_name(&header.alg) else { return false };
        match &self.keys {
            Some(keys) => verify_with_keys(keys, header, alg, message, signature),
            None if is_public_key_text(&self.secret) => false,
            None => verify_signature(&Material::Oct(self.secret.as_bytes().to_vec()), alg, message, signature),
        }
    }

    /// OPA's `validAudience`.
    fn audience_ok(&self, aud: &Value) -> bool {
        match aud {
            Value::String(s) => s.as_ref() == self.aud,
            Value::Array(items) => items.iter().any(|i| matches!(i, Value::String(s) if s.as_ref() == self.aud)),
            _ => false,
        }
    }
}

fn unverified() -> Value {
    Value::from(vec![Value::from(false), Value::new_object(), Value::new_object()])
}

/// `io.jwt.decode_verify(jwt, constraints)`: `[true, header, payload]` when the signature
/// verifies and the claims meet the constraints, `[false, {}, {}]` when not; malformed input
/// is an error.
fn jwt_decode_verify(args: &[Value]) -> Result<Value> {
    let constraints = Constraints::parse(args.get(1).unwrap_or(&Value::Undefined))?;
    let mut token = string_operand(args, 0)?.to_owned();
    // A token whose cty is JWT carries another one, verified in turn with the same
    // constraints; each round's token is strictly shorter than the one before.
    let (header, payload) = loop {
        let parts = split_token(&token)?;
        let header_value = decode_header(parts.header)?;
        let header = Header::parse(&header_value)?;
        if !header.valid() {
            return Ok(unverified());
        }
        if !constraints.alg.is_empty() && constraints.alg != header.alg {
            return Ok(unverified());
        }
        let signature = decode_signature(parts.signature)?;
        let alg = Alg::of_name(&header.alg).map_or("", Alg::name);
        let verified = cached_check(&token, &constraints.key_text, alg, || {
            constraints.verify(&header, parts.signing_input.as_bytes(), &signature)
        });
        if !verified {
            return Ok(unverified());
        }
        let payload = decode_payload_bytes(parts.payload)?;
        if header.cty.eq_ignore_ascii_case("JWT") {
            token = String::from_utf8_lossy(&payload).into_owned();
            continue;
        }
        break (header_value, payload);
    };
    let payload = json_object(&payload)?;

    if !constraints.iss.is_empty() {
        match &payload["iss"] {
            Value::String(iss) if iss.as_ref() == constraints.iss => {}
            _ => return Ok(unverified()),
        }
    }
    match &payload["aud"] {
        Value::Undefined => {
            if !constraints.aud.is_empty() {
                return Ok(unverified());
            }
        }
        aud => {
            if !constraints.audience_ok(aud) {
                return Ok(unverified());
            }
        }
    }
    // Seconds, compared as OPA does: the constraint time (ns) / 1e9 as a float against the
    // claim's number, exactly.
    let now = Value::from(constraints.time / 1e9);
    match &payload["exp"] {
        Value::Undefined => {}
        exp @ Value::Number(_) => {
            if now.cmp(exp) != Ordering::Less {
                return Ok(unverified());
            }
        }
        _ => bail!("exp value must be a number"),
    }
    match &payload["nbf"] {
        Value::Undefined => {}
        nbf @ Value::Number(_) => {
            if now.cmp(nbf) == Ordering::Less {
                return Ok(unverified());
            }
        }
        _ => bail!("nbf value must be a number"),
    }
    Ok(Value::from(vec![Value::from(true), header, payload]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::EncodingKey;
    use serde_json::{json, Value as Json};

    // Test keys generated once with `openssl genpkey` / `openssl req -x509` for these tests
    // alone (RSA 2048, P-256, P-384, P-521, Ed25519; self-signed certificates for two of them).
    const RSA_PRIV: &str = "-----BEGIN PRIVATE KEY-----
MIIEvwIBADANBgkqhkiG9w0BAQEFAASCBKkwggSlAgEAAoIBAQC+0d2BYDhMm0ii
ugUHJef56Q3J+rQuOJSBXBpukzmhcopSezTzvhM+L8IXxM7LroLTjYUzSSH/T8nw
416hRX4bD+bLunxrvJjai4SpJe0Lrw0ZEP0rB9oyotPZj9u9t6mZK/ScHrJqHwLC
IlmXLm5nOJOjTfuB/MhK9j+AZb39J2Te6WTH17YaZqlkxY+TRVL18AqX7kzqh9it
ylo+rMxHjpxiyUPU4vWHTnmjoHVbk/T2HsrZZLyeonhruHpDtmiRQF2/M/G73fIc
t5YIjV6IHt6moi9otfOy2qxpjOQJScF/ufiZNAnAOt3vYc7t9cbRROtN+0OwFHo1
S6o/XJjtAgMBAAECggEAEJ9diWClZt78E9jaiUXfEGEh519khMY/AYnRb6J5mbvN
muPKuBTtvjQQ11s4nHumP+GLIe2T/Zaow8g6vRe9pYPcGhEzt3rlYdxXgRihrqvg
GzfkpfP4KQMQK1qhzMQMDSDMHTF7X002Q00Uutu7mFhQXCB18Vvg4s7St0+lnkDC
toQLDGWFtcVhCVv0+7TSIXB3brXhPaDielVb7dPCZ88mY3S5gm5QJ6nDgGqZiU6J
pMLs3hKGmgRgVOa0hlYRlddUVblX4CKYw2cCKT94N9zSya5H8SQvR8xP2E8IRXA0
zAdBl9SPxgwUqswpTGcxsp8NBlZ3EgESvo++8UK04QKBgQDn5gEv1GamsYZ+IoT9
6G39pDWzDH/9SqP0T4/Qgsfy66OuGPfGZ2O2AGOBWaKdVnXtiujC4DuU8i5Uoa0g
w/CeMPmhlhRCVvTghj2PJNJ6llifAR8J4TvA1VDAWyovxBdXeNcJ1Yy8HH+o1HrW
GvD3gzXbWBCNRYDSnySdFDOF1QKBgQDSpucmcoqo7wmQ+JP1dGmRkxR6pcifu8am
kRYR9DqTVgTAKgVIjXocJe3sCgsHguTysElI52LKd/15PqFqOR7k4aXV/KfMBsRZ
HCjLMa5b1e0NW0vrN2KA4+yt1U7QOvOgI9oGtKtm0Cz7qyo62bkRaNcpMF5AMXE6
R4YAysRauQKBgQCDLjBDr0J2T3xGRB65R09ZKRgbdhm83glLPeqbyC91smjAJm2b
dYcJQMUJOfxsRqmlO2waOSBbTHh69Y5rN4wY4JmGF9DUCj6x+B5AqFLMd9of8FFv
lFLp7YGlnqyJosKVf80dSgk3rGNmzPPDxC/FxBqmPvX2BHgwLUhX90KCFQKBgQCA
Qt+7qUKEWgeZHcH5Ukh1OvjdNNRTbiImiXDGvc5sp5N87hkJdBtFyFJ1xiexCyIc
Ivp8SWb9oNHVYS0nYGBPPJWdFZmVwQkMuPidwEJJ6JfN6ijvr2lq0Vzq+1Zhs4Nj
nnDCZH94uoipNC8iZi8pSoy3p5u7ul8W/TW6hbvJAQKBgQDMIOlKiiyGYjITNUBp
A5XgQOZuO/pBnntpCmcmpgrVFjMMg2R8SDvjoD6xKJFNELOht4nkBl5Kou7L64Gh
krG+8xrn1QEseTROWDGRAY9aCDKAf8BvCZWJyzfaPAj5Nzkdr6832ckb57BhgwWu
U0Iz7XGM0/y0oFM5qASYqWbjXw==
-----END PRIVATE KEY-----
";
    const RSA_PUB: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAvtHdgWA4TJtIoroFByXn
+ekNyfq0LjiUgVwabpM5oXKKUns0874TPi/CF8TOy66C042FM0kh/0/J8ONeoUV+
Gw/my7p8a7yY2ouEqSXtC68NGRD9KwfaMqLT2Y/bvbepmSv0nB6yah8CwiJZly5u
ZziTo037gfzISvY/gGW9/Sdk3ulkx9e2GmapZMWPk0VS9fAKl+5M6ofYrcpaPqzM
R46cYslD1OL1h055o6B1W5P09h7K2WS8nqJ4a7h6Q7ZokUBdvzPxu93yHLeWCI1e
iB7epqIvaLXzstqsaYzkCUnBf7n4mTQJwDrd72HO7fXG0UTrTftDsBR6NUuqP1yY
7QIDAQAB
-----END PUBLIC KEY-----
";
    const RSA_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIDETCCAfmgAwIBAgIUPbEr5jY0JZ3NGvU83ASOujVQOD0wDQYJKoZIhvcNAQEL
BQAwFzEVMBMGA1UEAwwMand0LXRlc3QtcnNhMCAXDTI2MTIwMzE2NDgwNloYDzIx
MjYxMTA5MTY0ODA2WjAXMRUwEwYDVQQDDAxqd3QtdGVzdC1yc2EwggEiMA0GCSqG
SIb3DQEBAQUAA4IBDwAwggEKAoIBAQC+0d2BYDhMm0iiugUHJef56Q3J+rQuOJSB
XBpukzmhcopSezTzvhM+L8IXxM7LroLTjYUzSSH/T8nw416hRX4bD+bLunxrvJja
i4SpJe0Lrw0ZEP0rB9oyotPZj9u9t6mZK/ScHrJqHwLCIlmXLm5nOJOjTfuB/MhK
9j+AZb39J2Te6WTH17YaZqlkxY+TRVL18AqX7kzqh9itylo+rMxHjpxiyUPU4vWH
TnmjoHVbk/T2HsrZZLyeonhruHpDtmiRQF2/M/G73fIct5YIjV6IHt6moi9otfOy
2qxpjOQJScF/ufiZNAnAOt3vYc7t9cbRROtN+0OwFHo1S6o/XJjtAgMBAAGjUzBR
MB0GA1UdDgQWBBSobWmy2Z098nkmgDtb1wLqU1mB7jAfBgNVHSMEGDAWgBSobWmy
2Z098nkmgDtb1wLqU1mB7jAPBgNVHRMBAf8EBTADAQH/MA0GCSqGSIb3DQEBCwUA
A4IBAQBIypXKu0BFluGhvMHt/qLuj3itFsma3CvUBJ9brp5xLmLQrw4d7mmAzipr
AfhR+pCyDgZZbNaEyomVNoVQejJ83Aj2fiz+4qxGu1LJ0wmhw+u7YXveefoIVmZH
JJ3SUgQGVWCf03zyYfqqX81IVirJryDsFJtxypJPhRALGCdhclHp79ovAYTPTmiu
OkCvxFd/BN1oVTehDPvky3mNA2J/AGS6pT30Lvrl7br8K9DSVJULRuy/ruPsNzXZ
1uXI+121kc+2NLCJkKbI1PXjj5t/HWXqMNuSV29AqrCsjZVu+E6xrz/K8oEKk9Ou
ffh/1Yqht+GDkGpWJbE580wwDjK8
-----END CERTIFICATE-----
";
    const RSA2_PRIV: &str = "-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQDl5wmMecTgl6mP
bIluO1wrFLAez4AGp1CPIAKsxvSMr03rqyy/HEX7OJ5uG2TqVRtQvRxw4h+6esHl
/oJLuesXtRa/Z1S03pLMgAss0KdZMDN5Z/Xe4RoJZ1mOJ9/xaqw/BhNQRbOmtWPk
lKCI74MCzJieuBM7EfCBDqFN/9mRrjVgLSilzeoGOzO/hmaLbE65oyTLSgmcFrSh
b/D2oWeMl6Xd4hT5niNe5JbXEjGnE3M1dTxMw0fwTZAN7CV6vbAx5PhuuhopIAC4
NfNpXIjQ6IvJOdt7x4Bk403VKMA4gd3SDnqKDzZbziyX4BUNP1kR3aBtas6eezXC
0S8M7DwNAgMBAAECggEAQk11swYhMdZ7Z6oZHmnPJHuEaXZVSVXyhTxpmRONzo72
LWvB7WHFivSiuEV9PpmJ1aicba/BD8I8bkyOnjFBrCYlJ9EwnDL+aizZTDTmtnGQ
vsgtH/iSTjj4mmdEjfbCMzDY3BMmAwOYCgGVJLjSczm3IDsdDLGZR1cFTR3mzLzB
nvjinDaEuk7YOQwaI8hq7e0oesdckzU02at4Re/tMsO9A9wZGvz0oAB5xxMQheEc
bUijA9wIIwX4hUr7eAK11bZMzQowWnplXdDnXIqq5akJNfFKd2XakqlGnJz/vv5P
Rq9h1o2VEgwb2ERK/kHikrtzinQJTlG3B6/wuXoLTwKBgQD4RZS9ronF6klese2N
vHf2/+GKqdWyNthneSPvseC0LTuB4Kl8FS6L1I+MHOggmCSDBYbEgTv2Pj25DWT8
31qU1x62MVfPt6l/4O9blQpQcOw5MzSrgoU/1Fu+wbttQ8DnQlx7BnFyTLdseVMX
xJpxjS6mlPp1VpPkB2puNLeGpwKBgQDtDxNauzidifrp2jKW3HpdIBB3hK189CmO
mZKsvOXFPDnecWe/G3eDlvfMB0vYeD2s+vNtkaNlrFFHsktSXXjm+Mp21DQQgP0J
iznRb3Q7SFgrnlK2E4toNZ7AFq0e/8BQ7J2xxNdo+favX4P/v4paOd6WnnCVD96G
KiEG3VQyKwKBgQDhO0awOiqVGXIMbYCkaAmxU/wKLv9GGUmDvbujVY0UCEEHF4jK
n/DFPEYqB4NzJnNhRd84YEHEqDyYqBUo73wesXYUNXmDYQxtjeO4AuMDjR5Q2ip7
OgKmoIHG8byWaLQVWPfLSFIdLons57hBRMQUJc/foiIB11R9t1iPuFWS2wKBgQCj
ii7z/Q0FwdbT1a/o25me/SvfCC0XcunocpH5kSeCdhYGG35THQPKSDATFUWBxRHn
cAjXog1zavl32MyVud5amXAzohl4+UOXffEZRyaMb1BEZyjwa3NVJQirw/kS1aU7
LsFrjjx9M1S3j9FkciNkM2AX0J4id5wwOogmUDJxmQKBgDdIu2qopV/Zj6DbIZWR
LNzXBhomI2qgx1jVY5qMajJun4u+VWnRo3oUw9pUbTndOouZGi57DVC9bhRAgHob
cCqus0G/5lxJsK8ivc6HOqRMu0wKxD4qmT5+ZMtKUvEYyfr7rRv7bXiCgRsq9c/D
Xfppfb4JnIHG+Bf6h26J/Q64
-----END PRIVATE KEY-----
";
    const RSA2_PUB: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA5ecJjHnE4Jepj2yJbjtc
KxSwHs+ABqdQjyACrMb0jK9N66ssvxxF+ziebhtk6lUbUL0ccOIfunrB5f6CS7nr
F7UWv2dUtN6SzIALLNCnWTAzeWf13uEaCWdZjiff8WqsPwYTUEWzprVj5JSgiO+D
AsyYnrgTOxHwgQ6hTf/Zka41YC0opc3qBjszv4Zmi2xOuaMky0oJnBa0oW/w9qFn
jJel3eIU+Z4jXuSW1xIxpxNzNXU8TMNH8E2QDewler2wMeT4broaKSAAuDXzaVyI
0OiLyTnbe8eAZONN1SjAOIHd0g56ig82W84sl+AVDT9ZEd2gbWrOnns1wtEvDOw8
DQIDAQAB
-----END PUBLIC KEY-----
";
    const P256_PRIV: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg82XLc3h1P/UQgcMS
07YOexk0de8f2CVP0DVDy6CzUOKhRANCAAQ91Rtt7PEXpZIOh/cbFrjlmzMbuMHS
uiUHgIzpP0mxM640vExAp9+y/AgGveWMehWZjwlRr44PaiKZmb0DOp4V
-----END PRIVATE KEY-----
";
    const P256_PUB: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEPdUbbezxF6WSDof3Gxa45ZszG7jB
0rolB4CM6T9JsTOuNLxMQKffsvwIBr3ljHoVmY8JUa+OD2oimZm9AzqeFQ==
-----END PUBLIC KEY-----
";
    const P256_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBhzCCAS2gAwIBAgIUTeUZuAn9B/RJuK5GdDPxh0CWMd4wCgYIKoZIzj0EAwIw
GDEWMBQGA1UEAwwNand0LXRlc3QtcDI1NjAgFw0yNjEyMDMxNjQ4MDZaGA8yMTI2
MTEwOTE2NDgwNlowGDEWMBQGA1UEAwwNand0LXRlc3QtcDI1NjBZMBMGByqGSM49
AgEGCCqGSM49AwEHA0IABD3VG23s8Relkg6H9xsWuOWbMxu4wdK6JQeAjOk/SbEz
rjS8TECn37L8CAa95Yx6FZmPCVGvjg9qIpmZvQM6nhWjUzBRMB0GA1UdDgQWBBTU
h0XnBDlQbCpsZBUv++JNkwTX+DAfBgNVHSMEGDAWgBTUh0XnBDlQbCpsZBUv++JN
kwTX+DAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIBQRHXfiBHno
jSAMPBlX8qV5s4PSks9f0TqnjpY+PJpFAiEA7bj/tkegDJ3B4BLbh2ECNlKNr+aX
SRb96LJNlevfolQ=
-----END CERTIFICATE-----
";
    const P384_PRIV: &str = "-----BEGIN PRIVATE KEY-----
MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDDRxd+GTdRavFaEGA1h
0YMuyGx1ZkTXR9VxImq/kW506bFtE8KtjUwWbWLD4s8V6OqhZANiAATHK8uxLryI
0HWuOZ2bkeIOTK3/O89QdhDe7VYkPq0dCI6tKSn5Ok7jUdJE+DuhChrBOpKIUIaZ
EnX/1CEigv0w1iLcifCVstEui20DXOHuQBkTFMRd/LdRiP91WMGEXn8=
-----END PRIVATE KEY-----
";
    const P384_PUB: &str = "-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAExyvLsS68iNB1rjmdm5HiDkyt/zvPUHYQ
3u1WJD6tHQiOrSkp+TpO41HSRPg7oQoawTqSiFCGmRJ1/9QhIoL9MNYi3InwlbLR
LottA1zh7kAZExTEXfy3UYj/dVjBhF5/
-----END PUBLIC KEY-----
";
    const P521_PRIV: &str = "-----BEGIN PRIVATE KEY-----
MIHuAgEAMBAGByqGSM49AgEGBSuBBAAjBIHWMIHTAgEBBEIARUpwa9XbsuPGdzcQ
/jPOLqEMCil+6oa/ssPOFO4r3/YH6OhPbkkO9lx1DdJC7w2sh617aJVJ7xGwjwuj
GG8FeOShgYkDgYYABAAJlNLVlgzhsB8G2SM7MfXu/nN6eZSFXPs+UKfYFtnUR6CX
kpyhJmY/UFOD5W8U6E620FDasxCo6qI49deZGZidpwAswFs/STsB7dK7T0d7oZb8
I6+ULIF/6xEd24kjKr8U2hey584XGQ/30mS4KgPwcU81LHDfynRyjDy7E7k5cG8F
tA==
-----END PRIVATE KEY-----
";
    const P521_PUB: &str = "-----BEGIN PUBLIC KEY-----
MIGbMBAGByqGSM49AgEGBSuBBAAjA4GGAAQACZTS1ZYM4bAfBtkjOzH17v5zenmU
hVz7PlCn2BbZ1Eegl5KcoSZmP1BTg+VvFOhOttBQ2rMQqOqiOPXXmRmYnacALMBb
P0k7Ae3Su09He6GW/COvlCyBf+sRHduJIyq/FNoXsufOFxkP99JkuCoD8HFPNSxw
38p0cow8uxO5OXBvBbQ=
-----END PUBLIC KEY-----
";
    const ED_PRIV: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIEyJvjVUE5uLvO/7uVvO5VE8KeXqLCAm7qFk/YopZSvi
-----END PRIVATE KEY-----
";
    const ED_PUB: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAmfv0svIgC9+4X2iIsE1kUH2046Ux3WH/gpCh7WClkWg=
-----END PUBLIC KEY-----
";

    // The same public keys as JWK fields.
    const RSA_N: &str = "vtHdgWA4TJtIoroFByXn-ekNyfq0LjiUgVwabpM5oXKKUns0874TPi_CF8TOy66C042FM0kh_0_J8ONeoUV-Gw_my7p8a7yY2ouEqSXtC68NGRD9KwfaMqLT2Y_bvbepmSv0nB6yah8CwiJZly5uZziTo037gfzISvY_gGW9_Sdk3ulkx9e2GmapZMWPk0VS9fAKl-5M6ofYrcpaPqzMR46cYslD1OL1h055o6B1W5P09h7K2WS8nqJ4a7h6Q7ZokUBdvzPxu93yHLeWCI1eiB7epqIvaLXzstqsaYzkCUnBf7n4mTQJwDrd72HO7fXG0UTrTftDsBR6NUuqP1yY7Q";
    const RSA2_N: &str = "5ecJjHnE4Jepj2yJbjtcKxSwHs-ABqdQjyACrMb0jK9N66ssvxxF-ziebhtk6lUbUL0ccOIfunrB5f6CS7nrF7UWv2dUtN6SzIALLNCnWTAzeWf13uEaCWdZjiff8WqsPwYTUEWzprVj5JSgiO-DAsyYnrgTOxHwgQ6hTf_Zka41YC0opc3qBjszv4Zmi2xOuaMky0oJnBa0oW_w9qFnjJel3eIU-Z4jXuSW1xIxpxNzNXU8TMNH8E2QDewler2wMeT4broaKSAAuDXzaVyI0OiLyTnbe8eAZONN1SjAOIHd0g56ig82W84sl-AVDT9ZEd2gbWrOnns1wtEvDOw8DQ";
    const P256_X: &str = "PdUbbezxF6WSDof3Gxa45ZszG7jB0rolB4CM6T9JsTM";
    const P256_Y: &str = "rjS8TECn37L8CAa95Yx6FZmPCVGvjg9qIpmZvQM6nhU";
    const P384_X: &str = "xyvLsS68iNB1rjmdm5HiDkyt_zvPUHYQ3u1WJD6tHQiOrSkp-TpO41HSRPg7oQoa";
    const P384_Y: &str = "wTqSiFCGmRJ1_9QhIoL9MNYi3InwlbLRLottA1zh7kAZExTEXfy3UYj_dVjBhF5_";
    const P521_X: &str = "AAmU0tWWDOGwHwbZIzsx9e7-c3p5lIVc-z5Qp9gW2dRHoJeSnKEmZj9QU4PlbxToTrbQUNqzEKjqojj115kZmJ2n";
    const P521_Y: &str = "ACzAWz9JOwHt0rtPR3uhlvwjr5QsgX_rER3biSMqvxTaF7LnzhcZD_fSZLgqA_BxTzUscN_KdHKMPLsTuTlwbwW0";
    const ED_X: &str = "mfv0svIgC9-4X2iIsE1kUH2046Ux3WH_gpCh7WClkWg";

    const SECRET: &str = "correct horse battery staple";
    /// 2001-09-09T01:46:40Z, in nanoseconds.
    const T0: u64 = 1_000_000_000_000_000_000;

    fn b64(bytes: &[u8]) -> String {
        b64url_encode(bytes)
    }

    fn s(text: &str) -> Value {
        Value::from(text)
    }

    fn jwk_rsa(n: &str) -> Json {
        json!({"kty": "RSA", "n": n, "e": "AQAB"})
    }

    fn jwk_for(alg: Alg) -> Json {
        match alg {
            Alg::Hs256 | Alg::Hs384 | Alg::Hs512 => json!({"kty": "oct", "k": b64(SECRET.as_bytes())}),
            Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512 => jwk_rsa(RSA_N),
            Alg::Es256 => json!({"kty": "EC", "crv": "P-256", "x": P256_X, "y": P256_Y}),
            Alg::Es384 => json!({"kty": "EC", "crv": "P-384", "x": P384_X, "y": P384_Y}),
            Alg::Es512 => json!({"kty": "EC", "crv": "P-521", "x": P521_X, "y": P521_Y}),
            Alg::EdDsa => json!({"kty": "OKP", "crv": "Ed25519", "x": ED_X}),
        }
    }

    /// The key a builtin for `alg` takes: the secret, or the public key as PEM.
    fn verification_text(alg: Alg) -> &'static str {
        match alg {
            Alg::Hs256 | Alg::Hs384 | Alg::Hs512 => SECRET,
            Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512 => RSA_PUB,
            Alg::Es256 => P256_PUB,
            Alg::Es384 => P384_PUB,
            Alg::Es512 => P521_PUB,
            Alg::EdDsa => ED_PUB,
        }
    }

    /// A key that did not sign: another RSA key or secret, another curve, another key type.
    fn wrong_text(alg: Alg) -> &'static str {
        match alg {
            Alg::Hs256 | Alg::Hs384 | Alg::Hs512 => "another secret",
            Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512 => RSA2_PUB,
            Alg::Es256 => P384_PUB,
            Alg::Es384 => P256_PUB,
            Alg::Es512 => P384_PUB,
            Alg::EdDsa => RSA_PUB,
        }
    }

    fn sign_input(alg: Alg, input: &str, rsa_private: &str) -> String {
        if alg == Alg::Es512 {
            use p521::ecdsa::signature::Signer as _;
            use p521::pkcs8::DecodePrivateKey as _;
            let secret = p521::SecretKey::from_pkcs8_pem(P521_PRIV).unwrap();
            let key = p521::ecdsa::SigningKey::from_bytes(&secret.to_bytes()).unwrap();
            let signature: p521::ecdsa::Signature = key.sign(input.as_bytes());
            return b64(&signature.to_bytes());
        }
        let key = match alg {
            Alg::Hs256 | Alg::Hs384 | Alg::Hs512 => EncodingKey::from_secret(SECRET.as_bytes()),
            Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512 => {
                EncodingKey::from_rsa_pem(rsa_private.as_bytes()).unwrap()
            }
            Alg::Es256 => EncodingKey::from_ec_pem(P256_PRIV.as_bytes()).unwrap(),
            Alg::Es384 => EncodingKey::from_ec_pem(P384_PRIV.as_bytes()).unwrap(),
            Alg::EdDsa => EncodingKey::from_ed_pem(ED_PRIV.as_bytes()).unwrap(),
            Alg::Es512 => unreachable!(),
        };
        jsonwebtoken::crypto::sign(input.as_bytes(), &key, alg.jsonwebtoken().unwrap()).unwrap()
    }

    /// A token with this exact header and payload, signed with `alg` by the test keys.
    fn sign_raw(alg: Alg, header: &Json, payload: &str) -> String {
        let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(payload.as_bytes()));
        let signature = sign_input(alg, &input, RSA_PRIV);
        format!("{input}.{signature}")
    }

    fn token(alg: Alg, claims: &Json) -> String {
        sign_raw(alg, &json!({"alg": alg.name(), "typ": "JWT"}), &claims.to_string())
    }

    fn token_with_kid(alg: Alg, kid: &str, rsa_private: &str, claims: &Json) -> String {
        let header = json!({"alg": alg.name(), "kid": kid});
        let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        let signature = sign_input(alg, &input, rsa_private);
        format!("{input}.{signature}")
    }

    fn claims() -> Json {
        json!({"iss": "https://issuer.example", "aud": "api", "sub": "alice", "nbf": 1_000_000_000, "exp": 1_000_003_600})
    }

    /// The signature with one character in its middle changed (a middle character carries six
    /// bits of the signature; the last one may carry only padding bits).
    fn tamper(t: &str) -> String {
        let (head, sig) = t.rsplit_once('.').unwrap();
        let mut chars: Vec<char> = sig.chars().collect();
        let i = chars.len() / 2;
        chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
        format!("{head}.{}", chars.into_iter().collect::<String>())
    }

    fn builtin(alg: Alg) -> fn(Alg, &[Value]) -> Result<Value> {
        if alg.is_hmac() {
            jwt_verify_hmac
        } else {
            jwt_verify_asymmetric
        }
    }

    fn verify(alg: Alg, jwt: &str, key: &str) -> Result<bool> {
        Ok(*builtin(alg)(alg, &[s(jwt), s(key)])?.as_bool()?)
    }

    fn dv(jwt: &str, constraints: Json) -> Result<(bool, Value, Value)> {
        let v = jwt_decode_verify(&[s(jwt), Value::from(constraints)])?;
        Ok((*v[0].as_bool()?, v[1].clone(), v[2].clone()))
    }

    fn valid(jwt: &str, constraints: Json) -> bool {
        dv(jwt, constraints).unwrap().0
    }

    fn decode(jwt: &str) -> Result<Value> {
        jwt_decode(&[s(jwt)])
    }

    fn key_constraint(alg: Alg) -> Json {
        if alg.is_hmac() {
            json!({"secret": SECRET, "aud": "api", "time": T0})
        } else {
            json!({"cert": verification_text(alg), "aud": "api", "time": T0})
        }
    }

    #[test]
    fn every_algorithm_verifies_and_a_tampered_token_does_not() {
        for alg in Alg::ALL {
            let name = alg.name();
            let t = token(alg, &claims());
            let key = verification_text(alg);
            assert!(verify(alg, &t, key).unwrap(), "{name} verifies");
            assert!(!verify(alg, &tamper(&t), key).unwrap(), "{name}: tampered signature");
            let (head, sig) = t.rsplit_once('.').unwrap();
            let (header, _) = head.split_once('.').unwrap();
            let other_payload = format!("{header}.{}.{sig}", b64(br#"{"sub":"mallory"}"#));
            assert!(!verify(alg, &other_payload, key).unwrap(), "{name}: payload swapped");
            assert!(!verify(alg, &t, wrong_text(alg)).unwrap(), "{name}: another key");
            // The same through decode_verify, and with the key as a JWK and as a JWKS.
            assert!(valid(&t, key_constraint(alg)), "{name}: decode_verify");
            assert!(!valid(&tamper(&t), key_constraint(alg)), "{name}: decode_verify tampered");
            let jwk = jwk_for(alg).to_string();
            let jwks = json!({"keys": [jwk_for(alg)]}).to_string();
            if !alg.is_hmac() {
                assert!(verify(alg, &t, &jwk).unwrap(), "{name}: JWK");
                assert!(verify(alg, &t, &jwks).unwrap(), "{name}: JWKS");
                assert!(!verify(alg, &tamper(&t), &jwks).unwrap(), "{name}: JWKS tampered");
            }
            // An `oct` JWK is a `cert` for HMAC tokens in decode_verify, as in OPA.
            assert!(valid(&t, json!({"cert": jwks, "aud": "api", "time": T0})), "{name}: decode_verify JWKS");
        }
    }

    #[test]
    fn each_builtin_uses_its_own_algorithm() {
        let rs = token(Alg::Rs256, &claims());
        assert!(!verify(Alg::Ps256, &rs, RSA_PUB).unwrap());
        assert!(!verify(Alg::Rs384, &rs, RSA_PUB).unwrap());
        let es = token(Alg::Es256, &claims());
        assert!(!verify(Alg::Es384, &es, P256_PUB).unwrap(), "P-256 key, SHA-384");
        assert!(!verify(Alg::Rs256, &es, P256_PUB).unwrap(), "an EC key for RSA");
        assert!(!verify(Alg::EdDsa, &es, P256_PUB).unwrap());
        let hs = token(Alg::Hs256, &claims());
        assert!(!verify(Alg::Hs512, &hs, SECRET).unwrap());
        // As in OPA, verify_<alg> does not look at the header's alg; decode_verify does.
        let mislabelled = {
            let header = json!({"alg": "PS256"});
            let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims().to_string().as_bytes()));
            format!("{input}.{}", sign_input(Alg::Rs256, &input, RSA_PRIV))
        };
        assert!(verify(Alg::Rs256, &mislabelled, RSA_PUB).unwrap());
        assert!(!valid(&mislabelled, json!({"cert": RSA_PUB, "aud": "api", "time": T0})));
    }

    #[test]
    fn certificates_give_their_public_key() {
        let rs = token(Alg::Rs256, &claims());
        assert!(verify(Alg::Rs256, &rs, RSA_CERT).unwrap());
        assert!(!verify(Alg::Rs256, &tamper(&rs), RSA_CERT).unwrap());
        assert!(valid(&rs, json!({"cert": RSA_CERT, "aud": "api", "time": T0})));
        let es = token(Alg::Es256, &claims());
        assert!(verify(Alg::Es256, &es, P256_CERT).unwrap());
        assert!(!verify(Alg::Es256, &es, RSA_CERT).unwrap(), "a certificate of another key type");
        assert!(valid(&es, json!({"cert": P256_CERT, "aud": "api", "time": T0})));
        // Go's PEM reader: a block may follow other text, and its final newline is optional,
        // but nothing may follow it.
        assert!(verify(Alg::Es256, &es, &format!("my key:\n{P256_CERT}")).unwrap());
        assert!(verify(Alg::Es256, &es, P256_CERT.trim_end()).unwrap());
        assert!(verify(Alg::Es256, &es, &P256_CERT.replace('\n', "\r\n")).unwrap());
        assert!(verify(Alg::Es256, &es, &format!("{P256_CERT}\n")).is_err());
        assert!(verify(Alg::Es256, &es, &format!("{P256_CERT}{RSA_CERT}")).is_err(), "a chain");
    }

    #[test]
    fn a_jwks_selects_by_kid_and_by_each_keys_alg() {
        let jwks = json!({"keys": [
            {"kty": "RSA", "kid": "a", "n": RSA_N, "e": "AQAB"},
            {"kty": "RSA", "kid": "b", "n": RSA2_N, "e": "AQAB"},
            {"kty": "EC", "kid": "c", "crv": "P-256", "x": P256_X, "y": P256_Y},
            {"kty": "OKP", "kid": "d", "crv": "X25519", "x": ED_X},
        ]})
        .to_string();
        let at = json!({"cert": jwks, "aud": "api", "time": T0});
        let by_b = token_with_kid(Alg::Rs256, "b", RSA2_PRIV, &claims());
        assert!(verify(Alg::Rs256, &by_b, &jwks).unwrap());
        let (ok, header, payload) = dv(&by_b, at.clone()).unwrap();
        assert!(ok);
        assert_eq!(header["kid"], s("b"));
        assert_eq!(payload["sub"], s("alice"));
        // Signed by key a but naming key b: only b is tried.
        let a_naming_b = token_with_kid(Alg::Rs256, "b", RSA_PRIV, &claims());
        assert!(!verify(Alg::Rs256, &a_naming_b, &jwks).unwrap());
        assert!(!valid(&a_naming_b, at.clone()));
        // A kid no key has, or none at all: every key is tried.
        let unknown_kid = token_with_kid(Alg::Rs256, "zzz", RSA_PRIV, &claims());
        assert!(verify(Alg::Rs256, &unknown_kid, &jwks).unwrap());
        assert!(valid(&unknown_kid, at.clone()));
        let es = token_with_kid(Alg::Es256, "c", RSA_PRIV, &claims());
        assert!(verify(Alg::Es256, &es, &jwks).unwrap());
        assert!(valid(&es, at.clone()));
        assert!(!valid(&token_with_kid(Alg::Es256, "a", RSA_PRIV, &claims()), at.clone()), "kid of an RSA key");
        // A key's own alg: without a kid match, a key for another algorithm is skipped ...
        let pinned = json!({"keys": [{"kty": "RSA", "kid": "a", "alg": "RS384", "n": RSA_N, "e": "AQAB"}]}).to_string();
        assert!(!verify(Alg::Rs256, &token(Alg::Rs256, &claims()), &pinned).unwrap());
        assert!(verify(Alg::Rs384, &token(Alg::Rs384, &claims()), &pinned).unwrap());
        // ... and one whose alg is no JWS algorithm is left out of the set.
        let enc_only = json!({"keys": [{"kty": "RSA", "alg": "RSA-OAEP", "n": RSA_N, "e": "AQAB"}]}).to_string();
        assert!(!verify(Alg::Rs256, &token(Alg::Rs256, &claims()), &enc_only).unwrap());
        // An empty set verifies nothing, and is no error.
        assert!(!verify(Alg::Rs256, &by_b, r#"{"keys": []}"#).unwrap());
        assert!(!valid(&by_b, json!({"cert": r#"{"keys": []}"#, "aud": "api", "time": T0})));
    }

    fn at(seconds: f64) -> Json {
        json!({"secret": SECRET, "iss": "https://issuer.example", "aud": "api", "time": seconds * 1e9})
    }

    #[test]
    fn decode_verify_checks_the_time_issuer_audience_and_algorithm() {
        let t = token(Alg::Hs256, &claims());
        let (ok, header, payload) = dv(&t, at(1_000_000_500.0)).unwrap();
        assert!(ok);
        assert_eq!(header, Value::from(json!({"alg": "HS256", "typ": "JWT"})));
        assert_eq!(payload, Value::from(claims()));
        // exp: valid strictly before it; nbf: valid from it on.
        assert!(!valid(&t, at(1_000_003_600.0)), "at exp");
        assert!(!valid(&t, at(1_000_009_999.0)), "expired");
        assert!(valid(&t, at(1_000_003_599.5)), "just before exp");
        assert!(valid(&t, at(1_000_000_000.0)), "at nbf");
        assert!(!valid(&t, at(999_999_999.5)), "not yet valid");
        assert_eq!(dv(&t, at(1_000_009_999.0)).unwrap().1, Value::new_object());
        assert_eq!(dv(&t, at(1_000_009_999.0)).unwrap().2, Value::new_object());
        // The default time is now, and this token expired in 2001.
        assert!(!valid(&t, json!({"secret": SECRET, "aud": "api"})));
        let later = json!({"exp": 32_503_680_000u64, "nbf": 1_000_000_000});
        assert!(valid(&token(Alg::Hs256, &later), json!({"secret": SECRET})));

        let with = |k: &str, v: Json| {
            let mut c = at(1_000_000_500.0);
            c[k] = v;
            c
        };
        assert!(!valid(&t, with("iss", json!("https://other.example"))), "wrong iss");
        assert!(!valid(&token(Alg::Hs256, &json!({"aud": "api"})), at(1.0)), "iss asked, token has none");
        assert!(!valid(&t, with("aud", json!("other"))), "wrong aud");
        let mut no_aud = at(1_000_000_500.0);
        no_aud.as_object_mut().unwrap().remove("aud");
        assert!(!valid(&t, no_aud), "the token has an aud, the constraints none");
        let tokens_without_aud = token(Alg::Hs256, &json!({"iss": "https://issuer.example"}));
        assert!(!valid(&tokens_without_aud, at(1.0)), "aud asked, the token has none");
        assert!(valid(&tokens_without_aud, json!({"secret": SECRET, "iss": "https://issuer.example"})));
        let many = token(Alg::Hs256, &json!({"iss": "https://issuer.example", "aud": ["x", "api"]}));
        assert!(valid(&many, at(1.0)));
        assert!(!valid(&many, with("aud", json!("y"))));
        let numeric_aud = token(Alg::Hs256, &json!({"iss": "https://issuer.example", "aud": 7}));
        assert!(!valid(&numeric_aud, at(1.0)));
        assert!(!valid(&t, with("alg", json!("HS512"))), "wrong alg");
        assert!(!valid(&t, with("alg", json!("hs256"))), "alg is case-sensitive");
        assert!(valid(&t, with("alg", json!("HS256"))));
        // The time constraint is a number of nanoseconds; floats and big integers both work.
        assert!(valid(&t, with("time", json!(1_000_000_500_000_000_000u64))));
        assert!(!valid(&t, with("time", json!(1_000_003_600_000_000_000u64))));
        // Fractional claims are compared exactly.
        let fractional = token(Alg::Hs256, &json!({"exp": 1_000_000_000.25}));
        assert!(valid(&fractional, json!({"secret": SECRET, "time": 1_000_000_000_200_000_000u64})));
        assert!(!valid(&fractional, json!({"secret": SECRET, "time": 1_000_000_000_250_000_000u64})));
        // Claims of the wrong type are errors, as in OPA.
        assert!(dv(&token(Alg::Hs256, &json!({"exp": "soon"})), json!({"secret": SECRET})).is_err());
        assert!(dv(&token(Alg::Hs256, &json!({"nbf": null})), json!({"secret": SECRET})).is_err());
    }

    #[test]
    fn decode_verify_refuses_malformed_constraints() {
        let t = token(Alg::Hs256, &claims());
        for bad in [
            json!({"secret": SECRET, "leeway": 5}),
            json!({"secret": SECRET, "cert": RSA_PUB}),
            json!({}),
            json!({"secret": ""}),
            json!({"iss": "x"}),
            json!({"cert": "not a key"}),
            json!({"cert": ""}),
            json!({"cert": 5}),
            json!({"secret": SECRET, "time": -1}),
            json!({"secret": SECRET, "time": "now"}),
            json!({"secret": SECRET, "iss": 5}),
            json!({"secret": SECRET, "aud": ["api"]}),
            json!("secret"),
        ] {
            assert!(dv(&t, bad.clone()).is_err(), "{bad}");
        }
        // An empty secret next to a cert is no secret.
        assert!(valid(&token(Alg::Rs256, &claims()), json!({"cert": RSA_PUB, "secret": "", "aud": "api", "time": T0})));
    }

    #[test]
    fn decode_returns_header_payload_and_signature_and_refuses_malformed_tokens() {
        let t = token(Alg::Hs256, &claims());
        let v = decode(&t).unwrap();
        assert_eq!(v[0], Value::from(json!({"alg": "HS256", "typ": "JWT"})));
        assert_eq!(v[1], Value::from(claims()));
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t.rsplit_once('.').unwrap().1).unwrap();
        assert_eq!(v[2], s(&hex::encode(sig)));
        // Nothing is verified: a tampered token decodes, and so does one without a signature.
        assert!(decode(&tamper(&t)).is_ok());
        let unsigned = format!("{}.{}.", b64(br#"{"alg":"none"}"#), b64(br#"{"sub":"x"}"#));
        assert_eq!(decode(&unsigned).unwrap()[2], s(""));
        // Padded base64url is read too.
        let pad = |text: String| {
            let n = (4 - text.len() % 4) % 4;
            text + &"=".repeat(n)
        };
        let padded = format!("{}.{}.", pad(b64(br#"{"alg":"none"}"#)), pad(b64(br#"{"a":12}"#)));
        assert!(padded.contains('='));
        assert!(decode(&padded).is_ok(), "{padded}");

        let obj = b64(b"{}");
        for bad in [
            String::new(),
            "no periods".to_owned(),
            format!("{obj}.{obj}"),
            format!("{obj}.{obj}.sig.more"),
            format!("!!.{obj}.sig"),
            format!("{obj}.!!.sig"),
            format!("{obj}.{obj}.!!"),
            format!("{obj}.{obj}.abcde"),
            format!("{}.{obj}.", b64(b"[1]")),
            format!("{}.{obj}.", b64(b"not json")),
            format!("{obj}.{}.", b64(b"\"a string\"")),
            format!("{obj}.{}.", b64(b"{\"a\":1} trailing")),
            format!("{}.{obj}.", b64(br#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#)),
            format!("{}.{obj}.", b64(br#"{"alg":"HS256","cty":5}"#)),
            format!("{}==.{obj}.", b64(b"{}")), // wrong padding
        ] {
            assert!(decode(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn nested_tokens_are_decoded_and_verified_through() {
        let inner = token(Alg::Hs256, &json!({"sub": "inner", "aud": "api"}));
        let outer_header = json!({"alg": "HS256", "cty": "JWT"});
        // decode takes off the quotes a nested token may carry.
        let quoted = sign_raw(Alg::Hs256, &outer_header, &format!("\"{inner}\""));
        assert_eq!(decode(&quoted).unwrap()[1]["sub"], s("inner"));
        let outer = sign_raw(Alg::Hs256, &json!({"alg": "HS256", "cty": "jwt"}), &inner);
        let (ok, header, payload) = dv(&outer, json!({"secret": SECRET, "aud": "api"})).unwrap();
        assert!(ok);
        assert_eq!(header, Value::from(json!({"alg": "HS256", "typ": "JWT"})));
        assert_eq!(payload["sub"], s("inner"));
        // Every level must verify.
        let forged_inner = sign_raw(Alg::Hs256, &json!({"alg": "HS256", "cty": "JWT"}), &tamper(&inner));
        assert!(!valid(&forged_inner, json!({"secret": SECRET, "aud": "api"})));
        // Deep nesting is fine: each level is shorter than the one around it.
        let mut t = inner.clone();
        for _ in 0..12 {
            t = sign_raw(Alg::Hs256, &outer_header, &t);
        }
        assert!(valid(&t, json!({"secret": SECRET, "aud": "api"})));
        assert_eq!(decode(&t).unwrap()[1]["sub"], s("inner"));
    }

    #[test]
    fn header_parameters_are_checked_as_opa_does() {
        let payload = claims().to_string();
        let c = json!({"secret": SECRET, "time": T0, "aud": "api"});
        let crit_unknown = sign_raw(Alg::Hs256, &json!({"alg": "HS256", "crit": ["b64"], "b64": false}), &payload);
        assert!(!valid(&crit_unknown, c.clone()), "a critical parameter not understood");
        let crit_absent = sign_raw(Alg::Hs256, &json!({"alg": "HS256", "crit": ["b64"]}), &payload);
        assert!(valid(&crit_absent, c.clone()));
        let crit_empty = sign_raw(Alg::Hs256, &json!({"alg": "HS256", "crit": []}), &payload);
        assert!(dv(&crit_empty, c.clone()).is_err());
        let alg_number = sign_raw(Alg::Hs256, &json!({"alg": 256}), &payload);
        assert!(dv(&alg_number, c.clone()).is_err());
        assert!(verify(Alg::Rs256, &alg_number, RSA_PUB).is_err());
        // verify_hs* reads no header at all, as in OPA.
        assert!(verify(Alg::Hs256, &alg_number, SECRET).unwrap());
        let no_alg = sign_raw(Alg::Hs256, &json!({"typ": "JWT"}), &payload);
        assert!(!valid(&no_alg, c.clone()));
        let kid_number = sign_raw(Alg::Hs256, &json!({"alg": "HS256", "kid": 1}), &payload);
        assert!(dv(&kid_number, c).is_err());
    }

    #[test]
    fn alg_none_and_algorithm_confusion_never_verify() {
        let unsigned = format!("{}.{}.", b64(br#"{"alg":"none"}"#), b64(claims().to_string().as_bytes()));
        assert!(!valid(&unsigned, json!({"secret": SECRET, "time": T0})));
        assert!(!valid(&unsigned, json!({"cert": RSA_PUB, "time": T0})));
        assert!(!valid(&unsigned, json!({"cert": json!({"keys": [jwk_rsa(RSA_N)]}).to_string(), "time": T0})));
        for alg in Alg::ALL {
            assert!(!verify(alg, &unsigned, if alg.is_hmac() { "" } else { verification_text(alg) }).unwrap());
        }
        let unsigned_hs = format!("{}.{}.", b64(br#"{"alg":"HS256"}"#), b64(claims().to_string().as_bytes()));
        assert!(!valid(&unsigned_hs, json!({"secret": SECRET, "time": T0})));

        // The classic confusion: HS256 "signed" with the RSA public key's text as HMAC secret.
        let input = format!("{}.{}", b64(br#"{"alg":"HS256"}"#), b64(br#"{"sub":"root"}"#));
        let forge = |secret: &str| {
            let key = EncodingKey::from_secret(secret.as_bytes());
            format!("{input}.{}", jsonwebtoken::crypto::sign(input.as_bytes(), &key, Algorithm::HS256).unwrap())
        };
        let forged = forge(RSA_PUB);
        assert!(!verify(Alg::Rs256, &forged, RSA_PUB).unwrap());
        assert!(!verify(Alg::Ps256, &forged, RSA_CERT).unwrap());
        assert!(!valid(&forged, json!({"cert": RSA_PUB})));
        assert!(!valid(&forged, json!({"cert": json!({"keys": [jwk_rsa(RSA_N)]}).to_string()})));
        // Given as the secret itself, public key material is refused too.
        assert!(!valid(&forged, json!({"secret": RSA_PUB})));
        assert!(!verify(Alg::Hs256, &forged, RSA_PUB).unwrap());
        let forged_cert = forge(RSA_CERT);
        assert!(!valid(&forged_cert, json!({"secret": RSA_CERT})));
        assert!(!verify(Alg::Hs256, &forged_cert, RSA_CERT).unwrap());
        let jwk_text = jwk_rsa(RSA_N).to_string();
        assert!(!verify(Alg::Hs256, &forge(&jwk_text), &jwk_text).unwrap());
        // A kid pointing at an RSA key does not make an HMAC token verify.
        let with_kid = format!("{}.{}", b64(br#"{"alg":"HS256","kid":"a"}"#), b64(br#"{"sub":"root"}"#));
        let key = EncodingKey::from_secret(RSA_PUB.as_bytes());
        let with_kid =
            format!("{with_kid}.{}", jsonwebtoken::crypto::sign(with_kid.as_bytes(), &key, Algorithm::HS256).unwrap());
        let jwks = json!({"keys": [{"kty": "RSA", "kid": "a", "n": RSA_N, "e": "AQAB"}]}).to_string();
        assert!(!valid(&with_kid, json!({"cert": jwks})));
    }

    #[test]
    fn malformed_keys_are_errors_and_unusable_keys_false() {
        let t = token(Alg::Rs256, &claims());
        let pem_body = RSA_PUB.lines().filter(|l| !l.starts_with("-----")).collect::<String>();
        for bad in [
            String::new(),
            "garbage".to_owned(),
            "{".to_owned(),
            "[]".to_owned(),
            "{}".to_owned(),
            r#"{"keys": {}}"#.to_owned(),
            r#"{"keys": [5]}"#.to_owned(),
            r#"{"kty": "RSA", "n": "!!", "e": "AQAB"}"#.to_owned(),
            r#"{"kty": "RSA", "e": "AQAB"}"#.to_owned(),
            r#"{"kty": "XYZ"}"#.to_owned(),
            r#"{"kty": "EC", "crv": "P-999", "x": "AA", "y": "AA"}"#.to_owned(),
            r#"{"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}"#.to_owned(),
            format!(r#"{{"keys": [{{"kty": "RSA", "n": "{RSA_N}", "e": "AQAB"}}, {{"kty": "nope"}}]}}"#),
            format!("-----BEGIN RSA PUBLIC KEY-----\n{pem_body}\n-----END RSA PUBLIC KEY-----\n"),
            format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", &pem_body[..40]),
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".to_owned(),
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_owned(),
            format!("{RSA_PUB}trailing"),
            RSA_PRIV.to_owned(),
        ] {
            assert!(verify(Alg::Rs256, &t, &bad).is_err(), "{bad:?}");
            assert!(dv(&t, json!({"cert": bad})).is_err());
        }
        // A PEM block without its end is no PEM at all, and not JSON either.
        assert!(verify(Alg::Rs256, &t, "-----BEGIN PUBLIC KEY-----\nMIIB").is_err());
        // Keys that parse but cannot verify this: false.
        let off_curve = json!({"kty": "EC", "crv": "P-256", "x": P256_X, "y": P256_X}).to_string();
        assert!(!verify(Alg::Es256, &token(Alg::Es256, &claims()), &off_curve).unwrap());
        let off_curve_521 = json!({"kty": "EC", "crv": "P-521", "x": P521_X, "y": P521_X}).to_string();
        assert!(!verify(Alg::Es512, &token(Alg::Es512, &claims()), &off_curve_521).unwrap());
        let x25519 = json!({"kty": "OKP", "crv": "X25519", "x": ED_X}).to_string();
        assert!(!verify(Alg::EdDsa, &token(Alg::EdDsa, &claims()), &x25519).unwrap());
        let tiny_rsa = json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"}).to_string();
        assert!(!verify(Alg::Rs256, &t, &tiny_rsa).unwrap());
    }

    #[test]
    fn operands_of_the_wrong_type_are_errors() {
        let t = token(Alg::Hs256, &claims());
        assert!(jwt_decode(&[Value::from(5u64)]).is_err());
        assert!(jwt_verify_hmac(Alg::Hs256, &[s(&t), Value::Null]).is_err());
        assert!(jwt_verify_asymmetric(Alg::Rs256, &[Value::new_object(), s(RSA_PUB)]).is_err());
        assert!(jwt_decode_verify(&[Value::from(true), Value::from(json!({"secret": SECRET}))]).is_err());
        assert!(jwt_decode_verify(&[s(&t)]).is_err());
        assert!(jwt_decode(&[]).is_err());
    }

    #[test]
    fn hostile_input_is_an_error_or_false_and_never_a_panic() {
        let huge = "a".repeat(100_000);
        let dots = ".".repeat(100_000);
        let three_huge = format!("{huge}.{huge}.{huge}");
        for jwt in [huge.as_str(), dots.as_str(), three_huge.as_str(), "..", ".", "...."] {
            assert!(decode(jwt).is_err());
            assert!(dv(jwt, json!({"secret": SECRET})).is_err());
            assert!(verify(Alg::Rs256, jwt, RSA_PUB).is_err());
            // verify_hs* reads no header: three parts whose signature is base64 are just false.
            assert!(!matches!(verify(Alg::Hs256, jwt, SECRET), Ok(true)));
        }
        assert!(verify(Alg::Rs256, &token(Alg::Rs256, &claims()), &huge).is_err());
        assert!(verify(Alg::Hs256, "", "").is_err());
        assert!(!verify(Alg::Hs256, &token(Alg::Hs256, &claims()), "").unwrap());
        // A large, well-formed token is fine.
        let big_claims = json!({"sub": "alice", "blob": "x".repeat(100_000), "aud": "api"});
        for alg in [Alg::Hs256, Alg::Rs256, Alg::Es512] {
            let big = token(alg, &big_claims);
            assert!(big.len() > 130_000);
            assert!(verify(alg, &big, verification_text(alg)).unwrap());
            assert_eq!(decode(&big).unwrap()[1]["sub"], s("alice"));
            let mut c = key_constraint(alg);
            c["aud"] = json!("api");
            assert!(valid(&big, c));
        }
        // Deeply nested JSON is refused by the parser's depth limit, not by the stack.
        let deep =
            format!("{}.{}.", b64(br#"{"alg":"HS256"}"#), b64(format!("{{\"a\":{}", "[".repeat(50_000)).as_bytes()));
        assert!(decode(&deep).is_err());
        // Random mutations of valid tokens and keys.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet: Vec<char> = "AZaz09-_.=+/{}\"\\: \n\u{e9}".chars().collect();
        let mutate = |text: &str, next: &mut dyn FnMut() -> u64| {
            let mut chars: Vec<char> = text.chars().collect();
            for _ in 0..1 + next() % 4 {
                if chars.is_empty() {
                    break;
                }
                let i = (next() % chars.len() as u64) as usize;
                match next() % 3 {
                    0 => chars[i] = alphabet[(next() % alphabet.len() as u64) as usize],
                    1 => {
                        chars.remove(i);
                    }
                    _ => chars.truncate(i),
                }
            }
            chars.into_iter().collect::<String>()
        };
        let jwks = json!({"keys": [jwk_rsa(RSA_N), jwk_for(Alg::Es256), jwk_for(Alg::Es512), jwk_for(Alg::EdDsa)]})
            .to_string();
        let tokens: Vec<String> = Alg::ALL.iter().map(|&a| token(a, &claims())).collect();
        for round in 0..600 {
            let t = mutate(&tokens[round % tokens.len()], &mut next);
            let key = match round % 4 {
                0 => mutate(RSA_PUB, &mut next),
                1 => mutate(&jwks, &mut next),
                2 => mutate(P256_CERT, &mut next),
                _ => jwks.clone(),
            };
            let _ = decode(&t);
            for alg in Alg::ALL {
                let _ = verify(alg, &t, &key);
            }
            let _ = dv(&t, json!({"cert": key, "time": T0}));
            let _ = dv(&t, json!({"secret": key}));
        }
    }

    #[test]
    fn ecdsa_signatures_are_read_as_two_numbers() {
        assert_eq!(ecdsa_fixed(&[1, 2], 2), Some(vec![0, 1, 0, 2]));
        assert_eq!(ecdsa_fixed(&[0, 0, 1, 0, 0, 2], 2), Some(vec![0, 1, 0, 2]));
        assert_eq!(ecdsa_fixed(&[1, 1, 1, 2, 2, 2], 2), None);
        assert_eq!(ecdsa_fixed(&[], 2), Some(vec![0, 0, 0, 0]));
    }

    #[test]
    fn rules_call_the_builtins_through_regorus() {
        let mut engine = regorus::Engine::new();
        register(&mut engine).unwrap();
        assert!(register(&mut engine).is_err(), "registering twice is refused by regorus");
        assert_eq!(BUILTINS.len(), 15);
        engine
            .add_policy(
                "x.rego".into(),
                r#"package x

import rego.v1

constraints := {"cert": input.cert, "iss": "https://issuer.example", "aud": "api", "time": input.time}

allow if {
	[valid, header, payload] := io.jwt.decode_verify(input.token, constraints)
	valid
	header.alg == "RS256"
	payload.sub == "alice"
	[_, claims, _] := io.jwt.decode(input.token)
	claims.iss == "https://issuer.example"
	io.jwt.verify_rs256(input.token, input.cert)
	not io.jwt.verify_ps256(input.token, input.cert)
}
"#
                .into(),
            )
            .unwrap();
        let t = token(Alg::Rs256, &claims());
        let mut run = |token: &str, time: u64| {
            engine.set_input(Value::from(json!({"token": token, "cert": RSA_CERT, "time": time})));
            engine.eval_rule("data.x.allow".into()).unwrap()
        };
        assert_eq!(run(&t, T0), Value::from(true));
        assert_eq!(run(&tamper(&t), T0), Value::Undefined);
        assert_eq!(run(&t, T0 + 7_200_000_000_000), Value::Undefined, "expired");
        // A malformed token makes the call undefined, as outside OPA's strict mode: the rule is
        // undefined, not the evaluation failed.
        engine.set_input(Value::from(json!({"token": "garbage", "cert": RSA_CERT, "time": T0})));
        assert_eq!(engine.eval_rule("data.x.allow".into()).unwrap(), Value::Undefined);
    }
}
