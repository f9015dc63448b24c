//! `bundlectl`: parses the command line and runs it ([`bundlectl::run`]); the exit status is
//! [`bundlectl::cli::EXIT_CODES`]'s.

use std::process::ExitCode;

use bundlectl::cli::Cli;
use bundlectl::Ran;
use clap::Parser;

fn main() -> ExitCode {
    // A child started to measure a bundle within its budget does only that.
    policy_bundles::budget::serve_child_if_asked();
    // Parse errors exit with 2 (clap's usage status); `--help` and `--version` with 0.
    match bundlectl::run(Cli::parse()) {
        Ok(Ran::Clean) => ExitCode::SUCCESS,
        Ok(Ran::Failures) => ExitCode::from(1),
        Ok(Ran::Denied) => ExitCode::from(3),
        Err(e) => {
            // A server's or a bundle's words: no escape sequence reaches the terminal.
            eprintln!("bundlectl: {}", policy_bundles::printable::printable_lines(&format!("{e:#}")));
            ExitCode::from(2)
        }
    }
}
