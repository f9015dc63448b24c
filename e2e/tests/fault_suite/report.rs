//! One row per fault, kept as a record when its test ends, and the Markdown report merged from
//! the records: `loadtest/reports/fault-suite.md` (or `$FAULT_SUITE_REPORT`).
//!
//! Every fault is its own test, and under nextest its own process, so no single process sees
//! the whole suite: each test writes its row to `target/<profile>/fault-suite/NAME.json` and
//! renders the report again from the latest record of every fault of the suite. A filtered run
//! replaces only the rows of the faults it ran; the others keep their earlier measurement and say
//! when it was taken. A failing fault's row is written before the test fails, so a failing run
//! leaves its evidence.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use e2e::Tally;
use serde::{Deserialize, Serialize};

/// What one fault showed. `None` in a yes/no column means "does not apply" (shown as `—`).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Row {
    /// The fault's group in the report (see [`GROUPS`]).
    pub group: u8,
    pub fault: String,
    pub sent: u64,
    pub failed: u64,
    pub wrong: u64,
    /// The last-known-good bundle stayed active (or, where a fault activates nothing, serving
    /// never lost its bundle).
    pub lkg: Option<bool>,
    /// Counted in metrics, and shown in `/status`.
    pub counted: Option<bool>,
    pub shown: Option<bool>,
    pub recovered: Option<bool>,
    pub recover: Option<Duration>,
    /// What was observed: the metric series, the `/status` error, timings.
    pub notes: Vec<String>,
    /// Lines this fault adds to the storm table (storms only).
    pub table: Vec<String>,
    /// Every check that did not hold. A row passes when this is empty.
    pub problems: Vec<String>,
}

impl Row {
    pub fn new(group: u8, fault: &str) -> Row {
        Row { group, fault: fault.to_owned(), ..Row::default() }
    }

    /// Records a check; returns it so callers can branch on it.
    pub fn check(&mut self, ok: bool, what: impl Into<String>) -> bool {
        if !ok {
            self.problems.push(what.into());
        }
        ok
    }

    pub fn note(&mut self, what: impl Into<String>) {
        self.notes.push(what.into());
    }

    /// The traffic between two snapshots of the streams, and the zero-failure checks on it.
    pub fn traffic(&mut self, before: &Tally, after: &Tally) {
        self.sent = after.sent - before.sent;
        self.failed = after.failed - before.failed;
        self.wrong = after.wrong - before.wrong;
        let first = after.first_failure.clone().unwrap_or_default();
        self.check(self.sent > 0, "no requests were sent during the fault");
        self.check(self.failed == 0, format!("{} failed requests (first failure seen: {first})", self.failed));
        self.check(self.wrong == 0, format!("{} wrong decisions (first failure seen: {first})", self.wrong));
    }

    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The report's groups, in its order.
pub const GROUPS: &str = "1 the control plane down or killed; 2 the source answering errors or not at all; 3 the \
     source serving bad bundles; 4 hangs and trickles; 5 gateway restarts and damaged caches; 6 storms against the \
     control plane; 7 a rollout to a fleet; 8 staged rollouts with a canary; 9 the quota store down, slow or wrong; 10 an upstream target failing";

/// A fault's row as its test left it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// The test's name.
    pub name: String,
    /// The run it belongs to (nextest's run id, or one per `cargo test` process).
    pub run: String,
    pub date: String,
    pub commit: String,
    /// The test's own time, its share of set-up included.
    pub took: Duration,
    pub row: Row,
}

fn cmd(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .current_dir(test_support::paths::repo_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

fn now_utc() -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    time::OffsetDateTime::now_utc().format(&fmt).unwrap_or_else(|_| "unknown".into())
}

/// The commit, and whether the tree has changes on top (looked up once per process).
fn commit() -> &'static str {
    static COMMIT: OnceLock<String> = OnceLock::new();
    COMMIT.get_or_init(|| {
        let dirty = !cmd("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
        format!(
            "{}{}",
            cmd("git", &["rev-parse", "--short", "HEAD"]),
            if dirty { " (with uncommitted changes)" } else { "" }
        )
    })
}

fn run_id() -> &'static str {
    static RUN: OnceLock<String> = OnceLock::new();
    RUN.get_or_init(|| {
        std::env::var("NEXTEST_RUN_ID")
            .unwrap_or_else(|_| format!("cargo-test-{}-{}", test_support::tokens::now(), std::process::id()))
    })
}

/// Where the records are: beside the test binaries (`target/<profile>/fault-suite`).
fn records_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("deps folder");
    deps.parent().unwrap_or(deps).join("fault-suite")
}

fn report_path() -> PathBuf {
    std::env::var_os("FAULT_SUITE_REPORT")
        .map(PathBuf::from)
        .unwrap_or_else(|| test_support::paths::repo_root().join("loadtest/reports/fault-suite.md"))
}

/// Writes `bytes` to `path` by a rename, so that a reader never sees half of it.
fn write_atomically(path: &Path, bytes: &[u8]) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("create report directory");
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

/// A lock on the records while one process merges them (a directory: creating one is atomic).
/// Taken over after 30 s, when its holder must have died.
struct Lock(PathBuf);

impl Lock {
    fn take(dir: &Path) -> Lock {
        let path = dir.join(".lock");
        let start = Instant::now();
        while std::fs::create_dir(&path).is_err() {
            if start.elapsed() > Duration::from_secs(30) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Lock(path)
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Keeps `row` as the latest result of test `name` and writes the report merged from the latest
/// record of every test in `suite` (test names, in the report's order). Returns the report's path.
pub fn record(name: &str, row: &Row, took: Duration, suite: &[(&str, u8, String)]) -> PathBuf {
    let dir = records_dir();
    std::fs::create_dir_all(&dir).expect("records directory");
    let rec = Record {
        name: name.to_owned(),
        run: run_id().to_owned(),
        date: now_utc(),
        commit: commit().to_owned(),
        took,
        row: row.clone(),
    };
    let _lock = Lock::take(&dir);
    write_atomically(&dir.join(format!("{name}.json")), &serde_json::to_vec_pretty(&rec).expect("record JSON"));
    let records: Vec<(&str, u8, String, Option<Record>)> = suite
        .iter()
        .map(|(n, group, title)| {
            let rec = std::fs::read(dir.join(format!("{n}.json"))).ok().and_then(|b| serde_json::from_slice(&b).ok());
            (*n, *group, title.clone(), rec)
        })
        .collect();
    let path = report_path();
    write_atomically(&path, render(&records).as_bytes());
    path
}

fn yes_no(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "—",
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{} ms", d.as_millis())).unwrap_or_else(|| "—".into())
}

pub const COMMAND: &str = "cargo build --workspace --bins && cargo nextest run -p e2e --test fault_suite";

/// The header: what the suite is, where, which run, how many passed.
fn header(md: &mut String, records: &[(&str, u8, String, Option<Record>)]) {
    let done: Vec<&Record> = records.iter().filter_map(|r| r.3.as_ref()).collect();
    let latest = done.iter().max_by(|a, b| a.date.cmp(&b.date));
    let run = latest.map(|r| r.run.as_str()).unwrap_or("");
    let this_run = done.iter().filter(|r| r.run == run).count();
    let passed = done.iter().filter(|r| r.row.passed()).count();
    let total: Duration = done.iter().filter(|r| r.run == run).map(|r| r.took).sum();
    let _ = writeln!(md, "# Fault-injection suite: static stability under load\n");
    let _ = writeln!(
        md,
        "Written by `e2e/tests/fault_suite.rs`. Real processes on 127.0.0.1: control-api, gateways, an echo \
         upstream and `hostile-source` (test-support), with a steady stream of checked requests through every \
         gateway during every fault. Each fault is its own test (the name in the observations below; select one \
         with `cargo nextest run -p e2e -E 'test(NAME)'` or `cargo test -p e2e --test fault_suite -- NAME`).\n"
    );
    let _ = writeln!(
        md,
        "Rows are merged: each test writes its row when it ends, so a filtered run replaces only the rows of \
         the faults it ran; a row from an earlier run than the latest names the date it ran in its last column, \
         and a fault no run has reached yet is marked not run.\n"
    );
    let _ = writeln!(
        md,
        "* latest run: `{run}`, {} ({this_run} of {} faults)",
        latest.map(|r| r.date.as_str()).unwrap_or("—"),
        records.len()
    );
    let _ =
        writeln!(md, "* machine: {} CPUs (`nproc`), kernel {} (`uname -r`)", cmd("nproc", &[]), cmd("uname", &["-r"]));
    let _ = writeln!(md, "* commit: `{}`", latest.map(|r| r.commit.as_str()).unwrap_or("—"));
    let _ = writeln!(md, "* command: `{COMMAND}` (debug build)");
    let _ = writeln!(md, "* time in the latest run's tests: {:.1} s", total.as_secs_f64());
    let _ = writeln!(
        md,
        "* result: **{passed} of {} faults passed**{}\n",
        records.len(),
        match records.len() - done.len() {
            0 => String::new(),
            n => format!(" ({n} not run)"),
        }
    );
    let _ = writeln!(md, "Groups: {GROUPS}.\n");
}

/// The Markdown report for `records` (test name, group, title and its latest record, if any).
pub fn render(records: &[(&str, u8, String, Option<Record>)]) -> String {
    let mut md = String::new();
    header(&mut md, records);
    let latest_run =
        records.iter().filter_map(|r| r.3.as_ref()).max_by(|a, b| a.date.cmp(&b.date)).map(|r| r.run.clone());
    let _ = writeln!(
        md,
        "Columns: requests sent through the gateways while the fault lasted (and until recovery); failed \
         (transport error or unexpected status); wrong (a decision other than what last-known-good must \
         answer); LKG kept (the last-known-good revision stayed active and `/readyz` 200; for a fault that \
         comes with a good new revision, such as an unwritable cache, that revision served; `—` where \
         revisions change by design); signals (counted in \
         metrics / shown in `/status`); recovered and time to recover (from the fault ending to the gateway \
         confirming or activating a good bundle).\n"
    );
    let _ = writeln!(
        md,
        "| # | fault | sent | failed | wrong | LKG kept | counted / in /status | recovered | time to recover | result | run |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---|---|---|---:|---|---|");
    for (_, group, title, rec) in records {
        let Some(rec) = rec else {
            let _ = writeln!(md, "| {group} | {title} | | | | | | | | not run | |");
            continue;
        };
        let r = &rec.row;
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {} |",
            r.group,
            r.fault,
            r.sent,
            r.failed,
            r.wrong,
            yes_no(r.lkg),
            yes_no(r.counted),
            yes_no(r.shown),
            yes_no(r.recovered),
            ms(r.recover),
            if r.passed() { "pass" } else { "**FAIL**" },
            if Some(&rec.run) == latest_run.as_ref() { "latest".to_owned() } else { rec.date.clone() }
        );
    }
    let table: Vec<&String> = records.iter().filter_map(|r| r.3.as_ref()).flat_map(|r| &r.row.table).collect();
    if !table.is_empty() {
        let _ = writeln!(md, "\n{}", super::storms::table_head());
        for line in table {
            let _ = writeln!(md, "{line}");
        }
    }
    let _ = writeln!(md, "\n## Observations per fault\n");
    for (name, _, _, rec) in records {
        let Some(rec) = rec else { continue };
        let r = &rec.row;
        let _ = writeln!(md, "* **{}** (`{name}`: {})", r.fault, if r.passed() { "pass" } else { "FAIL" });
        for n in &r.notes {
            let _ = writeln!(md, "  * {}", n.replace('\n', " "));
        }
        for p in &r.problems {
            let _ = writeln!(md, "  * FAILED CHECK: {}", p.replace('\n', " "));
        }
    }
    md
}
