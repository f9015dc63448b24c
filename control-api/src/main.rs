//! `control-api`: the control plane. Not built yet; see the README's roadmap.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("control-api is not implemented yet: serve bundles from a file with the gateway's `bundle.file`")
}
