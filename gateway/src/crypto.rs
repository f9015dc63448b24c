//! The rustls crypto provider the gateway's TLS uses: ring by default; aws-lc-rs with the
//! `aws-lc-rs` feature (measured against each other in `loadtest/README.md`, "HTTPS").

use std::sync::Arc;

use rustls::pki_types::PrivateKeyDer;
use rustls::sign::SigningKey;

/// Makes the feature's provider the process default, before Pingora installs ring as its own
/// (Pingora only installs one when none is). Call it first thing in `main`.
pub fn install_provider() {
    #[cfg(feature = "aws-lc-rs")]
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    #[cfg(not(feature = "aws-lc-rs"))]
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A certificate's private key, as the provider signs with it.
pub fn signing_key(key: &PrivateKeyDer<'_>) -> Result<Arc<dyn SigningKey>, rustls::Error> {
    #[cfg(feature = "aws-lc-rs")]
    return rustls::crypto::aws_lc_rs::sign::any_supported_type(key);
    #[cfg(not(feature = "aws-lc-rs"))]
    rustls::crypto::ring::sign::any_supported_type(key)
}

/// The provider's name, for the log line at start.
pub fn provider_name() -> &'static str {
    if cfg!(feature = "aws-lc-rs") {
        "aws-lc-rs"
    } else {
        "ring"
    }
}
