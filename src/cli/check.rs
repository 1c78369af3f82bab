//! `rackhand check`: validate the config, print the resolved inventory.

use std::path::Path;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {}

pub fn run(_path: &Path, _args: &CheckArgs) -> anyhow::Result<i32> {
    anyhow::bail!("rackhand check: under construction")
}
