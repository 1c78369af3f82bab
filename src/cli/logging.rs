//! Logging for the command line and the service: `log` records on stderr.
//!
//! Under systemd (stderr connected to the journal) each line starts with a syslog priority
//! prefix (`<3>`, `<4>`, `<6>`, `<7>`) so `journalctl -p warning` filters correctly; on a
//! terminal the level is written out instead. The level comes from `RUST_LOG` (a plain level
//! name), else the config's `log_level`, else `info`.

use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

struct StderrLogger {
    journal: bool,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = if self.journal {
            let priority = match record.level() {
                Level::Error => 3,
                Level::Warn => 4,
                Level::Info => 6,
                Level::Debug | Level::Trace => 7,
            };
            format!("<{priority}>{}\n", record.args())
        } else {
            format!(
                "rackhand: {}: {}\n",
                record.level().as_str().to_lowercase(),
                record.args()
            )
        };
        // One write per line so lines from worker threads do not interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Installs the logger once; later calls only change the level.
pub(crate) fn init(config_level: Option<&str>) {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<LevelFilter>().ok())
        .or_else(|| config_level.and_then(|v| v.parse().ok()))
        .unwrap_or(LevelFilter::Info);
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    static LOGGER: std::sync::OnceLock<StderrLogger> = std::sync::OnceLock::new();
    let logger = LOGGER.get_or_init(|| StderrLogger { journal });
    let _ = log::set_logger(logger);
    log::set_max_level(level);
}
