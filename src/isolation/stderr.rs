//! The driver process's stderr, forwarded to the agent's log under the device's name.
//!
//! On a thread of its own: a driver blocked on a full stderr pipe would look hung to the
//! watch loop. Lines are capped in length and in number, so a driver that floods stderr
//! costs the agent a bounded amount of log.

use std::io::{self, BufRead, BufReader, Read};
use std::process::ChildStderr;
use std::sync::mpsc;

/// Stderr lines longer than this are split; more lines than the count are dropped (counted).
const STDERR_LINE: u64 = 4096;
const STDERR_LINES: usize = 2000;

/// Logs the driver's stderr line by line under the device's name, on a thread of its own (a
/// driver blocked on a full stderr pipe would look hung). The receiver disconnects when done.
pub(super) fn forward_stderr(device: &str, stderr: ChildStderr) -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel::<()>();
    let name = device.to_string();
    let spawned = std::thread::Builder::new()
        // A NUL in a thread name panics; device names come from user text.
        .name(format!("driver-log-{}", name.replace('\0', "")))
        .spawn(move || {
            let _done = tx;
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            // Ends at EOF, which comes at the latest when the agent kills the driver's group.
            for count in 0.. {
                line.clear();
                match (&mut reader).take(STDERR_LINE).read_until(b'\n', &mut line) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
                if count == STDERR_LINES {
                    log::warn!("{name}: the driver wrote more than {STDERR_LINES} lines on stderr; the rest is dropped");
                }
                if count >= STDERR_LINES {
                    continue;
                }
                let text = String::from_utf8_lossy(&line);
                let (level, text) = level_of(text.trim_end());
                log::log!(level, "{name}: driver: {text}");
            }
        });
    if let Err(e) = spawned {
        log::warn!("{device}: cannot start the driver's log thread: {e}; its stderr is lost");
    }
    rx
}

/// Our own driver logs as `rackhand: warn: ...` (or with a syslog `<4>` prefix); keep its level.
/// Anything else a driver says on stderr is a warning: that is what stderr is for.
fn level_of(line: &str) -> (log::Level, &str) {
    const NAMED: &[(&str, log::Level)] = &[
        ("rackhand: error: ", log::Level::Error),
        ("rackhand: warn: ", log::Level::Warn),
        ("rackhand: info: ", log::Level::Info),
        ("rackhand: debug: ", log::Level::Debug),
        ("rackhand: trace: ", log::Level::Trace),
        ("<3>", log::Level::Error),
        ("<4>", log::Level::Warn),
        ("<6>", log::Level::Info),
        ("<7>", log::Level::Debug),
    ];
    NAMED
        .iter()
        .find_map(|(prefix, level)| line.strip_prefix(prefix).map(|rest| (*level, rest)))
        .unwrap_or((log::Level::Warn, line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_levels_follow_our_own_log_format() {
        assert_eq!(
            level_of("rackhand: info: logged in"),
            (log::Level::Info, "logged in")
        );
        assert_eq!(level_of("<3>boom"), (log::Level::Error, "boom"));
        assert_eq!(
            level_of("Traceback (most recent call last):"),
            (log::Level::Warn, "Traceback (most recent call last):")
        );
    }
}
