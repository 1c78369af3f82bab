//! The command-line edge: argument parsing and exit codes. `anyhow` lives here and nowhere
//! below; every subcommand returns the process exit status.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub(crate) mod check;
pub(crate) mod collect;
pub(crate) mod demo;
pub(crate) mod driver;
pub(crate) mod logging;
pub(crate) mod run;
pub(crate) mod sim;
pub(crate) mod status;

/// Where the config comes from when `-c` is not given.
pub(crate) const DEFAULT_CONFIG: &str = "/etc/rackhand/rackhand.toml";

#[derive(Debug, Parser)]
#[command(name = "rackhand", version, long_version = long_version(), about = "Edge collector for network equipment")]
pub struct Cli {
    /// Config file (else $RACKHAND_CONFIG, else /etc/rackhand/rackhand.toml).
    #[arg(short = 'c', long = "config", global = true, env = "RACKHAND_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Validate the config and print the inventory it resolves.
    Check(check::CheckArgs),
    /// The agent: schedules collections and writes records until SIGTERM (systemd-ready).
    Run(run::RunArgs),
    /// A simulated rack on loopback, the agent run against it for a short time, a summary.
    Demo(demo::DemoArgs),
    /// One pass now over all devices (or the named ones); prints records, ships nothing.
    Collect(collect::CollectArgs),
    /// What the running agent is doing: spool, upstream, each device's last good collection.
    Status(status::StatusArgs),
    /// The child side of process isolation: runs one device's session, JSON lines on stdio.
    #[command(hide = true)]
    Driver(driver::DriverArgs),
    /// The device simulator: Telnet server, pseudo-terminal console, or stdio for sshd.
    Sim(sim::SimArgs),
}

/// `--version` also names the SSH library and the legacy algorithms it was built with, so a
/// field engineer can tell whether an artefact can talk to old gear.
fn long_version() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        let legacy = if option_env!("RACKHAND_LEGACY_SSH").is_some() {
            "legacy SHA-1 algorithms available"
        } else {
            "legacy SHA-1 algorithms not built in"
        };
        format!(
            "{} ({}-{}, libssh2 1.11 vendored, {legacy})",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::ARCH,
            std::env::consts::OS,
        )
    })
}

/// The config path in force: `-c`, then `RACKHAND_CONFIG` (both through clap), then the default.
pub(crate) fn config_path(cli: &Cli) -> PathBuf {
    cli.config
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
}

/// Allocator settings for a process whose many worker threads mostly wait on devices
/// (`rackhand run` and `rackhand collect`), measured in docs/benchmarks.md (the agent on 64
/// Telnet devices and 64 workers: 8.6 instead of 10.4 MiB peak RSS; `collect` on 64 SSH
/// devices and 16 workers: 11.7-12.0 instead of 12.3-12.6 MiB):
/// - one malloc arena: glibc gives threads that allocate their own arenas (up to 8 per core),
///   each keeping the memory its sessions freed. Workers wait on devices, not on malloc, so
///   sharing one costs no throughput;
/// - blocks of 4 KiB and more (read buffers, outputs, record lines) in their own mappings with
///   no padding on the heap: they go back to the kernel when freed instead of fragmenting the
///   heap, for a few system calls per session, nothing against a device's latency.
///
/// Must run before the pool starts its threads.
pub(crate) fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator tunables; no thread of ours allocates yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4096);
        libc::mallopt(libc::M_TOP_PAD, 0);
    }
}

/// Parses arguments, runs the subcommand and returns the exit status.
pub fn main() -> i32 {
    let cli = Cli::parse();
    logging::init(None);
    let result = match &cli.command {
        Command::Check(args) => check::run(&config_path(&cli), args),
        Command::Collect(args) => collect::run(&config_path(&cli), args),
        Command::Run(args) => run::run(&config_path(&cli), args),
        Command::Status(args) => status::run(&config_path(&cli), args),
        Command::Demo(args) => demo::run(args),
        Command::Sim(args) => sim::run(args),
        Command::Driver(args) => driver::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("rackhand: {err:#}");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// The long options of `command` that `reference` does not name.
    fn undocumented_options(command: &clap::Command, reference: &str) -> Vec<String> {
        command
            .get_arguments()
            .filter_map(|arg| arg.get_long())
            .filter(|long| !matches!(*long, "help" | "version"))
            .filter(|long| !reference.contains(&format!("`--{long}")))
            .map(|long| format!("{} --{long}", command.get_name()))
            .collect()
    }

    /// docs/reference.md is the users' list of subcommands and options: one added here must
    /// be described there too.
    #[test]
    fn every_subcommand_and_option_is_in_the_reference() {
        let reference = include_str!("../../docs/reference.md");
        let cli = super::Cli::command();
        let mut missing = undocumented_options(&cli, reference);
        for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
            if !reference.contains(&format!("### `rackhand {}`", sub.get_name())) {
                missing.push(format!("rackhand {}", sub.get_name()));
            }
            missing.extend(undocumented_options(sub, reference));
        }
        assert!(
            missing.is_empty(),
            "docs/reference.md does not describe {missing:?}"
        );
    }
}
