//! Test certificates made on the fly: a throwaway CA ([`Ca`]) and the server and client
//! certificates it signs ([`Leaf`]), as PEM strings or files, for TLS, mTLS and
//! certificate-expiry tests. Keys are ECDSA P-256 (PKCS#8 PEM), made with `rcgen` on `ring`.
//!
//! Nothing here is for production: the CA key lives only in memory, for as long as the [`Ca`].

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// How long before now every certificate starts to be valid (clock skew between processes).
const BACKDATE: Duration = Duration::days(1);
/// How long a CA is valid.
const CA_LIFETIME: Duration = Duration::days(365);
/// How long a leaf from [`Ca::issue`] or [`Ca::client`] is valid.
const LEAF_LIFETIME: Duration = Duration::days(90);

/// A self-signed certificate authority that signs [`Leaf`] certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

/// A certificate signed by a [`Ca`] and its private key.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The leaf certificate alone (no chain), PEM.
    pub cert_pem: String,
    /// Its private key: ECDSA P-256, PKCS#8 PEM.
    pub key_pem: String,
}

impl Ca {
    /// A self-signed CA named `common_name`, valid from a day ago to a year from now.
    pub fn new(common_name: &str) -> Ca {
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_LIFETIME;
        let key = KeyPair::generate().expect("generate the CA key");
        let cert = params.self_signed(&key).expect("self-sign the CA");
        Ca { cert_pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// The CA certificate, PEM: what a client or server trusts.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// Writes the CA certificate to `dir/<stem>.pem` and returns that path.
    pub fn write(&self, dir: &Path, stem: &str) -> PathBuf {
        write_file(dir, &format!("{stem}.pem"), &self.cert_pem)
    }

    /// A server certificate for `names`, valid from a day ago to 90 days from now. Each name
    /// is an IP SAN when it parses as an IP address, else a DNS SAN (`*.example.com` included);
    /// the first name is also the subject's CN. Extended key usage: serverAuth.
    pub fn issue(&self, names: &[&str]) -> Leaf {
        let now = OffsetDateTime::now_utc();
        self.issue_valid(names, now - BACKDATE, now + LEAF_LIFETIME)
    }

    /// [`Ca::issue`] with the validity period given: for expired and soon-expiring certificates.
    pub fn issue_valid(&self, names: &[&str], not_before: OffsetDateTime, not_after: OffsetDateTime) -> Leaf {
        let first = names.first().copied().expect("a server certificate needs at least one name");
        let mut params = CertificateParams::default();
        params.distinguished_name = name(first);
        params.subject_alt_names = names.iter().map(|n| san(n)).collect();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = not_before;
        params.not_after = not_after;
        self.sign(params)
    }

    /// A client certificate whose subject CN is `common_name`, valid from a day ago to 90 days
    /// from now. Extended key usage: clientAuth.
    pub fn client(&self, common_name: &str) -> Leaf {
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = now - BACKDATE;
        params.not_after = now + LEAF_LIFETIME;
        self.sign(params)
    }

    fn sign(&self, mut params: CertificateParams) -> Leaf {
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("generate a leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign the leaf");
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }
}

impl Leaf {
    /// Writes `dir/<stem>.pem` (the certificate) and `dir/<stem>.key` (the key); returns both
    /// paths, certificate first.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        (
            write_file(dir, &format!("{stem}.pem"), &self.cert_pem),
            write_file(dir, &format!("{stem}.key"), &self.key_pem),
        )
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn san(name: &str) -> SanType {
    match name.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(name.try_into().unwrap_or_else(|e| panic!("{name:?} as a DNS name: {e}"))),
    }
}

fn write_file(dir: &Path, file: &str, text: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rcgen::PublicKeyData as _;
    use rustls::client::danger::ServerCertVerifier as _;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{CertificateError, Error, RootCertStore};
    use x509_parser::extensions::GeneralName;

    use super::*;

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("one PEM certificate")
    }

    fn roots(ca: &Ca) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(der(&ca.cert_pem())).expect("CA as a root");
        Arc::new(roots)
    }

    /// Whether `leaf` verifies, through rustls' webpki verifier, as a server certificate for
    /// `name` under `ca`.
    fn verify_server(ca: &Ca, leaf: &Leaf, name: &str) -> Result<(), Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots(ca), provider).build().expect("verifier");
        let name = ServerName::try_from(name.to_owned()).expect("server name");
        verifier.verify_server_cert(&der(&leaf.cert_pem), &[], &name, &[], UnixTime::now()).map(|_| ())
    }

    fn sans(leaf: &Leaf) -> Vec<String> {
        let der = der(&leaf.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("X.509");
        let ext = cert.subject_alternative_name().expect("one SAN extension").expect("SANs present");
        ext.value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => format!("dns:{d}"),
                GeneralName::IPAddress(&[a, b, c, d]) => format!("ip:{}", IpAddr::from([a, b, c, d])),
                GeneralName::IPAddress(ip) => match <[u8; 16]>::try_from(*ip) {
                    Ok(v6) => format!("ip:{}", IpAddr::from(v6)),
                    Err(_) => format!("ip:{ip:?}"),
                },
                other => format!("other:{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_leaf_verifies_against_its_ca_for_each_of_its_names() {
        let ca = Ca::new("test CA");
        let leaf = ca.issue(&["api.test", "*.apps.test", "127.0.0.1", "::1"]);
        for name in ["api.test", "x.apps.test", "127.0.0.1", "::1"] {
            verify_server(&ca, &leaf, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert_eq!(sans(&leaf), ["dns:api.test", "dns:*.apps.test", "ip:127.0.0.1", "ip:::1"]);
        let der = der(&leaf.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("X.509");
        let cn = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned);
        assert_eq!(cn.as_deref(), Some("api.test"));
    }

    #[test]
    fn a_leaf_does_not_verify_for_other_names_or_under_another_ca() {
        let ca = Ca::new("test CA");
        let leaf = ca.issue(&["api.test", "*.apps.test"]);
        for name in ["other.test", "a.b.apps.test", "apps.test", "127.0.0.1"] {
            assert!(
                matches!(
                    verify_server(&ca, &leaf, name),
                    Err(Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }))
                ),
                "{name}"
            );
        }
        let stranger = Ca::new("another CA");
        assert!(matches!(
            verify_server(&stranger, &leaf, "api.test"),
            Err(Error::InvalidCertificate(CertificateError::UnknownIssuer))
        ));
    }

    #[test]
    fn issue_valid_in_the_past_gives_an_expired_certificate() {
        let ca = Ca::new("test CA");
        let now = OffsetDateTime::now_utc();
        let expired = ca.issue_valid(&["old.test"], now - Duration::days(30), now - Duration::days(1));
        assert!(matches!(
            verify_server(&ca, &expired, "old.test"),
            Err(Error::InvalidCertificate(CertificateError::ExpiredContext { .. }))
        ));
        let soon = ca.issue_valid(&["soon.test"], now - Duration::days(1), now + Duration::hours(1));
        verify_server(&ca, &soon, "soon.test").expect("valid for another hour");
    }

    #[test]
    fn a_client_certificate_verifies_as_a_client_but_not_as_a_server() {
        let ca = Ca::new("test CA");
        let client = ca.client("gateway");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(&ca), provider)
            .build()
            .expect("verifier");
        verifier.verify_client_cert(&der(&client.cert_pem), &[], UnixTime::now()).expect("a valid client cert");
        let server = ca.issue(&["gateway"]);
        assert!(verifier.verify_client_cert(&der(&server.cert_pem), &[], UnixTime::now()).is_err(), "serverAuth only");
        assert!(verify_server(&ca, &client, "gateway").is_err(), "clientAuth only, no SAN");
    }

    #[test]
    fn files_hold_the_pem_and_a_pkcs8_key_that_matches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new("test CA");
        let ca_path = ca.write(dir.path(), "ca");
        assert_eq!(ca_path, dir.path().join("ca.pem"));
        assert_eq!(std::fs::read_to_string(&ca_path).expect("read"), ca.cert_pem());

        let leaf = ca.issue(&["a.test"]);
        let (cert, key) = leaf.write(dir.path(), "a");
        assert_eq!((cert.clone(), key.clone()), (dir.path().join("a.pem"), dir.path().join("a.key")));
        let key_pem = std::fs::read_to_string(key).expect("read key");
        assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8: {key_pem}");
        let key = KeyPair::from_pem(&key_pem).expect("key parses");
        assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
        let cert_der = der(&std::fs::read_to_string(cert).expect("read cert"));
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der).expect("X.509");
        assert_eq!(parsed.public_key().raw, key.subject_public_key_info().as_slice());
    }
}
