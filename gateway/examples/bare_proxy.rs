//! A bare Pingora reverse proxy (no routing, no policy, no metrics): the floor that the
//! gateway's own request path is measured against. `bare_proxy LISTEN UPSTREAM [THREADS]`.

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

// The gateway's allocator, so that the difference is the gateway's own work.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}
    // As the gateway: no (disabled) compression module per request.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}
    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream.as_str(), false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: bare_proxy LISTEN UPSTREAM [THREADS]");
        std::process::exit(2);
    };
    let threads = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(2);
    let work_stealing = std::env::var("WORK_STEALING").map(|v| v != "0").unwrap_or(true);
    let conf = ServerConf { threads, work_stealing, grace_period_seconds: Some(0), ..ServerConf::default() };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    if std::env::var("SHARDS").is_ok() {
        // nginx's model: one single-threaded proxy service per thread, each with its own
        // listener (SO_REUSEPORT) and its own upstream connection pool.
        for _ in 0..threads {
            let mut proxy = http_proxy_service(&server.configuration, Bare { upstream: upstream.clone() });
            let mut opt = pingora::listeners::TcpSocketOptions::default();
            opt.so_reuseport = Some(true);
            proxy.add_tcp_with_settings(listen, opt);
            proxy.threads = Some(1);
            server.add_service(proxy);
        }
    } else {
        let mut proxy = http_proxy_service(&server.configuration, Bare { upstream: upstream.clone() });
        // READ_BUFFER=BYTES: each connection's socket read buffer (Pingora's default: 64 KiB),
        // to compare memory per connection with the gateway's at the same size.
        match std::env::var("READ_BUFFER").ok().and_then(|b| b.parse().ok()) {
            Some(bytes) => proxy.add_listener(
                pingora::listeners::ListenerConfig::tcp(listen)
                    .l4_buffer(pingora::protocols::l4::stream::L4BufferSettings::default().read(bytes)),
            ),
            None => proxy.add_tcp(listen),
        }
        server.add_service(proxy);
    }
    server.run_forever()
}
