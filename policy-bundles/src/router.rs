//! The route table: first match wins, in the order routes are written, found without scanning
//! every route. Routes are indexed by host (exact, wildcard suffix, any) and then by exact path
//! and by path prefix; a lookup visits only the request path's own prefixes.

use std::collections::HashMap;

/// How a route matches a request's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Any,
    Exact(String),
    /// Normalized without a trailing slash; `""` is the root prefix.
    Prefix(String),
}

/// One HTTP method set as a bitmask; 0 means any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Methods(u16);

const METHOD_NAMES: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"];

/// A route names a method the gateway does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown HTTP method `{0}`")]
pub struct UnknownMethod(pub String);

impl Methods {
    pub fn parse(list: &[String]) -> Result<Methods, UnknownMethod> {
        let mut bits = 0u16;
        for m in list {
            let upper = m.to_ascii_uppercase();
            let i = METHOD_NAMES.iter().position(|n| *n == upper).ok_or_else(|| UnknownMethod(m.clone()))?;
            bits |= 1 << i;
        }
        Ok(Methods(bits))
    }

    fn allows(self, method: &str) -> bool {
        if self.0 == 0 {
            return true;
        }
        METHOD_NAMES.iter().position(|n| *n == method).is_some_and(|i| self.0 & (1 << i) != 0)
    }
}

/// What the table needs to know of a route to match it.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    /// `None`: any host; `Some("api.example.com")`; or `Some("*.example.com")`.
    pub host: Option<String>,
    pub path: PathMatch,
    pub methods: Methods,
}

/// Keyed and fast (ahash): the lookups hash a client's path and host once per segment.
type Map<V> = HashMap<String, V, ahash::RandomState>;

#[derive(Default, Debug)]
struct PathIndex {
    exact: Map<Vec<u32>>,
    prefix: Map<Vec<u32>>,
}

impl PathIndex {
    fn insert(&mut self, path: &PathMatch, idx: u32) {
        match path {
            PathMatch::Any => self.prefix.entry(String::new()).or_default().push(idx),
            PathMatch::Prefix(p) => self.prefix.entry(p.clone()).or_default().push(idx),
            PathMatch::Exact(p) => self.exact.entry(p.clone()).or_default().push(idx),
        }
    }

    /// The lowest route index among candidates for `path` that passes `ok`.
    fn best(&self, path: &str, ok: &impl Fn(u32) -> bool, best: &mut Option<u32>) {
        let mut consider = |list: Option<&Vec<u32>>| {
            if let Some(list) = list {
                // Lists are in ascending order: the first passing entry is this list's best.
                for &i in list {
                    if best.is_some_and(|b| i >= b) {
                        break;
                    }
                    if ok(i) {
                        *best = Some(i);
                        break;
                    }
                }
            }
        };
        consider(self.exact.get(path));
        if self.prefix.is_empty() {
            return;
        }
        consider(self.prefix.get(""));
        let trimmed = path.trim_end_matches('/');
        for (i, b) in trimmed.bytes().enumerate() {
            if b == b'/' && i > 0 {
                consider(self.prefix.get(&trimmed[..i]));
            }
        }
        if !trimmed.is_empty() {
            consider(self.prefix.get(trimmed));
        }
    }
}

/// Routes indexed for lookup. Built once per bundle; immutable and shared by all workers.
#[derive(Debug, Default)]
pub struct RouteTable {
    methods: Vec<Methods>,
    any_host: PathIndex,
    exact_host: Map<PathIndex>,
    /// Keyed by the suffix including its dot: `.example.com`.
    wildcard_host: Map<PathIndex>,
}

impl RouteTable {
    pub fn new(routes: &[RouteMatch]) -> RouteTable {
        let mut t = RouteTable::default();
        for (i, r) in routes.iter().enumerate() {
            let idx = i as u32;
            t.methods.push(r.methods);
            let index = match &r.host {
                None => &mut t.any_host,
                Some(h) if h.starts_with("*.") => t.wildcard_host.entry(h[1..].to_ascii_lowercase()).or_default(),
                Some(h) => t.exact_host.entry(h.to_ascii_lowercase()).or_default(),
            };
            index.insert(&r.path, idx);
        }
        t
    }

    /// The index of the first route matching the request, if any. `host` has no port and is
    /// lower case; `path` has no query string.
    pub fn lookup(&self, host: &str, path: &str, method: &str) -> Option<usize> {
        let ok = |i: u32| self.methods[i as usize].allows(method);
        let mut best = None;
        self.any_host.best(path, &ok, &mut best);
        if let Some(ix) = self.exact_host.get(host) {
            ix.best(path, &ok, &mut best);
        }
        if !self.wildcard_host.is_empty() {
            for (i, b) in host.bytes().enumerate() {
                if b == b'.' {
                    if let Some(ix) = self.wildcard_host.get(&host[i..]) {
                        ix.best(path, &ok, &mut best);
                    }
                }
            }
        }
        best.map(|b| b as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(host: Option<&str>, path: PathMatch, methods: &[&str]) -> RouteMatch {
        RouteMatch {
            host: host.map(str::to_owned),
            path,
            methods: Methods::parse(&methods.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap(),
        }
    }

    #[test]
    fn first_written_route_wins_across_host_groups() {
        let t = RouteTable::new(&[
            m(None, PathMatch::Prefix("/orders".into()), &["POST"]),
            m(Some("api.example.com"), PathMatch::Prefix("/orders".into()), &[]),
            m(None, PathMatch::Prefix("".into()), &[]),
            m(Some("*.example.com"), PathMatch::Exact("/x".into()), &[]),
        ]);
        assert_eq!(t.lookup("api.example.com", "/orders/7", "POST"), Some(0));
        assert_eq!(t.lookup("api.example.com", "/orders/7", "GET"), Some(1));
        assert_eq!(t.lookup("other.com", "/orders", "GET"), Some(2));
        assert_eq!(t.lookup("a.example.com", "/x", "GET"), Some(2));
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        let t = RouteTable::new(&[m(None, PathMatch::Prefix("/orders".into()), &[])]);
        assert_eq!(t.lookup("h", "/orders", "GET"), Some(0));
        assert_eq!(t.lookup("h", "/orders/", "GET"), Some(0));
        assert_eq!(t.lookup("h", "/orders/7/items", "GET"), Some(0));
        assert_eq!(t.lookup("h", "/ordersx", "GET"), None);
        assert_eq!(t.lookup("h", "/", "GET"), None);
    }

    #[test]
    fn wildcard_hosts_match_subdomains_only() {
        let t = RouteTable::new(&[m(Some("*.example.com"), PathMatch::Any, &[])]);
        assert_eq!(t.lookup("a.example.com", "/", "GET"), Some(0));
        assert_eq!(t.lookup("a.b.example.com", "/", "GET"), Some(0));
        assert_eq!(t.lookup("example.com", "/", "GET"), None);
    }
}
