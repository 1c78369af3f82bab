//! Console capture's port owner and its lease on real pseudo-terminals: the test plays the
//! device on the pty master, the owner holds the slave through a symlink (as it would a
//! `/dev/serial/by-id/...` link), with its UUCP lock in a temp directory.
//!
//! The story: what the device prints while idle comes out as chunks, an alert line marks
//! its chunk; a job borrows the open port (no second open, the lock stays), reads and
//! writes through the lease and sets a log line aside; after the job, capture goes on at an
//! offset past the job's bytes, and what the job sent (a password) is in no chunk. Unplugged
//! (pty closed, link gone), jobs get `connect_failed` naming the port; plugged back, a gap
//! event says when it was away, and capture goes on.

use crate::support;

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use nix::sys::termios::{self, SetArg};
use rackhand::console::{
    Alerts, Captured, ConsoleChunk, ConsoleEvent, Consoles, Limits, Outlet, PortOwner, Registry,
    alerts_for,
};
use rackhand::inventory::Device;
use rackhand::transport::serial::lock_file_name;
use rackhand::transport::{Transport as _, TransportError};

use support::config::{Config, Dev, quote};
use support::{TempDir, deadline, poll_until};

const STEP: Duration = Duration::from_secs(10);

/// The captured console the tests watch, resolved from its config as the agent would.
fn device(port: &Path) -> Device {
    Config::new()
        .defaults("platform", "\"cisco_ios\"")
        .defaults("username", "\"admin\"")
        .device(
            Dev::serial("con1", port)
                .set("baud", "115200")
                .set("password", &quote("s3cret-pw"))
                .set("connect_timeout", "\"2s\"")
                .set("command_timeout", "\"10s\"")
                .commands(&["show clock"])
                .set("capture", "true")
                .set("alert", "[\"^BOOM\"]"),
        )
        .inventory(Path::new("/etc/rackhand/rackhand.toml"))
        .devices
        .remove(0)
}

/// A pty standing in for the cable: the test writes and reads the master.
struct Cable {
    master: Option<OwnedFd>,
    /// Held so the master sees no hangup while the owner closes and reopens.
    slave: Option<OwnedFd>,
    tty: PathBuf,
    link: PathBuf,
}

impl Cable {
    fn plug(link: &Path) -> Cable {
        let pty = nix::pty::openpty(None, None).unwrap();
        let mut attrs = termios::tcgetattr(&pty.slave).unwrap();
        termios::cfmakeraw(&mut attrs);
        termios::tcsetattr(&pty.slave, SetArg::TCSANOW, &attrs).unwrap();
        let tty = nix::unistd::ttyname(&pty.slave).unwrap();
        let _ = fs::remove_file(link);
        std::os::unix::fs::symlink(&tty, link).unwrap();
        Cable {
            master: Some(pty.master),
            slave: Some(pty.slave),
            tty,
            link: link.to_path_buf(),
        }
    }

    fn write(&self, bytes: &[u8]) {
        let fd = self.master.as_ref().unwrap();
        let mut left = bytes;
        while !left.is_empty() {
            let n = nix::unistd::write(fd, left).unwrap();
            left = &left[n..];
        }
    }

    /// Reads what the owner's side wrote until `want` is in it, by the deadline.
    fn read_until(&self, want: &[u8]) -> Vec<u8> {
        let fd = self.master.as_ref().unwrap();
        let until = deadline(STEP);
        let mut got = Vec::new();
        while !got.windows(want.len()).any(|w| w == want) {
            let left = until.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {want:?} from the port, got {got:?}");
            let mut fds = [nix::poll::PollFd::new(
                fd.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let ms = left.as_millis().min(1000) as u16;
            if nix::poll::poll(&mut fds, ms).unwrap() == 0 {
                continue;
            }
            let mut buf = [0u8; 1024];
            let n = nix::unistd::read(fd, &mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    /// Bytes written and not yet read by the owner's side.
    fn unread(&self) -> usize {
        use std::os::fd::AsRawFd;
        let mut n: libc::c_int = 0;
        let fd = self.slave.as_ref().unwrap().as_raw_fd();
        // SAFETY: FIONREAD writes one int.
        unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
        n as usize
    }

    /// Unplugs: both ends close (the owner's reads hang up) and the link goes.
    fn unplug(&mut self) {
        self.master = None;
        self.slave = None;
        let _ = fs::remove_file(&self.link);
    }
}

struct Bench {
    dir: TempDir,
    locks: PathBuf,
    events: Receiver<ConsoleEvent>,
    owner: Option<PortOwner>,
}

impl Bench {
    fn start(tag: &str, cable_link: impl FnOnce(&Path) -> Option<Cable>) -> (Bench, Option<Cable>) {
        let dir = TempDir::new(tag).unwrap();
        let locks = dir.join("lock");
        fs::create_dir(&locks).unwrap();
        let cable = cable_link(&dir.join("ttyS0"));
        let (tx, events) = mpsc::sync_channel(256);
        let d = device(&dir.join("ttyS0"));
        let limits = Limits {
            quiet: Duration::from_millis(100),
            ..Limits::default()
        };
        let outlet = Outlet {
            events: tx,
            wake: Arc::new(|| {}),
        };
        let owner =
            PortOwner::start(&d, alerts_for(&d), limits, outlet, Some(locks.clone())).unwrap();
        (
            Bench {
                dir,
                locks,
                events,
                owner: Some(owner),
            },
            cable,
        )
    }

    fn link(&self) -> PathBuf {
        self.dir.join("ttyS0")
    }

    fn next(&self) -> ConsoleEvent {
        self.events
            .recv_timeout(STEP)
            .expect("no console event in time")
    }

    fn next_text(&self) -> ConsoleChunk {
        match self.next().what {
            Captured::Text(chunk) => chunk,
            other => panic!("expected text, got {other:?}"),
        }
    }

    fn owner(&self) -> &PortOwner {
        self.owner.as_ref().unwrap()
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Some(owner) = self.owner.take() {
            owner.stop();
        }
    }
}

#[test]
fn idle_text_is_captured_a_job_borrows_the_port_and_capture_goes_on_after_its_bytes() {
    let (mut bench, cable) = Bench::start("console-lease", |link| Some(Cable::plug(link)));
    let cable = cable.unwrap();
    let lock = bench.locks.join(lock_file_name(&cable.tty));
    assert!(
        poll_until(deadline(STEP), || lock.exists()),
        "the owner took no lock"
    );

    cable.write(b"idle 1\r\nidle 2\r\n");
    let first = bench.next_text();
    assert_eq!(first.bytes, b"idle 1\r\nidle 2\r\n");
    assert_eq!(first.offset, 0);
    assert!(!first.alert && !first.during_job);

    cable.write(b"BOOM crash\r\n");
    let alert = bench.next_text();
    assert_eq!((alert.offset, alert.alert), (16, true));

    // A job: the same open port, the lock still ours; the bytes it reads are the job's.
    cable.write(b"half a li");
    assert!(poll_until(deadline(STEP), || cable.unread() == 0));
    let mut lease = bench.owner().lender().lend(deadline(STEP)).unwrap();
    // What was printed before the job is flushed as console text before the lease.
    let before = bench.next_text();
    assert_eq!((before.offset, &before.bytes[..]), (28, &b"half a li"[..]));
    lease.send(b"s3cret-pw\r").unwrap();
    cable.read_until(b"s3cret-pw\r");
    cable.write(b"job output\r\n");
    let mut got = Vec::new();
    while !got.ends_with(b"job output\r\n") {
        let mut buf = [0u8; 64];
        let n = lease.recv(&mut buf, deadline(STEP)).unwrap();
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(lease.bytes_read(), 12);
    lease.redact(["s3cret-pw".to_string()]);
    lease.set_aside(b"%LINK-3-UPDOWN during the job\n");
    lease.set_aside(b"Password: s3cret-pw\n");
    assert!(lock.exists());
    drop(lease);

    let during = bench.next_text();
    assert!(during.during_job);
    assert_eq!(during.offset, 37);
    assert_eq!(
        during.bytes, b"%LINK-3-UPDOWN during the job\nPassword: ***\n",
        "a secret a console echoed is redacted"
    );

    cable.write(b"after\r\n");
    let after = bench.next_text();
    assert_eq!(
        after.offset,
        37 + 12,
        "capture goes on past the job's bytes"
    );
    assert_eq!(after.bytes, b"after\r\n");

    // Nothing the job sent is in any chunk.
    for chunk in [&first, &alert, &before, &during, &after] {
        let text = String::from_utf8_lossy(&chunk.bytes);
        assert!(!text.contains("s3cret-pw"), "{text}");
    }
    bench.owner.take().unwrap().stop();
    assert!(!lock.exists(), "the lock goes with the owner");
    assert!(bench.events.try_recv().is_err(), "nothing after the stop");
}

/// A job whose session sets aside more than the capture holds per job: what was kept goes up,
/// and so does a line saying how much was not (in the stream, where the text would have been).
#[test]
fn text_set_aside_past_the_jobs_limit_is_said_in_the_stream() {
    let (mut bench, cable) = Bench::start("console-aside", |link| Some(Cable::plug(link)));
    let _cable = cable.unwrap();
    let mut lease = bench.owner().lender().lend(deadline(STEP)).unwrap();
    let line = [b'x'; 1023];
    let mut line = line.to_vec();
    line.push(b'\n');
    for _ in 0..300 {
        lease.set_aside(&line);
    }
    drop(lease);
    let mut kept = 0usize;
    let mut note = None;
    // Bounded: 256 KiB in chunks of at most 16 KiB, then the note.
    for _ in 0..64 {
        let chunk = bench.next_text();
        assert!(chunk.during_job);
        let text = String::from_utf8_lossy(&chunk.bytes).into_owned();
        kept += text.matches('x').count();
        if let Some(at) = text.find("[rackhand: ") {
            note = Some(text[at..].to_string());
            break;
        }
    }
    assert_eq!(kept, 256 * 1023, "the first 256 KiB are kept whole");
    let note = note.expect("a line saying what was not kept");
    assert!(
        note.contains("[rackhand: 45056 more bytes") && note.contains("were not kept"),
        "{note}"
    );
    bench.owner.take().unwrap().stop();
}

#[test]
fn an_unplugged_port_fails_jobs_naming_it_and_is_a_gap_when_it_is_back() {
    let (bench, cable) = Bench::start("console-unplug", |link| Some(Cable::plug(link)));
    let mut cable = cable.unwrap();
    cable.write(b"before\r\n");
    assert_eq!(bench.next_text().bytes, b"before\r\n");

    let unplugged_at = std::time::SystemTime::now();
    cable.unplug();
    // Jobs meanwhile: connect_failed naming the port (once the owner noticed).
    let lender = bench.owner().lender();
    let mut refused = None;
    assert!(
        poll_until(deadline(STEP), || match lender.lend(deadline(STEP)) {
            Err(e @ TransportError::Connect { .. }) => {
                refused = Some(e.to_string());
                true
            }
            Ok(lease) => {
                drop(lease);
                false
            }
            Err(_) => false,
        }),
        "a job was lent a port that is gone"
    );
    let refused = refused.unwrap();
    assert!(
        refused.contains("ttyS0") && refused.contains("away"),
        "{refused}"
    );

    let cable = Cable::plug(&bench.link());
    cable.write(b"back\r\n");
    let gap = match bench.next().what {
        Captured::Gap(gap) => gap,
        other => panic!("expected a gap, got {other:?}"),
    };
    assert_eq!(gap.offset, 8);
    assert!(gap.from >= unplugged_at - Duration::from_secs(1) && gap.to > gap.from);
    let back = bench.next_text();
    assert_eq!((back.offset, &back.bytes[..]), (8, &b"back\r\n"[..]));
    // And jobs work again.
    drop(bench.owner().lender().lend(deadline(STEP)).unwrap());
}

#[test]
fn a_port_missing_at_the_start_is_opened_when_it_appears() {
    let (bench, _) = Bench::start("console-late", |_| None);
    let lender = bench.owner().lender();
    let err = lender.lend(deadline(STEP)).err().expect("no port yet");
    assert!(matches!(err, TransportError::Connect { .. }), "{err}");
    let cable = Cable::plug(&bench.link());
    cable.write(b"hello\r\n");
    // The time it was missing is a gap, then the text.
    assert!(matches!(bench.next().what, Captured::Gap(_)));
    assert_eq!(bench.next_text().bytes, b"hello\r\n");
}

#[test]
fn the_devices_alert_patterns_and_its_platforms_both_apply() {
    let d = device(Path::new("/dev/null"));
    let alerts: Alerts = alerts_for(&d);
    assert!(alerts.matches("BOOM"));
    assert!(alerts.matches("*Mar  1 00:00:01.000: %SYS-2-MALLOCFAIL: Memory allocation failed"));
    assert!(!alerts.matches("%LINK-3-UPDOWN: Interface up"));
}

fn config_with(dir: &TempDir, devices: &[Dev]) -> Config {
    Config::new()
        .agent("id", "\"rack-q\"")
        .agent(
            "state_dir",
            &quote(&dir.join("state").display().to_string()),
        )
        .defaults("platform", "\"cisco_ios\"")
        .defaults("commands", "[\"show clock\"]")
        .devices(devices.iter().cloned())
}

#[test]
fn check_lists_captured_consoles_and_points_at_capture_on_ssh_and_at_a_bad_alert() {
    let dir = TempDir::new("console-check").unwrap();
    let good = config_with(
        &dir,
        &[Dev::serial("con1", &dir.join("ttyS0"))
            .set("capture", "true")
            .set("alert", "['^BOOT']")],
    )
    .write(&dir.join("good.toml"));
    let out = Command::new(env!("CARGO_BIN_EXE_rackhand"))
        .args(["check", "-c"])
        .arg(&good)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("console captured between jobs") && stdout.contains("  con1: "),
        "{stdout}"
    );
    assert!(stdout.contains("platform alerts + 1 own"), "{stdout}");

    let bad = dir.join("bad.toml");
    let text = "[defaults]\nplatform = \"cisco_ios\"\ncommands = [\"show clock\"]\n\n\
                [[device]]\nname = \"r1\"\nhost = \"192.0.2.1\"\ncapture = true\n\n\
                [[device]]\nname = \"con2\"\ntransport = \"serial\"\nserial_port = \"/dev/ttyUSB9\"\n\
                capture = true\nalert = ['ok', '(oops']\n";
    fs::write(&bad, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rackhand"))
        .args(["check", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let at = |line: usize, col: usize| format!("bad.toml:{line}:{col}:");
    assert!(
        stderr.contains(&at(8, 11)) && stderr.contains("capture"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&at(15, 16)) && stderr.contains("(oops"),
        "{stderr}"
    );
}

#[test]
fn a_reload_starts_and_stops_owners_by_device_name_and_frees_their_ports() {
    let dir = TempDir::new("console-reload").unwrap();
    let link = dir.join("ttyS0");
    let cable = Cable::plug(&link);
    let captured = config_with(&dir, &[Dev::serial("con1", &link).set("capture", "true")])
        .inventory(&dir.join("rackhand.toml"));
    let plain =
        config_with(&dir, &[Dev::serial("con1", &link)]).inventory(&dir.join("rackhand.toml"));
    let registry = Arc::new(Registry::default());
    let mut consoles = Consoles::start(&captured, Arc::clone(&registry), Arc::new(|| {}));
    assert_eq!(consoles.devices().collect::<Vec<_>>(), ["con1"]);
    cable.write(b"one\r\n");
    let mut got = Vec::new();
    assert!(poll_until(deadline(STEP), || {
        got.extend(consoles.take_events());
        !got.is_empty()
    }));
    assert!(registry.lender("con1").is_some());

    // Not captured any more: the owner stops (its last text handed over) and the port is free.
    cable.write(b"two\r\n");
    assert!(poll_until(deadline(STEP), || cable.unread() == 0));
    let mut last = Vec::new();
    consoles.reload(&plain, &mut |e| last.push(e));
    assert_eq!(consoles.devices().count(), 0);
    assert!(registry.lender("con1").is_none());
    let texts: Vec<Vec<u8>> = got
        .iter()
        .chain(&last)
        .filter_map(|e| match &e.what {
            Captured::Text(c) => Some(c.bytes.clone()),
            Captured::Gap(_) => None,
        })
        .collect();
    assert_eq!(texts.concat(), b"one\r\ntwo\r\n");
    let free = rackhand::transport::serial::SerialTransport::open(&device(&link));
    assert!(free.is_ok(), "the port is still held: {:?}", free.err());
    drop(free);

    // Captured again: offsets start over with the new capture.
    consoles.reload(&captured, &mut |_| {});
    assert!(registry.lender("con1").is_some());
    let next_text = |consoles: &Consoles| {
        let mut chunk = None;
        assert!(poll_until(deadline(STEP), || {
            chunk = consoles
                .take_events()
                .into_iter()
                .find_map(|e| match e.what {
                    Captured::Text(c) => Some(c),
                    Captured::Gap(_) => None,
                });
            chunk.is_some()
        }));
        chunk.unwrap()
    };
    cable.write(b"three\r\n");
    assert_eq!(next_text(&consoles).offset, 0);
    // A reload that changes what the capture does not depend on keeps it: offsets go on.
    let slower = config_with(
        &dir,
        &[Dev::serial("con1", &link)
            .set("capture", "true")
            .set("interval", "\"2h\"")],
    )
    .inventory(&dir.join("rackhand.toml"));
    let mut stopped = Vec::new();
    consoles.reload(&slower, &mut |e| stopped.push(e));
    assert!(stopped.is_empty());
    cable.write(b"four\r\n");
    assert_eq!(next_text(&consoles).offset, 7);
    consoles.stop(&mut |_| {});
}
