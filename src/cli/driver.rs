//! `rackhand driver`: the child side of process isolation, run by the agent, not by people.
//!
//! The agent re-executes its own binary with this hidden subcommand for every device with
//! `isolation = "process"`, and speaks the JSON lines protocol of `docs/driver-protocol.md`
//! with it over stdin and stdout. Logs go to stderr, which the agent forwards to its own log
//! under the device's name. Exit 0 after `done`; 2 when the request was unusable.

use anyhow::Context;

use crate::isolation::child;

#[derive(Debug, clap::Args)]
pub(crate) struct DriverArgs {}

pub fn run(_args: &DriverArgs) -> anyhow::Result<i32> {
    let stdin = std::io::stdin().lock();
    let stdout = std::io::stdout().lock();
    child::serve(stdin, stdout).context(
        "rackhand driver: this subcommand is the agent's child process; it reads one JSON request line on stdin (see docs/driver-protocol.md)",
    )?;
    Ok(0)
}
