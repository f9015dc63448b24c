//! Bearer-token verification against a bundle's JWT trust roots (RS256, ES256, EdDSA keys
//! given as JWKS). Runs in Rust before any policy: regorus has no `io.jwt.*` builtins.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value as Json;
use sha2::Digest as _;

use crate::error::{BundleError, ErrorKind};
use crate::settings::JwtSpec;

/// Why a token was refused; every variant is a 401.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("malformed token")]
    Malformed,
    #[error("unknown issuer")]
    UnknownIssuer,
    #[error("unknown signing key")]
    UnknownKey,
    #[error("invalid token: {0}")]
    Invalid(String),
}

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
    /// Per key: jsonwebtoken refuses a validation listing algorithms of another key family.
    validation: Validation,
}

struct Issuer {
    keys: Vec<Key>,
}

/// Compiled trust roots: issuer → keys and validation rules.
pub struct TrustRoots {
    issuers: HashMap<String, Issuer>,
    /// SHA-256 of the settings these roots were compiled from (issuers, audiences, keys,
    /// leeway): equal fingerprints verify exactly the same tokens.
    fingerprint: [u8; 32],
    cache: Arc<TokenCache>,
}

/// Verified tokens by their exact text, until they expire. Bounded; sharded so that workers
/// rarely meet on a lock, and held only for a map lookup. It lives inside [`TrustRoots`], so a
/// new bundle with other trust settings (keys revoked, say) starts with an empty cache; one with
/// the same settings shares it ([`TrustRoots::inherit_cache`]).
struct TokenCache {
    shards: Vec<Mutex<TokenMap>>,
    per_shard: usize,
    /// Picks the shard; seeded apart from the maps' own hasher, so a shard's keys do not all
    /// share their low hash bits. Keyed (ahash): a client cannot aim tokens at one bucket, and
    /// a 300-byte token hashes in about a tenth of SipHash's instructions.
    hasher: ahash::RandomState,
}

type TokenMap = HashMap<Arc<str>, Arc<Verified>, ahash::RandomState>;

/// Most tokens cached per bundle.
pub const TOKEN_CACHE_CAPACITY: usize = 16_384;
const SHARDS: usize = 16;

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl TokenCache {
    fn new(capacity: usize) -> TokenCache {
        TokenCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::with_hasher(ahash::RandomState::new()))).collect(),
            per_shard: (capacity / SHARDS).max(1),
            hasher: ahash::RandomState::new(),
        }
    }

    fn shard(&self, token: &str) -> &Mutex<TokenMap> {
        &self.shards[(self.hasher.hash_one(token) as usize) % SHARDS]
    }

    fn get(&self, token: &str, now: u64) -> Option<Arc<Verified>> {
        let map = self.shard(token).lock().ok()?;
        map.get(token).filter(|v| v.expires_at > now).cloned()
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map(|m| m.len()).unwrap_or(0)).sum()
    }

    fn put(&self, token: &str, v: Arc<Verified>, now: u64) {
        let Ok(mut map) = self.shard(token).lock() else { return };
        if map.len() >= self.per_shard {
            map.retain(|_, v| v.expires_at > now);
            if map.len() >= self.per_shard {
                // Still full of live tokens: start over rather than track recency on every hit.
                map.clear();
            }
        }
        map.insert(Arc::from(token), v);
    }
}

impl std::fmt::Debug for TrustRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustRoots").field("issuers", &self.issuers.keys().collect::<Vec<_>>()).finish()
    }
}

/// A token whose signature and claims checked out.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub issuer: String,
    pub claims: Json,
    /// `input.jwt` (`{"issuer", "claims"}`) as a policy value, made once per verification:
    /// every request with this token shares it (and the decision cache compares it by address).
    pub input: regorus::Value,
    /// `exp`, seconds since the epoch: how long a cached verdict may live.
    pub expires_at: u64,
}

fn key_alg(jwk: &Jwk) -> Result<Algorithm, String> {
    if let Some(alg) = jwk.common.key_algorithm {
        let name = format!("{alg:?}");
        return match name.as_str() {
            "RS256" => Ok(Algorithm::RS256),
            "ES256" => Ok(Algorithm::ES256),
            "EdDSA" => Ok(Algorithm::EdDSA),
            other => Err(format!("key algorithm {other} is not supported (use RS256, ES256 or EdDSA)")),
        };
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Ok(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Ok(Algorithm::ES256),
        AlgorithmParameters::OctetKeyPair(_) => Ok(Algorithm::EdDSA),
        _ => Err("key type is not supported (use RSA, EC P-256 or OKP Ed25519)".into()),
    }
}

impl TrustRoots {
    /// Compiles the `jwt` settings; `file` names where they came from for errors.
    pub fn compile(spec: &JwtSpec, file: &str) -> Result<TrustRoots, BundleError> {
        let leeway = spec.leeway.unwrap_or(Duration::from_secs(30)).as_secs();
        let mut issuers = HashMap::new();
        let mut fingerprint = sha2::Sha256::new();
        fingerprint.update(leeway.to_be_bytes());
        for is in &spec.issuers {
            let err = |m: String| {
                BundleError::new(ErrorKind::Jwks, Some(file.to_owned()), format!("issuer `{}`: {m}", is.issuer))
            };
            if is.jwks.keys.is_empty() {
                return Err(err("jwks has no keys".into()));
            }
            match (is.audiences.is_empty(), is.any_audience) {
                (true, false) => {
                    return Err(err(
                        "`audiences` is empty: list the audiences this gateway accepts, or say `any_audience: true`"
                            .into(),
                    ))
                }
                (false, true) => return Err(err("give `audiences` or `any_audience: true`, not both".into())),
                _ => {}
            }
            let mut keys = Vec::new();
            fingerprint.update([u8::from(is.any_audience)]);
            for part in [&is.issuer].into_iter().chain(&is.audiences) {
                fingerprint.update((part.len() as u64).to_be_bytes());
                fingerprint.update(part.as_bytes());
            }
            for (i, jwk) in is.jwks.keys.iter().enumerate() {
                let text = serde_json::to_vec(jwk).map_err(|e| err(format!("key {i}: {e}")))?;
                fingerprint.update((text.len() as u64).to_be_bytes());
                fingerprint.update(&text);
                let alg = key_alg(jwk).map_err(|m| err(format!("key {i}: {m}")))?;
                let key = DecodingKey::from_jwk(jwk).map_err(|e| err(format!("key {i}: {e}")))?;
                let mut validation = Validation::new(alg);
                validation.leeway = leeway;
                validation.validate_nbf = true;
                validation.set_issuer(&[&is.issuer]);
                if is.audiences.is_empty() {
                    validation.validate_aud = false;
                } else {
                    validation.set_audience(&is.audiences);
                    // jsonwebtoken checks `aud` only when present: a token without one must not pass.
                    validation.required_spec_claims.insert("aud".into());
                }
                keys.push(Key { kid: jwk.common.key_id.clone(), alg, key, validation });
            }
            if issuers.insert(is.issuer.clone(), Issuer { keys }).is_some() {
                return Err(err("issuer listed twice".into()));
            }
        }
        Ok(TrustRoots {
            issuers,
            fingerprint: fingerprint.finalize().into(),
            cache: Arc::new(TokenCache::new(TOKEN_CACHE_CAPACITY)),
        })
    }

    /// Takes over `previous`'s token cache when both were compiled from the same settings
    /// (issuers, audiences, keys, leeway, in the same order): a verdict cached under one holds
    /// under the other, so a bundle swap that leaves the trust settings alone does not make
    /// every client's token verify again. Returns whether it did; otherwise this keeps its own
    /// empty cache.
    pub fn inherit_cache(&mut self, previous: &TrustRoots) -> bool {
        if self.fingerprint != previous.fingerprint {
            return false;
        }
        self.cache = previous.cache.clone();
        true
    }

    /// Tokens in the cache now (expired ones included until they are swept).
    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    /// Verifies a compact JWS: picks the issuer from the (unverified) `iss`, the key by `kid`
    /// (or every key of the header's algorithm when there is no `kid`), then checks the
    /// signature, `exp`, `nbf`, `iss` and `aud`.
    /// [`verify`](Self::verify), answered from the cache for a token already verified under
    /// these trust roots and not yet expired (strictly: no leeway past `exp` for cached tokens).
    pub fn verify_cached(&self, token: &str) -> Result<Arc<Verified>, JwtError> {
        let now = now_secs();
        if let Some(v) = self.cache.get(token, now) {
            return Ok(v);
        }
        let v = Arc::new(self.verify(token)?);
        if v.expires_at > now {
            self.cache.put(token, v.clone(), now);
        }
        Ok(v)
    }

    pub fn verify(&self, token: &str) -> Result<Verified, JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
        let payload_b64 = token.split('.').nth(1).ok_or(JwtError::Malformed)?;
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload_b64.trim_end_matches('='))
            .map_err(|_| JwtError::Malformed)?;
        #[derive(serde::Deserialize)]
        struct Iss {
            iss: Option<String>,
        }
        let iss: Iss = serde_json::from_slice(&payload).map_err(|_| JwtError::Malformed)?;
        let issuer_name = iss.iss.ok_or(JwtError::UnknownIssuer)?;
        let issuer = self.issuers.get(&issuer_name).ok_or(JwtError::UnknownIssuer)?;
        let mut last = JwtError::UnknownKey;
        for key in &issuer.keys {
            if key.alg != header.alg {
                continue;
            }
            if let (Some(want), Some(have)) = (&header.kid, &key.kid) {
                if want != have {
                    continue;
                }
            }
            match jsonwebtoken::decode::<Json>(token, &key.key, &key.validation) {
                Ok(data) => {
                    let expires_at = data.claims.get("exp").and_then(Json::as_u64).unwrap_or(0);
                    let input = crate::input::jwt_object(&issuer_name, &regorus::Value::from(data.claims.clone()));
                    return Ok(Verified { issuer: issuer_name, claims: data.claims, input, expires_at });
                }
                Err(e) => last = JwtError::Invalid(e.to_string()),
            }
        }
        Err(last)
    }
}
