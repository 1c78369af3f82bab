//! `rackhand collect`: one pass now over all devices (or the named ones), printing records.
//!
//! What an engineer runs to try a config or grab outputs by hand: the configured commands
//! (or the ones after `--`), one session per device, `workers` devices at a time. Records go
//! to stdout (text, or NDJSON with `--format json`); progress and logs to stderr. Nothing is
//! shipped upstream, and the records are numbered 1..n with ids of the run's own
//! ([`AdHocRun`]), never the agent's. Exit 0 when every record is `ok`, 1 otherwise, 2 on
//! usage/config errors.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::inventory::{CommandSource, Device, Isolation};
use crate::isolation;
use crate::pool::{self, Event};
use crate::record::{AdHocRun, Record, Status};
use crate::session;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub(crate) struct CollectArgs {
    /// Only this device (repeatable).
    #[arg(long = "device", value_name = "NAME")]
    pub(crate) devices: Vec<String>,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub(crate) format: Format,
    /// Worker threads (default: [agent] workers).
    #[arg(long)]
    pub(crate) workers: Option<usize>,
    /// Commands to run instead of the configured ones.
    #[arg(last = true, value_name = "COMMAND")]
    pub(crate) commands: Vec<String>,
}

pub fn run(path: &Path, args: &CollectArgs) -> anyhow::Result<i32> {
    // Many workers waiting on devices, as in the agent: the same allocator settings.
    super::tune_malloc();
    // Commands after `--` make every device collectable, configured commands or not.
    let source = if args.commands.is_empty() {
        CommandSource::Configured
    } else {
        CommandSource::AdHoc
    };
    let (inventory, report) = crate::inventory::load_with(path, source)?;
    if report.has_errors() {
        // Every finding once, warnings among the errors in file order, as `check` shows them.
        eprint!("{report}");
        eprintln!("rackhand collect: the config has errors; run `rackhand check` for details");
        return Ok(2);
    }
    for d in report.warnings() {
        log::warn!("{}", report.render(d));
    }
    let mut devices: Vec<Device> = if args.devices.is_empty() {
        inventory.devices.clone()
    } else {
        let mut chosen = Vec::new();
        for name in &args.devices {
            match inventory.devices.iter().find(|d| &d.name == name) {
                Some(d) => chosen.push(d.clone()),
                None => {
                    let known: Vec<&str> =
                        inventory.devices.iter().map(|d| d.name.as_str()).collect();
                    eprintln!(
                        "rackhand collect: no device `{name}` in {}; devices: {}",
                        path.display(),
                        known.join(", ")
                    );
                    return Ok(2);
                }
            }
        }
        chosen
    };
    if !args.commands.is_empty() {
        for d in &mut devices {
            d.commands = args.commands.clone();
        }
    }
    let workers = args.workers.unwrap_or(inventory.agent.workers).max(1);
    let agent = inventory.agent.id.clone();
    let total: usize = devices.iter().map(|d| d.commands.len()).sum();

    let (tx, rx) = mpsc::channel();
    let mut failures = 0usize;
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let devices_ref = &devices;
        scope.spawn(move || {
            pool::run(devices_ref, workers, tx, |device, emit| {
                match device.isolation {
                    Isolation::Process => {
                        isolation::collect_isolated(device, &device.commands, emit)
                    }
                    Isolation::Thread => session::collect_each(device, &device.commands, emit),
                }
            })
        });
        let mut progress = Progress::new(total, std::io::stderr().is_terminal());
        let stdout = std::io::stdout();
        let run = AdHocRun::start();
        let mut seq = 0u64;
        for event in rx {
            match event {
                Event::Started { device } => progress.started(device),
                Event::Outcome { device, outcome } => {
                    seq += 1;
                    let record = outcome.into_ad_hoc_record(&agent, &run, seq);
                    if record.status != Status::Ok {
                        failures += 1;
                    }
                    progress.clear();
                    let mut out = stdout.lock();
                    match args.format {
                        Format::Json => writeln!(out, "{}", record.to_json())?,
                        Format::Text => write!(out, "{}", render_text(&record))?,
                    }
                    out.flush()?;
                    progress.record(device, &record, &devices_ref[device].name);
                }
                Event::Finished { device, .. } => progress.finished(device),
            }
        }
        progress.clear();
        Ok(())
    })?;
    if std::io::stderr().is_terminal() || failures > 0 {
        eprintln!(
            "rackhand collect: {} records from {} devices, {failures} not ok",
            total,
            devices.len()
        );
    }
    Ok(if failures == 0 { 0 } else { 1 })
}

/// A record for people: a header line, then the output as the device printed it.
fn render_text(r: &Record) -> String {
    let mut s = format!(
        "=== {} | {} | {} | {} ms\n",
        r.device,
        r.command,
        r.status.as_str(),
        r.duration_ms
    );
    if let Some(e) = &r.error {
        s.push_str(&format!("!!! {e}\n"));
    }
    s.push_str(&r.output);
    if !r.output.is_empty() && !r.output.ends_with('\n') {
        s.push('\n');
    }
    s
}

/// The live progress line on stderr (only on a terminal).
struct Progress {
    enabled: bool,
    total: usize,
    done: usize,
    failed: usize,
    running: Vec<(usize, Instant)>,
    shown: bool,
}

impl Progress {
    fn new(total: usize, enabled: bool) -> Self {
        Progress {
            enabled,
            total,
            done: 0,
            failed: 0,
            running: Vec::new(),
            shown: false,
        }
    }

    fn started(&mut self, device: usize) {
        self.running.push((device, Instant::now()));
    }

    fn finished(&mut self, device: usize) {
        self.running.retain(|(d, _)| *d != device);
    }

    fn record(&mut self, _device: usize, record: &Record, _name: &str) {
        self.done += 1;
        if record.status != Status::Ok {
            self.failed += 1;
        }
        self.draw(&record.device);
    }

    fn draw(&mut self, last: &str) {
        if !self.enabled {
            return;
        }
        let slowest = self
            .running
            .iter()
            .max_by_key(|(_, t)| t.elapsed())
            .map(|(_, t)| t.elapsed())
            .unwrap_or(Duration::ZERO);
        eprint!(
            "\r\x1b[K[{}/{}] {} failed, {} running (longest {:.1}s), last: {last}",
            self.done,
            self.total,
            self.failed,
            self.running.len(),
            slowest.as_secs_f64()
        );
        self.shown = true;
    }

    fn clear(&mut self) {
        if self.shown {
            eprint!("\r\x1b[K");
            self.shown = false;
        }
    }
}
