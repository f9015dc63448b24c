//! `bundlectl`: the policy authors' tool.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use policy_bundles::{archive, testing, Bundle, Limits, Snapshot};

#[derive(Parser)]
#[command(name = "bundlectl", about = "Build and check policy bundles")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a bundle directory into a deterministic .tar.gz, after checking it compiles.
    Build {
        dir: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        /// Revision written into `.manifest`; default: the first 12 hex digits of the content hash.
        #[arg(long)]
        revision: Option<String>,
    },
    /// Check that a bundle (directory or .tar.gz) compiles exactly as the gateway would.
    Check { path: PathBuf },
    /// Run a bundle's Rego `test_*` rules and its decision cases (`tests/cases.yaml`,
    /// `tests/**/*.cases.yaml`); exits non-zero when any fails.
    Test { path: PathBuf },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bundlectl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command; `Ok(false)` is a clean run that found failures (failing tests).
fn run(cli: Cli) -> anyhow::Result<bool> {
    let limits = Limits::default();
    match cli.cmd {
        Cmd::Test { path } => {
            let bundle = Bundle::from_path(&path, &limits)?;
            let report = testing::run(&bundle)?;
            println!("{report}");
            return Ok(report.is_success());
        }
        Cmd::Check { path } => {
            let bundle = Bundle::from_path(&path, &limits)?;
            let snap = Snapshot::compile(&bundle)?;
            println!(
                "ok: revision {:?}, {} routes, {} upstreams",
                snap.revision,
                snap.routes.len(),
                snap.upstreams.len()
            );
        }
        Cmd::Build { dir, output, revision } => {
            let mut files = archive::read_dir(&dir, &limits)?;
            let mut manifest: serde_json::Value = match files.get(policy_bundles::bundle::MANIFEST) {
                Some(b) => serde_json::from_slice(b).map_err(|e| anyhow::anyhow!(".manifest: {e}"))?,
                None => serde_json::json!({}),
            };
            let rev = match revision {
                Some(r) => r,
                None => {
                    files.remove(policy_bundles::bundle::MANIFEST);
                    let content = archive::write_tar_gz(&files)?;
                    policy_bundles::digest(&content)[..12].to_owned()
                }
            };
            manifest["revision"] = serde_json::Value::String(rev.clone());
            files.insert(policy_bundles::bundle::MANIFEST.into(), serde_json::to_vec_pretty(&manifest)?);
            Snapshot::compile(&Bundle::from_files(files.clone())?)?;
            let bytes = archive::write_tar_gz(&files)?;
            std::fs::write(&output, &bytes)?;
            println!("built {} (revision {rev}, sha256 {})", output.display(), policy_bundles::digest(&bytes));
        }
    }
    Ok(true)
}
