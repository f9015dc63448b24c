//! Upstream pools: each upstream's targets resolved once per activation, balanced round robin,
//! with the upstream's health check, over the upstream's transport (plaintext or TLS, HTTP/1.1
//! or HTTP/2). A pool belongs to one active bundle and is dropped with it.

use std::net::ToSocketAddrs;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{discovery, Backend, Backends, LoadBalancer};
use pingora::prelude::{HttpPeer, RequestHeader};
use pingora::protocols::tls::CaType;
use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// One upstream's pool of targets.
pub struct Pool {
    pub name: String,
    pub lb: LoadBalancer<RoundRobin>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Health-check interval, when the upstream has a health check.
    pub health_interval: Option<Duration>,
    /// Unix millis of the next due health check.
    pub next_check_ms: AtomicU64,
    pub transport: Transport,
    /// Every target with its peer, built once here (transport, timeouts) and cloned per
    /// request; in the order the round robin visits them.
    targets: Vec<Target>,
    next: AtomicUsize,
    /// Outlier ejection, the retry budget and the bound on requests in flight.
    pub guard: crate::upstream_guard::Guard,
}

/// One target of a pool: its backend (for its health) and the peer a request to it uses.
pub struct Target {
    pub backend: Backend,
    pub peer: HttpPeer,
}

impl Pool {
    /// The next target round robin (with its index), skipping those already `tried` by this
    /// request (a bit per target), those ejected for failing and those whose health check
    /// fails. When none is left, the best of the rest: one not tried, then one not ejected, then
    /// the next anyway (as Envoy's panic mode does: a false negative must not turn into an
    /// outage, and a truly dead target is a 502). With one target nothing is looked up.
    pub fn select(&self, tried: u64, now_ms: u64) -> Option<(usize, &Target)> {
        let n = self.targets.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        if n <= 1 {
            return self.targets.first().map(|t| (0, t));
        }
        let backends = self.lb.backends();
        let order = || (0..n).map(|i| (start + i) % n);
        let untried = |i: &usize| *i >= 64 || tried & (1 << i) == 0;
        let serving = |i: &usize| !self.guard.ejected(*i, now_ms);
        order()
            .find(|i| untried(i) && serving(i) && backends.ready(&self.targets[*i].backend))
            .or_else(|| order().find(|i| untried(i) && serving(i)))
            .or_else(|| order().find(untried))
            .or(Some(start % n))
            .map(|i| (i, &self.targets[i]))
    }

    /// Whether target `i` passes its health check (or has none).
    pub fn healthy(&self, i: usize) -> bool {
        self.targets.get(i).is_some_and(|t| self.lb.backends().ready(&t.backend))
    }

    /// Each target as `/status` shows it: address, health check, ejection.
    pub fn status(&self, now_ms: u64) -> serde_json::Value {
        let targets: Vec<serde_json::Value> = self
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let ejected = self.guard.ejected_until(i, now_ms);
                let health = match (self.health_interval, self.healthy(i)) {
                    (None, _) => "unchecked",
                    (Some(_), true) => "passing",
                    (Some(_), false) => "failing",
                };
                let state = match (ejected, health) {
                    (Some(_), _) => "ejected",
                    (None, "failing") => "unhealthy",
                    _ => "serving",
                };
                serde_json::json!({
                    "address": t.backend.addr.to_string(),
                    "state": state,
                    "health_check": health,
                    "ejected_until": ejected.map(|ms| crate::clock::rfc3339(ms / 1000)),
                    "consecutive_failures": self.guard.consecutive_failures(i),
                })
            })
            .collect();
        serde_json::json!({ "name": self.name, "in_flight": self.guard.in_flight(), "targets": targets })
    }
}

/// How the gateway speaks to an upstream's targets: requests and health checks alike.
#[derive(Clone, Default)]
pub struct Transport {
    pub tls: Option<UpstreamTls>,
    /// HTTP/2 only: by ALPN over TLS, by prior knowledge (h2c) without.
    pub http2: bool,
}

/// `upstreams.<name>.tls`, its files read and checked at activation.
#[derive(Clone)]
pub struct UpstreamTls {
    pub sni: String,
    pub verify: bool,
    /// The CAs the upstream's chain must lead to; None: the system's roots.
    pub ca: Option<Arc<CaType>>,
    /// The client certificate presented for mTLS.
    pub client: Option<Arc<CertKey>>,
    /// Pingora pools upstream connections by address, SNI, verification flags and client
    /// certificate, but not by CA: without this, an upstream trusting one CA would reuse a
    /// connection verified under another upstream's (or an older bundle's) CA. A hash of the
    /// CA certificates, so only connections verified under the same roots are shared.
    pub group_key: u64,
}

impl Transport {
    /// A peer for `addr` over this transport.
    pub fn peer(&self, target: &Backend) -> HttpPeer {
        let mut peer = HttpPeer::new(target, self.tls.is_some(), String::new());
        self.apply(&mut peer);
        peer
    }

    /// Sets TLS (SNI, verification, CAs, client certificate) and the HTTP version on `peer`.
    fn apply(&self, peer: &mut HttpPeer) {
        if let Some(tls) = &self.tls {
            peer.sni = tls.sni.clone();
            peer.options.verify_cert = tls.verify;
            peer.options.verify_hostname = tls.verify;
            peer.options.ca = tls.ca.clone();
            peer.client_cert_key = tls.client.clone();
            peer.group_key = tls.group_key;
        }
        if self.http2 {
            peer.options.set_http_version(2, 2);
            // Many streams on one connection (Pingora's default is one per connection: with h2
            // clients, a connection per request in flight).
            peer.options.max_h2_streams = 100;
        } else {
            peer.options.set_http_version(1, 1);
        }
    }

    /// Reads and checks an upstream's TLS files (relative to `base`).
    fn build(u: &policy_bundles::snapshot::Upstream, base: &Path) -> Result<Transport, String> {
        let Some(t) = &u.spec.tls else { return Ok(Transport { tls: None, http2: u.spec.http2 }) };
        let sni = match &t.sni {
            Some(s) => s.clone(),
            None => default_sni(u.spec.targets.first().map(String::as_str).unwrap_or_default()),
        };
        if sni.is_empty() {
            return Err("tls: no `sni`, and the first target has no host to use".into());
        }
        let (ca, group_key) = match &t.ca_file {
            None => (None, 0),
            Some(f) => {
                let certs = read_pem_certs(&local_file(base, f)?)?;
                (Some(wrap_cas(&certs)), roots_key(&certs))
            }
        };
        let client = match (&t.client_cert_file, &t.client_key_file) {
            (Some(c), Some(k)) => Some(Arc::new(read_client(&local_file(base, c)?, &local_file(base, k)?)?)),
            _ => None,
        };
        Ok(Transport { tls: Some(UpstreamTls { sni, verify: t.verify, ca, client, group_key }), http2: u.spec.http2 })
    }
}

/// A file a bundle names on the gateway's disk: relative to the gateway's config directory and
/// inside it. A bundle comes from the control plane; it must not point the gateway at any file
/// it can read (`/etc/...`, another tenant's key) by an absolute path or `..`.
fn local_file(base: &Path, name: &str) -> Result<std::path::PathBuf, String> {
    let p = Path::new(name);
    let inside = p.components().all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir));
    if name.is_empty() || !inside {
        return Err(format!("tls: `{name}` must be a path relative to the gateway's config directory, without `..`"));
    }
    Ok(base.join(p))
}

/// The host of a `host:port` target (brackets of an IPv6 literal removed).
fn default_sni(target: &str) -> String {
    let host = target.rsplit_once(':').map(|(h, _)| h).unwrap_or(target);
    host.trim_start_matches('[').trim_end_matches(']').to_owned()
}

fn read_pem_certs(file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(file).map_err(|e| format!("tls: cannot read {}: {e}", file.display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls: {}: {e}", file.display()))?;
    if certs.is_empty() {
        return Err(format!("tls: {}: no PEM certificate in it", file.display()));
    }
    for c in &certs {
        // Pingora's wrapper panics on a certificate that does not parse: check first.
        x509_parser::parse_x509_certificate(c.as_ref())
            .map_err(|e| format!("tls: {}: a certificate does not parse: {e}", file.display()))?;
    }
    Ok(certs)
}

/// A stable hash of CA certificates (never 0, which stands for the system roots).
fn roots_key(certs: &[CertificateDer<'_>]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for c in certs {
        c.as_ref().hash(&mut h);
    }
    h.finish().max(1)
}

fn wrap_cas(certs: &[CertificateDer<'_>]) -> Arc<CaType> {
    let wrapped: Vec<WrappedX509> = certs.iter().map(|c| WrappedX509::new(c.as_ref().to_vec(), parse_x509)).collect();
    Arc::from(wrapped.into_boxed_slice())
}

/// A client certificate chain and its key, checked to match (Pingora unwraps the key later).
fn read_client(cert_file: &Path, key_file: &Path) -> Result<CertKey, String> {
    let chain = read_pem_certs(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("tls: {}: no usable PEM private key: {e}", key_file.display()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("tls: {}: {e}", key_file.display()))?;
    rustls::sign::CertifiedKey::new(chain.clone(), signer)
        .keys_match()
        .map_err(|_| format!("tls: {} does not match {}", key_file.display(), cert_file.display()))?;
    let der = key.secret_der().to_vec();
    PrivateKeyDer::try_from(der.clone()).map_err(|e| format!("tls: {}: {e}", key_file.display()))?;
    Ok(CertKey::new(chain.iter().map(|c| c.as_ref().to_vec()).collect(), der))
}

/// Why an upstream's pool could not be built (a target that does not resolve, TLS files).
#[derive(Debug, thiserror::Error)]
#[error("upstream `{upstream}`: {message}")]
pub struct PoolError {
    pub upstream: String,
    pub message: String,
}

impl Pool {
    /// Resolves an upstream's targets and builds its round-robin pool with its health check.
    /// Blocking (name resolution): called at activation, off the request path.
    pub fn build(u: &policy_bundles::snapshot::Upstream, base: &Path) -> Result<Pool, PoolError> {
        let err = |message: String| PoolError { upstream: u.name.clone(), message };
        let transport = Transport::build(u, base).map_err(err)?;
        let mut backends = std::collections::BTreeSet::new();
        for t in &u.spec.targets {
            let addrs = t.to_socket_addrs().map_err(|e| err(format!("cannot resolve target `{t}`: {e}")))?;
            for a in addrs {
                backends.insert(Backend::new(&a.to_string()).map_err(|e| err(format!("target `{t}`: {e}")))?);
            }
        }
        if backends.is_empty() {
            return Err(err("no target resolved to an address".into()));
        }
        let mut b = Backends::new(discovery::Static::new(backends));
        let health_interval = match &u.spec.health_check {
            None => None,
            Some(hc) => {
                let check: Box<dyn HealthCheck + Send + Sync> = match &hc.path {
                    Some(path) => {
                        let mut h = HttpHealthCheck::new("localhost", transport.tls.is_some());
                        transport.apply(&mut h.peer_template);
                        let mut req = RequestHeader::build("GET", path.as_bytes(), None)
                            .map_err(|e| err(format!("health check path `{path}`: {e}")))?;
                        req.append_header("Host", "localhost").map_err(|e| err(e.to_string()))?;
                        h.req = req;
                        Box::new(h)
                    }
                    // A connect (and, with TLS, a verified handshake) is the probe.
                    None => match &transport.tls {
                        Some(tls) if tls.client.is_none() => {
                            let mut t = TcpHealthCheck::new_tls(&tls.sni);
                            t.peer_template.options.verify_cert = tls.verify;
                            t.peer_template.options.verify_hostname = tls.verify;
                            t.peer_template.options.ca = tls.ca.clone();
                            t
                        }
                        _ => TcpHealthCheck::new(),
                    },
                };
                b.set_health_check(check);
                Some(hc.interval.unwrap_or(Duration::from_secs(5)))
            }
        };
        let lb = LoadBalancer::from_backends(b);
        // Static discovery never blocks: this resolves immediately.
        lb.update()
            .now_or_never()
            .ok_or_else(|| err("static discovery did not complete".into()))?
            .map_err(|e| err(format!("cannot build the pool: {e}")))?;
        let connect_timeout = u.spec.connect_timeout.unwrap_or(Duration::from_secs(1));
        let read_timeout = u.spec.read_timeout.unwrap_or(Duration::from_secs(30));
        let targets: Vec<Target> = lb
            .backends()
            .get_backend()
            .iter()
            .map(|b| {
                let mut peer = transport.peer(b);
                peer.options.connection_timeout = Some(connect_timeout);
                peer.options.total_connection_timeout = Some(connect_timeout);
                peer.options.read_timeout = Some(read_timeout);
                Target { backend: b.clone(), peer }
            })
            .collect();
        Ok(Pool {
            name: u.name.clone(),
            lb,
            connect_timeout,
            read_timeout,
            health_interval,
            next_check_ms: AtomicU64::new(0),
            transport,
            guard: crate::upstream_guard::Guard::new(u.resilience.clone(), targets.len()),
            targets,
            next: AtomicUsize::new(0),
        })
    }
}
