//! Active health checks of the upstream pools of whichever bundle is active, as a background
//! service. Results live in each pool's Pingora health registry, which `select` consults; the
//! request path never waits on a check.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::state::Gateway;

pub struct HealthChecks {
    pub gateway: Arc<Gateway>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let Some(active) = self.gateway.active.load_full() else { continue };
            let now = now_ms();
            for pool in &active.pools {
                let Some(interval) = pool.health_interval else { continue };
                if pool.next_check_ms.load(Ordering::Relaxed) > now {
                    continue;
                }
                pool.next_check_ms.store(now + interval.as_millis() as u64, Ordering::Relaxed);
                pool.lb.backends().run_health_check(true).await;
            }
        }
    }
}
