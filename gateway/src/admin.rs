//! The admin listener: `/healthz` (alive), `/readyz` (a bundle is active), `/status` (JSON about
//! the active bundle) and `/metrics` (Prometheus). It runs on its own Pingora service and
//! threads, so it keeps answering when the proxy listener is busy.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::active::Gateway;
use crate::metrics::Metrics;

pub struct Admin {
    pub gateway: Arc<Gateway>,
    pub metrics: Arc<Metrics>,
    /// `bundle.name`, shown while nothing is active.
    pub bundle_name: String,
    /// Starting, running, or draining (handing over / shutting down): `/readyz`.
    pub phases: Arc<crate::upgrade::Phases>,
    /// TLS on the proxy listener, if any.
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// The quota store as this gateway sees it, with a `quota_store`.
    pub quotas: Option<Arc<crate::quota::Fleet>>,
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

impl Admin {
    /// The Prometheus exposition, with the staleness gauges brought up to date.
    pub fn render_metrics(&self) -> Vec<u8> {
        let (m, sync) = (&self.metrics, &self.gateway.sync);
        m.bundle_age.set(sync.age_seconds());
        m.bundle_stale.set(i64::from(sync.is_stale()));
        m.signature_expired.set(i64::from(self.gateway.signature_expired()));
        if let Some(active) = self.gateway.active() {
            for pool in &active.pools {
                let in_flight = i64::try_from(pool.guard.in_flight()).unwrap_or(i64::MAX);
                m.upstream.connections.with_label_values(&[&pool.name]).set(in_flight);
            }
        }
        m.render()
    }

    /// The `/status` document.
    pub fn status(&self) -> serde_json::Value {
        // The bundle with its ETag, read together: activation sets both at once.
        let (active, sync) = self.gateway.read();
        let status = &self.gateway.sync;
        let confirmed = status.last_confirmed_ms();
        let now_ms = crate::clock::unix_now_ms();
        let bundle = match active.as_ref() {
            Some(a) => serde_json::json!({
                "name": a.info.name,
                "revision": a.info.revision,
                "digest": a.info.digest,
                "activated_at": a.info.activated_at,
                "source": a.info.source,
                "routes": a.snapshot.routes.len(),
                "upstreams": a.snapshot.upstreams.len(),
                "figures": a.info.figures,
                "signature": a.info.identity.as_ref().map(|i| serde_json::json!({
                    "sequence": i.sequence,
                    "expires": i.expires,
                    "expired": a.signature_expired(),
                })),
                "served": a.served.report(),
                "upstreams": a.pools.iter().map(|p| p.status(now_ms)).collect::<Vec<_>>(),
            }),
            None => serde_json::json!({ "name": self.bundle_name }),
        };
        serde_json::json!({
            "ready": active.is_some(),
            "bundle": bundle,
            "sync": {
                "source": sync.source,
                "etag": sync.etag,
                "last_sync": (confirmed > 0).then_some(confirmed / 1000),
                "staleness_seconds": status.age_seconds().floor(),
                "max_staleness_seconds": status.max_staleness().as_secs(),
                "stale": status.is_stale(),
                "last_error": sync.last_error,
                "last_error_at": sync.last_error_at,
            },
            "last_error": sync.last_error,
            "last_activation": status.last_activation(),
            "phase": self.phases.get().label(),
            "pid": std::process::id(),
            "tls": self.tls.as_ref().map(|t| serde_json::json!({ "certificates": t.status() })),
            "quota_store": self.quotas.as_ref().map(|q| q.status()),
        })
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_owned();
        match path.as_str() {
            "/healthz" => reply(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => match (self.gateway.is_active(), self.phases.get()) {
                (_, crate::upgrade::Phase::Draining) => reply(
                    503,
                    "text/plain",
                    b"not ready: draining (handing over to a new process, or shutting down)\n".to_vec(),
                ),
                (true, _) => reply(200, "text/plain", b"ready\n".to_vec()),
                (false, _) => reply(503, "text/plain", b"not ready: no policy bundle is active\n".to_vec()),
            },
            "/status" => {
                let body = serde_json::to_vec_pretty(&self.status()).unwrap_or_default();
                reply(200, "application/json", body)
            }
            "/metrics" => reply(200, "text/plain; version=0.0.4", self.render_metrics()),
            _ => reply(404, "text/plain", b"not found: try /healthz /readyz /status /metrics\n".to_vec()),
        }
    }
}
