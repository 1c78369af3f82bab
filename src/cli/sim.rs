//! `rackhand sim`: command-line front of the device simulator (`crate::sim`).
//!
//! End-to-end tests, benchmarks and engineers at a desk run the simulator as its own process
//! (a Telnet rack, a console pty, or the forced command of a throw-away `sshd`). This edge
//! turns flags into a [`Profile`], announces every endpoint on stdout followed by `ready` so
//! a harness knows when to connect, and stops cleanly on SIGTERM/SIGINT.

use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::ArgGroup;
use nix::sys::signal::{SigSet, Signal};

use crate::config::units::parse_duration;
use crate::sim::{Profile, PtyConsole, StatsSnapshot, TelnetRack, parse_fault_spec, serve_stdio};

/// `rackhand sim`: where to serve, and the device to serve (boxed: it is large and the
/// subcommand enum should not carry it inline).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SimArgs {
    #[command(flatten)]
    pub(crate) mode: ModeArgs,
    #[command(flatten)]
    pub(crate) device: Box<DeviceArgs>,
}

/// Exactly one transport.
#[derive(Debug, Clone, clap::Args)]
#[command(group(ArgGroup::new("mode").required(true).args(["telnet", "pty", "stdio"])))]
pub(crate) struct ModeArgs {
    /// Serve Telnet on ADDR:PORT (port 0: pick free ports), one port per device.
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) telnet: Option<SocketAddr>,
    /// Number of devices, on consecutive ports; hostnames become NAME-1, NAME-2, ...
    #[arg(long, value_name = "N", default_value_t = 1, requires = "telnet")]
    pub(crate) count: usize,
    /// Serve a console on a pseudo-terminal, with a symlink to its slave at LINK.
    #[arg(long, value_name = "LINK")]
    pub(crate) pty: Option<PathBuf>,
    /// Console line speed: output is paced to B/10 bytes per second.
    #[arg(long, value_name = "B", requires = "pty")]
    pub(crate) baud: Option<u32>,
    /// One session on stdin/stdout (for sshd's ForceCommand); no login by default.
    #[arg(long)]
    pub(crate) stdio: bool,
}

/// What the simulated device is.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct DeviceArgs {
    /// cisco_ios | cisco_nxos | arista_eos | juniper_junos | linux
    #[arg(long, value_name = "P", default_value = "cisco_ios")]
    pub(crate) platform: String,
    /// Command outputs, one COMMAND_WITH_UNDERSCORES.txt per command (default: the captures
    /// embedded for the platform).
    #[arg(long, value_name = "DIR")]
    pub(crate) outputs: Option<PathBuf>,
    #[arg(long, value_name = "NAME", default_value = "sim")]
    pub(crate) hostname: String,
    #[arg(long, value_name = "U", default_value = "admin")]
    pub(crate) username: String,
    #[arg(long, value_name = "P", default_value = "admin")]
    pub(crate) password: String,
    /// Ios style: start at `host>`; `enable` asks for S.
    #[arg(long, value_name = "S")]
    pub(crate) enable_secret: Option<String>,
    /// Skip Username/Password (always so with --stdio: sshd authenticated).
    #[arg(long)]
    pub(crate) no_login: bool,
    /// Print "Press RETURN to get started." first and wait for RETURN.
    #[arg(long)]
    pub(crate) press_return: bool,
    /// Message of the day.
    #[arg(long, value_name = "TEXT")]
    pub(crate) banner: Option<String>,
    /// Lines per page at session start [default: 24; linux: no pager]; 0 = paging off.
    #[arg(long, value_name = "N")]
    pub(crate) page_lines: Option<usize>,
    /// Answer `terminal length 0` with an authorization error, as a read-only account gets.
    #[arg(long)]
    pub(crate) refuse_paging_off: bool,
    /// Delay before each command's output, e.g. 50ms, 2s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) latency: Option<Duration>,
    /// Further delay before the answer to exit/logout (and, on Telnet, the hang-up).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) exit_delay: Option<Duration>,
    /// Misbehave on a command: 'COMMAND=hang|drop|endless|garbage|slow' (repeatable).
    #[arg(long, value_name = "COMMAND=FAULT")]
    pub(crate) fault: Vec<String>,
    /// Print numbered log lines unasked, as a console with `logging console` does: while idle
    /// between sessions, right after a command's prompt, before a command's echo.
    #[arg(long)]
    pub(crate) chatty: bool,
    /// A console between sessions logs a numbered line this often, for as long as it is idle
    /// (without it a --chatty console logs only five).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) idle_log_every: Option<Duration>,
    /// Show this prompt in every mode instead of the platform's, e.g. 'host> ' for a
    /// Junos-like device the juniper_junos prompt pattern does not match.
    #[arg(long, value_name = "TEXT")]
    pub(crate) prompt: Option<String>,
    /// Print this line above every prompt, as Junos prints '{master:0}' or '[edit]'.
    #[arg(long, value_name = "TEXT")]
    pub(crate) context_line: Option<String>,
    /// Write session counters as JSON here (atomically) on every change and at exit.
    #[arg(long, value_name = "FILE")]
    pub(crate) stats: Option<PathBuf>,
}

/// Runs the simulator until SIGTERM/SIGINT (or, with `--stdio`, until the session ends).
pub fn run(args: &SimArgs) -> anyhow::Result<i32> {
    let (mode, device) = (&args.mode, &*args.device);
    let profile = profile(device, mode.stdio)?;
    if mode.stdio {
        serve_stdio(profile).context("rackhand sim --stdio")?;
        return Ok(0);
    }
    // Blocked before any thread starts, so every thread inherits the mask and the signals
    // wait for `sigwait` below instead of killing the process mid-write.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals
        .thread_block()
        .context("cannot block SIGTERM/SIGINT for an orderly stop")?;

    let mut announce = Vec::new();
    let (stats, server): (_, Box<dyn FnOnce()>) = if let Some(addr) = mode.telnet {
        let rack = TelnetRack::start(addr, mode.count, profile)?;
        for (name, addr) in rack.addrs() {
            announce.push(format!("telnet {name} {addr}"));
        }
        (rack.stats(), Box::new(move || rack.stop()))
    } else if let Some(link) = &mode.pty {
        let hostname = profile.hostname.clone();
        let console = PtyConsole::start(link, mode.baud, profile)?;
        announce.push(format!(
            "console {hostname} {} {}",
            console.device_path().display(),
            link.display()
        ));
        (console.stats(), Box::new(move || console.stop()))
    } else {
        bail!("rackhand sim: give one of --telnet ADDR:PORT, --pty LINK or --stdio");
    };

    if let Some(path) = &device.stats {
        write_stats(path, &stats.snapshot())?;
        let path = path.clone();
        stats.set_listener(move |snapshot| {
            if let Err(e) = write_stats(&path, snapshot) {
                eprintln!("rackhand sim: {e:#}");
            }
        });
    }

    let mut stdout = std::io::stdout().lock();
    for line in &announce {
        writeln!(stdout, "{line}").context("cannot write to stdout")?;
    }
    writeln!(stdout, "ready").context("cannot write to stdout")?;
    stdout.flush().context("cannot write to stdout")?;
    drop(stdout);

    let signal = signals.wait().context("waiting for SIGTERM/SIGINT")?;
    eprintln!("rackhand sim: {signal:?}, stopping");
    server();
    if let Some(path) = &device.stats {
        write_stats(path, &stats.snapshot())?;
    }
    Ok(0)
}

fn profile(args: &DeviceArgs, stdio: bool) -> anyhow::Result<Profile> {
    let mut p = Profile::for_platform(&args.platform)?;
    if let Some(dir) = &args.outputs {
        p = p.with_outputs_dir(dir)?;
    }
    p.hostname = args.hostname.clone();
    p.username = args.username.clone();
    p.password = args.password.clone();
    p.enable_secret = args.enable_secret.clone();
    p.login = !(args.no_login || stdio);
    p.press_return = args.press_return;
    p.banner = args.banner.clone();
    if let Some(n) = args.page_lines {
        p.page_lines = n;
    }
    p.refuse_paging_off = args.refuse_paging_off;
    if let Some(latency) = args.latency {
        p.latency = latency;
    }
    if let Some(delay) = args.exit_delay {
        p.exit_delay = delay;
    }
    for spec in &args.fault {
        p.faults.push(parse_fault_spec(spec)?);
    }
    p.chatty = args.chatty;
    p.idle_log_every = args.idle_log_every;
    for (flag, value) in [
        ("--prompt", &args.prompt),
        ("--context-line", &args.context_line),
    ] {
        if let Some(v) = value.as_deref()
            && (v.trim().is_empty() || v.contains(['\r', '\n']))
        {
            bail!("rackhand sim: {flag} {v:?} must be one line with something on it");
        }
    }
    p.prompt = args.prompt.clone();
    p.context_line = args.context_line.clone();
    if p.outputs.is_empty() && args.outputs.is_none() && p.style != crate::sim::Style::Linux {
        eprintln!(
            "rackhand sim: no embedded outputs for {}; the device knows only its built-in commands (give --outputs DIR)",
            args.platform
        );
    }
    Ok(p)
}

/// Writes the counters to `path` through a temporary file and a rename, so a reader never
/// sees half a file.
fn write_stats(path: &Path, snapshot: &StatsSnapshot) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, format!("{}\n", snapshot.to_json())).with_context(|| {
        format!(
            "cannot write stats file {}; check the --stats path",
            tmp.display()
        )
    })?;
    fs::rename(&tmp, path)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))?;
    Ok(())
}
