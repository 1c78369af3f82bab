//! The serial console transport against the simulator's pty console
//! (`rackhand::sim::PtyConsole`), opened through a symlink the way a config names
//! `/dev/serial/by-id/...`, with UUCP lock files in a temp directory.
//!
//! The story: the console answers a Return; the lock file is ours while the port is open
//! and gone after; a port another live program has locked is refused naming its PID and
//! command; a lock left by a dead program is taken over; a console that vanishes (adapter
//! unplugged: pty closed, link removed) ends a read with `Closed` at the deadline and is
//! reopened once it is back.

use crate::support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rackhand::config::Secret;
use rackhand::inventory::{
    Device, Endpoint, FlowControl, HostKeyCheck, Isolation, Parity, SerialSettings, SshSettings,
    TransportKind,
};
use rackhand::sim::{Profile, PtyConsole};
use rackhand::transport::serial::{SerialTransport, lock_file_name};
use rackhand::transport::{Transport as _, TransportError};

use support::process::ChildGuard;
use support::{TempDir, deadline, poll_until};

const STEP: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Fixtures

fn device(port: &Path) -> Device {
    Device {
        name: "con1".into(),
        groups: vec![],
        transport: TransportKind::Serial,
        endpoint: Endpoint::Serial {
            port: port.to_path_buf(),
            settings: SerialSettings {
                baud: 9600,
                data_bits: 8,
                parity: Parity::None,
                stop_bits: 1,
                flow_control: FlowControl::None,
            },
        },
        platform: "cisco_ios".into(),
        prompt: None,
        username: Some("admin".into()),
        password: Some(Secret::inline("admin")),
        enable_secret: None,
        ssh: SshSettings {
            key_file: None,
            key_passphrase: None,
            host_key_check: HostKeyCheck::AcceptNew,
            known_hosts: "/nonexistent/known_hosts".into(),
            legacy: false,
            kex: vec![],
            host_key_algorithms: vec![],
            ciphers: vec![],
            macs: vec![],
            keepalive: Duration::from_secs(30),
        },
        commands: vec!["show clock".into()],
        ship: Default::default(),
        interval: Duration::from_secs(900),
        connect_timeout: Duration::from_secs(5),
        command_timeout: STEP,
        max_output: 16 << 20,
        isolation: Isolation::Thread,
        driver_exec: None,
        capture: None,
    }
}

/// A console stopped when the test ends, however it ends.
struct Console(Option<PtyConsole>);

impl Console {
    fn start(link: &Path) -> Console {
        let mut p = Profile::for_platform("cisco_ios").unwrap();
        p.page_lines = 0;
        let c = PtyConsole::start(link, None, p)
            .unwrap_or_else(|e| panic!("cannot start a pty console at {}: {e}", link.display()));
        Console(Some(c))
    }

    fn pty(&self) -> PathBuf {
        self.0.as_ref().unwrap().device_path().to_path_buf()
    }

    /// Unplugs it: the pty closes and the link goes.
    fn stop(&mut self) {
        if let Some(c) = self.0.take() {
            c.stop();
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A console at `<dir>/ttyS0`, and a lock directory next to it.
struct Bench {
    dir: TempDir,
    locks: PathBuf,
}

impl Bench {
    fn new(tag: &str) -> Bench {
        let dir = TempDir::new(tag).unwrap();
        let locks = dir.join("lock");
        fs::create_dir(&locks).unwrap();
        Bench { dir, locks }
    }

    fn link(&self) -> PathBuf {
        self.dir.join("ttyS0")
    }

    fn lock_for(&self, pty: &Path) -> PathBuf {
        self.locks.join(lock_file_name(pty))
    }

    fn open(&self) -> Result<SerialTransport, TransportError> {
        SerialTransport::open_with_lock_dir(&device(&self.link()), &self.locks)
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn read_until(t: &mut SerialTransport, until: Instant, suffix: &str) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(suffix.as_bytes()) {
        assert!(got.len() < 1 << 20, "runaway output: {}", lossy(&got));
        match t.recv(&mut buf, until) {
            Ok(0) => panic!("recv returned Ok(0), which the trait forbids"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("{e}; waiting for {suffix:?}, received {:?}", lossy(&got)),
        }
    }
    got
}

fn hdb(pid: u32) -> String {
    format!("{pid:>10}\n")
}

/// A process that is surely gone: spawned, exited and reaped.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

// ---------------------------------------------------------------------------------------
// Tests

#[test]
fn opens_through_the_link_locks_and_reads_the_console_after_a_return() {
    let bench = Bench::new("serial-open");
    let console = Console::start(&bench.link());
    let lock = bench.lock_for(&console.pty());

    let mut t = bench.open().unwrap();
    assert_eq!(t.peer(), format!("serial {}", bench.link().display()));
    assert_eq!(t.lock_file(), Some(lock.as_path()));
    assert_eq!(
        fs::read_to_string(&lock).unwrap(),
        hdb(std::process::id()),
        "HDB lock content"
    );

    // Silent until a key, like real gear.
    let err = t
        .recv(&mut [0u8; 64], deadline(Duration::from_millis(300)))
        .unwrap_err();
    assert!(matches!(err, TransportError::TimedOut { .. }), "{err:?}");

    t.send(b"\r").unwrap();
    read_until(&mut t, deadline(STEP), "Username: ");
    t.send(b"admin\r").unwrap();
    read_until(&mut t, deadline(STEP), "Password: ");
    t.send(b"admin\r").unwrap();
    read_until(&mut t, deadline(STEP), "sim#");
    t.send(b"show clock\r").unwrap();
    let out = read_until(&mut t, deadline(STEP), "sim#");
    assert!(lossy(&out).contains("UTC"), "show clock: {:?}", lossy(&out));
    t.send_break().unwrap();

    drop(t);
    assert!(
        !lock.exists(),
        "lock file {} outlived the port",
        lock.display()
    );
}

#[test]
fn a_port_locked_by_a_live_program_is_refused_naming_it_then_taken_when_it_dies() {
    let bench = Bench::new("serial-busy");
    let console = Console::start(&bench.link());
    let lock = bench.lock_for(&console.pty());
    let mut cmd = Command::new("sleep");
    cmd.arg("30");
    let mut holder = ChildGuard::spawn(cmd, "sleep (lock holder)", None).unwrap();
    // spawn() can return before the kernel renames the child to `sleep` at exec; there is
    // no event for that, so poll (bounded).
    let comm = format!("/proc/{}/comm", holder.id());
    assert!(
        poll_until(deadline(STEP), || fs::read_to_string(&comm)
            .is_ok_and(|c| c.trim() == "sleep")),
        "the lock holder never became `sleep`"
    );
    fs::write(&lock, hdb(holder.id())).unwrap();

    let err = bench.open().unwrap_err();
    let TransportError::Busy { holder: who, .. } = &err else {
        panic!("expected Busy, got {err:?}");
    };
    let detail = who.to_string();
    let pty = console.pty();
    assert!(
        detail.contains(&format!(
            "`{}` is in use by PID {} (sleep)",
            pty.display(),
            holder.id()
        )),
        "{err}"
    );
    assert!(detail.contains("close it or stop ser2net"), "{err}");
    assert_eq!(
        fs::read_to_string(&lock).unwrap(),
        hdb(holder.id()),
        "a live holder's lock must be left alone"
    );

    // The holder exits without cleaning up: its lock is now stale and is taken over.
    holder.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
    assert!(holder.wait_until(deadline(STEP)).unwrap().is_some());
    let t = bench.open().unwrap();
    assert_eq!(fs::read_to_string(&lock).unwrap(), hdb(std::process::id()));
    drop(t);
    assert!(!lock.exists());
}

#[test]
fn a_stale_lock_of_a_dead_pid_is_taken_over() {
    let bench = Bench::new("serial-stale");
    let console = Console::start(&bench.link());
    let lock = bench.lock_for(&console.pty());
    let dead = dead_pid();
    fs::write(&lock, hdb(dead)).unwrap();
    let mut t = bench.open().unwrap();
    assert_eq!(fs::read_to_string(&lock).unwrap(), hdb(std::process::id()));
    t.send(b"\r").unwrap();
    read_until(&mut t, deadline(STEP), "Username: ");
}

#[test]
fn a_second_open_of_an_open_port_is_refused() {
    let bench = Bench::new("serial-twice");
    let _console = Console::start(&bench.link());
    let _first = bench.open().unwrap();
    let err = bench.open().unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("in use by PID {}", std::process::id())),
        "{err}"
    );
}

#[test]
fn a_missing_port_is_a_connect_error_saying_to_plug_it_in() {
    let bench = Bench::new("serial-missing");
    let err = bench.open().unwrap_err();
    let TransportError::Connect { peer, detail } = &err else {
        panic!("expected Connect, got {err:?}");
    };
    assert_eq!(peer, &format!("serial {}", bench.link().display()));
    assert!(detail.contains("plugged in"), "{err}");
    assert_eq!(
        fs::read_dir(&bench.locks).unwrap().count(),
        0,
        "a lock was left"
    );
}

#[test]
fn a_vanished_console_closes_at_the_deadline_and_is_reopened_when_it_returns() {
    let bench = Bench::new("serial-replug");
    let mut first = Console::start(&bench.link());
    let first_pty = first.pty();
    let first_lock = bench.lock_for(&first_pty);
    let mut t = bench.open().unwrap();
    t.send(b"\r").unwrap();
    read_until(&mut t, deadline(STEP), "Username: ");

    // Unplugged: the read notices the hangup, waits for the adapter, gives up at the deadline.
    first.stop();
    let wait = Duration::from_millis(500);
    let started = Instant::now();
    let err = t.recv(&mut [0u8; 256], started + wait).unwrap_err();
    let took = started.elapsed();
    let TransportError::Closed { .. } = &err else {
        panic!("expected Closed, got {err:?}");
    };
    assert!(err.to_string().contains("disappeared"), "{err}");
    assert!(took >= wait, "gave up after {took:?}, before the deadline");
    assert!(took < wait + Duration::from_secs(1), "overran: {took:?}");

    // Plugged back in while we wait to write: a new pty behind the same link.
    let (go, started_rx) = mpsc::channel::<()>();
    let link = bench.link();
    let starter = std::thread::spawn(move || {
        started_rx.recv().ok()?;
        Some(Console::start(&link))
    });
    go.send(()).unwrap();
    let sent = t.send(b"\r");
    let second = starter.join().unwrap().expect("second console");
    sent.unwrap_or_else(|e| panic!("send after replug: {e}"));
    read_until(&mut t, deadline(STEP), "Username: ");

    // The lock followed the device to its new name. The kernel hands out the lowest free pty
    // number, so the new console may have the old one's name (other tests free ptys too):
    // then the lock is simply ours again under that name.
    let second_lock = bench.lock_for(&second.pty());
    if second.pty() != first_pty {
        assert!(
            !first_lock.exists(),
            "old lock {} left",
            first_lock.display()
        );
    }
    assert_eq!(t.lock_file(), Some(second_lock.as_path()));
    assert_eq!(
        fs::read_to_string(&second_lock).unwrap(),
        hdb(std::process::id())
    );
    drop(t);
    assert!(!second_lock.exists());
}

#[test]
fn a_console_replugged_between_reads_is_reopened_and_the_lock_follows_it() {
    let bench = Bench::new("serial-swap");
    let mut first = Console::start(&bench.link());
    let first_lock = bench.lock_for(&first.pty());
    let mut t = bench.open().unwrap();
    t.send(b"\r").unwrap();
    read_until(&mut t, deadline(STEP), "Username: ");
    // The new adapter appears (under another name, as a replugged USB adapter often does:
    // both ptys exist at once, so their numbers differ) before the old one is gone.
    let second = Console::start(&bench.link());
    let second_lock = bench.lock_for(&second.pty());
    assert_ne!(first_lock, second_lock);
    first.stop();
    // The old pty hangs up; the read reopens the link's new target and then waits for data,
    // which a console only sends after a key: so the read ends at the deadline, not Closed.
    let err = t
        .recv(&mut [0u8; 256], deadline(Duration::from_millis(400)))
        .unwrap_err();
    assert!(matches!(err, TransportError::TimedOut { .. }), "{err:?}");
    assert_eq!(t.lock_file(), Some(second_lock.as_path()));
    assert!(
        !first_lock.exists(),
        "old lock {} left",
        first_lock.display()
    );
    assert_eq!(
        fs::read_to_string(&second_lock).unwrap(),
        hdb(std::process::id())
    );
    t.send(b"\r").unwrap();
    read_until(&mut t, deadline(STEP), "Username: ");
    drop(t);
    assert!(!second_lock.exists());
}

#[test]
fn impossible_line_settings_are_refused_naming_the_setting_and_leave_no_lock() {
    let bench = Bench::new("serial-settings");
    let _console = Console::start(&bench.link());
    let mut d = device(&bench.link());
    let Endpoint::Serial { settings, .. } = &mut d.endpoint else {
        unreachable!()
    };
    settings.data_bits = 9;
    let err = SerialTransport::open_with_lock_dir(&d, &bench.locks).unwrap_err();
    assert!(
        err.to_string().contains("set data_bits to 5, 6, 7 or 8"),
        "{err}"
    );
    assert_eq!(
        fs::read_dir(&bench.locks).unwrap().count(),
        0,
        "a lock was left"
    );
}
