//! `rackhand driver`: the child side of process isolation (being written).

#[derive(Debug, clap::Args)]
pub struct DriverArgs {}

pub fn run(_args: &DriverArgs) -> anyhow::Result<i32> {
    anyhow::bail!("rackhand driver: not yet available")
}
