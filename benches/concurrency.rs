//! Sequential vs threads vs processes (issue 4): the classic experiment of network automation
//! texts, run against the real command line.
//!
//! N simulated devices (the Telnet simulator, in this process, so its CPU is not charged to
//! the collector) answer every command after a latency L. `rackhand collect -c CFG --format
//! json` collects them sequentially (`--workers 1`), on W threads and on N threads, and with
//! `isolation = "process"` (a `rackhand driver` child per session). Each run is one child
//! process measured from the outside: wall time, CPU time (user + sys from `wait4`'s rusage,
//! which includes the reaped drivers) and peak RSS (`ru_maxrss`: the largest single process of
//! the tree, not their sum). The ideal beside it is ⌈N/W⌉ × one device's time, where one
//! device's time is a whole `rackhand collect` of a single device (median of 5).
//!
//! Then `rackhand run` (the agent) holds the N devices on N threads for a while and its own
//! peak RSS (VmHWM in /proc/PID/status) is read just before SIGTERM.
//!
//! Run: `cargo bench --bench concurrency` (N, L and W from `BENCH_N`, `BENCH_LATENCY_MS`,
//! `BENCH_W`; defaults 64, 200, 8). Prints markdown; docs/benchmarks.md keeps the last figures.

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::fmt::Write as _;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rackhand::sim::{Profile, TelnetRack};
use support::process::poll_readable;
use support::{TempDir, deadline, loopback_any_port, poll_until, remaining};

const COMMANDS: &[&str] = &["show version", "show clock", "show ip interface brief"];
/// A sequential pass over 64 devices at 200 ms takes about a minute; nothing may take 10.
const RUN_LIMIT: Duration = Duration::from_secs(600);

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Thread,
    Process,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Thread => "thread",
            Mode::Process => "process",
        }
    }
}

/// A config for the first `n` devices of `rack` (`workers`: the agent's pool; `collect`
/// overrides it with `--workers`).
fn write_config(
    dir: &TempDir,
    rack: &TelnetRack,
    n: usize,
    workers: usize,
    mode: Mode,
    interval: &str,
) -> PathBuf {
    let commands: Vec<String> = COMMANDS.iter().map(|c| format!("{c:?}")).collect();
    let mut text = format!(
        "[agent]\nid = \"bench\"\nworkers = {workers}\nstate_dir = \"{}\"\nlog_level = \"warn\"\n\n\
         [defaults]\nplatform = \"cisco_ios\"\nusername = \"admin\"\npassword = \"admin\"\n\
         transport = \"telnet\"\nconnect_timeout = \"10s\"\ncommand_timeout = \"10s\"\n\
         interval = \"{interval}\"\nisolation = \"{}\"\ncommands = [{}]\n\n\
         [upstream]\nsink = \"file\"\npath = \"{}\"\n",
        dir.join("state").display(),
        mode.as_str(),
        commands.join(", "),
        dir.join("outbox").display()
    );
    for (i, (_, addr)) in rack.addrs().iter().take(n).enumerate() {
        write!(
            text,
            "\n[[device]]\nname = \"dev-{i:03}\"\nhost = \"{}\"\nport = {}\n",
            addr.ip(),
            addr.port()
        )
        .unwrap();
    }
    let path = dir.join(&format!("bench-{n}-{}.toml", mode.as_str()));
    std::fs::write(&path, text).unwrap();
    path
}

/// The measured child; killed and reaped on drop unless it was reaped already.
struct Measured {
    child: Child,
    reaped: bool,
}

impl Drop for Measured {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

struct Usage {
    wall: Duration,
    cpu: Duration,
    max_rss_kib: u64,
    code: i32,
}

fn pidfd_open(pid: libc::pid_t) -> OwnedFd {
    // SAFETY: plain syscall with an integer pid and no flags.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor the syscall just returned.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn timeval(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
}

/// Waits (bounded) for the child and takes its rusage as it is reaped.
fn reap(m: &mut Measured, started: Instant, what: &str) -> Usage {
    let pid = m.child.id() as libc::pid_t;
    let pidfd = pidfd_open(pid);
    let until = deadline(RUN_LIMIT);
    loop {
        let mut status = 0;
        // SAFETY: zeroed rusage is a valid out-parameter.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: our own child's pid; valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        assert!(r >= 0, "wait4: {}", std::io::Error::last_os_error());
        if r == pid {
            m.reaped = true;
            let wall = started.elapsed();
            assert!(libc::WIFEXITED(status), "{what} died of a signal");
            return Usage {
                wall,
                cpu: timeval(ru.ru_utime) + timeval(ru.ru_stime),
                max_rss_kib: ru.ru_maxrss as u64,
                code: libc::WEXITSTATUS(status),
            };
        }
        let Some(left) = remaining(until) else {
            panic!("{what} still runs after {RUN_LIMIT:?}");
        };
        poll_readable(&pidfd, left).unwrap();
    }
}

/// `rackhand collect -c CONFIG --format json --workers W`, checked to have collected
/// everything (a benchmark of a broken run would measure nothing).
fn collect(config: &Path, workers: usize, expect_records: usize) -> Usage {
    let what = format!(
        "rackhand collect --workers {workers} -c {}",
        config.display()
    );
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_rackhand"))
        .arg("collect")
        .arg("-c")
        .arg(config)
        .args(["--format", "json", "--workers", &workers.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let mut m = Measured {
        child,
        reaped: false,
    };
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(m.child.stdout.take().unwrap()));
    let stderr = drain(Box::new(m.child.stderr.take().unwrap()));
    let usage = reap(&mut m, started, &what);
    let stdout = stdout.join().unwrap();
    let stderr = stderr.join().unwrap();
    let records = stdout.lines().count();
    let ok = stdout
        .lines()
        .filter(|l| l.contains("\"status\":\"ok\""))
        .count();
    assert!(
        usage.code == 0 && records == expect_records && ok == records,
        "{what}: exit {}, {ok}/{records} ok of {expect_records} expected; stderr:\n{stderr}",
        usage.code
    );
    usage
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn rack(n: usize, latency: Duration) -> TelnetRack {
    let mut profile = Profile::for_platform("cisco_ios").unwrap();
    profile.latency = latency;
    TelnetRack::start(loopback_any_port(), n, profile).expect("start the simulated rack")
}

/// The agent on `n` devices and `workers` threads for `rounds` rounds: its peak RSS just
/// before SIGTERM, records written, sessions the simulator saw.
fn agent_rss(n: usize, workers: usize, latency: Duration, rounds: usize) -> (u64, usize, u64) {
    let dir = TempDir::new("bench-agent").expect("temp dir");
    let rack = rack(n, latency);
    let config = write_config(&dir, &rack, n, workers, Mode::Thread, "2s");
    let mut m = Measured {
        child: Command::new(env!("CARGO_BIN_EXE_rackhand"))
            .arg("run")
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rackhand run"),
        reaped: false,
    };
    let pid = m.child.id();
    // Held until every device was collected `rounds` times on average (the simulator's
    // count is the event), so the figure is of an agent that has been at work for a while.
    let stats = rack.stats();
    let want = (n * rounds) as u64;
    assert!(
        poll_until(deadline(RUN_LIMIT), || stats.total() >= want),
        "the agent collected only {} of {want} sessions within {RUN_LIMIT:?}",
        stats.total()
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("agent status");
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .expect("VmHWM in /proc/PID/status");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM the agent");
    let usage = reap(&mut m, Instant::now(), "rackhand run");
    assert_eq!(usage.code, 0, "rackhand run did not stop cleanly");
    let records = std::fs::read_to_string(dir.join("outbox").join("records.ndjson"))
        .map(|t| t.lines().count())
        .unwrap_or(0);
    (hwm, records, stats.total())
}

fn main() {
    let n = env_or("BENCH_N", 64) as usize;
    let latency = Duration::from_millis(env_or("BENCH_LATENCY_MS", 200));
    let w = env_or("BENCH_W", 8) as usize;
    let tmp = TempDir::new("bench-concurrency").expect("temp dir");
    let per_device = COMMANDS.len();

    // One device's time: a whole collect of a single device.
    let one = rack(1, latency);
    let one_config = write_config(&tmp, &one, 1, 1, Mode::Thread, "15m");
    let mut singles: Vec<Duration> = (0..5)
        .map(|_| collect(&one_config, 1, per_device).wall)
        .collect();
    singles.sort();
    let t1 = singles[singles.len() / 2];
    drop(one);

    let mut out = format!(
        "N = {n} devices, L = {} ms per command, {per_device} commands per device \
         (+ 2 setup commands), Telnet simulator on loopback; one device alone: {} \
         (median of 5 whole `rackhand collect` runs).\n\n\
         | run | workers | wall | ideal ⌈N/W⌉×T1 | wall/ideal | CPU (user+sys) | peak RSS | sessions at once |\n\
         |---|---|---|---|---|---|---|---|\n",
        latency.as_millis(),
        secs(t1)
    );
    let runs = [
        ("sequential (threads)", Mode::Thread, 1),
        ("threads", Mode::Thread, w),
        ("threads", Mode::Thread, n),
        ("processes", Mode::Process, w),
        ("processes", Mode::Process, n),
    ];
    for (label, mode, workers) in runs {
        // A fresh rack per run, so its session maxima belong to this run alone.
        let rack = rack(n, latency);
        let config = write_config(&tmp, &rack, n, workers, mode, "15m");
        let usage = collect(&config, workers, n * per_device);
        let ideal = t1 * n.div_ceil(workers) as u32;
        let row = format!(
            "| {label} | {workers} | {} | {} | {:.2} | {} | {} | {} |\n",
            secs(usage.wall),
            secs(ideal),
            usage.wall.as_secs_f64() / ideal.as_secs_f64(),
            secs(usage.cpu),
            mib(usage.max_rss_kib),
            rack.stats().max_concurrent()
        );
        eprint!("{row}");
        out.push_str(&row);
    }

    // The agent itself, on N threads (every device at once) and on the bounded W.
    for (workers, rounds) in [(n, 4), (w, 2)] {
        let (hwm, records, sessions) = agent_rss(n, workers, latency, rounds);
        let line = format!(
            "\n`rackhand run`, {n} devices on {workers} worker threads, interval 2 s, until \
             {rounds} rounds: peak RSS (VmHWM) {} ({hwm} kB); {sessions} sessions, {records} records.",
            mib(hwm)
        );
        eprintln!("{line}");
        writeln!(out, "{line}").unwrap();
    }
    println!("{out}");
}
