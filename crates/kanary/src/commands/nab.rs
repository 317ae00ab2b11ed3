use anyhow::Result;
pub fn run(_a: crate::cli::NabArgs) -> Result<()> {
    anyhow::bail!("wip")
}
