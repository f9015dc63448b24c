//! The local commands: `build`, `check`, `test` and `sign` run the same `policy-bundles` code as
//! the gateway, on a directory or tarball.

use std::path::Path;

use anyhow::{anyhow, bail, Context};
use policy_bundles::archive::{self, Files};
use policy_bundles::budget::{self, human, Budget, Validator};
use policy_bundles::bundle::{MANIFEST, SIGNATURES};
use policy_bundles::{bundle_tests, signing, Bundle, Limits, Snapshot};

use crate::cli::Signer;
use crate::Ran;

/// Reads a directory, sets its manifest revision (unless the manifest names one), checks it compiles, signs it if asked, and
/// returns the tarball bytes and the revision.
pub fn build(dir: &Path, revision: Option<String>, signer: &Signer) -> anyhow::Result<(Vec<u8>, String)> {
    let limits = Limits::default();
    let mut files = archive::read_dir(dir, &limits)?;
    files.remove(SIGNATURES);
    let mut manifest: serde_json::Value = match files.get(MANIFEST) {
        Some(b) => serde_json::from_slice(b).map_err(|e| anyhow!("{MANIFEST}: {e}"))?,
        None => serde_json::json!({}),
    };
    // As `opa build`: --revision, else the revision the manifest was written with, else the
    // content hash.
    let written = manifest.get("revision").and_then(|r| r.as_str()).filter(|r| !r.is_empty()).map(str::to_owned);
    let rev = match revision.or(written) {
        Some(r) => r,
        None => {
            let mut content = files.clone();
            content.remove(MANIFEST);
            policy_bundles::digest(&archive::write_tar_gz(&content)?)[..12].to_owned()
        }
    };
    manifest["revision"] = serde_json::Value::String(rev.clone());
    files.insert(MANIFEST.into(), serde_json::to_vec_pretty(&manifest)?);
    Snapshot::compile(&Bundle::from_files(files.clone())?)?;
    sign_files(&mut files, signer)?;
    Ok((archive::write_tar_gz(&files)?, rev))
}

pub fn sign_files(files: &mut Files, signer: &Signer) -> anyhow::Result<()> {
    if let Some(key) = &signer.key {
        let pem = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
        // A bundle signed before (a rollback re-signs old content) carries the identity of that
        // signature, which a new one replaces; an unsigned one's is the author's.
        let resigning = files.remove(SIGNATURES).is_some();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        let expires = match &signer.expires {
            None => None,
            Some(d) => {
                let d = config_files::parse_duration(d).map_err(|e| anyhow!("--sign-expires: {e}"))?;
                Some(now + d.as_secs())
            }
        };
        let written = if resigning { None } else { signing::identity(files).map_err(|e| anyhow!("{e}"))? };
        let identity = identity_to_sign(written, signer, now, expires)?;
        signing::bind(files, &identity)?;
        let sig =
            signing::sign(files, &pem, &signer.alg, &signer.kid).map_err(|e| anyhow!("{}: {e}", key.display()))?;
        files.insert(SIGNATURES.into(), sig);
    }
    Ok(())
}

/// The identity a signature binds: the flags', and where the author wrote `metadata.gateway`
/// in the `.manifest` of an unsigned bundle, that one kept. A flag that disagrees with what the
/// author wrote is an error naming both: a signature never binds something neither said.
fn identity_to_sign(
    written: Option<signing::Identity>,
    signer: &Signer,
    now: u64,
    expires: Option<u64>,
) -> anyhow::Result<signing::Identity> {
    let Some(w) = written else {
        let bundle = signer.bundle.clone().unwrap_or_else(|| std::env::var("BUNDLECTL_NAME").unwrap_or("main".into()));
        return Ok(signing::Identity { bundle, sequence: signer.sequence.unwrap_or(now), expires });
    };
    let clash = |field: &str, manifest: String, flag: &str, given: String| {
        anyhow!(
            "the .manifest's metadata.gateway.{field} is {manifest}, but {flag} says {given}: remove one of the two \
             (the .manifest's metadata.gateway is kept as the author wrote it)"
        )
    };
    let name = signer.bundle.clone().or_else(|| std::env::var("BUNDLECTL_NAME").ok());
    if let Some(n) = name.filter(|n| *n != w.bundle) {
        let flag = if signer.bundle.is_some() { "--sign-bundle" } else { "--name" };
        return Err(clash("bundle", format!("`{}`", w.bundle), flag, format!("`{n}`")));
    }
    if let Some(q) = signer.sequence.filter(|q| *q != w.sequence) {
        return Err(clash("sequence", w.sequence.to_string(), "--sign-sequence", q.to_string()));
    }
    if let (Some(mine), Some(e)) = (w.expires, expires) {
        return Err(clash("expires", mine.to_string(), "--sign-expires", format!("{e} (Unix seconds)")));
    }
    Ok(signing::Identity { expires: w.expires.or(expires), ..w })
}

/// `bundlectl test`: the bundle's Rego tests and decision cases.
/// With `coverage` (`json` or `pretty`), also the lines they evaluated
/// (`policy_bundles::coverage`); the test results then go to stderr.
pub fn test(path: &Path, coverage: Option<&str>) -> anyhow::Result<Ran> {
    let bundle = Bundle::from_path(path, &Limits::default())?;
    let report = bundle_tests::run(&bundle)?;
    match coverage {
        None => println!("{report}"),
        Some(format) => {
            eprintln!("{report}");
            let cov = policy_bundles::coverage::run(&bundle)?;
            if format == "pretty" {
                print!("{}", cov.to_text());
            } else {
                println!("{}", serde_json::to_string_pretty(&cov.to_opa_json())?);
                eprint!("{}", cov.to_text());
            }
        }
    }
    Ok(if report.is_success() { Ran::Clean } else { Ran::Failures })
}

/// `bundlectl check`: compiles within the default budget, and what it costs.
pub fn check(path: &Path) -> anyhow::Result<()> {
    let limits = Limits::default();
    let bytes = if path.is_dir() {
        archive::write_tar_gz(&archive::read_dir(path, &limits)?)?
    } else {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
    };
    let budget = Budget::default();
    let f = budget::check(&bytes, &limits, &budget, &Validator::current_exe())?;
    let snap = Snapshot::compile(&Bundle::from_tar_gz(&bytes, &limits)?)?;
    println!("ok: revision {:?}, {} routes, {} upstreams", snap.revision, f.routes, f.upstreams);
    println!(
        "  size: {} compressed, {} uncompressed (budget {})",
        human(f.compressed_bytes),
        human(f.uncompressed_bytes),
        human(budget.max_uncompressed)
    );
    println!(
        "  compiled: about {} (budget {}), in {} ms; validator peak memory {}",
        human(f.compiled_bytes),
        human(budget.max_compiled),
        f.compile_ms,
        f.peak_rss_bytes.map(human).unwrap_or_else(|| "unknown".into())
    );
    Ok(())
}

/// `bundlectl sign`: a tarball signed with `--sign-key`.
pub fn sign(input: &Path, output: &Path, signer: &Signer) -> anyhow::Result<()> {
    if signer.key.is_none() {
        bail!("--sign-key is required");
    }
    let bytes = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
    let mut files = archive::read_tar_gz(&bytes, &Limits::default())?;
    sign_files(&mut files, signer)?;
    let out = archive::write_tar_gz(&files)?;
    std::fs::write(output, &out)?;
    println!("signed {} (sha256 {})", output.display(), policy_bundles::digest(&out));
    Ok(())
}
