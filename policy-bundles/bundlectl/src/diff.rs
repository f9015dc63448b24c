//! `bundlectl diff A B`: what changed between two bundles, each a local directory or `.tar.gz`,
//! or a revision fetched from control-api ([`policy_bundles::diff`] does the comparing).

use std::path::Path;

use anyhow::{anyhow, Context};
use policy_bundles::diff::diff as compare;
use policy_bundles::{Bundle, Limits};

use crate::cli::Remote;
use crate::http::fetch_revision;

/// `bundlectl diff`: prints the diff as text, or as JSON with `json`. Differing bundles are not
/// an error: the exit status is 0 either way.
pub fn diff(old: &Path, new: &Path, name: &str, json: bool, remote: &Remote) -> anyhow::Result<()> {
    let (old, new) = (operand(old, name, remote)?, operand(new, name, remote)?);
    let d = compare(&old, &new);
    if json {
        println!("{}", serde_json::to_string_pretty(&d)?);
    } else {
        print!("{}", d.render_text());
    }
    Ok(())
}

/// A bundle directory or `.tar.gz` where such a path exists, else revision `operand` of bundle
/// `name` on the server.
fn operand(operand: &Path, name: &str, remote: &Remote) -> anyhow::Result<Bundle> {
    let limits = Limits::default();
    if operand.exists() {
        return Bundle::from_path(operand, &limits).map_err(|e| anyhow!("{}: {e}", operand.display()));
    }
    let Some(revision) = operand.to_str().filter(|r| !r.is_empty()) else {
        return Err(anyhow!("{}: no such file or directory, and not a revision name", operand.display()));
    };
    let bytes = fetch_revision(name, revision, remote).with_context(|| {
        format!("`{revision}` is no file or directory here, nor a revision of bundle `{name}` on {}", remote.server)
    })?;
    Bundle::from_tar_gz(&bytes, &limits).map_err(|e| anyhow!("revision `{revision}` of bundle `{name}`: {e}"))
}
