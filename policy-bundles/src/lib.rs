//! The policy bundle format shared by the data plane and the control plane: reading bundles
//! defensively ([`archive`]), validating them ([`bundle`]), compiling them into an immutable
//! [`snapshot::Snapshot`], verifying bearer tokens ([`jwt`]), reading decisions ([`decision`]) and
//! the whole decision pipeline of one request ([`authorize`]); a bundle's own tests
//! ([`bundle_tests`]), the replay of logged decisions ([`replay`]) and what changed between two
//! revisions ([`diff`]). Request canonicalization is the `http-canon` crate, OPA's `io.jwt`
//! builtins `regorus-jwt`, config files `config-files`.

pub mod archive;
mod ast;
pub mod authorize;
pub mod budget;
pub mod bundle;
pub mod bundle_tests;
pub mod call_check;
#[cfg(feature = "coverage")]
pub mod coverage;
pub mod decision;
pub mod diff;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod input;
pub mod input_reads;
pub mod jwt;
pub mod printable;
pub mod rate_limits;
pub mod rego_text;
pub mod replay;
pub mod resilience;
pub mod router;
pub mod settings;
pub mod signing;
pub mod snapshot;

pub use archive::Limits;
pub use bundle::{digest, Bundle};
pub use decision::Decision;
pub use error::{BundleError, BundleErrors, ErrorKind};
pub use snapshot::Snapshot;

/// Bounds every policy evaluation in this process (the interpreter's and the VM's) to `limit`
/// of wall-clock time; past it the evaluation errors. Set once at start-up.
pub fn set_evaluation_time_limit(limit: std::time::Duration) {
    regorus::utils::limits::set_fallback_execution_timer_config(Some(regorus::utils::limits::ExecutionTimerConfig {
        limit,
        check_interval: std::num::NonZeroU32::MIN.saturating_add(99),
    }));
}

/// Reads, validates and compiles a bundle from its tarball bytes in one step.
pub fn compile_tar_gz(bytes: &[u8], limits: &Limits) -> Result<Snapshot, BundleErrors> {
    Snapshot::compile(&Bundle::from_tar_gz(bytes, limits)?)
}
