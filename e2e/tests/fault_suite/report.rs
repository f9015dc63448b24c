//! One row per fault, and the Markdown report written before the suite asserts, so that a
//! failing run leaves its evidence in `loadtest/reports/fault-suite.md`.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use e2e::Tally;

/// What one fault showed. `None` in a yes/no column means "does not apply" (shown as `—`).
#[derive(Debug, Default, Clone)]
pub struct Row {
    /// The item of issue 5's list (1–7).
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

fn cmd(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .current_dir(e2e::repo_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

pub const COMMAND: &str = "cargo build --workspace --bins && cargo test -p e2e --test fault_suite -- --nocapture";

/// The Markdown report.
pub fn render(rows: &[Row], runtime: Duration, extra: &str) -> String {
    let commit = cmd("git", &["rev-parse", "--short", "HEAD"]);
    let dirty = !cmd("git", &["status", "--porcelain"]).is_empty();
    let mut md = String::new();
    let passed = rows.iter().filter(|r| r.passed()).count();
    let _ = writeln!(md, "# Fault-injection suite: static stability under load\n");
    let _ = writeln!(
        md,
        "Written by `e2e/tests/fault_suite.rs` on every run (issue 5). Real processes on 127.0.0.1: \
         control-api, gateways, an echo upstream and `hostile-source` (loadtest/fixtures), with a steady \
         stream of checked requests through every gateway during every fault.\n"
    );
    let _ = writeln!(md, "* date: {}", cmd("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]));
    let _ =
        writeln!(md, "* machine: {} CPUs (`nproc`), kernel {} (`uname -r`)", cmd("nproc", &[]), cmd("uname", &["-r"]));
    let _ = writeln!(md, "* commit: `{commit}`{}", if dirty { " (with uncommitted changes)" } else { "" });
    let _ = writeln!(md, "* command: `{COMMAND}` (debug build)");
    let _ = writeln!(md, "* runtime: {:.1} s", runtime.as_secs_f64());
    let _ = writeln!(md, "* result: **{passed} of {} faults passed**\n", rows.len());
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
    let _ =
        writeln!(md, "| # | fault | sent | failed | wrong | LKG kept | counted / in /status | recovered | time to recover | result |");
    let _ = writeln!(md, "|---|---|---:|---:|---:|---|---|---|---:|---|");
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} |",
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
            if r.passed() { "pass" } else { "**FAIL**" }
        );
    }
    let _ = writeln!(md, "\n{extra}");
    let _ = writeln!(md, "## Observations per fault\n");
    for r in rows {
        let _ = writeln!(md, "* **{}** ({})", r.fault, if r.passed() { "pass" } else { "FAIL" });
        for n in &r.notes {
            let _ = writeln!(md, "  * {}", n.replace('\n', " "));
        }
        for p in &r.problems {
            let _ = writeln!(md, "  * FAILED CHECK: {}", p.replace('\n', " "));
        }
    }
    md
}

pub fn write(path: &Path, md: &str) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("create report directory");
    }
    std::fs::write(path, md).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
