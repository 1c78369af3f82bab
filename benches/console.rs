//! Console capture at 115200 baud (issue 14): does the port owner keep up with a console that
//! never stops talking, and what does it cost?
//!
//! A pty stands in for the cable: a writer thread plays a device printing log lines at the
//! pace of 115200 baud 8N1 (11 520 bytes/s) for `BENCH_CONSOLE_SECS` (default 60) seconds,
//! while the real `PortOwner` holds the other end (through a symlink, with its UUCP lock in a
//! temp directory) and cuts what it reads into chunks. Every `BENCH_CONSOLE_JOB_EVERY` seconds
//! (default 10) a job borrows the port for half a second and reads what comes (as a session
//! would), so the figures include the hand-over both ways.
//!
//! Printed (markdown, docs/console.md keeps the last figures): bytes written; bytes in console
//! chunks and bytes the jobs read, and their share of what was written (the target is 100 %:
//! every byte once); chunks and alerts; the owner thread's CPU time (utime + stime of its
//! `/proc/self/task/TID/stat`) and its share of one core.
//!
//! Run: `cargo bench --bench console`.

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::fs;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::termios::{self, SetArg};
use rackhand::console::{Captured, Limits, Outlet, PortOwner, alerts_for};
use rackhand::inventory::Device;
use rackhand::transport::Transport as _;
use support::TempDir;
use support::config::{Config, Dev};

const BAUD: u64 = 115_200;
/// 8N1: ten bits on the wire per byte.
const BYTES_PER_SEC: u64 = BAUD / 10;
const TICK: Duration = Duration::from_millis(10);

fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The captured console, resolved from its config as the agent would.
fn device(port: &Path) -> Device {
    Config::new()
        .defaults("platform", "\"cisco_ios\"")
        .defaults("username", "\"admin\"")
        .defaults("password", "\"admin\"")
        .device(
            Dev::serial("bench", port)
                .set("baud", &BAUD.to_string())
                .commands(&["show clock"])
                .set("capture", "true"),
        )
        .inventory(Path::new("/etc/rackhand/rackhand.toml"))
        .devices
        .remove(0)
}

/// The device's side: log lines at the line's pace until `stop`; returns bytes written.
fn write_paced(master: OwnedFd, stop: Arc<AtomicBool>, written: Arc<AtomicU64>) {
    let mut line_no = 0u64;
    let mut pending: Vec<u8> = Vec::new();
    let start = Instant::now();
    let mut ticks = 0u64;
    while !stop.load(Ordering::SeqCst) {
        ticks += 1;
        let due = BYTES_PER_SEC * ticks * TICK.as_millis() as u64 / 1000;
        let mut want = due.saturating_sub(written.load(Ordering::SeqCst)) as usize;
        while want > 0 {
            if pending.is_empty() {
                line_no += 1;
                pending = format!(
                    "*Mar  1 00:{:02}:{:02}.{:03}: %LINK-3-UPDOWN: Interface GigabitEthernet0/{line_no}, changed state to up\r\n",
                    (line_no / 60) % 60,
                    line_no % 60,
                    line_no % 1000
                )
                .into_bytes();
            }
            let take = want.min(pending.len());
            match nix::unistd::write(&master, &pending[..take]) {
                Ok(n) => {
                    pending.drain(..n);
                    want -= n;
                    written.fetch_add(n as u64, Ordering::SeqCst);
                }
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(e) => panic!("write to the pty: {e}"),
            }
        }
        let next = start + TICK * ticks as u32;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    // Keep the master open until the reader is done (closing it would hang up the port).
    std::mem::forget(master);
}

/// utime + stime of the thread named `name`, in seconds.
fn thread_cpu(name: &str) -> Option<f64> {
    // SAFETY: plain query.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    for entry in fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
        // Fields after the `(comm)`: state is field 3; utime 14, stime 15.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        return Some((utime + stime) / ticks);
    }
    None
}

fn main() {
    let secs = env_secs("BENCH_CONSOLE_SECS", 60);
    let job_every = env_secs("BENCH_CONSOLE_JOB_EVERY", 10);
    let dir = TempDir::new("bench-console").unwrap();
    let locks = dir.join("lock");
    fs::create_dir(&locks).unwrap();
    let link = dir.join("ttyS0");

    let pty = nix::pty::openpty(None, None).unwrap();
    let mut attrs = termios::tcgetattr(&pty.slave).unwrap();
    termios::cfmakeraw(&mut attrs);
    termios::tcsetattr(&pty.slave, SetArg::TCSANOW, &attrs).unwrap();
    let tty = nix::unistd::ttyname(&pty.slave).unwrap();
    std::os::unix::fs::symlink(&tty, &link).unwrap();

    let d = device(&link);
    let (tx, events) = mpsc::sync_channel(1024);
    let outlet = Outlet {
        events: tx,
        wake: Arc::new(|| {}),
    };
    let owner =
        PortOwner::start(&d, alerts_for(&d), Limits::default(), outlet, Some(locks)).unwrap();
    let lock_taken = support::poll_until(support::deadline(Duration::from_secs(10)), || {
        fs::read_dir(dir.join("lock")).is_ok_and(|mut e| e.next().is_some())
    });
    assert!(lock_taken, "the owner did not open the port");
    let cpu_before = thread_cpu("console-bench").unwrap_or(0.0);

    // The agent's side: chunks counted as they come.
    let captured = Arc::new(AtomicU64::new(0));
    let chunks = Arc::new(AtomicU64::new(0));
    let consumer = {
        let (captured, chunks) = (Arc::clone(&captured), Arc::clone(&chunks));
        std::thread::spawn(move || {
            for event in events {
                if let Captured::Text(chunk) = event.what {
                    captured.fetch_add(chunk.bytes.len() as u64, Ordering::SeqCst);
                    chunks.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };

    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written) = (Arc::clone(&stop), Arc::clone(&written));
        let master = pty.master;
        std::thread::spawn(move || write_paced(master, stop, written))
    };

    let started = Instant::now();
    let mut job_bytes = 0u64;
    let mut jobs = 0;
    let lender = owner.lender();
    let end = started + Duration::from_secs(secs);
    let mut next_job = started + Duration::from_secs(job_every);
    while Instant::now() < end {
        std::thread::sleep(next_job.min(end).saturating_duration_since(Instant::now()));
        if Instant::now() >= next_job && Instant::now() < end {
            let mut lease = lender
                .lend(Instant::now() + Duration::from_secs(5))
                .unwrap();
            let until = Instant::now() + Duration::from_millis(500);
            let mut buf = [0u8; 4096];
            while let Ok(n) = lease.recv(&mut buf, until) {
                let _ = n;
            }
            job_bytes += lease.bytes_read();
            jobs += 1;
            next_job += Duration::from_secs(job_every);
        }
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let written = written.load(Ordering::SeqCst);
    // Everything written is read within a quiet gap or two.
    support::poll_until(support::deadline(Duration::from_secs(5)), || {
        captured.load(Ordering::SeqCst) + job_bytes >= written
    });
    let cpu = thread_cpu("console-bench").unwrap_or(f64::NAN) - cpu_before;
    owner.stop();
    consumer.join().unwrap();
    drop(pty.slave);
    let captured = captured.load(Ordering::SeqCst);
    let chunks = chunks.load(Ordering::SeqCst);

    println!("| figure | value |");
    println!("|---|---|");
    println!("| line rate | {BAUD} baud 8N1 = {BYTES_PER_SEC} bytes/s, log lines of ~90 bytes |");
    println!("| run | {elapsed:.1} s, {jobs} jobs of 0.5 s borrowing the port |");
    println!("| bytes written | {written} |");
    println!("| bytes in console chunks | {captured} ({chunks} chunks) |");
    println!("| bytes read by the jobs | {job_bytes} |");
    println!(
        "| captured share | {:.3} % |",
        100.0 * (captured + job_bytes) as f64 / written.max(1) as f64
    );
    println!(
        "| owner thread CPU | {cpu:.2} s = {:.2} % of one core |",
        100.0 * cpu / elapsed
    );
}
