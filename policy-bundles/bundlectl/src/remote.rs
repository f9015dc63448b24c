//! The remote commands: `push`, `revisions`, `rollout status`, `rollout list`, `rollback` and `fleet`.

use std::path::Path;

use anyhow::{anyhow, bail, Context};
use policy_bundles::bundle::{MANIFEST, SIGNATURES};
use policy_bundles::{archive, Bundle, Limits, Snapshot};

use crate::cli::{Remote, Signer};
use crate::http::{agent, bundle_url, call, fetch_revision, server_message};
use crate::local::{build, sign_files};

/// `bundlectl push`: publishes a tarball, or a directory built on the fly; `force` is the
/// reason for publishing past the growth guard.
pub fn push(
    path: &Path,
    name: &str,
    revision: Option<String>,
    force: Option<&str>,
    remote: &Remote,
    signer: &Signer,
) -> anyhow::Result<()> {
    // A signature made here binds the bundle to the name it is published under.
    let signer = &Signer { bundle: signer.bundle.clone().or_else(|| Some(name.to_owned())), ..signer.clone() };
    let bytes = if path.is_dir() {
        build(path, revision, signer)?.0
    } else {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Snapshot::compile(&Bundle::from_tar_gz(&bytes, &Limits::default())?)?;
        bytes
    };
    let mut req = agent().put(&bundle_url(remote, name));
    if let Some(why) = force {
        req = req.set("x-force-reason", why);
    }
    let (code, v) = call(req, remote, Some(&bytes))?;
    let what = if code == 201 { "published" } else { "unchanged (identical to the active revision)" };
    println!(
        "{what}: {name} revision {} sha256 {}",
        v.get("revision").and_then(|r| r.as_str()).unwrap_or("?"),
        v.get("digest").and_then(|r| r.as_str()).unwrap_or("?")
    );
    Ok(())
}

/// A field of a JSON object as text (strings bare, other values as JSON, missing as "").
pub fn field(v: &serde_json::Value, k: &str) -> String {
    v.get(k).map(|x| x.as_str().map(str::to_owned).unwrap_or(x.to_string())).unwrap_or_default()
}

/// `bundlectl revisions`: the history, newest first.
pub fn revisions(name: &str, remote: &Remote) -> anyhow::Result<()> {
    let (_, v) = call(agent().get(&format!("{}/revisions", bundle_url(remote, name))), remote, None)?;
    println!("{:<16} {:<8} {:<25} {:<12} {:>9}  DIGEST", "REVISION", "ACTIVE", "PUBLISHED", "BY", "SIZE");
    for r in v.as_array().into_iter().flatten() {
        let s = |k: &str| field(r, k);
        let active = if r.get("active").and_then(|a| a.as_bool()) == Some(true) { "*" } else { "" };
        println!(
            "{:<16} {:<8} {:<25} {:<12} {:>9}  {}",
            s("revision"),
            active,
            s("published_at"),
            s("published_by"),
            s("size"),
            s("digest")
        );
        if let Some(why) = r.get("forced_reason").and_then(|w| w.as_str()) {
            println!("{:<16} forced past the growth guard: {why}", "");
        }
    }
    Ok(())
}

/// `bundlectl rollout status`.
pub fn rollout_status(name: &str, remote: &Remote) -> anyhow::Result<()> {
    let (_, v) = call(agent().get(&format!("{}/rollout", bundle_url(remote, name))), remote, None)?;
    let s = |v: &serde_json::Value| v.as_str().map(str::to_owned).unwrap_or_else(|| "-".into());
    println!("bundle {name}: stable {}, canary {}", s(&v["stable"]), s(&v["canary_revision"]));
    let r = &v["rollout"];
    if r.is_null() {
        println!("no rollout yet");
    } else {
        println!(
            "latest rollout: {} (from {}) {} since {}{}",
            s(&r["revision"]),
            s(&r["previous"]),
            s(&r["state"]),
            s(&r["started_at"]),
            r["reason"].as_str().map(|w| format!(": {w}")).unwrap_or_default()
        );
    }
    Ok(())
}

/// `bundlectl rollout list`: every rollout of the bundle, newest first.
pub fn rollout_list(name: &str, limit: u32, remote: &Remote) -> anyhow::Result<()> {
    let url = format!("{}/rollouts?limit={limit}", bundle_url(remote, name));
    let (_, v) = call(agent().get(&url), remote, None)?;
    println!("{:<16} {:<16} {:<12} {:<25} {:<25} REASON", "REVISION", "FROM", "STATE", "STARTED", "ENDED");
    for r in v["rollouts"].as_array().into_iter().flatten() {
        let s = |k: &str| Some(field(r, k)).filter(|f| !f.is_empty() && f != "null").unwrap_or_else(|| "-".into());
        let (revision, previous, state, started, ended) =
            (s("revision"), s("previous"), s("state"), s("started_at"), s("ended_at"));
        println!("{revision:<16} {previous:<16} {state:<12} {started:<25} {ended:<25} {}", s("reason"));
    }
    Ok(())
}

/// `bundlectl rollback --to REV`.
pub fn rollback(name: &str, to: &str, remote: &Remote) -> anyhow::Result<()> {
    let url = format!("{}/rollback", bundle_url(remote, name));
    let body = serde_json::to_vec(&serde_json::json!({ "revision": to }))?;
    let req = agent().post(&url).set("content-type", "application/json");
    let req = match &remote.token {
        Some(t) => req.set("authorization", &format!("Bearer {t}")),
        None => req,
    };
    match req.send_bytes(&body) {
        Ok(_) => println!("{name} is now at revision {to}"),
        Err(ureq::Error::Status(code, r)) => {
            bail!("{url}: HTTP {code}: {}", server_message(&r.into_string().unwrap_or_default()))
        }
        Err(e) => bail!("{url}: {e}"),
    }
    Ok(())
}

/// `bundlectl rollback --sign-key`: revision `to`'s content, signed again with a higher
/// sequence, published as a new revision.
pub fn signed_rollback(name: &str, to: &str, remote: &Remote, signer: &Signer) -> anyhow::Result<()> {
    let bytes = fetch_revision(name, to, remote)?;
    let mut files = archive::read_tar_gz(&bytes, &Limits::default())?;
    files.remove(SIGNATURES);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let sequence = signer.sequence.unwrap_or(now);
    let revision = format!("{to}-resigned-{sequence}");
    let mut manifest: serde_json::Value = match files.get(MANIFEST) {
        Some(b) => serde_json::from_slice(b).map_err(|e| anyhow!("{MANIFEST}: {e}"))?,
        None => serde_json::json!({}),
    };
    manifest["revision"] = serde_json::Value::String(revision.clone());
    // The old content's identity is its old signature's: this one binds a new sequence.
    if let Some(metadata) = manifest.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        metadata.remove("gateway");
    }
    files.insert(MANIFEST.into(), serde_json::to_vec_pretty(&manifest)?);
    let signer = Signer {
        bundle: signer.bundle.clone().or_else(|| Some(name.to_owned())),
        sequence: Some(sequence),
        ..signer.clone()
    };
    sign_files(&mut files, &signer)?;
    let out = archive::write_tar_gz(&files)?;
    let (_, v) = call(agent().put(&bundle_url(remote, name)), remote, Some(&out))?;
    println!(
        "{name} rolled back to {to}'s content as revision {} (signed, sequence {sequence}, sha256 {})",
        v.get("revision").and_then(|r| r.as_str()).unwrap_or(&revision),
        policy_bundles::digest(&out)
    );
    Ok(())
}

/// `bundlectl fleet`: every gateway that reported.
pub fn fleet(remote: &Remote) -> anyhow::Result<()> {
    let (_, v) = call(agent().get(&format!("{}/v1/fleet", remote.server.trim_end_matches('/'))), remote, None)?;
    println!(
        "{:<28} {:<10} {:<16} {:>10} {:<8} {:<8} LAST REPORT",
        "INSTANCE", "BUNDLE", "REVISION", "STALENESS", "CURRENT", "SILENT"
    );
    for g in v.as_array().into_iter().flatten() {
        let s = |k: &str| field(g, k);
        println!(
            "{:<28} {:<10} {:<16} {:>9}s {:<8} {:<8} {}",
            s("instance"),
            s("bundle"),
            s("revision"),
            s("staleness_seconds"),
            s("current"),
            s("silent"),
            s("last_report")
        );
    }
    Ok(())
}
