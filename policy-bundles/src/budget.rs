//! Resource budgets for a bundle, enforced the same way by control-api at publish, by
//! `bundlectl check` and by the gateway before activation.
//!
//! A bundle's cost is not its compressed size: 9 MB of gzip can hold 119 MB of JSON that takes
//! gigabytes to parse and compile. So a candidate is first read, parsed and compiled in a
//! **child process** (the same binary, started with [`CHILD_ARG`]) that limits itself with
//! `RLIMIT_AS` (memory) and `RLIMIT_CPU` before it reads a byte, and reports the bundle's
//! [`Figures`] or its errors on stdout. Only a bundle whose figures are within the [`Budget`] is
//! then compiled in the serving process; one over budget is refused with [`ErrorKind::Budget`]
//! and the measured figure, and the process that asked never held more than the tarball.
//!
//! Every binary that validates bundles calls [`serve_child_if_asked`] first thing in `main`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::archive::{self, Limits};
use crate::error::{BundleError, BundleErrors, ErrorKind};
use crate::{Bundle, Snapshot};

/// The first argument that makes a binary a budget child instead of what it usually is.
pub const CHILD_ARG: &str = "__policy-bundles-budget-child";

/// What one bundle may cost. Sizes in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// Sum of every file's uncompressed size; default 64 MiB.
    pub max_uncompressed: u64,
    /// Estimated in-memory size of the compiled bundle (data values and policies, see
    /// [`compiled_bytes`]); default 256 MiB.
    pub max_compiled: u64,
    /// Address space of the validating child (`RLIMIT_AS`); default 2 GiB.
    pub max_memory: u64,
    /// CPU time of the validating child (`RLIMIT_CPU`), whole seconds; default 20.
    pub max_cpu_seconds: u64,
}

impl Default for Budget {
    fn default() -> Self {
        Budget { max_uncompressed: 64 << 20, max_compiled: 256 << 20, max_memory: 2 << 30, max_cpu_seconds: 20 }
    }
}

/// A budget as written in a config file (gateway `bundle.budget`, control-api `budget`):
/// sizes such as `64MiB`, CPU as a duration in whole seconds (`20s`). Absent keys keep defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    #[serde(default)]
    pub max_uncompressed: Option<String>,
    #[serde(default)]
    pub max_compiled: Option<String>,
    #[serde(default)]
    pub max_memory: Option<String>,
    #[serde(default)]
    pub max_cpu: Option<String>,
    /// `false` validates in the serving process, without memory or CPU limits (for tests).
    #[serde(default)]
    pub isolated: Option<bool>,
}

impl RawBudget {
    /// The budget, and whether to validate in a child; every bad value is a problem naming
    /// `{prefix}.key`.
    pub fn resolve(&self, prefix: &str, problems: &mut config_files::Problems<'_>) -> (Budget, bool) {
        use config_files::{parse_duration, parse_size};
        let d = Budget::default();
        let mut size = |key: &str, v: &Option<String>, default: u64| match v.as_deref().map(parse_size) {
            None => default,
            Some(Ok(n)) if n > 0 => n,
            Some(Ok(_)) => {
                problems.named(format!("`{prefix}.{key}`: must be more than 0"));
                default
            }
            Some(Err(m)) => {
                problems.named(format!("`{prefix}.{key}`: {m}"));
                default
            }
        };
        let max_uncompressed = size("max_uncompressed", &self.max_uncompressed, d.max_uncompressed);
        let max_compiled = size("max_compiled", &self.max_compiled, d.max_compiled);
        let max_memory = size("max_memory", &self.max_memory, d.max_memory);
        if max_memory < 64 << 20 {
            problems.named(format!("`{prefix}.max_memory`: at least 64MiB (the validator itself needs some)"));
        }
        let max_cpu_seconds = match self.max_cpu.as_deref().map(parse_duration) {
            None => d.max_cpu_seconds,
            Some(Ok(t)) if t.as_secs() >= 1 => t.as_secs(),
            Some(Ok(_)) => {
                problems.named(format!("`{prefix}.max_cpu`: at least 1s"));
                d.max_cpu_seconds
            }
            Some(Err(m)) => {
                problems.named(format!("`{prefix}.max_cpu`: {m}"));
                d.max_cpu_seconds
            }
        };
        (Budget { max_uncompressed, max_compiled, max_memory, max_cpu_seconds }, self.isolated.unwrap_or(true))
    }
}

/// What a bundle costs, as measured by the validator.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// The tarball.
    pub compressed_bytes: u64,
    /// Every file, uncompressed.
    pub uncompressed_bytes: u64,
    /// Estimated bytes of the compiled bundle held in memory ([`compiled_bytes`]).
    pub compiled_bytes: u64,
    /// Reading, parsing and compiling, in milliseconds.
    pub compile_ms: u64,
    pub modules: usize,
    pub routes: usize,
    pub upstreams: usize,
    /// Peak resident memory of the validating child, when it ran in one (bytes).
    #[serde(default)]
    pub peak_rss_bytes: Option<u64>,
}

/// Where the validation runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Validator {
    /// In a child process of this executable (it must call [`serve_child_if_asked`]), with
    /// memory and CPU limits: the default of every binary.
    Subprocess(PathBuf),
    /// In this process, with the figures checked but no memory or CPU limit (unit tests).
    InProcess,
}

impl Validator {
    /// A child of the running executable.
    pub fn current_exe() -> Validator {
        match std::env::current_exe() {
            Ok(p) => Validator::Subprocess(p),
            Err(_) => Validator::InProcess,
        }
    }
}

/// Bytes as people read them: `119.4 MiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn over(what: &str, key: &str, measured: u64, limit: u64) -> BundleError {
    BundleError::new(
        ErrorKind::Budget,
        None,
        format!("{what} is {} ({measured} bytes), over the budget of {} ({key})", human(measured), human(limit)),
    )
}

/// Estimated heap bytes of a value as regorus holds it: each node, its string bytes, and the
/// per-entry overhead of its collections. Deterministic, so every plane computes the same figure.
pub fn value_bytes(v: &regorus::Value) -> u64 {
    use regorus::Value;
    const NODE: u64 = std::mem::size_of::<Value>() as u64;
    // Reference count and length words of an `Rc` allocation.
    const RC: u64 = 16;
    // A B-tree entry's share of its node (keys, values, edges, lengths).
    const TREE_ENTRY: u64 = 16;
    let mut total = 0u64;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        total += NODE;
        match v {
            Value::String(s) => total += RC + s.len() as u64,
            Value::Number(_) => total += RC,
            Value::Array(a) => {
                total += RC;
                stack.extend(a.iter());
            }
            Value::Set(s) => {
                total += RC + TREE_ENTRY * s.len() as u64;
                stack.extend(s.iter());
            }
            Value::Object(o) => {
                total += RC + TREE_ENTRY * o.len() as u64;
                for (k, v) in o.iter() {
                    stack.push(k);
                    stack.push(v);
                }
            }
            Value::Null | Value::Bool(_) | Value::Undefined => {}
        }
    }
    total
}

/// Bytes of Rego source are held as parsed and compiled rules: this many times their text,
/// measured on the example bundles (the AST, the compiled program and the source itself).
pub const REGO_BYTES_FACTOR: u64 = 24;

/// The estimated in-memory size of a compiled bundle: its data values ([`value_bytes`]) and its
/// policies ([`REGO_BYTES_FACTOR`] times their source).
pub fn compiled_bytes(bundle: &Bundle, snapshot: &Snapshot) -> u64 {
    let rego: u64 = bundle.modules.iter().map(|m| m.source.len() as u64).sum();
    value_bytes(snapshot.data()).saturating_add(rego.saturating_mul(REGO_BYTES_FACTOR))
}

/// Reads, compiles and measures a bundle in this process, refusing it as soon as a figure is past
/// the budget (the uncompressed size before anything is parsed).
pub fn measure(bytes: &[u8], limits: &Limits, budget: &Budget) -> Result<(Figures, Bundle, Snapshot), BundleErrors> {
    let started = Instant::now();
    let files = archive::read_tar_gz(bytes, limits)?;
    let uncompressed: u64 = files.values().map(|f| f.len() as u64).sum();
    if uncompressed > budget.max_uncompressed {
        return Err(over("the bundle uncompressed", "max_uncompressed", uncompressed, budget.max_uncompressed).into());
    }
    let bundle = Bundle::from_files(files)?;
    let snapshot = Snapshot::compile(&bundle)?;
    let compiled = compiled_bytes(&bundle, &snapshot);
    if compiled > budget.max_compiled {
        return Err(over("the compiled bundle (estimated)", "max_compiled", compiled, budget.max_compiled).into());
    }
    let figures = Figures {
        compressed_bytes: bytes.len() as u64,
        uncompressed_bytes: uncompressed,
        compiled_bytes: compiled,
        compile_ms: started.elapsed().as_millis() as u64,
        modules: bundle.modules.iter().filter(|m| !m.path.starts_with(crate::bundle::TESTS_DIR)).count(),
        routes: snapshot.routes.len(),
        upstreams: snapshot.upstreams.len(),
        peak_rss_bytes: None,
    };
    Ok((figures, bundle, snapshot))
}

/// Checks a tarball against the budget with `validator`: its figures, or why it was refused.
/// Blocking (it waits for the child): call it off any request path.
pub fn check(bytes: &[u8], limits: &Limits, budget: &Budget, validator: &Validator) -> Result<Figures, BundleErrors> {
    match validator {
        Validator::InProcess => measure(bytes, limits, budget).map(|(f, _, _)| f),
        Validator::Subprocess(exe) => check_in_child(bytes, limits, budget, exe),
    }
}

/// What the child writes on stdout: one JSON object.
#[derive(Debug, Serialize, Deserialize)]
enum ChildAnswer {
    #[serde(rename = "figures")]
    Figures(Figures),
    #[serde(rename = "errors")]
    Errors(Vec<ChildError>),
}

#[derive(Debug, Serialize, Deserialize)]
struct ChildError {
    kind: String,
    file: Option<String>,
    line: Option<usize>,
    message: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct ChildArgs {
    limits: Limits,
    budget: Budget,
}

/// Largest answer read from a child: errors of a bundle with thousands of problems fit.
const MAX_ANSWER: u64 = 8 << 20;

fn validator_error(message: String) -> BundleErrors {
    BundleError::new(ErrorKind::Budget, None, message).into()
}

fn check_in_child(
    bytes: &[u8],
    limits: &Limits,
    budget: &Budget,
    exe: &std::path::Path,
) -> Result<Figures, BundleErrors> {
    let args = serde_json::to_string(&ChildArgs { limits: *limits, budget: *budget })
        .map_err(|e| validator_error(format!("cannot encode the validator's arguments: {e}")))?;
    let mut child = Command::new(exe)
        .arg(CHILD_ARG)
        .arg(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // mimalloc reserves 1 GiB arenas by default: under RLIMIT_AS the child takes what it needs.
        .env("MIMALLOC_ARENA_RESERVE", "16MiB")
        .spawn()
        .map_err(|e| validator_error(format!("cannot start the bundle validator {}: {e}", exe.display())))?;
    let (Some(mut stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(validator_error("the bundle validator has no pipes".into()));
    };
    let started = Instant::now();
    let answer = std::thread::scope(|s| {
        // A child that dies early closes its stdin: a failed write is read from its exit status.
        s.spawn(move || {
            let _ = stdin.write_all(bytes);
        });
        let out = s.spawn(move || read_capped(stdout));
        let err = s.spawn(move || read_capped(stderr));
        // Wall-clock bound: a child blocked without using CPU is stopped too.
        let deadline = started + Duration::from_secs(budget.max_cpu_seconds.saturating_mul(2).saturating_add(10));
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => {
                    let _ = child.kill();
                    break child.wait().ok();
                }
            }
        };
        (status, out.join().unwrap_or_default(), err.join().unwrap_or_default())
    });
    let (status, out, err) = answer;
    interpret(status, &out, &err, budget, started.elapsed())
}

fn read_capped(r: impl Read) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = r.take(MAX_ANSWER).read_to_end(&mut buf);
    buf
}

/// Turns the child's exit and output into figures or errors.
fn interpret(
    status: Option<ExitStatus>,
    out: &[u8],
    err: &[u8],
    budget: &Budget,
    took: Duration,
) -> Result<Figures, BundleErrors> {
    use std::os::unix::process::ExitStatusExt;
    let Some(status) = status else {
        return Err(validator_error(format!(
            "validating the bundle did not finish within {} s of wall-clock time; it was stopped",
            took.as_secs()
        )));
    };
    let stderr = String::from_utf8_lossy(err);
    if status.success() {
        return match serde_json::from_slice::<ChildAnswer>(out) {
            Ok(ChildAnswer::Figures(f)) => Ok(f),
            Ok(ChildAnswer::Errors(list)) => Err(BundleErrors(
                list.into_iter()
                    .map(|e| {
                        BundleError::new(ErrorKind::parse(&e.kind).unwrap_or(ErrorKind::Budget), e.file, e.message)
                            .at_line(e.line)
                    })
                    .collect(),
            )),
            Err(e) => Err(validator_error(format!("the bundle validator answered something unreadable: {e}"))),
        };
    }
    // SIGXCPU at the soft CPU limit.
    if status.signal() == Some(24) {
        return Err(validator_error(format!(
            "validating the bundle used more than the CPU budget of {} s (max_cpu); it was stopped",
            budget.max_cpu_seconds
        )));
    }
    if stderr.contains("memory allocation of") || stderr.contains("out of memory") || status.signal() == Some(6) {
        return Err(validator_error(format!(
            "validating the bundle needed more than the memory budget of {} (max_memory); it was stopped",
            human(budget.max_memory)
        )));
    }
    if status.signal() == Some(9) {
        return Err(validator_error(format!(
            "validating the bundle was killed (SIGKILL: the system's out-of-memory killer, or past the CPU budget of {} s)",
            budget.max_cpu_seconds
        )));
    }
    let tail: String = stderr.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
    Err(validator_error(format!("the bundle validator failed ({status}): {tail}")))
}

/// If this process was started as a budget child ([`CHILD_ARG`]), validates the tarball on
/// stdin, writes the answer on stdout and exits; otherwise returns at once. Call it first thing
/// in `main`, before any thread or runtime is started.
pub fn serve_child_if_asked() {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(std::ffi::OsStr::new(CHILD_ARG)) {
        return;
    }
    let code = match args.next().and_then(|a| serde_json::from_str::<ChildArgs>(&a.to_string_lossy()).ok()) {
        Some(a) => child(&a),
        None => {
            eprintln!("{CHILD_ARG}: expected one JSON argument with `limits` and `budget`");
            2
        }
    };
    std::process::exit(code);
}

fn child(args: &ChildArgs) -> i32 {
    use rustix::process::{setrlimit, Resource, Rlimit};
    // The validator is background work beside a serving gateway: at nice 10 the scheduler gives
    // the request path the CPU first (the budget is CPU seconds, which nice does not change).
    let _ = rustix::process::nice(10);
    let b = &args.budget;
    let limited = setrlimit(Resource::As, Rlimit { current: Some(b.max_memory), maximum: Some(b.max_memory) })
        .and_then(|()| {
            let cpu = b.max_cpu_seconds.max(1);
            setrlimit(Resource::Cpu, Rlimit { current: Some(cpu), maximum: Some(cpu + 1) })
        });
    if let Err(e) = limited {
        eprintln!("{CHILD_ARG}: cannot set resource limits: {e}");
        return 3;
    }
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().take(args.limits.max_archive_bytes.saturating_add(1)).read_to_end(&mut bytes) {
        eprintln!("{CHILD_ARG}: cannot read the bundle: {e}");
        return 3;
    }
    let answer = match measure(&bytes, &args.limits, b) {
        Ok((mut figures, bundle, snapshot)) => {
            drop((bundle, snapshot));
            figures.peak_rss_bytes = peak_rss();
            ChildAnswer::Figures(figures)
        }
        Err(errors) => ChildAnswer::Errors(
            errors
                .0
                .into_iter()
                .map(|e| ChildError {
                    kind: e.kind.as_str().to_owned(),
                    file: e.file,
                    line: e.line,
                    message: e.message,
                })
                .collect(),
        ),
    };
    let mut out = std::io::stdout().lock();
    match serde_json::to_writer(&mut out, &answer).and_then(|()| out.flush().map_err(serde_json::Error::io)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{CHILD_ARG}: cannot write the answer: {e}");
            3
        }
    }
}

/// `VmHWM` of this process, in bytes (Linux).
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_bytes_counts_strings_and_entries() {
        let small = value_bytes(&regorus::Value::from(serde_json::json!({"a": "x"})));
        let big = value_bytes(&regorus::Value::from(serde_json::json!({"a": "x".repeat(1000)})));
        assert_eq!(big - small, 999);
        let many = value_bytes(&regorus::Value::from(serde_json::json!((0..100).collect::<Vec<_>>())));
        assert!(many >= 100 * std::mem::size_of::<regorus::Value>() as u64, "{many}");
    }

    #[test]
    fn a_killed_child_is_a_budget_refusal_naming_the_limit() {
        use std::os::unix::process::ExitStatusExt;
        let b = Budget { max_memory: 1 << 30, ..Budget::default() };
        let oom =
            interpret(Some(ExitStatus::from_raw(6)), b"", b"memory allocation of 8 bytes failed", &b, Duration::ZERO)
                .unwrap_err();
        assert_eq!(oom.kind(), ErrorKind::Budget);
        assert!(oom.to_string().contains("1.0 GiB (max_memory)"), "{oom}");
        let cpu = interpret(Some(ExitStatus::from_raw(24)), b"", b"", &b, Duration::ZERO).unwrap_err();
        assert!(cpu.to_string().contains("CPU budget of 20 s"), "{cpu}");
        let hung = interpret(None, b"", b"", &b, Duration::from_secs(50)).unwrap_err();
        assert!(hung.to_string().contains("wall-clock"), "{hung}");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(119 << 20), "119.0 MiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }
}
