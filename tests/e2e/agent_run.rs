//! `rackhand run` end to end (issue 4's acceptance): the real binary as a long-running agent,
//! real signals (SIGTERM, SIGHUP), a real `NOTIFY_SOCKET`, and simulated devices on loopback
//! (the simulator's Telnet rack, in this test process so its session counters are the
//! witness of what the agent did to the devices).
//!
//! The agent is observed only from the outside, as systemd and an operator see it: the file
//! sink's NDJSON, its log on stderr, its exit status, its notifications and its child
//! processes. Every wait ends at a deadline; every server and agent is stopped in `Drop`.

use crate::support;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rackhand::sim::{Fault, Profile, TelnetRack};
use serde_json::Value;

use support::config::{Config, Dev, list};
use support::process::ChildGuard;
use support::{TempDir, deadline, loopback_any_port, poll_until, rackhand_bin, remaining};

const AGENT_ID: &str = "rack-t";
/// Short enough that a device runs several times a second, so every story here takes seconds.
const INTERVAL: &str = "300ms";
/// Upper bound for any one thing the tests wait for; each normally takes well under a second.
const STEP: Duration = Duration::from_secs(15);
/// How long a stopping agent may take: its drain deadline (`--drain`) plus start-up slack.
const DRAIN: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Configs

/// The address of a one-device rack (a Cisco IOS device of the simulator, over Telnet).
fn addr_of(rack: &TelnetRack) -> SocketAddr {
    rack.addrs()[0].1
}

fn config_text(dir: &TempDir, devices: &[Dev]) -> String {
    Config::new()
        .agent("id", &format!("\"{AGENT_ID}\""))
        .agent("workers", "4")
        .agent("state_dir", &format!("\"{}\"", dir.join("state").display()))
        .defaults("platform", "\"cisco_ios\"")
        .defaults("username", "\"admin\"")
        .defaults("password", "\"admin\"")
        .defaults("interval", &format!("\"{INTERVAL}\""))
        .defaults("connect_timeout", "\"5s\"")
        .defaults("command_timeout", "\"5s\"")
        .defaults("commands", &list(&["show clock"]))
        .upstream("sink", "\"file\"")
        .upstream("path", &format!("\"{}\"", outbox(dir).display()))
        .devices(devices.iter().cloned())
        .text()
}

fn outbox(dir: &TempDir) -> PathBuf {
    dir.join("outbox")
}

/// Writes the config the way an operator's tooling should: a temp file renamed over the old
/// one, so an agent reloading at that moment never reads half a file.
fn write_config(dir: &TempDir, text: &str) -> PathBuf {
    let path = dir.join("rackhand.toml");
    let tmp = dir.join("rackhand.toml.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

fn rack(profile: Profile) -> TelnetRack {
    TelnetRack::start(loopback_any_port(), 1, profile).expect("start a simulated device")
}

fn ios() -> Profile {
    Profile::for_platform("cisco_ios").unwrap()
}

// ---------------------------------------------------------------------------------------
// Records in the file sink

#[derive(Debug, Clone)]
struct Rec {
    id: String,
    agent: String,
    seq: u64,
    device: String,
    command: String,
    status: String,
    error: Option<String>,
    output: String,
    duration_ms: u64,
}

impl Rec {
    fn parse(line: &str) -> Rec {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("the sink holds a line that is not JSON ({e}): {line}"));
        let s = |k: &str| {
            v[k].as_str()
                .unwrap_or_else(|| panic!("record without string `{k}`: {line}"))
                .to_string()
        };
        let n = |k: &str| {
            v[k].as_u64()
                .unwrap_or_else(|| panic!("record without number `{k}`: {line}"))
        };
        Rec {
            id: s("id"),
            agent: s("agent"),
            seq: n("seq"),
            device: s("device"),
            command: v["command"].as_str().unwrap_or_default().to_string(),
            status: s("status"),
            error: v["error"].as_str().map(String::from),
            output: s("output"),
            duration_ms: n("duration_ms"),
        }
    }

    fn brief(&self) -> String {
        format!(
            "{} {} {} {}ms {}",
            self.id,
            self.device,
            self.status,
            self.duration_ms,
            self.error.as_deref().unwrap_or("")
        )
    }
}

/// Every complete record line in the sink's folder, in record order: rotated files
/// (`records-<first seq>.ndjson`) by their first seq, then the current `records.ndjson`. A
/// line still being written (no `\n` yet) is left for the next look.
fn read_records(outbox: &Path) -> Vec<Rec> {
    let Ok(entries) = std::fs::read_dir(outbox) else {
        return Vec::new();
    };
    let mut files: Vec<(u64, PathBuf)> = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".ndjson") else {
            continue;
        };
        let order = match stem.strip_prefix("records-") {
            Some(first) => first.parse().unwrap_or(0),
            None => u64::MAX,
        };
        files.push((order, path));
    }
    files.sort();
    let mut out = Vec::new();
    for (_, path) in files {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let complete = match text.rfind('\n') {
            Some(end) => &text[..=end],
            None => "",
        };
        out.extend(complete.lines().map(Rec::parse));
    }
    out
}

fn of<'a>(records: &'a [Rec], device: &str) -> Vec<&'a Rec> {
    records.iter().filter(|r| r.device == device).collect()
}

fn listing(records: &[Rec]) -> String {
    let lines: Vec<String> = records.iter().map(Rec::brief).collect();
    lines.join("\n")
}

/// The contract's ids: `<agent>:<seq>`, the agent's own id, seq strictly increasing.
fn assert_ids(records: &[Rec]) {
    let mut last = 0u64;
    for r in records {
        assert_eq!(r.agent, AGENT_ID, "{}", r.brief());
        assert_eq!(r.id, format!("{AGENT_ID}:{}", r.seq), "{}", r.brief());
        assert!(
            r.seq > last,
            "seq not strictly increasing: {} after {last}\n{}",
            r.seq,
            listing(records)
        );
        last = r.seq;
    }
}

// ---------------------------------------------------------------------------------------
// The agent as a process

/// `rackhand run -c CONFIG`, stopped (SIGKILL, reaped) in `Drop` if the test did not stop it.
struct Agent {
    guard: ChildGuard,
    stderr: Receiver<String>,
    /// Every stderr line read so far (for messages and log assertions).
    log: Vec<String>,
    outbox: PathBuf,
}

impl Agent {
    fn start(config: &Path, outbox: PathBuf, env: &[(&str, &str)]) -> Agent {
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
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let (tx, rx) = mpsc::channel();
        let guard = ChildGuard::spawn(cmd, "rackhand run", Some(tx)).expect("start rackhand run");
        Agent {
            guard,
            stderr: rx,
            log: Vec::new(),
            outbox,
        }
    }

    fn pid(&self) -> u32 {
        self.guard.id()
    }

    fn records(&self) -> Vec<Rec> {
        read_records(&self.outbox)
    }

    /// Waits (bounded) for a stderr line that satisfies `want`; returns it.
    fn wait_log(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let until = deadline(STEP);
        loop {
            let left = remaining(until).unwrap_or_default();
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    let hit = want(&line);
                    self.log.push(line.clone());
                    if hit {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no log line {what} within {STEP:?}; log:\n{}",
                        self.log_text()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "the agent closed stderr before logging {what}; log:\n{}",
                    self.log_text()
                ),
            }
        }
    }

    /// Reads what stderr holds now, without waiting.
    fn drain_log(&mut self) {
        while let Ok(line) = self.stderr.try_recv() {
            self.log.push(line);
        }
    }

    fn log_text(&mut self) -> String {
        self.drain_log();
        self.log.join("\n")
    }

    /// Waits (bounded) until the records in the sink satisfy `cond`; returns them.
    fn wait_records(&mut self, what: &str, cond: impl Fn(&[Rec]) -> bool) -> Vec<Rec> {
        let mut last = Vec::new();
        let ok = poll_until(deadline(STEP), || {
            last = self.records();
            cond(&last)
        });
        if !ok {
            panic!(
                "the sink never showed {what} within {STEP:?}; records:\n{}\nlog:\n{}",
                listing(&last),
                self.log_text()
            );
        }
        last
    }

    fn signal(&mut self, signal: Signal) {
        self.guard.signal(signal).expect("signal the agent");
    }

    /// SIGTERM and a bounded wait for the exit; the agent must stop cleanly.
    fn stop(&mut self) -> ExitStatus {
        let status = self
            .guard
            .terminate(deadline(DRAIN + Duration::from_secs(5)))
            .unwrap_or_else(|e| panic!("{e}"));
        self.drain_log();
        status
    }
}

/// Waits (bounded) until `cond` holds for a simulated device's counters.
fn wait_sim(what: &str, cond: impl FnMut() -> bool) {
    assert!(
        poll_until(deadline(STEP), cond),
        "the simulator never saw {what} within {STEP:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Records, ids, SIGTERM

#[test]
fn records_reach_the_file_sink_and_sigterm_drains_a_slow_device_then_exits_0() {
    let fast = rack(ios());
    let mut slow_profile = ios();
    // Latency before every answer, the two setup commands included: a session takes ≥ 2.1 s,
    // so at a 300 ms interval it is in flight most of the time.
    slow_profile.latency = Duration::from_millis(700);
    let slow = rack(slow_profile);
    let dir = TempDir::new("run-basic").unwrap();
    let config = write_config(
        &dir,
        &config_text(
            &dir,
            &[
                Dev::telnet("fast", addr_of(&fast))
                    .with("commands = [\"show version\", \"show clock\"]"),
                Dev::telnet("slow", addr_of(&slow)),
            ],
        ),
    );
    let mut agent = Agent::start(&config, outbox(&dir), &[]);

    agent.wait_records("3 runs of `fast` and one of `slow`", |r| {
        of(r, "fast").len() >= 6 && !of(r, "slow").is_empty()
    });
    let slow_stats = slow.stats();
    wait_sim("a session of `slow` in flight", || {
        slow_stats.current() == 1
    });
    let sessions_at_sigterm = slow_stats.total();
    let term_sent = Instant::now();
    let status = agent.stop();
    let took = term_sent.elapsed();

    let log = agent.log_text();
    assert!(status.success(), "exit {status:?}; log:\n{log}");
    let in_flight: usize = log
        .split("stopping: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `stopping: N sessions in flight` in the log:\n{log}"));
    assert!(in_flight >= 1, "`slow` was in flight at SIGTERM:\n{log}");
    let records = agent.records();
    assert_ids(&records);
    // Every session the device saw, the one in flight at SIGTERM included, left its record.
    let slow_sessions = slow_stats.total();
    assert!(slow_sessions >= sessions_at_sigterm);
    let slow_records = of(&records, "slow");
    assert_eq!(
        slow_records.len() as u64,
        slow_sessions,
        "one record per session of `slow` (in flight at SIGTERM: session {sessions_at_sigterm}); records:\n{}\nlog:\n{log}",
        listing(&records)
    );
    assert!(
        slow_records.iter().all(|r| r.status == "ok"),
        "the drained session finished normally:\n{}",
        listing(&records)
    );
    // The in-flight session needed up to 2.1 s more: the agent waited for it, not longer.
    assert!(took < Duration::from_secs(5), "stopping took {took:?}");
    let fast_records = of(&records, "fast");
    assert!(fast_records.iter().all(|r| r.status == "ok"));
    assert!(
        fast_records
            .iter()
            .any(|r| r.output.contains("Cisco IOS Software"))
    );
    assert!(fast.stats().max_concurrent_per_device() <= 1);
    // The agent hangs up without waiting for the device's answer to `exit`: the simulator
    // notices a moment later.
    wait_sim("the last session of `slow` ended", || {
        slow_stats.current() == 0
    });

    // A restart continues the sequence: ids are never reused.
    let last_seq = records.last().unwrap().seq;
    let before = records.len();
    let mut agent = Agent::start(&config, outbox(&dir), &[]);
    agent.wait_records("a record after the restart", |r| r.len() > before);
    let status = agent.stop();
    assert!(status.success(), "exit {status:?}");
    let records = agent.records();
    assert_ids(&records);
    assert!(records[before].seq > last_seq);
}

// ---------------------------------------------------------------------------------------
// SIGHUP

#[test]
fn sighup_adds_and_removes_devices() {
    let (a, b, c) = (rack(ios()), rack(ios()), rack(ios()));
    let dir = TempDir::new("run-hup").unwrap();
    let config = write_config(
        &dir,
        &config_text(
            &dir,
            &[Dev::telnet("a", addr_of(&a)), Dev::telnet("b", addr_of(&b))],
        ),
    );
    let mut agent = Agent::start(&config, outbox(&dir), &[]);
    agent.wait_records("records of `a` and `b`", |r| {
        !of(r, "a").is_empty() && !of(r, "b").is_empty()
    });
    assert_eq!(c.stats().total(), 0, "`c` is not configured yet");

    write_config(
        &dir,
        &config_text(
            &dir,
            &[Dev::telnet("a", addr_of(&a)), Dev::telnet("c", addr_of(&c))],
        ),
    );
    agent.signal(Signal::SIGHUP);
    agent.wait_log("`config reloaded: 1 added, 1 removed`", |l| {
        l.contains("config reloaded: 1 added, 1 removed, 0 changed")
    });

    // `b`'s session in flight at the reload (if any) finishes; after that it sees none.
    let records = agent.wait_records("two runs of `c`", |r| of(r, "c").len() >= 2);
    let b_sessions = b.stats().total();
    let (a_total, c_total) = (a.stats().total(), c.stats().total());
    let (a_stats, c_stats) = (a.stats(), c.stats());
    wait_sim("3 more sessions of `a` and of `c`", || {
        a_stats.total() >= a_total + 3 && c_stats.total() >= c_total + 3
    });
    assert_eq!(
        b.stats().total(),
        b_sessions,
        "the removed device was still collected"
    );
    let second_c = of(&records, "c")[1].seq;
    let status = agent.stop();
    assert!(status.success(), "exit {status:?}");

    let records = agent.records();
    assert_ids(&records);
    let b_records = of(&records, "b");
    assert_eq!(b_records.len() as u64, b.stats().total());
    assert!(
        b_records.iter().all(|r| r.seq < second_c),
        "records of the removed `b` after the reload:\n{}",
        listing(&records)
    );
    let c_records = of(&records, "c");
    assert!(c_records.len() >= 5, "{}", listing(&records));
    assert!(c_records.iter().all(|r| r.status == "ok"));
    assert_eq!(c_records.len() as u64, c.stats().total());
}

#[test]
fn an_invalid_config_on_sighup_is_refused_with_its_errors_and_the_old_one_keeps_running() {
    let (a, newcomer) = (rack(ios()), rack(ios()));
    let dir = TempDir::new("run-hup-bad").unwrap();
    let good = config_text(&dir, &[Dev::telnet("a", addr_of(&a))]);
    let config = write_config(&dir, &good);
    let mut agent = Agent::start(&config, outbox(&dir), &[]);
    agent.wait_records("a record of `a`", |r| !of(r, "a").is_empty());

    // Two errors, and a valid new device that must not start from the refused file.
    let bad = config_text(
        &dir,
        &[
            Dev::telnet("a", addr_of(&a)).with("transport = \"carrier-pigeon\""),
            Dev::telnet("newcomer", addr_of(&newcomer)).with("colour = \"blue\""),
        ],
    )
    // A key given twice is a TOML error itself; keep the file parseable as TOML.
    .replacen("transport = \"telnet\"\n", "", 1);
    write_config(&dir, &bad);
    agent.signal(Signal::SIGHUP);
    agent.wait_log("`reload refused`", |l| l.contains("reload refused"));
    let a_stats = a.stats();
    let after_refusal = a_stats.total();
    wait_sim("3 more sessions of `a` on the old config", || {
        a_stats.total() >= after_refusal + 3
    });
    let log = agent.log_text();
    let path = config.display().to_string();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&format!("{path}:")))
        .collect();
    assert!(
        errors.iter().any(|l| l.contains("carrier-pigeon")),
        "the bad transport is reported as FILE:LINE:COL:\n{log}"
    );
    assert!(
        errors.iter().any(|l| l.contains("colour")),
        "the unknown key is reported as FILE:LINE:COL:\n{log}"
    );
    assert!(
        log.contains("keeping the running config"),
        "says what happens:\n{log}"
    );
    assert_eq!(
        newcomer.stats().total(),
        0,
        "a device of the refused config ran"
    );

    // The good file again: the next reload takes it, the agent never stopped.
    write_config(&dir, &good);
    agent.signal(Signal::SIGHUP);
    agent.wait_log("`config reloaded`", |l| l.contains("config reloaded"));
    let status = agent.stop();
    assert!(status.success(), "exit {status:?}");
    let records = agent.records();
    assert_ids(&records);
    assert!(of(&records, "a").iter().all(|r| r.status == "ok"));
    assert!(of(&records, "newcomer").is_empty());
}

// ---------------------------------------------------------------------------------------
// A config without devices (what a package installs and starts)

#[test]
fn a_config_without_devices_checks_clean_runs_idle_and_collects_what_a_reload_adds() {
    let dir = TempDir::new("run-empty").unwrap();
    let state = dir.join("state");
    // A starter config as a package ships it: the devices are examples in comments, and no
    // [upstream], so records go to the outbox in state_dir.
    let starter = format!(
        "[agent]\nid = \"{AGENT_ID}\"\nworkers = 4\nstate_dir = \"{}\"\n\n\
         [defaults]\nplatform = \"cisco_ios\"\nusername = \"admin\"\npassword_env = \"RACKHAND_TEST_EMPTY_PW\"\n\
         interval = \"{INTERVAL}\"\ncommands = [\"show clock\"]\n\n\
         # [[device]]\n# name = \"core1\"\n# host = \"10.0.0.1\"\n",
        state.display()
    );
    let config = write_config(&dir, &starter);

    let check = Command::new(rackhand_bin())
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .expect("run rackhand check");
    let stdout = String::from_utf8_lossy(&check.stdout);
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("no devices yet"), "{stdout}");
    let outbox = state.join("outbox");
    assert!(
        stdout.contains(&format!("upstream file {}", outbox.display())),
        "{stdout}"
    );

    let socket_path = dir.join("notify.sock");
    let notify = NotifySocket::bind(&socket_path);
    let mut agent = Agent::start(
        &config,
        outbox.clone(),
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("RACKHAND_TEST_EMPTY_PW", "admin"),
        ],
    );
    let mut seen = Vec::new();
    let (ready, _) = notify.expect("READY=1", &mut seen);
    assert!(ready.contains("STATUS=idle: no devices"), "{ready:?}");
    agent.wait_log("that it runs idle", |l| l.contains("no devices"));
    let status_file = state.join("status.json");
    assert!(
        poll_until(deadline(STEP), || status_file.exists()),
        "no status.json in {}",
        state.display()
    );
    let status = Command::new(rackhand_bin())
        .args(["status", "-c"])
        .arg(&config)
        .output()
        .expect("run rackhand status");
    assert!(
        status.status.success(),
        "rackhand status says the idle agent is not running: {}",
        String::from_utf8_lossy(&status.stdout)
    );
    assert!(agent.records().is_empty(), "{}", listing(&agent.records()));

    // The operator adds a device and reloads: the agent collects it.
    let device = rack(ios());
    let mut text = starter.clone();
    let addr = device.addrs()[0].1;
    write!(
        text,
        "\n[[device]]\nname = \"core1\"\ntransport = \"telnet\"\nhost = \"{}\"\nport = {}\n",
        addr.ip(),
        addr.port()
    )
    .unwrap();
    write_config(&dir, &text);
    agent.signal(Signal::SIGHUP);
    agent.wait_log("`config reloaded: 1 added`", |l| {
        l.contains("config reloaded: 1 added")
    });
    let (ready, _) = notify.expect("READY=1", &mut seen);
    assert!(ready.contains("STATUS=collecting 1 devices"), "{ready:?}");
    let records = agent.wait_records("two records of `core1`", |r| of(r, "core1").len() >= 2);
    assert!(
        records.iter().all(|r| r.status == "ok"),
        "{}",
        listing(&records)
    );
    let status = agent.stop();
    assert!(status.success(), "exit {status:?}");
    assert_ids(&agent.records());
}

// ---------------------------------------------------------------------------------------
// sd_notify

/// A datagram socket standing in for systemd's notification socket.
struct NotifySocket {
    socket: UnixDatagram,
}

impl NotifySocket {
    fn bind(path: &Path) -> NotifySocket {
        let socket = UnixDatagram::bind(path).expect("bind the notify socket");
        NotifySocket { socket }
    }

    /// The next datagram, or `None` if none came before `until`.
    fn next(&self, until: Instant) -> Option<(String, Instant)> {
        let left = remaining(until)?;
        self.socket.set_read_timeout(Some(left)).unwrap();
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => Some((
                String::from_utf8_lossy(&buf[..n]).into_owned(),
                Instant::now(),
            )),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("notify socket: {e}"),
        }
    }

    /// Skips messages until one starting with `prefix` (bounded); returns it.
    fn expect(&self, prefix: &str, seen: &mut Vec<String>) -> (String, Instant) {
        let until = deadline(STEP);
        loop {
            match self.next(until) {
                Some((m, at)) => {
                    seen.push(m.clone());
                    if m.starts_with(prefix) {
                        return (m, at);
                    }
                }
                None => panic!("no {prefix} within {STEP:?}; received: {seen:?}"),
            }
        }
    }
}

#[test]
fn sd_notify_ready_watchdog_reloading_and_stopping_reach_the_socket() {
    // Three devices every 300 ms: events keep waking the loop between pings, which is when
    // a ping scheduled a whole period after the last wake would come late.
    let (a, b, c) = (rack(ios()), rack(ios()), rack(ios()));
    let dir = TempDir::new("run-notify").unwrap();
    let devices = [
        Dev::telnet("a", addr_of(&a)),
        Dev::telnet("b", addr_of(&b)),
        Dev::telnet("c", addr_of(&c)),
    ];
    let config = write_config(&dir, &config_text(&dir, &devices));
    let socket_path = dir.join("notify.sock");
    let notify = NotifySocket::bind(&socket_path);
    const WATCHDOG_USEC: u64 = 400_000;
    let mut agent = Agent::start(
        &config,
        outbox(&dir),
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", &WATCHDOG_USEC.to_string()),
        ],
    );
    let mut seen = Vec::new();
    let (ready, _) = notify.expect("READY=1", &mut seen);
    assert_eq!(
        seen,
        vec![ready.clone()],
        "READY=1 is the first message: {seen:?}"
    );
    assert!(ready.contains("STATUS=collecting 3 devices"), "{ready:?}");

    // Repeated pings at half systemd's interval, as sd_watchdog_enabled(3) advises, so a
    // busy moment never brings the agent near the limit: each gap well under 3/4 of it.
    let (_, mut last) = notify.expect("WATCHDOG=1", &mut seen);
    let mut gaps = Vec::new();
    for _ in 0..10 {
        let (_, at) = notify.expect("WATCHDOG=1", &mut seen);
        gaps.push(at - last);
        last = at;
    }
    let limit = Duration::from_micros(WATCHDOG_USEC * 3 / 4);
    assert!(
        gaps.iter().all(|g| *g < limit),
        "gaps between pings {gaps:?}: one reached {limit:?} (systemd kills at {WATCHDOG_USEC} µs)"
    );
    // The agent was working meanwhile, not only pinging.
    agent.wait_records("a record of `a`", |r| !r.is_empty());

    agent.signal(Signal::SIGHUP);
    notify.expect("RELOADING=1", &mut seen);
    notify.expect("READY=1", &mut seen);

    agent.signal(Signal::SIGTERM);
    notify.expect("STOPPING=1", &mut seen);
    let status = agent.stop();
    assert!(status.success(), "exit {status:?}");
}

// ---------------------------------------------------------------------------------------
// Process isolation inside `run`

/// `(pid, argv)` of every live child of `parent`, found through /proc.
fn children_of(parent: u32) -> Vec<(u32, Vec<String>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let after = stat.rsplit_once(')').map(|(_, s)| s).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) != Some(parent) {
            continue;
        }
        let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let argv = argv
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        out.push((pid, argv));
    }
    out
}

/// Gone, or at least no longer the agent's (a zombie of the agent would still name it).
fn reaped_by(pid: u32, agent: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            let after = stat.rsplit_once(')').map(|(_, s)| s).unwrap_or("");
            after.split_whitespace().nth(1) != Some(&agent.to_string())
        }
    }
}

/// "… the driver was killed after 4.0 s" → 4.0
fn killed_after(error: &str) -> f64 {
    let rest = error
        .split("killed after ")
        .nth(1)
        .unwrap_or_else(|| panic!("no `killed after` in {error:?}"));
    rest.split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no seconds after `killed after` in {error:?}"))
}

#[test]
fn process_isolation_in_run_collects_and_a_hung_driver_is_killed_at_its_deadline() {
    let iso_ok = rack(ios());
    let thr_ok = rack(ios());
    let hanging = rack(ios().with_fault("show clock", Fault::Hang));
    let dir = TempDir::new("run-iso").unwrap();
    // A driver stuck for good (a library blocked in a read, say): it takes the request and
    // never answers. Only the agent's deadline ends it.
    let stuck = dir.join("stuck-driver.sh");
    let pidfile = dir.join("stuck-driver.pid");
    std::fs::write(
        &stuck,
        format!(
            "#!/bin/sh\necho $$ > '{}'\nread -r request\nexec sleep 60\n",
            pidfile.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&stuck, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = write_config(
        &dir,
        &config_text(
            &dir,
            &[
                Dev::telnet("iso-ok", addr_of(&iso_ok))
                    .with("isolation = \"process\"")
                    .with("commands = [\"show version\", \"show clock\"]"),
                Dev::telnet("thr-ok", addr_of(&thr_ok)),
                Dev::telnet("iso-hang", addr_of(&hanging))
                    .with("isolation = \"process\"")
                    .with("command_timeout = \"1s\""),
                Dev::telnet("stuck", addr_of(&iso_ok))
                    .with("connect_timeout = \"1s\"")
                    .with("command_timeout = \"1s\"")
                    .with(&format!("driver_exec = \"{}\"", stuck.display())),
            ],
        ),
    );
    let mut agent = Agent::start(&config, outbox(&dir), &[]);
    let agent_pid = agent.pid();

    // While `iso-hang` waits on its device, its session runs in a `rackhand driver` child.
    let hang_stats = hanging.stats();
    wait_sim("a session of `iso-hang`", || hang_stats.current() == 1);
    let mut drivers = Vec::new();
    let seen = poll_until(deadline(Duration::from_secs(1)), || {
        drivers = children_of(agent_pid);
        drivers
            .iter()
            .any(|(_, argv)| argv.get(1).map(String::as_str) == Some("driver"))
    });
    assert!(
        seen,
        "no `rackhand driver` child of the agent while a process-isolated session hangs; children: {drivers:?}"
    );

    let records = agent.wait_records("the stuck driver's record", |r| {
        !of(r, "stuck").is_empty() && !of(r, "iso-hang").is_empty()
    });
    let stuck_rec = of(&records, "stuck")[0].clone();
    assert_eq!(stuck_rec.status, "timeout", "{}", stuck_rec.brief());
    let error = stuck_rec.error.clone().unwrap_or_default();
    // Its deadline: connect_timeout + command_timeout + the isolator's 2 s grace.
    let budget = 1.0 + 1.0 + 2.0;
    let after = killed_after(&error);
    assert!(after >= budget, "killed early: {error}");
    assert!(after <= budget * 1.1 + 0.3, "killed late: {error}");
    let stuck_pid: u32 = std::fs::read_to_string(&pidfile)
        .expect("the stuck driver ran")
        .trim()
        .parse()
        .unwrap();
    assert!(
        poll_until(deadline(Duration::from_secs(2)), || reaped_by(
            stuck_pid, agent_pid
        )),
        "the killed driver (pid {stuck_pid}) was not reaped by the agent"
    );

    // The hanging device timed out inside its driver at its command deadline.
    let hang_rec = of(&records, "iso-hang")[0].clone();
    assert_eq!(hang_rec.status, "timeout", "{}", hang_rec.brief());
    assert!(
        (1000..=3300).contains(&hang_rec.duration_ms),
        "{}",
        hang_rec.brief()
    );

    // The others went on meanwhile: several rounds before the stuck driver's record.
    for name in ["iso-ok", "thr-ok"] {
        let before: Vec<&Rec> = of(&records, name)
            .into_iter()
            .filter(|r| r.seq < stuck_rec.seq)
            .collect();
        assert!(
            before.len() >= 6,
            "`{name}` was held up by the stuck driver:\n{}",
            listing(&records)
        );
        assert!(
            before.iter().all(|r| r.status == "ok"),
            "{}",
            listing(&records)
        );
    }
    assert!(
        of(&records, "iso-ok")
            .iter()
            .any(|r| r.output.contains("Cisco IOS Software")),
        "an isolated device's output came through the driver:\n{}",
        listing(&records)
    );
    let status = agent.stop();
    assert!(status.success(), "exit {status:?}");
}

/// A `driver_exec` shell script in `dir` that notes each start in `<name>.runs`, reads the
/// request and runs `body`; returns the script and the runs file.
fn counting_driver(dir: &TempDir, name: &str, body: &str) -> (PathBuf, PathBuf) {
    let path = dir.join(&format!("{name}.sh"));
    let runs = dir.join(&format!("{name}.runs"));
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho $$ >> '{}'\nread -r request\n{body}\n",
            runs.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    (path, runs)
}

/// An `ok` outcome line for `command`, as a driver prints it.
fn ok_outcome(command: &str) -> String {
    format!(
        r#"printf '%s\n' '{{"type":"outcome","command":"{command}","status":"ok","output":"fine\n"}}'"#
    )
}

#[test]
fn chatty_drivers_in_run_are_killed_at_their_deadline_and_every_command_has_one_record() {
    let dir = TempDir::new("run-chatty").unwrap();
    let asked = ["one", "two", "three"];
    // Answers `one` after some chatter, then keeps printing blank lines, log lines and
    // progress messages without ever answering `two`: killed at its deadline.
    let chatter = "echo; echo 'INFO working'; echo '{\"type\":\"progress\"}'";
    let (chatty, chatty_runs) = counting_driver(
        &dir,
        "chatty",
        &format!(
            "{chatter}\n{}\nwhile :; do {chatter}; sleep 0.05; done",
            ok_outcome("one")
        ),
    );
    // Answers `one`, then floods blank lines: stopped at its chatter budget.
    let (flood, flood_runs) = counting_driver(
        &dir,
        "flood",
        &format!("{}\nexec yes ''", ok_outcome("one")),
    );
    let device = |name: &str, exec: &Path| Dev {
        name: name.to_string(),
        lines: vec![
            "transport = \"telnet\"".into(),
            "host = \"127.0.0.1\"".into(),
            "connect_timeout = \"1s\"".into(),
            "command_timeout = \"1s\"".into(),
            "commands = [\"one\", \"two\", \"three\"]".into(),
            format!("driver_exec = \"{}\"", exec.display()),
        ],
    };
    let config = write_config(
        &dir,
        &config_text(&dir, &[device("chatty", &chatty), device("flood", &flood)]),
    );
    let mut agent = Agent::start(&config, outbox(&dir), &[]);
    // A crashed driver puts `flood` in backoff (30 s): one run of it; `chatty` runs again
    // at once (its session opened), so a run of it is usually in flight at SIGTERM.
    agent.wait_records("two runs of `chatty`, one of `flood`", |r| {
        of(r, "chatty").len() >= 6 && of(r, "flood").len() >= 3
    });
    let status = agent.stop();
    let log = agent.log_text();
    assert!(status.success(), "exit {status:?}; log:\n{log}");

    // Every driver that started (the one in flight at SIGTERM included) left exactly one
    // record per command, in order, with the status its behaviour earns; nothing else.
    let records = agent.records();
    assert_ids(&records);
    let runs = |file: &Path| std::fs::read_to_string(file).unwrap().lines().count();
    let (chatty_n, flood_n) = (runs(&chatty_runs), runs(&flood_runs));
    assert_eq!(
        records.len(),
        3 * (chatty_n + flood_n),
        "{chatty_n} runs of `chatty`, {flood_n} of `flood`; records:\n{}",
        listing(&records)
    );
    for (name, n, status, words) in [
        (
            "chatty",
            chatty_n,
            "timeout",
            "only an outcome restarts the deadline",
        ),
        (
            "flood",
            flood_n,
            "driver_crashed",
            "neither an outcome nor `done`",
        ),
    ] {
        let mine = of(&records, name);
        assert_eq!(mine.len(), 3 * n, "`{name}`:\n{}", listing(&records));
        for run in mine.chunks(3) {
            let commands: Vec<&str> = run.iter().map(|r| r.command.as_str()).collect();
            assert_eq!(commands, asked, "`{name}`:\n{}", listing(&records));
            assert_eq!(run[0].status, "ok", "{}", run[0].brief());
            assert_eq!(run[0].output, "fine\n", "{}", run[0].brief());
            for r in &run[1..] {
                assert_eq!(r.status, status, "{}", r.brief());
                let error = r.error.as_deref().unwrap_or_default();
                assert!(error.contains(words), "{}", r.brief());
            }
            if name == "chatty" {
                // After an `ok`: command_timeout + the isolator's 2 s grace.
                let after = killed_after(run[1].error.as_deref().unwrap());
                assert!((3.0..6.0).contains(&after), "{}", run[1].brief());
            }
        }
    }
}
