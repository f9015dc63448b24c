//! TLS termination (rustls, the gateway's one TLS stack): the certificates of `tls.certificates`,
//! chosen per connection by SNI (exact name, then wildcard, then the first as default), and
//! reloaded without a restart when their files change.
//!
//! * [`Certificate::load`] reads one pair and checks it: the chain parses, the key is one rustls
//!   can sign with and matches the leaf, the leaf is valid now. Errors name the file.
//! * [`Tls`] holds the set behind an `ArcSwap`: [`Resolver`] reads it during each handshake
//!   without a lock, and [`Handshake`] records on the connection which certificate was chosen,
//!   so that a request whose Host that certificate does not cover is refused (421).
//! * [`Reloader`] (a background service) re-reads the files every 250 ms. A changed pair that
//!   reads the same twice in a row is loaded and checked; a good one is swapped in for new
//!   connections (existing ones keep theirs), a bad one is counted once, shown in `/status`,
//!   and the old pair goes on serving (fail static, as with bundles).

use std::any::Any;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::CipherSuite;

use crate::config::{CertFiles, TlsConfig, TlsVersion};
use crate::metrics::Metrics;

/// Why a certificate pair cannot be served; each names the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {file}: {message}")]
    Read { file: String, message: String },
    #[error("{file}: no PEM certificate in it")]
    NoCertificate { file: String },
    #[error("{file}: the certificate does not parse: {message}")]
    BadCertificate { file: String, message: String },
    #[error("{file}: no PEM private key in it")]
    NoKey { file: String },
    #[error("{file}: the private key cannot be used: {message}")]
    BadKey { file: String, message: String },
    #[error("{key} does not match the certificate in {cert}")]
    Mismatch { cert: String, key: String },
    #[error("{file}: the certificate expired at {not_after} (unix seconds)")]
    Expired { file: String, not_after: i64 },
    #[error("{file}: the certificate is not valid before {not_before} (unix seconds)")]
    NotYetValid { file: String, not_before: i64 },
    #[error("{file}: the certificate names no DNS name or IP address (subjectAltName)")]
    NoNames { file: String },
}

/// One loaded, checked certificate pair.
#[derive(Debug)]
pub struct Certificate {
    /// The `name` label of its metrics (`tls.certificates[].name`, default the file stem).
    pub name: String,
    pub files: CertFiles,
    key: Arc<CertifiedKey>,
    /// Lower-cased DNS names of the leaf, `*.example.com` included as written.
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    /// Unix seconds.
    pub not_after: i64,
}

impl Certificate {
    /// Reads and checks the pair named by `files`.
    pub fn load(files: &CertFiles) -> Result<Certificate, CertError> {
        Certificate::from_pem(files, &read_pair(files)?)
    }

    /// Checks a pair already read: `(certificate chain PEM, private key PEM)`.
    pub fn from_pem(files: &CertFiles, (cert_pem, key_pem): &(Vec<u8>, Vec<u8>)) -> Result<Certificate, CertError> {
        let cert_file = files.cert_file.display().to_string();
        let key_file = files.key_file.display().to_string();
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| CertError::BadCertificate { file: cert_file.clone(), message: e.to_string() })?;
        let Some(leaf) = chain.first() else { return Err(CertError::NoCertificate { file: cert_file }) };
        let (dns_names, ips, not_before, not_after) = leaf_facts(leaf, &cert_file)?;
        let now = crate::clock::unix_now() as i64;
        if not_after < now {
            return Err(CertError::Expired { file: cert_file, not_after });
        }
        if not_before > now {
            return Err(CertError::NotYetValid { file: cert_file, not_before });
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => CertError::NoKey { file: key_file.clone() },
            e => CertError::BadKey { file: key_file.clone(), message: e.to_string() },
        })?;
        let signer = crate::crypto::signing_key(&key)
            .map_err(|e| CertError::BadKey { file: key_file.clone(), message: e.to_string() })?;
        let certified = CertifiedKey::new(chain, signer);
        certified.keys_match().map_err(|_| CertError::Mismatch { cert: cert_file, key: key_file })?;
        Ok(Certificate {
            name: files.name.clone(),
            files: files.clone(),
            key: Arc::new(certified),
            dns_names,
            ips,
            not_after,
        })
    }

    /// Whether `host` (canonical: lower case, no port) is one of the certificate's names: an
    /// exact DNS name or IP, or a wildcard `*.example.com` standing for exactly one label.
    pub fn covers(&self, host: &str) -> bool {
        if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            return self.ips.contains(&ip);
        }
        self.dns_names.iter().any(|n| match n.strip_prefix("*.") {
            Some(parent) => {
                host.split_once('.').is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(parent))
            }
            None => n.eq_ignore_ascii_case(host),
        })
    }
}

/// The leaf's subjectAltName DNS names and IPs, and its validity (unix seconds).
fn leaf_facts(leaf: &CertificateDer<'_>, file: &str) -> Result<(Vec<String>, Vec<IpAddr>, i64, i64), CertError> {
    use x509_parser::extensions::GeneralName;
    let bad = |message: String| CertError::BadCertificate { file: file.to_owned(), message };
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| bad(e.to_string()))?;
    let (mut dns, mut ips) = (Vec::new(), Vec::new());
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns.push(d.to_ascii_lowercase()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())),
                    16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    if dns.is_empty() && ips.is_empty() {
        return Err(CertError::NoNames { file: file.to_owned() });
    }
    let validity = cert.validity();
    Ok((dns, ips, validity.not_before.timestamp(), validity.not_after.timestamp()))
}

fn read_pair(files: &CertFiles) -> Result<(Vec<u8>, Vec<u8>), CertError> {
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|e| CertError::Read { file: p.display().to_string(), message: e.to_string() })
    };
    Ok((read(&files.cert_file)?, read(&files.key_file)?))
}

/// The certificates in force, with the SNI lookup built once per change.
#[derive(Debug)]
pub struct CertSet {
    certs: Vec<Arc<Certificate>>,
}

impl CertSet {
    fn new(certs: Vec<Arc<Certificate>>) -> CertSet {
        CertSet { certs }
    }

    /// The certificate for a connection's SNI: one that names it exactly, else one whose
    /// wildcard covers it, else the first (the default, also for a client that sends no SNI).
    pub fn choose(&self, sni: Option<&str>) -> &Arc<Certificate> {
        let found = sni.and_then(|s| {
            let s = s.trim_end_matches('.').to_ascii_lowercase();
            self.certs.iter().find(|c| c.dns_names.contains(&s)).or_else(|| self.certs.iter().find(|c| c.covers(&s)))
        });
        found.unwrap_or(&self.certs[0])
    }

    pub fn certificates(&self) -> &[Arc<Certificate>] {
        &self.certs
    }
}

/// What the reloader knows of one configured pair, for `/status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CertStatus {
    pub name: String,
    pub cert_file: String,
    pub names: Vec<String>,
    pub not_after: i64,
    /// Unix seconds the serving pair was loaded.
    pub loaded_at: u64,
    pub reloads: u64,
    pub failures: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<u64>,
    #[serde(skip)]
    loaded: (Vec<u8>, Vec<u8>),
    /// What the files read last time, while it differs from what is loaded.
    #[serde(skip)]
    pending: Option<Seen>,
    /// A changed pair already refused (and counted): not counted again until it changes.
    #[serde(skip)]
    refused: Option<Seen>,
}

/// What one read of a pair found: both files' bytes, or why they could not be read.
type Seen = Result<(Vec<u8>, Vec<u8>), CertError>;

/// TLS on the proxy listener: the certificate set and what reloading has done to it.
pub struct Tls {
    set: ArcSwap<CertSet>,
    min_version: TlsVersion,
    status: Mutex<Vec<CertStatus>>,
}

/// What a TLS connection carries to its requests (Pingora's `SslDigest` extension).
#[derive(Debug)]
pub struct Conn {
    /// The certificate chosen by the connection's SNI.
    pub certificate: Arc<Certificate>,
}

impl Tls {
    /// Loads and checks every configured pair; the first failure names its file.
    pub fn load(config: &TlsConfig) -> Result<Tls, CertError> {
        let mut certs = Vec::new();
        let mut status = Vec::new();
        for files in &config.certificates {
            let pem = read_pair(files)?;
            let cert = Arc::new(Certificate::from_pem(files, &pem)?);
            status.push(CertStatus { loaded: pem, ..fresh_status(&cert) });
            certs.push(cert);
        }
        if certs.is_empty() {
            return Err(CertError::NoCertificate { file: "tls.certificates".into() });
        }
        Ok(Tls {
            set: ArcSwap::from_pointee(CertSet::new(certs)),
            min_version: config.min_version,
            status: Mutex::new(status),
        })
    }

    pub fn current(&self) -> Arc<CertSet> {
        self.set.load_full()
    }

    pub fn status(&self) -> Vec<CertStatus> {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Sets `gateway_tls_certificate_expiry_timestamp_seconds` for every serving certificate.
    pub fn export_expiry(&self, metrics: &Metrics) {
        for c in self.current().certificates() {
            metrics.tls_expiry.with_label_values(&[c.name.as_str()]).set(c.not_after);
        }
    }

    /// One pass of the reloader: re-reads every pair, swaps in those that changed and check
    /// out. A change is acted on once it reads the same twice in a row (a pair being written,
    /// or a certificate renamed into place before its key, is not refused half-written).
    pub fn reload_changed(&self, metrics: &Metrics) {
        let Ok(mut status) = self.status.lock() else { return };
        let mut certs: Vec<Arc<Certificate>> = self.current().certificates().to_vec();
        let mut changed = false;
        for (i, st) in status.iter_mut().enumerate() {
            let files = certs[i].files.clone();
            let seen = read_pair(&files);
            if seen.as_ref().is_ok_and(|p| *p == st.loaded) {
                (st.pending, st.refused) = (None, None);
                continue;
            }
            if st.pending.as_ref() != Some(&seen) {
                st.pending = Some(seen);
                continue;
            }
            if st.refused.as_ref() == Some(&seen) {
                continue;
            }
            let result = match seen.clone().and_then(|pem| Certificate::from_pem(&files, &pem).map(|c| (c, pem))) {
                Ok((cert, pem)) => {
                    let cert = Arc::new(cert);
                    tracing::info!(certificate = %cert.name, file = %files.cert_file.display(), "TLS certificate reloaded");
                    let (reloads, failures) = (st.reloads + 1, st.failures);
                    *st = CertStatus { loaded: pem, reloads, failures, ..fresh_status(&cert) };
                    certs[i] = cert;
                    changed = true;
                    "ok"
                }
                Err(e) => {
                    tracing::warn!(certificate = %st.name, error = %e, "TLS certificate not reloaded; the old one keeps serving");
                    st.failures += 1;
                    st.last_error = Some(e.to_string());
                    st.last_error_at = Some(crate::clock::unix_now());
                    st.refused = Some(seen);
                    "error"
                }
            };
            metrics.tls_reloads.with_label_values(&[st.name.as_str(), result]).inc();
        }
        if changed {
            self.set.store(Arc::new(CertSet::new(certs)));
            self.export_expiry(metrics);
        }
    }
}

fn fresh_status(cert: &Certificate) -> CertStatus {
    let mut names = cert.dns_names.clone();
    names.extend(cert.ips.iter().map(|ip| ip.to_string()));
    CertStatus {
        name: cert.name.clone(),
        cert_file: cert.files.cert_file.display().to_string(),
        names,
        not_after: cert.not_after,
        loaded_at: crate::clock::unix_now(),
        ..CertStatus::default()
    }
}

/// rustls' certificate choice, read from the current set without a lock.
#[derive(Clone)]
pub struct Resolver(pub Arc<Tls>);

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

fn offers_tls13(hello: &ClientHello<'_>) -> bool {
    hello.cipher_suites().iter().any(|s| {
        matches!(
            s,
            CipherSuite::TLS13_AES_128_GCM_SHA256
                | CipherSuite::TLS13_AES_256_GCM_SHA384
                | CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        )
    })
}

impl ResolvesServerCert for Resolver {
    /// With `min_version: "1.3"`, a client that offers no TLS 1.3 cipher suite gets no
    /// certificate (the handshake fails); rustls negotiates 1.3 with every client that offers it.
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if self.0.min_version == TlsVersion::Tls13 && !offers_tls13(&hello) {
            return None;
        }
        Some(self.0.set.load().choose(hello.server_name()).key.clone())
    }
}

/// Records, once per handshake, the certificate the connection's SNI chose ([`Conn`]).
pub struct Handshake(pub Arc<Tls>);

#[async_trait]
impl TlsAccept for Handshake {
    async fn handshake_complete_callback(&self, ssl: &TlsRef) -> Option<Arc<dyn Any + Send + Sync>> {
        let certificate = self.0.set.load().choose(ssl.server_name()).clone();
        Some(Arc::new(Conn { certificate }))
    }
}

/// Re-reads the certificate files every 250 ms ([`Tls::reload_changed`]).
pub struct Reloader {
    pub tls: Arc<Tls>,
    pub metrics: Arc<Metrics>,
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        while crate::clock::next_tick(&mut tick, &mut shutdown).await {
            let (tls, metrics) = (self.tls.clone(), self.metrics.clone());
            // File reads and key parsing off the async workers.
            let _ = tokio::task::spawn_blocking(move || tls.reload_changed(&metrics)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> Certificate {
        Certificate {
            name: names[0].into(),
            files: CertFiles { name: names[0].into(), cert_file: "c.pem".into(), key_file: "c.key".into() },
            key: Arc::new(CertifiedKey::new(vec![], Arc::new(NoKey))),
            dns_names: names.iter().map(|s| s.to_string()).collect(),
            ips: vec![],
            not_after: 0,
        }
    }

    #[derive(Debug)]
    struct NoKey;
    impl rustls::sign::SigningKey for NoKey {
        fn choose_scheme(&self, _: &[rustls::SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
            None
        }
        fn algorithm(&self) -> rustls::SignatureAlgorithm {
            rustls::SignatureAlgorithm::ECDSA
        }
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_the_first() {
        let set = CertSet::new(vec![
            Arc::new(cert(&["default.test"])),
            Arc::new(cert(&["*.apps.test"])),
            Arc::new(cert(&["api.apps.test"])),
        ]);
        assert_eq!(set.choose(Some("api.apps.test")).name, "api.apps.test");
        assert_eq!(set.choose(Some("API.apps.test.")).name, "api.apps.test");
        assert_eq!(set.choose(Some("web.apps.test")).name, "*.apps.test");
        assert_eq!(set.choose(Some("a.b.apps.test")).name, "default.test");
        assert_eq!(set.choose(Some("other.test")).name, "default.test");
        assert_eq!(set.choose(None).name, "default.test");
    }

    #[test]
    fn a_wildcard_covers_exactly_one_label() {
        let c = cert(&["*.apps.test", "apps.test"]);
        assert!(c.covers("web.apps.test"));
        assert!(c.covers("apps.test"));
        assert!(!c.covers("a.b.apps.test"));
        assert!(!c.covers(".apps.test"));
        assert!(!c.covers("evilapps.test"));
        assert!(!c.covers("127.0.0.1"));
    }
}
