//! `rackhand run`: the agent, until SIGTERM. Exit 0 on a clean stop.

use std::path::Path;
use std::time::Duration;

use crate::agent::{self, Options};

#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// How long in-flight sessions may take to finish after SIGTERM (e.g. "30s").
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub(crate) drain: Duration,
}

pub(crate) fn parse_duration(text: &str) -> Result<Duration, crate::config::units::UnitError> {
    crate::config::units::parse_duration(text)
}

pub fn run(path: &Path, args: &RunArgs) -> anyhow::Result<i32> {
    super::tune_malloc();
    if let Ok((inventory, _)) = crate::inventory::load(path) {
        super::logging::init(Some(&inventory.agent.log_level));
    }
    let summary = agent::run(
        path,
        Options {
            drain: args.drain,
            ..Options::default()
        },
    )?;
    log::info!(
        "stopped cleanly: {} records collected in this run",
        summary.records
    );
    Ok(0)
}
