//! `demo-certs`: a local demo CA and the certificates of the README's TLS demo, made with
//! [`test_support::certs`] (ECDSA P-256, PKCS#8 keys). `scripts/make-certs DIR` runs it.
//!
//! ```text
//! demo-certs --out DIR
//! ```
//!
//! Writes into DIR (created if missing), replacing what is there, and prints each path written:
//!
//! | files | for | names (SANs) |
//! | --- | --- | --- |
//! | `ca.pem` | the demo CA: what clients trust | CN `gateway demo CA` |
//! | `api.pem`, `api.key` | the gateway's API listener | `api.localhost`, `localhost`, `127.0.0.1` |
//! | `wildcard.pem`, `wildcard.key` | apps under one wildcard (SNI) | `*.apps.localhost` |
//! | `default.pem`, `default.key` | the certificate for unknown SNI names | `gateway.localhost` |
//! | `upstream.pem`, `upstream.key` | a TLS upstream (`echo-upstream --tls-cert`) | `localhost`, `127.0.0.1` |
//! | `client.pem`, `client.key` | the gateway's client certificate (mTLS to upstreams) | CN `gateway` |
//!
//! Server certificates are valid for 90 days, the CA for a year; keys are written mode 0600.
//! The CA key is not kept: run it again for a new set.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Parser;
use test_support::certs::{Ca, Leaf};

#[derive(Debug, Parser)]
#[command(name = "demo-certs", version, about = "Write a demo CA and the TLS demo's certificates")]
struct Args {
    /// Folder to write into (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// The server certificates: file stem and names.
const SERVERS: &[(&str, &[&str])] = &[
    ("api", &["api.localhost", "localhost", "127.0.0.1"]),
    ("wildcard", &["*.apps.localhost"]),
    ("default", &["gateway.localhost"]),
    ("upstream", &["localhost", "127.0.0.1"]),
];

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let ca = Ca::new("gateway demo CA");
    let mut written = vec![write(&args.out.join("ca.pem"), &ca.cert_pem(), false)?];
    for (stem, names) in SERVERS {
        written.extend(write_leaf(&args.out, stem, &ca.issue(names))?);
    }
    written.extend(write_leaf(&args.out, "client", &ca.client("gateway"))?);
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}

fn write_leaf(dir: &Path, stem: &str, leaf: &Leaf) -> anyhow::Result<[PathBuf; 2]> {
    Ok([
        write(&dir.join(format!("{stem}.pem")), &leaf.cert_pem, false)?,
        write(&dir.join(format!("{stem}.key")), &leaf.key_pem, true)?,
    ])
}

/// Writes `text` to `path`; a private file is readable by its owner only.
fn write(path: &Path, text: &str, private: bool) -> anyhow::Result<PathBuf> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut file, text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    if private {
        // An existing file keeps its mode on open: narrow it too.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("making {} private", path.display()))?;
    }
    Ok(path.to_path_buf())
}
