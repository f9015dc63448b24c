//! `bundlectl`: the policy authors' tool. Local commands (`build`, `check`, `test`, `sign`) use
//! the same `policy-bundles` code as the gateway; remote commands (`push`, `revisions`,
//! `rollback`, `fleet`, `logs`, `replay`) talk to `control-api` and print its message when it
//! refuses; `diff` compares bundles from either side; `eval` decides one request described on
//! the command line as the gateway would.
//!
//! The library holds every command; `main.rs` only parses the command line and maps [`run`]'s
//! outcome to the exit status ([`cli::EXIT_CODES`]).

pub mod cli;
pub mod diff;
pub mod eval;
mod http;
pub mod local;
pub mod logs;
pub mod remote;

use policy_bundles::{Bundle, Limits, Snapshot};

use cli::{Cli, Cmd, LogFilter, RolloutCmd};
use local::{build, check, sign, test};
use logs::{logged, logs};
use remote::{fleet, push, revisions, rollback, rollout_list, rollout_status, signed_rollback};

/// How a command that did its work ended.
pub enum Ran {
    Clean,
    /// `test` ran and some test or case failed.
    Failures,
    /// `eval`: the gateway would answer the request itself rather than forward it.
    Denied,
}

/// Runs a command; an error is a usage, I/O, bundle or server error.
pub fn run(cli: Cli) -> anyhow::Result<Ran> {
    match cli.cmd {
        Cmd::Test { path, coverage, format } => return test(&path, coverage.then_some(format.as_str())),
        Cmd::Check { path } => check(&path)?,
        Cmd::Build { dir, output, revision, signer } => {
            let (bytes, rev) = build(&dir, revision, &signer)?;
            std::fs::write(&output, &bytes)?;
            println!("built {} (revision {rev}, sha256 {})", output.display(), policy_bundles::digest(&bytes));
        }
        Cmd::Sign { input, output, signer } => sign(&input, &output, &signer)?,
        Cmd::Push { path, name, revision, force, reason, remote, signer } => {
            push(&path, &name, revision, reason.filter(|_| force).as_deref(), &remote, &signer)?
        }
        Cmd::Revisions { name, remote } => revisions(&name, &remote)?,
        Cmd::Rollout { what: RolloutCmd::Status { name, remote } } => rollout_status(&name, &remote)?,
        Cmd::Rollout { what: RolloutCmd::List { name, limit, remote } } => rollout_list(&name, limit, &remote)?,
        Cmd::Rollback { name, to, remote, signer } if signer.key.is_some() => {
            signed_rollback(&name, &to, &remote, &signer)?
        }
        Cmd::Rollback { name, to, remote, .. } => rollback(&name, &to, &remote)?,
        Cmd::Diff { old, new, name, json, remote } => diff::diff(&old, &new, &name, json, &remote)?,
        Cmd::Eval(args) => return eval::eval(&args),
        Cmd::Fleet { remote } => fleet(&remote)?,
        Cmd::Logs { name, filter, json, remote } => logs(&name, &filter, json, &remote)?,
        Cmd::Replay { candidate, name, since, route, max_changed, limit, json, remote } => {
            let snap = Snapshot::compile(&Bundle::from_path(&candidate, &Limits::default())?)?;
            let filter = LogFilter { route, since: Some(since), ..LogFilter::default() };
            let events = logged(&name, &filter, limit, &remote)?;
            let report = policy_bundles::replay::Report::of(&snap, &events);
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_text(3));
            }
            if max_changed.is_some_and(|m| report.changed() > m) {
                eprintln!("bundlectl: {} decisions would change, more than --max-changed", report.changed());
                return Ok(Ran::Failures);
            }
        }
    }
    Ok(Ran::Clean)
}
