//! `rackhand run`: the agent, until SIGTERM. Exit 0 on a clean stop.

use std::path::Path;
use std::time::Duration;

use crate::agent::{self, Options};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// How long in-flight sessions may take to finish after SIGTERM (e.g. "30s").
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub drain: Duration,
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::config::units::parse_duration(text)
}

/// glibc gives threads that allocate their own malloc arenas (up to 8 per core), and each
/// keeps the memory its sessions freed: with 64 workers that is about 1 MB of resident memory
/// nobody uses (measured in docs/benchmarks.md). Workers wait on devices, not on malloc, so
/// one shared arena costs no throughput. Must run before the pool starts its threads.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator tunable; no thread of ours allocates yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

pub fn run(path: &Path, args: &RunArgs) -> anyhow::Result<i32> {
    one_malloc_arena();
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
        "stopped cleanly: {} records written to {}",
        summary.records,
        summary.outbox.display()
    );
    Ok(0)
}
