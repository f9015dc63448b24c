//! `limits.max_connections_per_ip`: how many connections one client address may hold at once
//! (nginx's `limit_conn`). Past it a new connection from that address is closed at once and
//! counted (`gateway_connections_per_ip_refused_total`).
//!
//! An IPv6 client is counted by its /64: one subscriber is usually given a whole /64, so
//! counting single addresses would let it open as many connections as it has addresses. A peer
//! in `trusted_proxies` (a load balancer in front, which carries every client's connections) is
//! not bounded. Only addresses holding connections are remembered, so the table is never larger
//! than the connections held (`limits.max_connections`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use prometheus::IntCounter;

use crate::config::RequestRules;

pub struct PerIp {
    max: usize,
    rules: RequestRules,
    held: Mutex<HashMap<IpAddr, usize>>,
    refused: IntCounter,
}

/// A connection counted against its address; released when dropped.
pub struct Slot<'a> {
    table: &'a PerIp,
    key: IpAddr,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Ok(mut held) = self.table.held.lock() {
            if let Some(n) = held.get_mut(&self.key) {
                *n -= 1;
                if *n == 0 {
                    held.remove(&self.key);
                }
            }
        }
    }
}

/// What one client's connections are counted by: its IPv4 address (an IPv4-mapped IPv6 address
/// is one), or its IPv6 /64.
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

/// Why a connection was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub struct TooMany;

impl PerIp {
    pub fn new(max: usize, rules: RequestRules, refused: IntCounter) -> PerIp {
        PerIp { max, rules, held: Mutex::new(HashMap::new()), refused }
    }

    /// Counts a new connection from `ip`; `Err` (counted) past the bound. A trusted proxy, or a
    /// peer without an IP address, is not counted.
    pub fn admit(&self, ip: Option<IpAddr>) -> Result<Option<Slot<'_>>, TooMany> {
        let Some(ip) = ip.filter(|ip| !self.rules.trusts(*ip)) else { return Ok(None) };
        let key = client_key(ip);
        let Ok(mut held) = self.held.lock() else { return Ok(None) };
        let n = held.entry(key).or_default();
        if *n >= self.max {
            drop(held);
            self.refused.inc();
            return Err(TooMany);
        }
        *n += 1;
        Ok(Some(Slot { table: self, key }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(max: usize, trusted: &[&str]) -> PerIp {
        let rules = RequestRules {
            trusted_proxies: trusted.iter().map(|t| t.parse().expect("net")).collect(),
            ..RequestRules::default()
        };
        PerIp::new(max, rules, IntCounter::new("refused", "refused").expect("counter"))
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("ip"))
    }

    #[test]
    fn an_address_holds_at_most_max_and_a_closed_one_frees_its_place() {
        let t = table(2, &[]);
        let a = t.admit(ip("192.0.2.1")).expect("first");
        let _b = t.admit(ip("192.0.2.1")).expect("second");
        assert_eq!(t.admit(ip("192.0.2.1")).err(), Some(TooMany));
        assert!(t.admit(ip("192.0.2.2")).is_ok(), "another address is untouched");
        drop(a);
        assert!(t.admit(ip("192.0.2.1")).is_ok());
        assert_eq!(t.refused.get(), 1);
    }

    #[test]
    fn an_ipv6_client_is_one_client_across_its_64_and_a_mapped_v4_is_its_v4() {
        let t = table(1, &[]);
        let _a = t.admit(ip("2001:db8:1:2::1")).expect("first");
        assert_eq!(t.admit(ip("2001:db8:1:2:ffff::9")).err(), Some(TooMany), "same /64");
        assert!(t.admit(ip("2001:db8:1:3::1")).is_ok(), "another /64");
        let _v4 = t.admit(ip("198.51.100.7")).expect("v4");
        assert_eq!(t.admit(ip("::ffff:198.51.100.7")).err(), Some(TooMany));
    }

    #[test]
    fn a_trusted_proxy_is_not_bounded_and_the_table_forgets_idle_addresses() {
        let t = table(1, &["10.0.0.0/8"]);
        let held: Vec<_> = (0..10).map(|_| t.admit(ip("10.1.2.3")).expect("trusted")).collect();
        assert!(held.iter().all(Option::is_none));
        let s = t.admit(ip("192.0.2.1")).expect("client");
        drop(s);
        assert!(t.held.lock().expect("lock").is_empty());
    }
}
