//! `bundlectl`: the policy authors' tool. Local commands (`build`, `check`, `test`, `sign`) use
//! the same `policy-bundles` code as the gateway; remote commands (`push`, `revisions`,
//! `rollback`, `fleet`, `logs`, `replay`) talk to `control-api` and print its message when it refuses.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Parser, Subcommand};
use policy_bundles::archive::{self, Files};
use policy_bundles::budget::{self, human, Budget, Validator};
use policy_bundles::bundle::{MANIFEST, SIGNATURES};
use policy_bundles::{signing, testing, Bundle, Limits, Snapshot};

/// What `bundlectl`'s exit status means: shown under `--help` and in docs/src/reference/bundlectl.md.
const EXIT_CODES: &str = "\
Exit status:
  0  success
  1  `bundlectl test` ran and a test or decision case failed, or `bundlectl replay` found more
     changed decisions than --max-changed
  2  usage error (bad or missing arguments), I/O error (a file that cannot be read or written),
     invalid bundle (does not compile, over budget), or an error from or reaching the server";

#[derive(Parser)]
#[command(name = "bundlectl", version, about = "Build, test, sign and publish policy bundles", after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum RolloutCmd {
    /// Show the rollout of a bundle.
    Status {
        #[arg(long, env = "BUNDLECTL_NAME", default_value = "main")]
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Args, Clone)]
struct Remote {
    /// The control-api base URL.
    #[arg(long, env = "BUNDLECTL_SERVER", default_value = "http://127.0.0.1:8181")]
    server: String,
    /// Bearer token (publish scope to push or roll back, logs scope for `logs`, read scope for
    /// the rest).
    #[arg(long, env = "BUNDLECTL_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Args, Clone)]
struct Signer {
    /// Sign with this private key (PEM); writes `.signatures.json` into the bundle.
    #[arg(long = "sign-key", value_name = "PEM")]
    key: Option<PathBuf>,
    /// RS256, ES256 or EdDSA.
    #[arg(long = "sign-alg", default_value = "ES256")]
    alg: String,
    /// The key id gateways know the public key by (`bundle.signing.keys[].id`).
    #[arg(long = "sign-kid", default_value = "default")]
    kid: String,
    /// The bundle name the signature binds to (`metadata.gateway.bundle`): gateways with
    /// `signing.required` refuse it under any other name. Default: `push`'s `--name`, else `main`.
    #[arg(long = "sign-bundle")]
    bundle: Option<String>,
    /// The signed sequence (`metadata.gateway.sequence`); gateways refuse one lower than the
    /// highest they have activated. Default: the Unix time of signing, so that every later
    /// signature (a rollback's included) is higher.
    #[arg(long = "sign-sequence")]
    sequence: Option<u64>,
    /// How long the signature is good for (`30d`, `12h`): `metadata.gateway.expires`. Past it,
    /// gateways refuse the bundle as new and alert while it serves. Default: no expiry.
    #[arg(long = "sign-expires", value_name = "DURATION")]
    expires: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a bundle directory into a deterministic .tar.gz, after checking it compiles.
    Build {
        dir: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        /// Revision written into `.manifest`; default: the one the manifest names, else the first
        /// 12 hex digits of the content hash.
        #[arg(long)]
        revision: Option<String>,
        #[command(flatten)]
        signer: Signer,
    },
    /// Check that a bundle (directory or .tar.gz) compiles exactly as the gateway would, within
    /// the default budget (measured in a child process, as control-api and the gateway do), and
    /// print what it costs: sizes, estimated compiled size, compile time.
    Check { path: PathBuf },
    /// Run a bundle's Rego `test_*` rules and its decision cases (`tests/cases.yaml`,
    /// `tests/**/*.cases.yaml`); exits non-zero when any fails.
    Test { path: PathBuf },
    /// Sign a bundle .tar.gz (OPA's `.signatures.json` format).
    Sign {
        input: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        signer: Signer,
    },
    /// Publish a bundle (.tar.gz, or a directory built on the fly) as a new revision.
    Push {
        path: PathBuf,
        #[arg(long, env = "BUNDLECTL_NAME", default_value = "main")]
        name: String,
        /// Revision when building a directory (default: the manifest's, else the content hash).
        #[arg(long)]
        revision: Option<String>,
        /// Publish past the growth guard (a bundle much larger than the active one, or one that
        /// drops many routes); needs --reason, which the revision history keeps.
        #[arg(long, requires = "reason")]
        force: bool,
        /// Why the publish is forced.
        #[arg(long, requires = "force")]
        reason: Option<String>,
        #[command(flatten)]
        remote: Remote,
        #[command(flatten)]
        signer: Signer,
    },
    /// List a bundle's revisions, newest first.
    Revisions {
        #[arg(long, env = "BUNDLECTL_NAME", default_value = "main")]
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Where a staged rollout stands: the revision each cohort is served, the latest rollout's
    /// state and why it ended.
    Rollout {
        #[command(subcommand)]
        what: RolloutCmd,
    },
    /// Make an earlier revision active again. With `--sign-key` (for gateways that require
    /// signatures), the revision's content is signed again with a higher sequence and published
    /// as revision `<to>-resigned-<sequence>`: gateways refuse the old signature as a replay.
    Rollback {
        #[arg(long, env = "BUNDLECTL_NAME", default_value = "main")]
        name: String,
        #[arg(long = "to")]
        to: String,
        #[command(flatten)]
        remote: Remote,
        #[command(flatten)]
        signer: Signer,
    },
    /// Every gateway that reported: its revision, staleness and last report.
    Fleet {
        #[command(flatten)]
        remote: Remote,
    },
    /// A bundle's decision-log events, newest first, one line each (timestamp, decision, status,
    /// route, method, path, decision id, reason); needs a token of scope `logs`.
    Logs {
        #[arg(long, env = "BUNDLECTL_NAME", default_value = "main")]
        name: String,
        #[command(flatten)]
        filter: LogFilter,
        /// Print the events as control-api sent them (a JSON array), not one line each.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Re-decide logged requests with a candidate bundle (directory or .tar.gz) exactly as a
    /// gateway would, and list what would change: allow→deny, deny→allow, deny status, headers,
    /// rule errors, routing; counts per route and examples. Needs a token of scope `logs`.
    /// Events whose masked or erased input the candidate's rule may read are reported as not
    /// replayable. The logged token claims are used as they are: the candidate's trust roots
    /// cannot check them again.
    Replay {
        candidate: PathBuf,
        #[arg(long, env = "BUNDLECTL_NAME", default_value = "main")]
        name: String,
        /// Logged decisions at or after this time: RFC 3339, or a span ago (30m, 1h, 7d).
        #[arg(long, default_value = "1h")]
        since: String,
        /// Only the decisions logged on this route.
        #[arg(long)]
        route: Option<String>,
        /// Exit with status 1 when more than this many decisions would change.
        #[arg(long)]
        max_changed: Option<usize>,
        /// At most this many logged decisions, newest first.
        #[arg(long, default_value_t = 100_000)]
        limit: usize,
        /// Print the whole report as JSON (every change and every event not replayable).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Args, Clone, Default)]
struct LogFilter {
    /// Only events of this route.
    #[arg(long)]
    route: Option<String>,
    /// Only these decisions.
    #[arg(long, value_parser = ["allow", "deny", "error"])]
    decision: Option<String>,
    /// Only events decided by this bundle revision.
    #[arg(long)]
    revision: Option<String>,
    /// Only events at or after this time: RFC 3339, or a span ago (30m, 1h, 7d).
    #[arg(long)]
    since: Option<String>,
    /// Only events at or before this time: RFC 3339, or a span ago.
    #[arg(long)]
    until: Option<String>,
    /// At most this many events (control-api's default 1000, at most 10000).
    #[arg(long)]
    limit: Option<u32>,
}

fn main() -> ExitCode {
    // A child started to measure a bundle within its budget does only that.
    policy_bundles::budget::serve_child_if_asked();
    // Parse errors exit with 2 (clap's usage status); `--help` and `--version` with 0.
    match run(Cli::parse()) {
        Ok(Ran::Clean) => ExitCode::SUCCESS,
        Ok(Ran::Failures) => ExitCode::from(1),
        Err(e) => {
            eprintln!("bundlectl: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// How a command that did its work ended.
enum Ran {
    Clean,
    /// `test` ran and some test or case failed.
    Failures,
}

/// Reads a directory, sets its manifest revision (unless the manifest names one), checks it compiles, signs it if asked, and
/// returns the tarball bytes and the revision.
fn build(dir: &Path, revision: Option<String>, signer: &Signer) -> anyhow::Result<(Vec<u8>, String)> {
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

fn sign_files(files: &mut Files, signer: &Signer) -> anyhow::Result<()> {
    if let Some(key) = &signer.key {
        let pem = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
        files.remove(SIGNATURES);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        let expires = match &signer.expires {
            None => None,
            Some(d) => {
                let d = config_files::parse_duration(d).map_err(|e| anyhow!("--sign-expires: {e}"))?;
                Some(now + d.as_secs())
            }
        };
        let bundle = signer.bundle.clone().unwrap_or_else(|| std::env::var("BUNDLECTL_NAME").unwrap_or("main".into()));
        let identity = signing::Identity { bundle, sequence: signer.sequence.unwrap_or(now), expires };
        signing::bind(files, &identity)?;
        let sig =
            signing::sign(files, &pem, &signer.alg, &signer.kid).map_err(|e| anyhow!("{}: {e}", key.display()))?;
        files.insert(SIGNATURES.into(), sig);
    }
    Ok(())
}

/// The largest answer read from control-api.
const MAX_ANSWER: u64 = 512 << 20;

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build()
}

/// Sends a request; an error status becomes an error carrying the server's message.
fn call(req: ureq::Request, remote: &Remote, body: Option<&[u8]>) -> anyhow::Result<(u16, serde_json::Value)> {
    let (code, text) = send(req, remote, body)?;
    let json = if text.trim().is_empty() { serde_json::Value::Null } else { serde_json::from_str(&text)? };
    Ok((code, json))
}

/// [`call`], answering the body as text.
fn send(req: ureq::Request, remote: &Remote, body: Option<&[u8]>) -> anyhow::Result<(u16, String)> {
    let req = match &remote.token {
        Some(t) => req.set("authorization", &format!("Bearer {t}")),
        None => req,
    };
    let url = req.url().to_owned();
    let result = match body {
        Some(b) => req.set("content-type", "application/gzip").send_bytes(b),
        None => req.call(),
    };
    let resp = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            let text = r.into_string().unwrap_or_default();
            bail!("{url}: HTTP {code}: {}", server_message(&text));
        }
        Err(e) => bail!("{url}: {e}"),
    };
    let code = resp.status();
    // Not `into_string`, which stops at 10 MiB: 10,000 logged events can be more.
    let mut text = String::new();
    resp.into_reader()
        .take(MAX_ANSWER)
        .read_to_string(&mut text)
        .with_context(|| format!("{url}: reading the answer"))?;
    Ok((code, text))
}

/// The server's explanation: its `errors` list (file:line: message), `error`, or the raw body.
fn server_message(body: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else { return body.trim().to_owned() };
    if let Some(errors) = v.get("errors").and_then(|e| e.as_array()) {
        let lines: Vec<String> = errors
            .iter()
            .map(|e| {
                let file = e.get("file").and_then(|f| f.as_str());
                let line = e.get("line").and_then(|l| l.as_u64());
                let msg = e.get("message").and_then(|m| m.as_str()).unwrap_or("");
                match (file, line) {
                    (Some(f), Some(l)) => format!("{f}:{l}: {msg}"),
                    (Some(f), None) => format!("{f}: {msg}"),
                    _ => msg.to_owned(),
                }
            })
            .collect();
        return format!("bundle refused:\n  {}", lines.join("\n  "));
    }
    match v.get("error").and_then(|e| e.as_str()) {
        Some(e) => e.to_owned(),
        None => body.trim().to_owned(),
    }
}

fn bundle_url(remote: &Remote, name: &str) -> String {
    format!("{}/v1/bundles/{name}", remote.server.trim_end_matches('/'))
}

/// Runs a command; an error is a usage, I/O, bundle or server error.
fn run(cli: Cli) -> anyhow::Result<Ran> {
    match cli.cmd {
        Cmd::Test { path } => return test(&path),
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
        Cmd::Rollback { name, to, remote, signer } if signer.key.is_some() => {
            signed_rollback(&name, &to, &remote, &signer)?
        }
        Cmd::Rollback { name, to, remote, .. } => rollback(&name, &to, &remote)?,
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

/// `bundlectl test`: the bundle's Rego tests and decision cases.
fn test(path: &Path) -> anyhow::Result<Ran> {
    let bundle = Bundle::from_path(path, &Limits::default())?;
    let report = testing::run(&bundle)?;
    println!("{report}");
    Ok(if report.is_success() { Ran::Clean } else { Ran::Failures })
}

/// `bundlectl check`: compiles within the default budget, and what it costs.
fn check(path: &Path) -> anyhow::Result<()> {
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
fn sign(input: &Path, output: &Path, signer: &Signer) -> anyhow::Result<()> {
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

/// `bundlectl push`: publishes a tarball, or a directory built on the fly; `force` is the
/// reason for publishing past the growth guard.
fn push(
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
fn field(v: &serde_json::Value, k: &str) -> String {
    v.get(k).map(|x| x.as_str().map(str::to_owned).unwrap_or(x.to_string())).unwrap_or_default()
}

/// `bundlectl revisions`: the history, newest first.
fn revisions(name: &str, remote: &Remote) -> anyhow::Result<()> {
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
fn rollout_status(name: &str, remote: &Remote) -> anyhow::Result<()> {
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

/// `bundlectl rollback --to REV`.
fn rollback(name: &str, to: &str, remote: &Remote) -> anyhow::Result<()> {
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
fn signed_rollback(name: &str, to: &str, remote: &Remote, signer: &Signer) -> anyhow::Result<()> {
    let url = format!("{}/revisions/{to}", bundle_url(remote, name));
    let mut req = agent().get(&url);
    if let Some(t) = &remote.token {
        req = req.set("authorization", &format!("Bearer {t}"));
    }
    let bytes = match req.call() {
        Ok(r) => {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut r.into_reader().take(MAX_ANSWER), &mut b)?;
            b
        }
        Err(ureq::Error::Status(code, r)) => {
            bail!("{url}: HTTP {code}: {}", server_message(&r.into_string().unwrap_or_default()))
        }
        Err(e) => bail!("{url}: {e}"),
    };
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
fn fleet(remote: &Remote) -> anyhow::Result<()> {
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

/// `GET /v1/logs` for bundle `name` with `f`'s filters, as text.
fn fetch_logs(name: &str, f: &LogFilter, remote: &Remote) -> anyhow::Result<String> {
    let mut req = agent().get(&format!("{}/v1/logs", remote.server.trim_end_matches('/'))).query("bundle", name);
    let limit = f.limit.map(|n| n.to_string());
    let params = [
        ("route", &f.route),
        ("decision", &f.decision),
        ("revision", &f.revision),
        ("since", &f.since),
        ("until", &f.until),
        ("limit", &limit),
    ];
    for (k, v) in params {
        if let Some(v) = v {
            req = req.query(k, v);
        }
    }
    Ok(send(req, remote, None)?.1)
}

fn parse_events(text: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    serde_json::from_str(text).context("control-api answered GET /v1/logs with something other than a JSON array")
}

/// Up to `limit` events matching `f`, newest first: pages of at most 10,000 (control-api's
/// bound), each ending where the last one's oldest event was; events seen twice at a page's
/// edge are kept once.
fn logged(name: &str, f: &LogFilter, limit: usize, remote: &Remote) -> anyhow::Result<Vec<serde_json::Value>> {
    let (mut events, mut seen) = (Vec::new(), std::collections::HashSet::new());
    let mut page = f.clone();
    while events.len() < limit {
        let want = (limit - events.len()).min(10_000);
        page.limit = u32::try_from(want).ok();
        let batch = parse_events(&fetch_logs(name, &page, remote)?)?;
        let (got, oldest) = (batch.len(), batch.last().and_then(|e| e["timestamp"].as_str()).map(str::to_owned));
        let mut added = 0;
        for e in batch {
            if seen.insert(e["decision_id"].as_str().unwrap_or_default().to_owned()) {
                events.push(e);
                added += 1;
            }
        }
        if got < want || added == 0 || oldest.is_none() {
            break;
        }
        page.until = oldest;
    }
    Ok(events)
}

/// `bundlectl logs`: the bundle's decision events, newest first.
fn logs(name: &str, f: &LogFilter, json: bool, remote: &Remote) -> anyhow::Result<()> {
    let text = fetch_logs(name, f, remote)?;
    if json {
        println!("{}", text.trim_end());
        return Ok(());
    }
    let events = parse_events(&text)?;
    if events.is_empty() {
        eprintln!("no decision events of bundle {name} match");
    }
    for e in &events {
        println!("{}", log_line(e));
    }
    Ok(())
}

/// One event as a line: timestamp, decision, status, route, method, path, decision id, and the
/// reason (the decision's, or the evaluation error) when there is one.
fn log_line(e: &serde_json::Value) -> String {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let route = if e["route"].is_null() { &e["input"]["route"] } else { &e["route"] };
    let request = &e["input"]["request"];
    let reason = e["result"]["reason"].as_str().or(e["error"].as_str()).unwrap_or("");
    let line = format!(
        "{} {:<5} {:>3} {} {} {} {}",
        text(&e["timestamp"]),
        text(&e["decision"]),
        text(&e["status"]),
        text(route),
        text(&request["method"]),
        text(&request["path"]),
        text(&e["decision_id"])
    );
    if reason.is_empty() {
        line
    } else {
        format!("{line} {reason}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_has_every_column_and_the_reason_or_error() {
        let deny = serde_json::json!({
            "decision_id": "6f1c", "timestamp": "2026-12-03T09:01:02.123Z", "decision": "deny", "status": 403,
            "route": "orders", "input": { "request": { "method": "GET", "path": "/orders/7" } },
            "result": { "allow": false, "reason": "not your order" }
        });
        assert_eq!(log_line(&deny), "2026-12-03T09:01:02.123Z deny  403 orders GET /orders/7 6f1c not your order");
        let error = serde_json::json!({
            "decision_id": "e1", "timestamp": "t", "decision": "error", "status": 403,
            "input": { "route": "orders" }, "error": "undefined function"
        });
        assert_eq!(log_line(&error), "t error 403 orders - - e1 undefined function");
    }
}
