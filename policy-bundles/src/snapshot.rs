//! Compiling a validated bundle into one immutable [`Snapshot`]: the Rego policy compiled once
//! per decision rule, the indexed route table, the upstream specs and the JWT trust roots.
//! A snapshot is `Send + Sync` and is shared by every worker thread without locks.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::program::Program;
use regorus::rvm::vm::RegoVM;
use regorus::{CompiledPolicy, Engine, Value};

use crate::bundle::{Bundle, TESTS_DIR};
use crate::decision::{Decision, DecisionError};
use crate::error::{BundleError, BundleErrors, ErrorKind};
use crate::input::{Connection, InputFormat};
use crate::input_reads::InputReads;
use crate::jwt::TrustRoots;
use crate::router::{Methods, PathMatch, RouteMatch, RouteTable};
use crate::settings::{RouteSpec, UpstreamSpec};

/// A route ready to serve.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    /// Index into [`Snapshot::upstreams`].
    pub upstream: usize,
    /// Index into the snapshot's policies.
    pub policy: usize,
    /// The prefix removed from the path before proxying, when `strip_prefix` is set.
    pub strip: Option<String>,
    pub fail_open: bool,
    /// The route's shadow rule (index into the snapshot's policies): evaluated, never enforced.
    pub shadow: Option<usize>,
    /// The input document its rules read (and the result form they give).
    pub format: InputFormat,
    /// `body.max_bytes`: the request body is buffered up to this many bytes before the rule
    /// runs (413 past it) and is part of the input.
    pub body: Option<u64>,
    /// `authorization_schemes`, lower case: schemes besides `Bearer` left to the rule.
    pub schemes: Vec<String>,
    /// Its `rate_limits`: indexes into [`Snapshot::rate_limits`].
    pub rate_limits: Vec<usize>,
    /// `retry_non_idempotent`: a request of any method may be retried once it reached a target.
    pub retry_non_idempotent: bool,
    /// `upstream_headers`: which of its own headers the gateway adds for the upstream.
    pub adds: crate::settings::UpstreamHeaders,
}

impl Route {
    /// Whether this route leaves an `Authorization` of `scheme` (not `Bearer`) to its rule.
    pub fn accepts_scheme(&self, scheme: &str) -> bool {
        self.schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme))
    }
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub spec: UpstreamSpec,
    /// Retries, outlier ejection and the bounds on what it is sent, with their defaults.
    pub resilience: crate::resilience::Resilience,
}

/// One decision rule, compiled for the regorus VM (about 6x faster than the tree-walking
/// interpreter on the example bundle; docs/src/performance.md, "Policy evaluation"), with the interpreter kept as the fallback
/// for any rule the VM compiler does not support.
struct Policy {
    rule: String,
    format: InputFormat,
    compiled: CompiledPolicy,
    program: Option<Arc<Program>>,
}

/// Bounds of one evaluation. The wall-clock bound also comes from regorus' process-wide
/// fallback timer (`regorus::utils::limits::set_fallback_execution_timer_config`), which the
/// gateway sets from `policy_timeout`.
pub const MAX_INSTRUCTIONS: usize = 5_000_000;

static SNAPSHOT_IDS: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// VMs of this thread for the newest snapshot it has evaluated: (snapshot id, VM per policy).
    static VMS: RefCell<(u64, Vec<Option<RegoVM>>)> = const { RefCell::new((0, Vec::new())) };
    /// This thread's decision cache for the newest snapshot it has evaluated. Per thread, so a
    /// hit takes no lock; keyed by snapshot id, so a swap starts it empty.
    static DECISIONS: RefCell<DecisionCache> = const { RefCell::new(DecisionCache { id: 0, len: 0, maps: Vec::new() }) };
}

struct DecisionCache {
    id: u64,
    len: usize,
    /// Per policy: the values the bundle reads from the input → the decision they gave.
    maps: Vec<BTreeMap<CacheKey, Arc<Decision>>>,
}

/// A decision cache key: the values the rule reads. Compared element by element, with values
/// that share their allocation taken as equal without walking them: a cached token's
/// `input.jwt` is the same object on every request, and comparing it field by field cost about
/// 1,500 instructions a hit. (Shared means equal, so the order is `Value`'s own.)
#[derive(PartialEq, Eq)]
struct CacheKey(Vec<Value>);

impl Ord for CacheKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let shared = |a: &Value, b: &Value| match (a, b) {
            (Value::Object(x), Value::Object(y)) => std::ptr::eq(&**x, &**y),
            (Value::Array(x), Value::Array(y)) => std::ptr::eq(&**x, &**y),
            (Value::Set(x), Value::Set(y)) => std::ptr::eq(&**x, &**y),
            (Value::String(x), Value::String(y)) => std::ptr::eq(&**x, &**y),
            _ => false,
        };
        for (a, b) in self.0.iter().zip(&other.0) {
            if !shared(a, b) {
                match a.cmp(b) {
                    std::cmp::Ordering::Equal => {}
                    o => return o,
                }
            }
        }
        self.0.len().cmp(&other.0.len())
    }
}

impl PartialOrd for CacheKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Default bound of each worker thread's decision cache, in entries; see
/// [`set_decision_cache_entries`].
pub const DEFAULT_DECISION_CACHE_ENTRIES: usize = 4096;

static DECISION_CACHE_ENTRIES: AtomicUsize = AtomicUsize::new(DEFAULT_DECISION_CACHE_ENTRIES);

/// Bounds each thread's decision cache to `entries` (0 turns caching off). When a cache is
/// full it is emptied and refills from the requests that follow: bounded memory, no eviction
/// bookkeeping on the request path.
pub fn set_decision_cache_entries(entries: usize) {
    DECISION_CACHE_ENTRIES.store(entries, Ordering::Relaxed);
}

/// How [`Snapshot::decide_cached`] reached its decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// From this thread's cache: the rule did not run.
    Hit,
    /// The rule ran and its decision was cached.
    Miss,
    /// The rule ran; the bundle's decisions are not cacheable (or caching is off).
    Bypass,
}

/// Why evaluating a rule did not give a decision.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("policy evaluation failed: {0}")]
    Eval(String),
    #[error(transparent)]
    Decision(#[from] DecisionError),
}

/// A request's parts other than its headers, canonical ([`Snapshot::decide_request`]).
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub host: &'a str,
    pub scheme: &'a str,
    pub client_ip: &'a str,
    /// The buffered body, on a route with `body` ([`Route::body`]); `None` elsewhere.
    pub body: Option<&'a [u8]>,
    /// `Content-Type`, for `parsed_body`.
    pub content_type: Option<&'a str>,
    /// What the Envoy input format adds: ports, the request id, the protocol.
    pub conn: Connection<'a>,
}

/// The compiled, immutable form of a bundle.
pub struct Snapshot {
    /// Unique per compiled snapshot in this process; keys the per-thread VMs.
    id: u64,
    data: Value,
    pub revision: String,
    pub routes: Vec<Route>,
    pub table: RouteTable,
    pub upstreams: Vec<Upstream>,
    pub jwt: Option<TrustRoots>,
    policies: Vec<Policy>,
    /// What each policy reads from the input: its decision cache's key.
    pub reads: Vec<InputReads>,
    /// What each policy's input must hold, from `reads`.
    needs: Vec<crate::input::Needs>,
    /// `request_headers.remove`, lower case: removed from every client request.
    pub header_removals: Vec<String>,
    /// `request_headers.allow`, lower case: claim headers (`crate::claims`) let through.
    pub header_allowed: Vec<String>,
    /// `data.system.log.drop` and `data.system.log.mask` (indexes into the policies), when the
    /// bundle defines them: OPA's decision-log drop and mask rules, with the event as input.
    pub log_drop: Option<usize>,
    pub log_mask: Option<usize>,
    /// Some route buffers bodies / reads the Envoy input: decided once here, not per request.
    reads_bodies: bool,
    envoy_routes: bool,
    /// `rate_limits`, in name order.
    pub rate_limits: Vec<crate::rate_limits::RateLimit>,
    /// Some route has a limit applied before authentication.
    pub limits_before_auth: bool,
}

/// The decision-log rules a bundle may define, as in OPA.
const LOG_RULES: [&str; 2] = ["data.system.log.drop", "data.system.log.mask"];

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("revision", &self.revision)
            .field("routes", &self.routes.len())
            .field("upstreams", &self.upstreams.len())
            .finish()
    }
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Snapshot>();
    assert_send_sync::<CompiledPolicy>();
    assert_send_sync::<Program>();
};

/// Extracts the 1-based line from a regorus message of the form `file:line:col: ...`.
fn rego_line(message: &str, file: &str) -> Option<usize> {
    let rest = message.split_once(&format!("{file}:"))?.1;
    rest.split(':').next()?.trim().parse().ok()
}

/// A regorus engine holding the bundle's modules (test modules included when asked) and data.
pub fn engine_for(bundle: &Bundle, with_tests: bool) -> Result<Engine, BundleErrors> {
    let mut engine = Engine::new();
    let mut errors = Vec::new();
    if let Err(e) = regorus_jwt::register(&mut engine) {
        errors.push(BundleError::new(ErrorKind::Rego, None, format!("cannot add the io.jwt builtins: {e}")));
    }
    for m in &bundle.modules {
        if !with_tests && m.path.starts_with(TESTS_DIR) {
            continue;
        }
        engine.set_rego_v0(m.rego_v0);
        // As OPA reads the text: raw control characters in strings (crate::rego_text).
        let source = crate::rego_text::escape_raw_controls(&m.source).into_owned();
        if let Err(e) = engine.add_policy(m.path.clone(), source) {
            let msg = e.to_string();
            let line = rego_line(&msg, &m.path);
            errors.push(BundleError::new(ErrorKind::Rego, Some(m.path.clone()), msg.trim().to_owned()).at_line(line));
        }
    }
    if let Err(e) = engine.add_data(Value::from(bundle.data.clone())) {
        errors.push(BundleError::new(ErrorKind::Syntax, None, format!("data document rejected: {e}")));
    }
    if errors.is_empty() {
        Ok(engine)
    } else {
        Err(BundleErrors(errors))
    }
}

impl Snapshot {
    /// Compiles a bundle; collects every error it can before failing.
    pub fn compile(bundle: &Bundle) -> Result<Snapshot, BundleErrors> {
        let mut errors = Vec::new();
        if let Some(e) = empty_routing_table(bundle) {
            errors.push(e);
        }
        let header_removals = request_header_removals(bundle).unwrap_or_else(|e| {
            errors.push(e);
            Vec::new()
        });
        let header_allowed = request_header_allowed(bundle).unwrap_or_else(|e| {
            errors.push(e);
            Vec::new()
        });
        let upstreams = compile_upstreams(bundle, &mut errors);
        let rate_limits = compile_rate_limits(bundle, &mut errors);
        let routes = compile_routes(bundle, &upstreams, &rate_limits, &mut errors);
        let limits_before_auth = routes.routes.iter().flat_map(|r| &r.rate_limits).any(|&l| rate_limits[l].before_auth);
        let jwt = compile_jwt(bundle, &mut errors);
        let (policies, reads, log_rules) = compile_policies(bundle, &routes.rules, &LOG_RULES, &mut errors);
        let needs = reads.iter().zip(&policies).map(|(r, p)| crate::input::Needs::of(r, p.format)).collect();
        let reads_bodies = routes.routes.iter().any(|r| r.body.is_some());
        let envoy_routes = routes.routes.iter().any(|r| r.format == InputFormat::Envoy);
        if !errors.is_empty() {
            return Err(BundleErrors(errors));
        }
        Ok(Snapshot {
            id: SNAPSHOT_IDS.fetch_add(1, Ordering::Relaxed),
            data: Value::from(bundle.data.clone()),
            revision: bundle.manifest.revision.clone(),
            table: RouteTable::new(&routes.matches),
            routes: routes.routes,
            upstreams,
            jwt,
            policies,
            needs,
            reads,
            header_removals,
            header_allowed,
            reads_bodies,
            envoy_routes,
            rate_limits,
            limits_before_auth,
            log_drop: log_rules.first().copied().flatten(),
            log_mask: log_rules.get(1).copied().flatten(),
        })
    }

    /// Evaluates a route's rule with `input` and reads the decision from its result.
    pub fn decide(&self, policy: usize, input: Value) -> Result<Decision, EvalError> {
        let v = self.evaluate(policy, input)?;
        match self.format(policy) {
            InputFormat::Gateway => Ok(Decision::from_value(&v)?),
            InputFormat::Envoy => Ok(Decision::from_envoy(&v)?),
        }
    }

    /// The input format (and result form) of a policy.
    pub fn format(&self, policy: usize) -> InputFormat {
        self.policies.get(policy).map_or(InputFormat::Gateway, |p| p.format)
    }

    /// [`decide`](Self::decide) through this thread's decision cache: when the bundle's
    /// decisions are cacheable ([`InputReads`]), an input whose read values were seen before on
    /// this thread gets the decision they gave without running the rule. Only decisions are
    /// cached, never errors.
    pub fn decide_cached(&self, policy: usize, input: Value) -> Result<(Arc<Decision>, CacheOutcome), EvalError> {
        let key = self.reads.get(policy).and_then(|r| r.key(&input));
        self.decide_keyed(policy, key, || input)
    }

    /// [`decide_cached`](Self::decide_cached) with the key already read from the request
    /// ([`crate::input::key`] over [`InputReads::paths`]), so that a hit never builds the input:
    /// `input` is called only on a miss (or when `key` is `None`: not cacheable).
    pub fn decide_keyed(
        &self,
        policy: usize,
        key: Option<Vec<Value>>,
        input: impl FnOnce() -> Value,
    ) -> Result<(Arc<Decision>, CacheOutcome), EvalError> {
        let max = DECISION_CACHE_ENTRIES.load(Ordering::Relaxed);
        let key = match key {
            Some(key) if max > 0 && policy < self.policies.len() => CacheKey(key),
            _ => return Ok((Arc::new(self.decide(policy, input())?), CacheOutcome::Bypass)),
        };
        let hit = DECISIONS.with(|cell| {
            let mut c = cell.borrow_mut();
            if c.id != self.id {
                c.id = self.id;
                c.len = 0;
                c.maps.clear();
                c.maps.resize_with(self.policies.len(), BTreeMap::new);
            }
            c.maps.get(policy).and_then(|m| m.get(&key)).cloned()
        });
        if let Some(d) = hit {
            return Ok((d, CacheOutcome::Hit));
        }
        let decision = Arc::new(self.decide(policy, input())?);
        DECISIONS.with(|cell| {
            let mut c = cell.borrow_mut();
            if c.id != self.id {
                return; // another snapshot took this thread's cache meanwhile
            }
            if c.len >= max {
                c.maps.iter_mut().for_each(BTreeMap::clear);
                c.len = 0;
            }
            if let Some(m) = c.maps.get_mut(policy) {
                if m.insert(key, decision.clone()).is_none() {
                    c.len += 1;
                }
            }
        });
        Ok((decision, CacheOutcome::Miss))
    }

    /// Decides a request exactly as the gateway does: the rule's input holds only what the rule
    /// can read ([`Snapshot::needs`]), the cache key is read from the request, and the input is
    /// built only when the rule must run. `headers` builds the headers object of the input,
    /// given which headers the rule can read ([`crate::input::headers`] over the request's
    /// headers, filtered by [`crate::input::Needs::header`]); `query` is parsed only when read.
    pub fn decide_request(
        &self,
        policy: usize,
        route: &str,
        req: Request<'_>,
        headers: impl FnOnce(&crate::input::Needs) -> Value,
        jwt: Option<&Value>,
    ) -> Result<(Arc<Decision>, CacheOutcome), EvalError> {
        let needs = self.needs(policy);
        let parts = request_parts(needs, req, headers(needs));
        if self.format(policy) == InputFormat::Envoy {
            // The input is built (holding only what the rule can read) and keyed as a whole.
            let input = crate::input::envoy(&parts, &req.conn, needs);
            let key = self.reads.get(policy).and_then(|r| r.key(&input));
            return self.decide_keyed(policy, key, || input);
        }
        let key = self.reads.get(policy).and_then(|r| r.paths()).map(|p| crate::input::key(&parts, route, jwt, p));
        self.decide_keyed(policy, key, || crate::input::build(parts, route, jwt))
    }

    /// The input [`decide_request`](Self::decide_request) gives the rule for the same request:
    /// only what the rule can read, in its format. Built again, for tools that show it
    /// (`bundlectl eval --input`); the request path never calls this.
    pub fn request_input(
        &self,
        policy: usize,
        route: &str,
        req: Request<'_>,
        headers: impl FnOnce(&crate::input::Needs) -> Value,
        jwt: Option<&Value>,
    ) -> Value {
        let needs = self.needs(policy);
        let parts = request_parts(needs, req, headers(needs));
        match self.format(policy) {
            InputFormat::Envoy => crate::input::envoy(&parts, &req.conn, needs),
            InputFormat::Gateway => crate::input::build(parts, route, jwt),
        }
    }

    /// Evaluates a rule: on this thread's VM for the rule when it has a VM program, else with
    /// the interpreter.
    pub fn evaluate(&self, policy: usize, input: Value) -> Result<Value, EvalError> {
        let p = self.policies.get(policy).ok_or_else(|| EvalError::Eval("no such policy".into()))?;
        let Some(program) = &p.program else { return self.interpret(policy, input) };
        VMS.with(|cell| {
            let mut guard = cell.borrow_mut();
            let (id, vms) = &mut *guard;
            if *id != self.id {
                // A newer (or other) snapshot: drop this thread's VMs of the previous one.
                *id = self.id;
                vms.clear();
                vms.resize_with(self.policies.len(), || None);
            }
            let slot = vms.get_mut(policy).ok_or_else(|| EvalError::Eval("no such policy".into()))?;
            if slot.is_none() {
                let mut vm = RegoVM::new();
                vm.load_program(program.clone());
                vm.set_data(self.data.clone()).map_err(|e| EvalError::Eval(e.to_string()))?;
                vm.set_max_instructions(MAX_INSTRUCTIONS);
                *slot = Some(vm);
            }
            let vm = slot.as_mut().ok_or_else(|| EvalError::Eval("no VM".into()))?;
            vm.set_input(input);
            vm.execute().map_err(|e| EvalError::Eval(e.to_string()))
        })
    }

    /// Evaluates a rule with the tree-walking interpreter (the reference semantics).
    pub fn interpret(&self, policy: usize, input: Value) -> Result<Value, EvalError> {
        let p = self.policies.get(policy).ok_or_else(|| EvalError::Eval("no such policy".into()))?;
        p.compiled.eval_with_input(input).map_err(|e| EvalError::Eval(e.to_string()))
    }

    /// Whether a route buffers request bodies (`body`): only then does the gateway look the
    /// route up before deciding, to read the body first.
    pub fn reads_bodies(&self) -> bool {
        self.reads_bodies
    }

    /// Whether a route reads the OPA-Envoy input: only then does the gateway gather what it adds
    /// (ports, the local address, the protocol) for a request.
    pub fn has_envoy_routes(&self) -> bool {
        self.envoy_routes
    }

    /// Whether a rule runs on the VM (false: the interpreter).
    pub fn uses_vm(&self, policy: usize) -> bool {
        self.policies.get(policy).is_some_and(|p| p.program.is_some())
    }

    /// What each rule's decisions are cached on: `rule: input.a, input.b; rule2: uncacheable: why`.
    pub fn describe_reads(&self) -> String {
        self.policies
            .iter()
            .zip(&self.reads)
            .map(|(p, r)| format!("{}: {}", p.rule, r.describe().join(", ")))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// What a policy's input must hold ([`crate::input::Needs::ALL`] for an unknown index).
    pub fn needs(&self, policy: usize) -> &crate::input::Needs {
        self.needs.get(policy).unwrap_or(&crate::input::Needs::ALL)
    }

    /// The bundle's data document as policies read it.
    pub fn data(&self) -> &Value {
        &self.data
    }

    /// Number of distinct decision rules.
    pub fn policy_count(&self) -> usize {
        self.policies.len()
    }

    /// The policy index of a rule path (`data.http.orders.decision`), when a route uses it.
    pub fn policy_index(&self, rule: &str) -> Option<usize> {
        self.policies.iter().position(|p| p.rule == rule)
    }

    /// The rule a policy index stands for.
    pub fn rule(&self, policy: usize) -> Option<&str> {
        self.policies.get(policy).map(|p| p.rule.as_str())
    }

    /// Convenience for tools and tests: the route index for a request.
    pub fn route_for(&self, host: &str, path: &str, method: &str) -> Option<&Route> {
        self.table.lookup(host, path, method).map(|i| &self.routes[i])
    }
}

/// A request's parts as a rule with `needs` reads them: the query and body only when it reads
/// them ([`Snapshot::decide_request`], [`Snapshot::request_input`]).
fn request_parts<'a>(needs: &crate::input::Needs, req: Request<'a>, headers: Value) -> crate::input::RequestParts<'a> {
    crate::input::RequestParts {
        method: req.method,
        path: req.path,
        query: req.query.filter(|_| needs.query()),
        headers,
        host: req.host,
        scheme: req.scheme,
        client_ip: req.client_ip,
        body: req.body.filter(|_| needs.body()),
        content_type: req.content_type,
    }
}

/// The bundle's upstreams, each with at least one `host:port` target.
fn compile_upstreams(bundle: &Bundle, errors: &mut Vec<BundleError>) -> Vec<Upstream> {
    let upstreams: Vec<Upstream> = bundle
        .settings
        .upstreams
        .iter()
        .map(|(name, spec)| {
            let resilience = crate::resilience::compile(spec).unwrap_or_else(|m| {
                let (file, line) = bundle.settings_line(&format!("{name}:"));
                errors
                    .push(BundleError::new(ErrorKind::Settings, file, format!("upstream `{name}`: {m}")).at_line(line));
                // The bundle is refused: any value serves until then.
                crate::resilience::Resilience::defaults()
            });
            Upstream { name: name.clone(), spec: spec.clone(), resilience }
        })
        .collect();
    for u in &upstreams {
        let (file, line) = bundle.settings_line(&format!("{}:", u.name));
        if u.spec.targets.is_empty() {
            errors.push(
                BundleError::new(ErrorKind::Settings, file.clone(), format!("upstream `{}` has no targets", u.name))
                    .at_line(line),
            );
        }
        for t in &u.spec.targets {
            if let Err(m) = check_target(t) {
                errors.push(
                    BundleError::new(ErrorKind::Settings, file.clone(), format!("upstream `{}`: {m}", u.name))
                        .at_line(bundle.settings_line(t).1),
                );
            }
        }
        if let Some(Err(m)) = u.spec.tls.as_ref().map(check_upstream_tls) {
            errors.push(
                BundleError::new(ErrorKind::Settings, file.clone(), format!("upstream `{}`: tls: {m}", u.name))
                    .at_line(line),
            );
        }
    }
    upstreams
}

/// What can be checked of an upstream's `tls` without the gateway's files.
fn check_upstream_tls(t: &crate::settings::UpstreamTlsSpec) -> Result<(), String> {
    if t.client_cert_file.is_some() != t.client_key_file.is_some() {
        return Err("`client_cert_file` and `client_key_file` go together".into());
    }
    if t.sni.as_deref().is_some_and(|s| s.is_empty() || s.contains(|c: char| c.is_whitespace() || c == '/')) {
        return Err("`sni` must be a host name".into());
    }
    Ok(())
}

/// The routes in order, what the route table matches them on, and the distinct rules they name
/// (a route's `policy` indexes `rules`).
struct CompiledRoutes {
    routes: Vec<Route>,
    matches: Vec<RouteMatch>,
    rules: Vec<(String, InputFormat)>,
}

/// `rate_limits`, each checked; a refused one is left out (and the bundle refused).
fn compile_rate_limits(bundle: &Bundle, errors: &mut Vec<BundleError>) -> Vec<crate::rate_limits::RateLimit> {
    let mut out = Vec::new();
    let defined = bundle.settings.rate_limits.len();
    if defined > crate::rate_limits::MAX_LIMITS {
        let (file, line) = bundle.settings_line("rate_limits:");
        let why = format!("rate_limits: {defined} limits, more than {}", crate::rate_limits::MAX_LIMITS);
        errors.push(BundleError::new(ErrorKind::Settings, file, why).at_line(line));
    }
    let removed = request_header_removals(bundle).unwrap_or_default();
    for (name, spec) in &bundle.settings.rate_limits {
        let compiled = crate::rate_limits::compile(name, spec).and_then(|l| match &l.key {
            // The header is removed from every request before any limit reads it.
            crate::rate_limits::LimitKey::Header(h) if removed.contains(h) => {
                Err(format!("`key: header.{h}`: `request_headers.remove` removes it from every request"))
            }
            _ => Ok(l),
        });
        match compiled {
            Ok(l) => out.push(l),
            Err(m) => {
                let (file, line) = bundle.settings_line(&format!("{name}:"));
                errors.push(
                    BundleError::new(ErrorKind::Settings, file, format!("rate limit `{name}`: {m}")).at_line(line),
                );
            }
        }
    }
    out
}

fn compile_routes(
    bundle: &Bundle,
    upstreams: &[Upstream],
    limits: &[crate::rate_limits::RateLimit],
    errors: &mut Vec<BundleError>,
) -> CompiledRoutes {
    let mut out = CompiledRoutes { routes: Vec::new(), matches: Vec::new(), rules: Vec::new() };
    // How many routes of each name came before: the n-th `name: x` line is this route's.
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &bundle.settings.routes {
        let earlier = seen.entry(r.name.as_str()).or_default();
        let (file, line) = bundle.route_line(&r.name, *earlier);
        *earlier += 1;
        let duplicate = *earlier > 1;
        let mut report = |m: String| {
            errors.push(
                BundleError::new(ErrorKind::Settings, file.clone(), format!("route `{}`: {m}", r.name)).at_line(line),
            )
        };
        if duplicate {
            report("duplicate route name".into());
        }
        let upstream = upstreams.iter().position(|u| u.name == r.upstream);
        if upstream.is_none() {
            report(format!("names upstream `{}`, which is not defined", r.upstream));
        }
        if crate::input_reads::rule_path(&r.policy).is_none() {
            report(format!("policy `{}` must be a rule path such as data.http.orders.decision", r.policy));
        }
        if let Some(shadow) = &r.shadow {
            if crate::input_reads::rule_path(shadow).is_none() {
                report(format!("shadow `{shadow}` must be a rule path such as data.http.orders_v2.decision"));
            }
        }
        let (matcher, strip) = route_match(r, &mut report);
        let format = r.input_format.or(bundle.settings.input_format).unwrap_or_default();
        if let Some(b) = r.body {
            if b.max_bytes == 0 || b.max_bytes > MAX_BODY_BYTES {
                report(format!("`body.max_bytes` must be 1 to {MAX_BODY_BYTES} (bodies are held in memory)"));
            }
        }
        for scheme in &r.authorization_schemes {
            if scheme.eq_ignore_ascii_case("bearer") || !http_canon::is_token(scheme.as_bytes()) {
                report(format!(
                    "`authorization_schemes`: `{scheme}` is not a scheme name other than Bearer (bearer tokens are always verified)"
                ));
            }
        }
        let mut rate_limits = Vec::new();
        for name in &r.rate_limits {
            match limits.iter().position(|l| l.name == *name) {
                Some(i) if !rate_limits.contains(&i) => rate_limits.push(i),
                Some(_) => report(format!("names rate limit `{name}` twice")),
                // A limit that failed to compile is reported on its own.
                None if bundle.settings.rate_limits.contains_key(name) => {}
                None => report(format!("names rate limit `{name}`, which is not defined")),
            }
        }
        let policy = rule_index(&mut out.rules, &r.policy, format);
        let shadow = r.shadow.as_ref().map(|rule| rule_index(&mut out.rules, rule, format));
        out.matches.push(matcher);
        out.routes.push(Route {
            name: r.name.clone(),
            upstream: upstream.unwrap_or(0),
            policy,
            strip,
            fail_open: r.fail_open,
            shadow,
            format,
            body: r.body.map(|b| b.max_bytes),
            schemes: r.authorization_schemes.iter().map(|s| s.to_ascii_lowercase()).collect(),
            rate_limits,
            retry_non_idempotent: r.retry_non_idempotent,
            adds: r.upstream_headers,
        });
    }
    out
}

/// The index of `rule` read in `format` in `rules`, added if new: one rule read in two formats
/// is two policies, whose decisions are read and cached apart.
fn rule_index(rules: &mut Vec<(String, InputFormat)>, rule: &str, format: InputFormat) -> usize {
    match rules.iter().position(|(x, f)| x == rule && *f == format) {
        Some(i) => i,
        None => {
            rules.push((rule.to_owned(), format));
            rules.len() - 1
        }
    }
}

/// The largest `body.max_bytes` a route may ask for.
/// 64 KiB: the gateway holds a read body in Pingora's retry buffer, which sends it upstream
/// after the decision and holds at most that much (`BODY_BUF_LIMIT` in pingora-core 0.9).
pub const MAX_BODY_BYTES: u64 = 64 << 10;

/// What a route matches (path, methods, host) and the prefix it strips; problems go to `report`.
fn route_match(r: &RouteSpec, report: &mut impl FnMut(String)) -> (RouteMatch, Option<String>) {
    let path = match (&r.matcher.path, &r.matcher.path_prefix) {
        (Some(_), Some(_)) => {
            report("give `path` or `path_prefix`, not both".into());
            PathMatch::Any
        }
        (Some(p), None) if p.starts_with('/') => PathMatch::Exact(p.clone()),
        (None, Some(p)) if p.starts_with('/') => PathMatch::Prefix(p.trim_end_matches('/').to_owned()),
        (None, None) => PathMatch::Any,
        _ => {
            report("paths must start with `/`".into());
            PathMatch::Any
        }
    };
    let methods = Methods::parse(r.matcher.methods.as_deref().unwrap_or(&[])).unwrap_or_else(|e| {
        report(e.to_string());
        Methods::default()
    });
    if let Some(h) = &r.matcher.host {
        if h.is_empty() || h.contains('/') || (h.contains('*') && !(h.starts_with("*.") && h[2..].find('*').is_none()))
        {
            report(format!("host `{h}` is not a host name or `*.domain` pattern"));
        }
    }
    let strip = match (&path, r.strip_prefix) {
        (PathMatch::Prefix(p), true) => Some(p.clone()),
        (_, true) => {
            report("`strip_prefix` needs a `path_prefix`".into());
            None
        }
        _ => None,
    };
    (RouteMatch { host: r.matcher.host.clone(), path, methods }, strip)
}

/// The bundle's JWT trust roots, when it has `jwt` settings.
fn compile_jwt(bundle: &Bundle, errors: &mut Vec<BundleError>) -> Option<TrustRoots> {
    let spec = bundle.settings.jwt.as_ref()?;
    let file = bundle.settings_line("jwt:").0.unwrap_or_else(|| "data.gateway".into());
    TrustRoots::compile(spec, &file).map_err(|e| errors.push(e)).ok()
}

/// Each rule compiled (in the order of `rules`) and what it reads from the input; also refuses
/// calls of functions the gateway does not provide.
fn compile_policies(
    bundle: &Bundle,
    rules: &[(String, InputFormat)],
    optional: &[&str],
    errors: &mut Vec<BundleError>,
) -> (Vec<Policy>, Vec<InputReads>, Vec<Option<usize>>) {
    let mut engine = match engine_for(bundle, false) {
        Ok(engine) => engine,
        Err(mut e) => {
            errors.append(&mut e.0);
            return (Vec::new(), Vec::new(), vec![None; optional.len()]);
        }
    };
    // Optional rules (the decision log's `data.system.log.drop` and `mask`) are compiled
    // after the routes' rules when a module defines them.
    let mut rules = rules.to_vec();
    let extra: Vec<Option<usize>> = optional
        .iter()
        .map(|rule| {
            declared(bundle, &mut engine, rule).then(|| {
                rules.push(((*rule).to_owned(), InputFormat::Gateway));
                rules.len() - 1
            })
        })
        .collect();
    // The path each rule is compiled and analysed at ([`entrypoint`]); a rule no module
    // defines is refused by `compile_rule` below, so it keeps its own path here.
    let entries: Vec<String> = rules
        .iter()
        .map(|(rule, _)| match declared(bundle, &mut engine, rule) {
            true => entrypoint(&mut engine, rule).unwrap_or_else(|_| rule.clone()),
            false => rule.clone(),
        })
        .collect();
    let entrypoints: Vec<&str> = entries.iter().map(String::as_str).collect();
    let reads = crate::input_reads::analyze(&mut engine, &entrypoints);
    for c in crate::call_check::unknown_calls(&mut engine) {
        errors.push(BundleError::new(ErrorKind::Rego, Some(c.file.clone()), c.message()).at_line(Some(c.line)));
    }
    let mut policies = Vec::new();
    for ((rule, format), entry) in rules.iter().zip(&entries) {
        match compile_rule(bundle, &mut engine, rule, entry, *format) {
            Ok(p) => policies.push(p),
            Err(e) => errors.push(e),
        }
    }
    (policies, reads, extra)
}

/// The package of the rules [`entrypoint`] adds.
const ENTRY_PACKAGE: &str = "data.__gateway_entrypoints";

/// The rule path to compile for `rule`. OPA can query any path, regorus only a rule's own: a
/// route may name `data.envoy.authz.result` where the bundle defines `result.allowed` and
/// `result.headers` (ref-head rules), or a package. For such a path this adds one rule,
/// `data.__gateway_entrypoints.eN := <rule>`, and returns its path: the same value, by
/// reference, that OPA's query would give. A rule defined by its exact path is returned as is.
pub fn entrypoint(engine: &mut Engine, rule: &str) -> Result<String, String> {
    if exact_rule_paths(engine).contains(rule) {
        return Ok(rule.to_owned());
    }
    let pkg = ENTRY_PACKAGE.trim_start_matches("data.");
    let taken = engine.get_modules().iter().filter(|m| m.package.span.source.file().starts_with("__gateway")).count();
    let name = format!("e{taken}");
    engine.set_rego_v0(false);
    engine
        .add_policy(format!("__gateway_entrypoint_{taken}.rego"), format!("package {pkg}\n{name} := {rule}\n"))
        .map_err(|e| format!("`{rule}` is not a path a rule can be read at: {}", e.to_string().trim()))?;
    Ok(format!("{ENTRY_PACKAGE}.{name}"))
}

/// The full paths of the rules whose heads are a constant path (`data.pkg.a.b`).
fn exact_rule_paths(engine: &mut Engine) -> std::collections::BTreeSet<String> {
    use regorus::unstable::{Rule, RuleHead};
    let mut out = std::collections::BTreeSet::new();
    for m in engine.get_modules().iter() {
        let Ok(pkg) = regorus::utils::get_path_string(&m.package.refr, Some("data")) else { continue };
        for rule in &m.policy {
            let refr = match rule.as_ref() {
                Rule::Spec { head: RuleHead::Compr { refr, .. } | RuleHead::Set { refr, .. }, .. } => refr,
                Rule::Default { refr, args, .. } if args.is_empty() => refr,
                _ => continue,
            };
            if let Ok(path) = regorus::utils::get_path_string(refr, Some(&pkg)) {
                out.insert(path);
            }
        }
    }
    out
}

/// Whether a (non-test) module defines `rule` (`data.pkg.name`). Asked of the parsed modules,
/// so that indented heads and ref heads (`package http` + `orders.decision := ...`) count.
/// A package (or a prefix of one) counts too: OPA can query it as an object of its rules.
fn declared(bundle: &Bundle, engine: &mut Engine, rule: &str) -> bool {
    bundle.modules.iter().filter(|m| !m.path.starts_with(TESTS_DIR)).any(|m| {
        let package_under = m.package.strip_prefix(rule).is_some_and(|rest| rest.is_empty() || rest.starts_with('.'));
        package_under
            || rule
                .strip_prefix(m.package.as_str())
                .and_then(|r| r.strip_prefix('.'))
                .is_some_and(|name| engine.has_declared_rule_rooted_at(&m.path, name).unwrap_or(false))
    })
}

/// One decision rule, for the VM where it compiles for it; refused when no module defines it.
fn compile_rule(
    bundle: &Bundle,
    engine: &mut Engine,
    rule: &str,
    entry: &str,
    format: InputFormat,
) -> Result<Policy, BundleError> {
    let (file, line) = bundle.settings_line(&format!("policy: {rule}"));
    if !declared(bundle, engine, rule) {
        return Err(BundleError::new(
            ErrorKind::Settings,
            file,
            format!("policy `{rule}` names a rule that no module defines"),
        )
        .at_line(line));
    }
    match engine.compile_with_entrypoint(&entry.into()) {
        Ok(compiled) => {
            // regorus' VM reads a path above ref-head rules as undefined (0.14.1): such a rule
            // ([`entrypoint`]'s alias) runs on the interpreter, which reads it as OPA does.
            let program = match entry == rule {
                true => Compiler::compile_from_policy(&compiled, &[entry]).ok(),
                false => None,
            };
            Ok(Policy { rule: rule.to_owned(), format, compiled, program })
        }
        Err(e) => {
            let msg = e.to_string();
            let (f, l) = match bundle.modules.iter().find(|m| msg.contains(&m.path)) {
                Some(m) => (Some(m.path.clone()), rego_line(&msg, &m.path)),
                None => (file, line),
            };
            Err(BundleError::new(ErrorKind::Rego, f, format!("rule `{rule}`: {}", msg.trim())).at_line(l))
        }
    }
}

/// An empty routing table is never a valid thing to activate: every request would be a 404.
/// A deny-all is a route whose rule denies.
fn empty_routing_table(bundle: &Bundle) -> Option<BundleError> {
    let revision = match bundle.manifest.revision.as_str() {
        "" => String::new(),
        r => format!(" (revision `{r}`)"),
    };
    let why = match bundle.data.get("gateway") {
        None => "has no gateway settings (`data.gateway`, usually gateway/data.yaml): it may be a bundle for another service",
        Some(_) if bundle.settings.routes.is_empty() => "has no routes in `data.gateway.routes`",
        Some(_) => return None,
    };
    let (file, line) = match bundle.settings_source {
        Some(_) => bundle.settings_line("routes:"),
        None => (Some("data.gateway".into()), None),
    };
    Some(
        BundleError::new(
            ErrorKind::Settings,
            file,
            format!("the bundle{revision} {why}; an empty routing table would answer every request with 404"),
        )
        .at_line(line),
    )
}

/// `request_headers.remove`, checked and lower-cased.
fn request_header_removals(bundle: &Bundle) -> Result<Vec<String>, BundleError> {
    let refuse = |why: String| {
        let (file, line) = bundle.settings_line("remove");
        Err(BundleError::new(ErrorKind::Settings, file, format!("request_headers.remove: {why}")).at_line(line))
    };
    let mut out = Vec::new();
    for name in &bundle.settings.request_headers.remove {
        if ["host", "content-length", "transfer-encoding"].iter().any(|n| name.eq_ignore_ascii_case(n)) {
            return refuse(format!("`{name}` routes or frames the request; the gateway owns it"));
        }
        if !crate::decision::valid_header_name(name) {
            return refuse(format!("`{name}` is not a header name"));
        }
        out.push(name.to_ascii_lowercase());
    }
    Ok(out)
}

/// `request_headers.allow`, checked (each a claim header the gateway would remove) and
/// lower-cased.
fn request_header_allowed(bundle: &Bundle) -> Result<Vec<String>, BundleError> {
    let mut out = Vec::new();
    for name in &bundle.settings.request_headers.allow {
        let lower = name.to_ascii_lowercase();
        if http_canon::claims::claim(&lower).is_none() {
            let (file, line) = bundle.settings_line("allow");
            return Err(BundleError::new(
                ErrorKind::Settings,
                file,
                format!(
                    "request_headers.allow: `{name}` is not a header the gateway removes; it takes one of {}",
                    http_canon::claims::names().collect::<Vec<_>>().join(", ")
                ),
            )
            .at_line(line));
        }
        out.push(lower);
    }
    Ok(out)
}

/// Shared handle to a snapshot.
pub type SharedSnapshot = Arc<Snapshot>;

fn check_target(t: &str) -> Result<(), String> {
    let (host, port) = t.rsplit_once(':').ok_or_else(|| format!("target `{t}` must be host:port"))?;
    port.parse::<u16>().map_err(|_| format!("target `{t}` has an invalid port"))?;
    if host.is_empty() || host.contains('/') {
        return Err(format!("target `{t}` has an invalid host"));
    }
    Ok(())
}

#[cfg(test)]
mod cache_key_tests {
    use super::CacheKey;
    use regorus::Value;

    fn v(json: &str) -> Value {
        Value::from_json_str(json).expect("json")
    }

    #[test]
    fn a_cache_key_orders_as_its_values_do_whether_or_not_they_share_an_allocation() {
        let values = [
            v(r#"{"issuer": "a", "claims": {"sub": "alice", "roles": ["reader"]}}"#),
            v(r#"{"issuer": "a", "claims": {"sub": "bob", "roles": ["reader"]}}"#),
            v(r#"{"issuer": "b", "claims": {}}"#),
            v(r#"["GET", "/orders/7"]"#),
            v(r#""GET""#),
            v("null"),
            Value::Undefined,
        ];
        for a in &values {
            for b in &values {
                for c in &values {
                    let (x, y) = (vec![a.clone(), c.clone()], vec![b.clone(), c.clone()]);
                    // Clones share their allocation; values parsed again do not.
                    let reparsed: Vec<Value> = y.iter().map(|w| v(&w.to_string())).collect();
                    assert_eq!(CacheKey(x.clone()).cmp(&CacheKey(y.clone())), x.cmp(&y), "{x:?} vs {y:?}");
                    if !y.contains(&Value::Undefined) {
                        assert_eq!(CacheKey(x.clone()).cmp(&CacheKey(reparsed.clone())), x.cmp(&reparsed));
                    }
                }
            }
        }
        assert_eq!(
            CacheKey(vec![values[0].clone()]).cmp(&CacheKey(vec![values[0].clone(), Value::Null])),
            std::cmp::Ordering::Less
        );
    }
}
