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

/// Allocator settings for a long-running agent with many idle-most-of-the-time workers,
/// measured in docs/benchmarks.md (64 devices on 64 workers: 8.6 instead of 10.4 MiB peak RSS):
/// - one malloc arena: glibc gives threads that allocate their own arenas (up to 8 per core),
///   each keeping the memory its sessions freed. Workers wait on devices, not on malloc, so
///   sharing one costs no throughput;
/// - blocks of 4 KiB and more (read buffers, outputs, record lines) in their own mappings with
///   no padding on the heap: they go back to the kernel when freed instead of fragmenting the
///   heap, for a few system calls per session, nothing against a device's latency.
///
/// Must run before the pool starts its threads.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator tunables; no thread of ours allocates yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4096);
        libc::mallopt(libc::M_TOP_PAD, 0);
    }
}

pub fn run(path: &Path, args: &RunArgs) -> anyhow::Result<i32> {
    tune_malloc();
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
