//! `gateway --config FILE` runs the data plane; `gateway --check-config FILE` validates a
//! config (and the bundle it names) and exits.

use config_files::ConfigFile as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// mimalloc: per-thread free lists instead of glibc's arena locks, which the request path
/// (allocated on one worker thread, freed on another) contends on. Measured in loadtest/README.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "gateway", version, about = "Edge HTTP gateway: routes and authorizes from a local policy bundle")]
struct Cli {
    /// Run with this configuration file.
    #[arg(long, value_name = "FILE", conflicts_with = "check_config", required_unless_present = "check_config")]
    config: Option<PathBuf>,
    /// Take over the listening sockets of the gateway running with this config (its PID is in
    /// `pid_file`), once this process has activated its bundle; that gateway then drains and exits.
    #[arg(long, requires = "config")]
    upgrade: bool,
    /// Validate this configuration file and the bundle it names, then exit.
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,
}

fn main() -> ExitCode {
    // A child started to measure a bundle within its budget does only that.
    policy_bundles::budget::serve_child_if_asked();
    gateway::crypto::install_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GATEWAY_LOG").unwrap_or_else(|_| "info,pingora=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Some(path) = cli.check_config {
        return match check(&path) {
            Ok(msg) => {
                println!("{msg}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gateway: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let Some(path) = cli.config else { return ExitCode::from(2) };
    let start = if cli.upgrade { gateway::Start::Upgrade } else { gateway::Start::Fresh };
    let built =
        match gateway::Config::load(&path).map_err(anyhow::Error::from).and_then(|c| Ok(gateway::build(c, start)?)) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("gateway: {e:#}");
                return ExitCode::from(2);
            }
        };
    built.run();
    ExitCode::SUCCESS
}

fn check(path: &std::path::Path) -> anyhow::Result<String> {
    let config = gateway::Config::load(path)?;
    let (_, _, activator) = gateway::state(&config)?;
    let tls = match &config.tls {
        Some(t) => {
            let loaded = gateway::tls::Tls::load(t).map_err(|e| anyhow::anyhow!("`tls.certificates`: {e}"))?;
            let names: Vec<String> = loaded
                .current()
                .certificates()
                .iter()
                .map(|c| format!("{} ({})", c.name, c.dns_names.join(" ")))
                .collect();
            format!("; TLS: {}", names.join(", "))
        }
        None => String::new(),
    };
    let bundle = bundle_check(&activator, &config)?;
    Ok(format!("{}: ok ({bundle}{tls})", path.display()))
}

/// What `--check-config` says of the bundle: a local file is activated (compiled, pools built).
fn bundle_check(activator: &gateway::Activator, config: &gateway::Config) -> anyhow::Result<String> {
    match &config.bundle.source {
        gateway::config::Source::File(file) => {
            let active = activator.activate_path(file)?;
            let cost = active.info.figures.as_ref().map(|f| {
                format!(", compiled {} in {} ms", policy_bundles::budget::human(f.compiled_bytes), f.compile_ms)
            });
            Ok(format!(
                "bundle {} revision {:?}, {} routes{}",
                file.display(),
                active.info.revision,
                active.snapshot.routes.len(),
                cost.unwrap_or_default()
            ))
        }
        gateway::config::Source::Poll(poll) => {
            Ok(format!("polls {} for bundle {:?}", poll.sources.join(", "), config.bundle.name))
        }
    }
}
