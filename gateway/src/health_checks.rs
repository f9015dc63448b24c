//! Active health checks of the upstream pools of whichever bundle is active, as a background
//! service. Results live in each pool's Pingora health registry, which `select` consults; the
//! request path never waits on a check.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::active::Gateway;

pub struct HealthChecks {
    pub gateway: Arc<Gateway>,
}

#[async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        while crate::clock::next_tick(&mut tick, &mut shutdown).await {
            let Some(active) = self.gateway.active() else { continue };
            let now = crate::clock::unix_now_ms();
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
