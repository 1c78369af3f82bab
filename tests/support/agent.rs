//! `rackhand run` as the upstream tests drive it: a config for simulated Telnet devices and
//! an `[upstream]`, the agent as a child process (killed and reaped in `Drop`), its
//! `status.json`, and copies of its spool read back with the library's own `Spool`.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rackhand::spool::{Spool, SpoolOptions};
use serde_json::Value;

use super::accounting::{next_run_first_seq, stopped_run_last_seq};
use super::config::{Config, list};
use super::process::ChildGuard;
use super::{deadline, poll_until, rackhand_bin};

/// How long a stopping agent may take: `--drain` plus the shipper's grace and slack.
pub const STOP_WAIT: Duration = Duration::from_secs(20);

/// One `[[device]]` table (`Dev::telnet(name, addr)` for a device of the simulator's Telnet
/// rack: its profile decides the platform; the tests use Cisco IOS).
pub use super::config::Dev;

/// Everything the config file says.
pub struct Setup {
    pub agent_id: String,
    pub workers: usize,
    pub state_dir: PathBuf,
    pub interval: String,
    pub commands: Vec<String>,
    /// The lines of `[upstream]`; none: no `[upstream]` at all (the default file sink).
    pub upstream: Vec<String>,
    pub devices: Vec<Dev>,
}

impl Setup {
    /// The config file's tables.
    pub fn config(&self) -> Config {
        Config::new()
            .agent("id", &format!("\"{}\"", self.agent_id))
            .agent("workers", &self.workers.to_string())
            .agent("state_dir", &format!("\"{}\"", self.state_dir.display()))
            .defaults("platform", "\"cisco_ios\"")
            .defaults("username", "\"admin\"")
            .defaults("password", "\"admin\"")
            .defaults("interval", &format!("\"{}\"", self.interval))
            .defaults("connect_timeout", "\"5s\"")
            .defaults("command_timeout", "\"5s\"")
            .defaults("commands", &list(&self.commands))
            .upstream_lines(&self.upstream)
            .devices(self.devices.iter().cloned())
    }

    pub fn text(&self) -> String {
        self.config().text()
    }

    /// Writes the config as `dir/rackhand.toml` (temp file and rename); returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        self.config().write(&dir.join("rackhand.toml"))
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.state_dir.join("spool")
    }
}

/// `[upstream]` for the http sink at `url`, plus `extra` lines.
pub fn http_upstream(url: &str, extra: &[&str]) -> Vec<String> {
    let mut lines = vec!["sink = \"http\"".to_string(), format!("url = \"{url}\"")];
    lines.extend(extra.iter().map(|l| l.to_string()));
    lines
}

/// `rackhand run -c CONFIG`; SIGKILLed and reaped in `Drop` unless stopped.
pub struct Agent {
    guard: ChildGuard,
    pub state_dir: PathBuf,
    pub started: Instant,
    /// The first seq this run hands out (see `accounting`).
    pub first_seq: u64,
}

impl Agent {
    pub fn start(config: &Path, state_dir: &Path) -> Agent {
        Agent::start_with_runtime_dir(config, state_dir, None)
    }

    /// [`Agent::start`], with `$RUNTIME_DIRECTORY` (as systemd's `RuntimeDirectory=` sets it)
    /// when `runtime_dir` is given: the live status goes there.
    pub fn start_with_runtime_dir(
        config: &Path,
        state_dir: &Path,
        runtime_dir: Option<&Path>,
    ) -> Agent {
        let first_seq = next_run_first_seq(state_dir);
        let mut cmd = Command::new(rackhand_bin());
        cmd.arg("run")
            .arg("-c")
            .arg(config)
            .args(["--drain", "8s"])
            .env("RUST_LOG", "info")
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("RUNTIME_DIRECTORY")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if let Some(dir) = runtime_dir {
            cmd.env("RUNTIME_DIRECTORY", dir);
        }
        let guard = ChildGuard::spawn(cmd, "rackhand run", None).expect("start rackhand run");
        Agent {
            guard,
            state_dir: state_dir.to_path_buf(),
            started: Instant::now(),
            first_seq,
        }
    }

    /// The seqs this run handed out, records and gap records; only once it has stopped.
    pub fn handed_out(&mut self) -> RangeInclusive<u64> {
        assert!(
            self.check_running().is_err(),
            "the seqs of a run are known once it has stopped"
        );
        self.first_seq..=stopped_run_last_seq(&self.state_dir)
    }

    pub fn pid(&self) -> u32 {
        self.guard.id()
    }

    /// Still running (not exited by itself)? `Err` with its status if it exited.
    pub fn check_running(&mut self) -> Result<(), ExitStatus> {
        match self.guard.child_mut().try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(status),
            Err(e) => panic!("cannot look at the agent: {e}"),
        }
    }

    /// SIGKILL, and a bounded wait until it is reaped.
    pub fn kill9(&mut self) -> ExitStatus {
        self.guard
            .signal(Signal::SIGKILL)
            .expect("SIGKILL the agent");
        self.guard
            .wait_until(deadline(Duration::from_secs(10)))
            .expect("wait for the killed agent")
            .expect("a SIGKILLed agent is gone within 10 s")
    }

    /// SIGTERM and a bounded wait for the exit. A SIGTERM before the agent has installed its
    /// handlers would kill it outright (the default action); once it has saved its first
    /// status, it has, so that is waited for first (bounded; not if it has exited).
    pub fn stop(&mut self) -> ExitStatus {
        poll_until(deadline(STOP_WAIT), || {
            self.status().is_some() || self.check_running().is_err()
        });
        self.guard
            .terminate(deadline(STOP_WAIT))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn stderr(&self) -> String {
        self.guard.stderr_text()
    }

    /// `state_dir/status.json`, if this run has saved one yet (a previous run's, with
    /// another pid, is not this run's).
    pub fn status(&self) -> Option<Value> {
        read_status(&self.state_dir).filter(|s| s["pid"].as_u64() == Some(u64::from(self.pid())))
    }

    /// Waits (bounded by `within`) until `status.json` satisfies `cond`; returns it.
    pub fn wait_status(
        &self,
        what: &str,
        within: Duration,
        cond: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut last = None;
        let ok = poll_until(deadline(within), || {
            last = self.status();
            last.as_ref().is_some_and(&cond)
        });
        assert!(
            ok,
            "status.json never showed {what} within {within:?}; last:\n{}\nagent log:\n{}",
            last.map(|v| serde_json::to_string_pretty(&v).unwrap())
                .unwrap_or_else(|| "(none)".into()),
            self.stderr()
        );
        last.unwrap()
    }

    /// Panics if the agent's log shows a panic.
    pub fn assert_no_panic(&self, what: &str) {
        let log = self.stderr();
        assert!(
            !log.contains("panicked"),
            "{what}: the agent panicked:\n{log}"
        );
    }
}

/// What `rackhand status -c CONFIG [--format json]` printed, and its exit status.
pub struct StatusCli {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

pub fn status_cli(config: &Path, json: bool) -> StatusCli {
    let mut cmd = Command::new(rackhand_bin());
    cmd.arg("status").arg("-c").arg(config);
    if json {
        cmd.args(["--format", "json"]);
    }
    let out = cmd
        .env_remove("RACKHAND_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run rackhand status");
    StatusCli {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `state_dir/status.json` as JSON (the file the agent rewrites atomically every ~2 s and at
/// shutdown; `rackhand status --format json` prints the same).
pub fn read_status(state_dir: &Path) -> Option<Value> {
    let bytes = std::fs::read(state_dir.join("status.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Copies the spool folder's segments as they are at this moment (a file removed meanwhile is
/// skipped: the agent deletes a segment only once upstream acknowledged all its records).
/// Without the checkpoint, the copy lists every record still in the segments, acknowledged
/// or not; with it, only the unacknowledged ones.
pub fn copy_spool(spool: &Path, to: &Path, with_checkpoint: bool) {
    std::fs::create_dir_all(to).unwrap();
    let Ok(entries) = std::fs::read_dir(spool) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if (name == "checkpoint" && !with_checkpoint) || !entry.path().is_file() {
            continue;
        }
        match std::fs::copy(entry.path(), to.join(&name)) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("cannot copy {}: {e}", entry.path().display()),
        }
    }
}

/// Every record in a spool folder (a copy: opening repairs it), as `(seq, payload)`.
pub fn spool_contents(dir: &Path) -> Vec<(u64, Vec<u8>)> {
    let (_writer, mut reader, _report) = Spool::open(dir, SpoolOptions::default())
        .unwrap_or_else(|e| panic!("cannot open the spool copy {}: {e}", dir.display()));
    std::iter::from_fn(|| reader.next_record()).collect()
}

/// A small seeded generator (splitmix64): the same seed replays the same test.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo)
    }
}

/// `2026-11-25T10:00:00.123Z` → milliseconds since the Unix epoch.
pub fn rfc3339_ms(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[10] != b'T' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let ms = if b[19] == b'.' { num(20..23)? } else { 0 };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs * 1000 + ms).ok()
}

#[test]
fn rfc3339_ms_reads_the_records_timestamps() {
    assert_eq!(rfc3339_ms("1970-01-01T00:00:00.000Z"), Some(0));
    assert_eq!(
        rfc3339_ms("2026-11-25T10:00:00.123Z"),
        Some(1_795_600_800_123)
    );
    assert_eq!(rfc3339_ms("2000-03-01T00:00:01Z"), Some(951_868_801_000));
    assert_eq!(rfc3339_ms("yesterday"), None);
}
