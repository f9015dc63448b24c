//! `control-api --config FILE` runs the control plane; `control-api --check-config FILE`
//! validates a config and exits; `control-api hash-token` reads a token on standard input and
//! prints the SHA-256 to put in a config's `tokens[].sha256`.

use config_files::ConfigFile as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "control-api", version, about = "The control plane: validates, versions and serves policy bundles")]
struct Cli {
    /// Run with this configuration file.
    #[arg(long, value_name = "FILE", conflicts_with = "check_config")]
    config: Option<PathBuf>,
    /// Validate this configuration file, then exit.
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Read a token on standard input (one line) and print its hex SHA-256, for
    /// `tokens[].sha256` in the config. Use a long random string, e.g. `openssl rand -hex 32`.
    HashToken {
        /// Refused: a token on the command line lands in shell history and the process list.
        #[arg(hide = true)]
        token: Option<String>,
    },
}

fn main() -> ExitCode {
    // A child started to measure a bundle within its budget does only that.
    policy_bundles::budget::serve_child_if_asked();
    let cli = Cli::parse();
    match (cli.command, cli.check_config, cli.config) {
        (Some(Command::HashToken { token: Some(_) }), None, None) => {
            eprintln!(
                "control-api: hash-token reads the token on standard input, not from the command line (where it \
                 lands in shell history and `ps`): printf %s \"$TOKEN\" | control-api hash-token"
            );
            ExitCode::from(2)
        }
        (Some(Command::HashToken { token: None }), None, None) => hash_token(),
        (None, Some(path), None) => match control_api::Config::load(&path) {
            Ok(c) => {
                println!("{}: ok (listen {}, store {}, {} tokens)", path.display(), c.listen, c.store, c.tokens.len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("control-api: {e}");
                ExitCode::from(2)
            }
        },
        (None, None, Some(path)) => serve(&path),
        _ => {
            eprintln!("control-api: give --config FILE, --check-config FILE, or hash-token (see --help)");
            ExitCode::from(2)
        }
    }
}

/// `hash-token`: the token on standard input, its hash on standard output.
fn hash_token() -> ExitCode {
    use std::io::IsTerminal;
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("token (one line; it is shown as you type): ");
    }
    match control_api::auth::read_token(stdin.lock()) {
        Ok(token) => {
            println!("{}", control_api::auth::hash_token(&token));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("control-api: {e}");
            ExitCode::from(2)
        }
    }
}

fn serve(path: &std::path::Path) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CONTROL_API_LOG").unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match control_api::Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("control-api: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("control-api: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let app = match control_api::build(config).await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("control-api: {e}");
                return ExitCode::FAILURE;
            }
        };
        match app.local_addr() {
            // Scripts and tests read this line to find a port chosen by the system. Whoever
            // started us may stop reading stdout afterwards: a failed write is not an error.
            Ok(addr) => {
                use std::io::Write;
                let mut out = std::io::stdout();
                let _ = writeln!(out, "listening on {addr}").and_then(|()| out.flush());
            }
            Err(e) => {
                eprintln!("control-api: {e}");
                return ExitCode::FAILURE;
            }
        }
        match app.run(shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("control-api: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
