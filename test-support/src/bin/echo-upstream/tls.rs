//! `echo-upstream`'s TLS: the rustls server config (ring provider) from PEM files, optionally
//! requiring a client certificate signed by a given CA, and the subject CN of the client
//! certificate a connection presented.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// Where the TLS material comes from.
pub struct Files<'a> {
    /// The server certificate chain, leaf first (PEM).
    pub cert: &'a Path,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: &'a Path,
    /// With it, a client certificate signed by this CA (PEM) is required.
    pub client_ca: Option<&'a Path>,
}

/// A TLS acceptor for `files` that offers ALPN `h2` (when `h2`) and `http/1.1`.
pub fn acceptor(files: &Files<'_>, h2: bool) -> anyhow::Result<TlsAcceptor> {
    let chain = read_certs(files.cert)?;
    let key = PrivateKeyDer::from_pem_file(files.key)
        .with_context(|| format!("reading the private key {}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider)).with_safe_default_protocol_versions()?;
    let builder = match files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots.add(cert).with_context(|| format!("a CA certificate in {}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .context("the client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).context("the server certificate and key")?;
    config.alpn_protocols = if h2 { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"http/1.1".to_vec()] };
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The subject CN of the first certificate a client presented, if any.
pub fn client_cn(presented: Option<&[CertificateDer<'_>]>) -> Option<String> {
    let leaf = presented?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    Some(cn)
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading certificates from {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", path.display());
    Ok(certs)
}
