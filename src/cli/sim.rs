//! `rackhand sim`: command-line front of the device simulator (`crate::sim`).

#[derive(Debug, clap::Args)]
pub struct SimArgs {}

pub fn run(_args: &SimArgs) -> anyhow::Result<i32> {
    anyhow::bail!("rackhand sim: under construction")
}
