//! Upstream pools: each upstream's targets resolved once per activation, balanced round robin,
//! with the upstream's health check. A pool belongs to one active bundle and is dropped with it.

use std::net::ToSocketAddrs;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use futures::FutureExt;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{discovery, Backend, Backends, LoadBalancer};
use pingora::prelude::RequestHeader;

use crate::activation::ActivationError;

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
}

impl Pool {
    /// Resolves an upstream's targets and builds its round-robin pool with its health check.
    /// Blocking (name resolution): called at activation, off the request path.
    pub fn build(u: &policy_bundles::snapshot::Upstream) -> Result<Pool, ActivationError> {
        let err = |message: String| ActivationError::Upstream { upstream: u.name.clone(), message };
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
                        let mut h = HttpHealthCheck::new("localhost", false);
                        let mut req = RequestHeader::build("GET", path.as_bytes(), None)
                            .map_err(|e| err(format!("health check path `{path}`: {e}")))?;
                        req.append_header("Host", "localhost").map_err(|e| err(e.to_string()))?;
                        h.req = req;
                        Box::new(h)
                    }
                    None => TcpHealthCheck::new(),
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
        Ok(Pool {
            name: u.name.clone(),
            lb,
            connect_timeout: u.spec.connect_timeout.unwrap_or(Duration::from_secs(1)),
            read_timeout: u.spec.read_timeout.unwrap_or(Duration::from_secs(30)),
            health_interval,
            next_check_ms: AtomicU64::new(0),
        })
    }
}
