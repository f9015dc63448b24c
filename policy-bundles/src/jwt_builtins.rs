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
//! Pure functions: keys come only from the arguments, never from the network or the disk.
//! Extensions run on regorus' interpreter (not its VM), and an error from one fails the
//! evaluation, as regorus' own builtins do in their default (strict) mode.

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
        engine
            .add_extension(name.to_owned(), nargs, extension)
            .map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
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
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// An uncompressed SEC1 point.
    Ec { curve: Curve, point: Vec<u8> },
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
                let material = spki_material(&spki, false)
                    .map_err(|e| anyhow!("failed to parse a PEM public key: {e}"))?;
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
            if rsa.modulus.first().is_some_and(|b| b & 0x80 != 0)
                || rsa.exponent.first().is_some_and(|b| b & 0x80 != 0)
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
    let normalized: String =
        text.trim_end_matches('=').chars().map(|c| match c { '+' => '-', '/' => '_', c => c }).collect();
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
/// follows the line that ends it.
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
        (Alg::Es256, Material::Ec { curve: Curve::P256, point }) | (Alg::Es384, Material::Ec { curve: Curve::P384, point }) => {
            DecodingKey::from_ec_der(point)
        }
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
    let material = Material::Oct(secret.as_bytes().to_vec());
    Ok(Value::from(verify_signature(&material, alg, parts.signing_input.as_bytes(), &signature)))
}

/// `io.jwt.verify_rs*/ps*/es*/eddsa(jwt, certificate)`: the signature checked with the
/// builtin's algorithm under the PEM key, the certificate's key, or the JWK(S).
fn jwt_verify_asymmetric(alg: Alg, args: &[Value]) -> Result<Value> {
    let jwt = string_operand(args, 0)?;
    let parts = split_token(jwt)?;
    let keys = parse_keys(string_operand(args, 1)?)?;
    let signature = decode_signature(parts.signature)?;
    let header = Header::parse(&decode_header(parts.header)?)?;
    Ok(Value::from(verify_with_keys(&keys, &header, alg, parts.signing_input.as_bytes(), &signature)))
}

// ---------------------------------------------------------------------------------------------
// io.jwt.decode_verify

/// The constraints of `io.jwt.decode_verify`; an empty string is a constraint not given.
struct Constraints {
    keys: Option<Vec<Key>>,
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
                    c.keys = Some(parse_keys(s)?);
                }
                "secret" => c.secret = text()?,
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
        if !constraints.verify(&header, parts.signing_input.as_bytes(), &signature) {
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
