//! Serial console transport: a USB serial adapter (or any tty) wired to a device's console
//! port, the way in when the network is down or the device has none.
//!
//! Three things make a console different from a socket, and are handled here:
//!
//! - **Sharing.** Other programs on the same Pi (minicom, screen, ser2net, picocom) use the
//!   same adapters. They coordinate with UUCP lock files (`/run/lock/LCK..ttyUSB0`, HDB
//!   format), not with the kernel's TIOCEXCL that serialport sets, so we take both: the lock
//!   file first (so we never even open a port someone else is typing on), then the port
//!   exclusively. A lock left behind by a dead process is taken over; a live holder is named
//!   in the error (PID and command) so the user knows what to close.
//! - **Unplugging.** A USB adapter can vanish mid-session (cable knocked, hub reset) and come
//!   back, often under a different `ttyUSBn`. The configured path is usually a stable
//!   `/dev/serial/by-id/...` link; on a hangup we close the dead descriptor at once (so the
//!   kernel can give the same name back), wait for the link to reappear (inotify on its
//!   directory, no blind sleeping), re-resolve, re-lock and reopen, all within the caller's
//!   deadline.
//! - **Line settings.** Baud, data bits, parity, stop bits and flow control come from the
//!   inventory's [`SerialSettings`].
//!
//! Bytes are passed through unchanged in both directions: consoles take `\r` or `\n` as
//! Return, and pressing Return to wake a console is the session's business.

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serialport::TTYPort;

use crate::inventory::{Device, Endpoint, FlowControl, Parity, SerialSettings};
use crate::transport::{Transport, TransportError};

/// Where UUCP lock files live, in order of preference (FHS: `/run/lock`, with `/var/lock` as
/// the older name, usually a link to it).
pub const LOCK_DIRS: &[&str] = &["/run/lock", "/var/lock"];
/// A lock file naming no PID is tolerated this long (its writer may be between create and
/// write, as non-atomic tools are) before it counts as stale.
const UNREADABLE_LOCK_GRACE: Duration = Duration::from_secs(10);
/// Attempts at creating the lock file: a stale one removed, then another program's racing
/// create, then give up rather than spin.
const LOCK_ATTEMPTS: usize = 3;
/// How long a write may wait for the port to take data (hardware flow control with CTS low
/// blocks writes).
const MIN_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// While waiting for a vanished adapter, events in its directory wake us at once; this is the
/// longest we wait without one (a device node can appear in a directory we do not watch,
/// e.g. the `/dev/ttyUSBn` a by-id link points at, or get its permissions from udev late).
const REAPPEAR_RECHECK: Duration = Duration::from_millis(250);
/// Bounds the waiting loop in count as well as time.
const MAX_REAPPEAR_ROUNDS: usize = 100_000;
/// Reopens one `recv` may do: an adapter flapping faster than this is broken.
const MAX_REOPENS_PER_CALL: usize = 16;

/// A console port, locked and open.
pub struct SerialTransport {
    /// The path as configured (often a by-id link); what we re-resolve after an unplug.
    path: PathBuf,
    settings: SerialSettings,
    peer: String,
    lock_dir: Option<PathBuf>,
    /// `None` while the adapter is gone.
    port: Option<TTYPort>,
    lock: Option<UucpLock>,
    /// How long `send` and `send_break` wait for a vanished adapter (they take no deadline).
    reopen_budget: Duration,
    write_timeout: Duration,
    /// When the port last hung up, until [`SerialTransport::take_hangup`] asks: a console
    /// capture reports the time the port was away as a gap.
    hung_up_at: Option<SystemTime>,
    /// "Gave up waiting" was logged since the port was last open (said once, not per read).
    gave_up_logged: bool,
}

impl std::fmt::Debug for SerialTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialTransport")
            .field("peer", &self.peer)
            .field("open", &self.port.is_some())
            .field("lock", &self.lock.as_ref().map(|l| &l.path))
            .finish_non_exhaustive()
    }
}

impl SerialTransport {
    /// Locks and opens the device's serial port, using the first of [`LOCK_DIRS`] that exists
    /// and is writable for the UUCP lock file. Without one, the port is still opened
    /// exclusively (TIOCEXCL) and a warning is logged.
    pub fn open(device: &Device) -> Result<SerialTransport, TransportError> {
        let dir = default_lock_dir();
        if dir.is_none() {
            log::warn!(
                "{}: none of {} is a writable directory; opening the port without a UUCP lock file, so minicom or ser2net will not see that it is in use",
                device.name,
                LOCK_DIRS.join(", ")
            );
        }
        Self::open_inner(device, dir)
    }

    /// As [`SerialTransport::open`], with the lock file in `lock_dir` (tests, or systems with
    /// an unusual lock directory).
    pub fn open_with_lock_dir(
        device: &Device,
        lock_dir: &Path,
    ) -> Result<SerialTransport, TransportError> {
        Self::open_inner(device, Some(lock_dir.to_path_buf()))
    }

    fn open_inner(
        device: &Device,
        lock_dir: Option<PathBuf>,
    ) -> Result<SerialTransport, TransportError> {
        let Endpoint::Serial { port, settings } = &device.endpoint else {
            return Err(TransportError::Connect {
                peer: format!("serial {}", device.name),
                detail: format!(
                    "device `{}` has a host, not a serial port; set transport = \"ssh\" or \"telnet\", or give it a serial_port",
                    device.name
                ),
            });
        };
        let mut t = SerialTransport {
            path: port.clone(),
            settings: *settings,
            peer: format!("serial {}", port.display()),
            lock_dir,
            port: None,
            lock: None,
            reopen_budget: device.connect_timeout,
            write_timeout: device.command_timeout.max(MIN_WRITE_TIMEOUT),
            hung_up_at: None,
            gave_up_logged: false,
        };
        match t.attach() {
            Ok(()) => Ok(t),
            Err(Attach::Busy(holder)) => Err(TransportError::Busy {
                peer: t.peer.clone(),
                holder: Box::new(holder),
            }),
            Err(Attach::Absent(detail))
            | Err(Attach::NotReady(detail))
            | Err(Attach::Failed(detail)) => Err(TransportError::Connect {
                peer: t.peer.clone(),
                detail,
            }),
        }
    }

    /// When the port hung up (the adapter unplugged), if it did since the last call: the
    /// port may be back already (`recv` reopens it). What the device printed meanwhile is
    /// lost.
    pub fn take_hangup(&mut self) -> Option<SystemTime> {
        self.hung_up_at.take()
    }

    /// Whether the port is open now (false while a vanished adapter has not come back).
    pub fn is_attached(&self) -> bool {
        self.port.is_some()
    }

    /// The UUCP lock file we hold, if any.
    pub fn lock_file(&self) -> Option<&Path> {
        self.lock.as_ref().map(|l| l.path.as_path())
    }

    /// Resolves the configured path, locks the device it names and opens it.
    fn attach(&mut self) -> Result<(), Attach> {
        let resolved = fs::canonicalize(&self.path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Attach::Absent(format!(
                    "`{}` does not exist; check that the USB serial adapter is plugged in (see `ls -l /dev/serial/by-id/`)",
                    self.path.display()
                ))
            } else {
                Attach::Failed(format!("cannot resolve `{}`: {e}", self.path.display()))
            }
        })?;
        if let Some(dir) = &self.lock_dir {
            let name = lock_file_name(&resolved);
            let held = self
                .lock
                .as_ref()
                .is_some_and(|l| l.path.file_name() == Some(name.as_ref()));
            if !held {
                // Take the new name before letting go of the old, so the port is never
                // unprotected; the old one (a previous ttyUSBn) is released right after.
                let lock = UucpLock::acquire(dir, &resolved).map_err(|e| match e {
                    LockError::Held(holder) => Attach::Busy(holder),
                    LockError::Other(detail) => Attach::Failed(detail),
                })?;
                self.lock = Some(lock);
            }
        }
        let port = open_port(&resolved, &self.settings, self.write_timeout)?;
        self.port = Some(port);
        Ok(())
    }

    /// Waits until the vanished adapter is back and reopens it, or fails at `deadline`.
    fn reattach(&mut self, deadline: Instant) -> Result<(), TransportError> {
        self.port = None;
        let mut last = String::new();
        for _ in 0..MAX_REAPPEAR_ROUNDS {
            // Watch before looking, so an appearance between the look and the wait wakes us.
            let watch = DirWatch::new(&self.path);
            match self.attach() {
                Ok(()) => {
                    log::info!("{}: the serial adapter is back; reopened", self.peer);
                    self.gave_up_logged = false;
                    return Ok(());
                }
                Err(Attach::Absent(detail)) | Err(Attach::NotReady(detail)) => last = detail,
                Err(Attach::Busy(holder)) => {
                    return Err(TransportError::Busy {
                        peer: self.peer.clone(),
                        holder: Box::new(holder),
                    });
                }
                Err(Attach::Failed(detail)) => {
                    return Err(TransportError::Connect {
                        peer: self.peer.clone(),
                        detail,
                    });
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            watch.wait(left.min(REAPPEAR_RECHECK));
        }
        // Once per hangup: a console capture waits in short slices for as long as it is away.
        if self.hung_up_at.is_some() || !self.gave_up_logged {
            log::warn!("{}: gave up waiting for the adapter: {last}", self.peer);
        } else {
            log::debug!("{}: still waiting for the adapter: {last}", self.peer);
        }
        self.gave_up_logged = true;
        Err(self.vanished())
    }

    fn vanished(&self) -> TransportError {
        TransportError::Closed {
            peer: format!(
                "{} [the serial adapter disappeared (unplugged?) and did not come back in time; check the USB cable]",
                self.peer
            ),
        }
    }

    /// The open port, reopening a vanished adapter within `budget` first.
    fn port_for_write(&mut self) -> Result<&mut TTYPort, TransportError> {
        if self.port.is_none() {
            self.reattach(Instant::now() + self.reopen_budget)?;
        }
        self.port.as_mut().ok_or_else(|| TransportError::Io {
            peer: self.peer.clone(),
            detail: "port not open".into(),
        })
    }
}

/// Why attaching failed, which decides whether a reopen keeps waiting.
enum Attach {
    /// The adapter is not there (yet): wait for it.
    Absent(String),
    /// It is there but we may not open it: fatal on the first open, but right after a
    /// replug udev may not have given the node its group yet, so a reopen waits.
    NotReady(String),
    /// Another program holds the port: waiting within one session will not help.
    Busy(PortHolder),
    /// Waiting will not help (bad settings, a lock directory we cannot write).
    Failed(String),
}

/// Who holds a serial port we could not take: what makes a port busy rather than broken
/// (the record status `port_busy`, and the scheduler retries later instead of backing off
/// as from a fault). Shown as the message the user reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortHolder {
    /// Another program opened the port exclusively (TIOCEXCL or a held flock); the kernel
    /// does not say which.
    Exclusive { port: PathBuf },
    /// A running process holds the port's UUCP lock file.
    LockFile {
        port: PathBuf,
        pid: i32,
        /// Its command name (`/proc/PID/comm`), when readable.
        command: Option<String>,
        lock_file: PathBuf,
    },
}

impl std::fmt::Display for PortHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortHolder::Exclusive { port } => {
                let shown = port.display();
                write!(
                    f,
                    "`{shown}` is in use by another program (it holds the port exclusively); find it with `fuser {shown}` and close it, or stop ser2net"
                )
            }
            PortHolder::LockFile {
                port,
                pid,
                command,
                lock_file,
            } => {
                write!(f, "`{}` is in use by PID {pid}", port.display())?;
                if let Some(c) = command {
                    write!(f, " ({c})")?;
                }
                write!(
                    f,
                    " (lock file {}); close it or stop ser2net",
                    lock_file.display()
                )
            }
        }
    }
}

/// Why the UUCP lock could not be taken.
#[derive(Debug)]
enum LockError {
    /// A live process holds it.
    Held(PortHolder),
    /// Anything else, as the message for the user.
    Other(String),
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Held(holder) => holder.fmt(f),
            LockError::Other(detail) => f.write_str(detail),
        }
    }
}

fn open_port(
    resolved: &Path,
    s: &SerialSettings,
    write_timeout: Duration,
) -> Result<TTYPort, Attach> {
    use serialport::{DataBits, StopBits};
    let shown = resolved.display();
    let data_bits = match s.data_bits {
        5 => DataBits::Five,
        6 => DataBits::Six,
        7 => DataBits::Seven,
        8 => DataBits::Eight,
        n => {
            return Err(Attach::Failed(format!(
                "{n} data bits is not possible; set data_bits to 5, 6, 7 or 8"
            )));
        }
    };
    let stop_bits = match s.stop_bits {
        1 => StopBits::One,
        2 => StopBits::Two,
        n => {
            return Err(Attach::Failed(format!(
                "{n} stop bits is not possible; set stop_bits to 1 or 2"
            )));
        }
    };
    let parity = match s.parity {
        Parity::None => serialport::Parity::None,
        Parity::Odd => serialport::Parity::Odd,
        Parity::Even => serialport::Parity::Even,
    };
    let flow = match s.flow_control {
        FlowControl::None => serialport::FlowControl::None,
        FlowControl::Software => serialport::FlowControl::Software,
        FlowControl::Hardware => serialport::FlowControl::Hardware,
    };
    serialport::new(resolved.to_string_lossy(), s.baud)
        .data_bits(data_bits)
        .stop_bits(stop_bits)
        .parity(parity)
        .flow_control(flow)
        .timeout(write_timeout)
        .open_native()
        .map_err(|e| match e.kind() {
            // serialport reports EBUSY from TIOCEXCL (or a held flock) as NoDevice.
            serialport::ErrorKind::NoDevice => Attach::Busy(PortHolder::Exclusive {
                port: resolved.to_path_buf(),
            }),
            serialport::ErrorKind::Io(io::ErrorKind::NotFound) => Attach::Absent(format!(
                "`{shown}` does not exist; check that the USB serial adapter is plugged in"
            )),
            serialport::ErrorKind::Io(io::ErrorKind::PermissionDenied) => Attach::NotReady(format!(
                "no permission to open `{shown}`; add the user rackhand runs as to the `dialout` group"
            )),
            _ => Attach::Failed(format!(
                "cannot open `{shown}` at {}: {e}",
                s.describe()
            )),
        })
}

/// What one read found.
enum Read {
    Data(usize),
    TimedOut,
    /// Hangup: the adapter (or the pty's other side) is gone.
    Vanished(String),
    Failed(io::Error),
}

/// Waits for input until `deadline`, then reads. Done on the raw descriptor rather than
/// through serialport's `Read` because that maps EIO/ENXIO to a bare "unknown", and those
/// are exactly the errno values that tell an unplugged adapter from a real failure.
fn read_by(fd: RawFd, buf: &mut [u8], deadline: Instant) -> Read {
    // A signal can interrupt poll or read; the deadline bounds the retries.
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Read::TimedOut;
        }
        let revents = match crate::poll::wait(fd, libc::POLLIN, left) {
            Ok(revents) => revents,
            Err(e) => return Read::Failed(e),
        };
        if revents == 0 {
            continue; // the loop head decides whether the deadline has passed
        }
        if revents & libc::POLLIN == 0 {
            // No data, only an error condition: hangup, or the descriptor is dead.
            return Read::Vanished(format!("poll reported {revents:#x}"));
        }
        // SAFETY: `buf` is valid for `buf.len()` bytes of writes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            return Read::Data(n as usize);
        }
        if n == 0 {
            // A hung-up tty reads as end of file.
            return Read::Vanished("end of file (hangup)".into());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) | Some(libc::EAGAIN) => continue,
            Some(libc::EIO) | Some(libc::ENXIO) | Some(libc::ENODEV) | Some(libc::EPIPE) => {
                return Read::Vanished(e.to_string());
            }
            _ => return Read::Failed(e),
        }
    }
}

impl Transport for SerialTransport {
    fn recv(&mut self, buf: &mut [u8], deadline: Instant) -> Result<usize, TransportError> {
        if buf.is_empty() {
            // Ok(0) would read as "closed" to some callers; the trait never returns it.
            return Err(TransportError::Io {
                peer: self.peer.clone(),
                detail: "recv called with an empty buffer (a bug in the caller)".into(),
            });
        }
        for _ in 0..MAX_REOPENS_PER_CALL {
            if self.port.is_none() {
                self.reattach(deadline)?;
            }
            let Some(port) = self.port.as_ref() else {
                continue;
            };
            match read_by(port.as_raw_fd(), buf, deadline) {
                Read::Data(n) => return Ok(n),
                Read::TimedOut => {
                    return Err(TransportError::TimedOut {
                        peer: self.peer.clone(),
                    });
                }
                Read::Vanished(why) => {
                    log::warn!(
                        "{}: the port hung up ({why}); waiting for the adapter to come back",
                        self.peer
                    );
                    // Close now: while our descriptor is open the kernel cannot reuse the
                    // name, and a replugged adapter would come back as the next ttyUSBn.
                    self.port = None;
                    self.hung_up_at.get_or_insert_with(SystemTime::now);
                }
                Read::Failed(e) => {
                    return Err(TransportError::Io {
                        peer: self.peer.clone(),
                        detail: format!("read failed: {e}"),
                    });
                }
            }
        }
        Err(TransportError::Io {
            peer: self.peer.clone(),
            detail: format!(
                "the adapter vanished {MAX_REOPENS_PER_CALL} times during one read; replace the cable or adapter"
            ),
        })
    }

    fn send(&mut self, data: &[u8]) -> Result<(), TransportError> {
        if data.is_empty() {
            return Ok(());
        }
        // One retry after a reopen: what was written into a vanished adapter is lost anyway.
        for attempt in 0..2 {
            let port = self.port_for_write()?;
            match port.write_all(data) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    return Err(TransportError::Io {
                        peer: self.peer.clone(),
                        detail: format!(
                            "the port took no data for {:?}; with hardware flow control check the RTS/CTS wiring, else the device may be hung",
                            self.write_timeout
                        ),
                    });
                }
                Err(e) if attempt == 0 => {
                    log::warn!("{}: write failed ({e}); reopening the port", self.peer);
                    self.port = None;
                    self.hung_up_at.get_or_insert_with(SystemTime::now);
                }
                Err(e) => {
                    return Err(TransportError::Io {
                        peer: self.peer.clone(),
                        detail: format!("write failed after reopening the port: {e}"),
                    });
                }
            }
        }
        Err(self.vanished())
    }

    fn peer(&self) -> &str {
        &self.peer
    }

    /// A line break of 0.25–0.5 s (`tcsendbreak(fd, 0)` on Linux): what ROMMON, the Junos
    /// loader and Cisco password recovery listen for.
    fn send_break(&mut self) -> Result<(), TransportError> {
        let peer = self.peer.clone();
        let port = self.port_for_write()?;
        port.send_break(serialport::BreakDuration::Short)
            .map_err(|e| TransportError::Io {
                peer,
                detail: format!("cannot send a BREAK: {e}"),
            })
    }
}

impl Drop for SerialTransport {
    fn drop(&mut self) {
        // Close the port before the lock goes, so nobody who sees the lock gone finds the
        // port still busy.
        self.port = None;
        self.lock = None;
    }
}

// ---------------------------------------------------------------------------------------
// Waiting for a device node to (re)appear.

/// inotify on the configured path's directory (or its nearest existing ancestor, since udev
/// removes `/dev/serial/by-id` with the last adapter) and on `/dev`.
struct DirWatch {
    fd: Option<OwnedFd>,
}

impl DirWatch {
    fn new(path: &Path) -> DirWatch {
        // SAFETY: plain syscall; the result is checked.
        let raw = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if raw < 0 {
            return DirWatch { fd: None };
        }
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut dirs: Vec<&Path> = Vec::new();
        if let Some(dir) = path.ancestors().skip(1).find(|d| d.is_dir()) {
            dirs.push(dir);
        }
        if !dirs.iter().any(|d| *d == Path::new("/dev")) {
            dirs.push(Path::new("/dev"));
        }
        let mask = libc::IN_CREATE
            | libc::IN_MOVED_TO
            | libc::IN_ATTRIB
            | libc::IN_DELETE_SELF
            | libc::IN_MOVE_SELF;
        let mut watching = false;
        for dir in dirs {
            let Ok(c) = CString::new(dir.as_os_str().as_bytes()) else {
                continue;
            };
            // SAFETY: valid descriptor and NUL-terminated path.
            watching |= unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) } >= 0;
        }
        DirWatch {
            fd: watching.then_some(fd),
        }
    }

    /// Returns when something changed in a watched directory or after `timeout`.
    fn wait(&self, timeout: Duration) {
        let Some(fd) = &self.fd else {
            // No inotify (seccomp, exhausted watches): a timed wait is all that is left.
            std::thread::sleep(timeout);
            return;
        };
        // An interrupted or failed wait simply returns early; the caller loops.
        let _ = crate::poll::wait(fd.as_raw_fd(), libc::POLLIN, timeout);
    }
}

// ---------------------------------------------------------------------------------------
// UUCP lock files.

/// The lock file name for a device: `LCK..` and the path below `/dev` with `/` as `_`
/// (`/dev/ttyUSB0` → `LCK..ttyUSB0`, `/dev/pts/3` → `LCK..pts_3`), as minicom and
/// lockdev name them; outside `/dev`, the file name alone.
pub fn lock_file_name(device: &Path) -> String {
    let below_dev = device
        .strip_prefix("/dev")
        .ok()
        .filter(|p| !p.as_os_str().is_empty());
    let name = match below_dev {
        Some(p) => p.to_string_lossy().replace('/', "_"),
        None => device
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| device.to_string_lossy().replace('/', "_")),
    };
    format!("LCK..{name}")
}

/// The first of [`LOCK_DIRS`] that is a directory we may write to.
pub fn default_lock_dir() -> Option<PathBuf> {
    LOCK_DIRS
        .iter()
        .map(PathBuf::from)
        .find(|d| d.is_dir() && writable(d))
}

fn writable(dir: &Path) -> bool {
    let Ok(c) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// A held UUCP lock file, removed on drop (if it still names us).
struct UucpLock {
    path: PathBuf,
    pid: u32,
}

/// What an existing lock file says about its holder.
enum Holder {
    Alive(i32),
    Dead(i32),
    /// Removed between our create and our read.
    Gone,
    /// No PID in it.
    Unreadable,
}

impl UucpLock {
    /// Takes the lock for `device` (a resolved path) in `dir`.
    fn acquire(dir: &Path, device: &Path) -> Result<UucpLock, LockError> {
        let pid = std::process::id();
        let path = dir.join(lock_file_name(device));
        for _ in 0..LOCK_ATTEMPTS {
            match create_atomically(dir, &path, pid) {
                Ok(()) => return Ok(UucpLock { path, pid }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(LockError::Other(format!(
                        "cannot create the lock file {}: {e}; make {} writable for rackhand (it is normally mode 1777)",
                        path.display(),
                        dir.display()
                    )));
                }
            }
            match read_holder(&path) {
                Holder::Alive(holder) => {
                    let comm = fs::read_to_string(format!("/proc/{holder}/comm"))
                        .ok()
                        .map(|c| c.trim().to_string())
                        .filter(|c| !c.is_empty());
                    return Err(LockError::Held(PortHolder::LockFile {
                        port: device.to_path_buf(),
                        pid: holder,
                        command: comm,
                        lock_file: path,
                    }));
                }
                Holder::Dead(holder) => {
                    log::warn!(
                        "{}: removing the stale lock file {} of PID {holder}, which no longer runs",
                        device.display(),
                        path.display()
                    );
                    remove_if_present(&path).map_err(LockError::Other)?;
                }
                Holder::Gone => {}
                Holder::Unreadable => {
                    let age = fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| SystemTime::now().duration_since(t).ok())
                        .unwrap_or_default();
                    if age < UNREADABLE_LOCK_GRACE {
                        return Err(LockError::Other(format!(
                            "`{}` is in use: the lock file {} names no PID yet; try again, or remove the file if no program uses the port",
                            device.display(),
                            path.display()
                        )));
                    }
                    log::warn!(
                        "{}: removing the lock file {}, which names no PID",
                        device.display(),
                        path.display()
                    );
                    remove_if_present(&path).map_err(LockError::Other)?;
                }
            }
        }
        Err(LockError::Other(format!(
            "cannot take the lock file {} after {LOCK_ATTEMPTS} attempts: another program keeps creating it; find it with `fuser {}`",
            path.display(),
            device.display()
        )))
    }
}

impl Drop for UucpLock {
    fn drop(&mut self) {
        // Only our own lock: if it was taken over (we were thought dead), it is not ours.
        if read_pid(&self.path) != Some(self.pid as i32) {
            return;
        }
        if let Err(e) = fs::remove_file(&self.path) {
            log::warn!("cannot remove the lock file {}: {e}", self.path.display());
        }
    }
}

/// HDB format: the PID as ten right-aligned ASCII digits and a newline.
fn hdb_contents(pid: u32) -> String {
    format!("{pid:>10}\n")
}

/// Writes the complete lock file under a private name, then links it into place: the link
/// fails if the lock exists (as `O_EXCL` would) and nobody ever sees a half-written file.
/// Where hard links are not supported, falls back to `O_EXCL` on the lock itself.
fn create_atomically(dir: &Path, path: &Path, pid: u32) -> io::Result<()> {
    // Unique per call: several workers of this process may lock different ports at once.
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!("LTMP.{pid}.{seq}"));
    // A leftover from a killed run of a process that had our PID.
    let _ = fs::remove_file(&tmp);
    let create = |p: &Path| {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(p)
    };
    create(&tmp)?.write_all(hdb_contents(pid).as_bytes())?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EOPNOTSUPP)) => {
            let mut f = create(path)?;
            if let Err(e) = f.write_all(hdb_contents(pid).as_bytes()) {
                // Ours and empty: do not leave a lock that names nobody.
                let _ = fs::remove_file(path);
                return Err(e);
            }
            Ok(())
        }
        other => other,
    }
}

fn remove_if_present(path: &Path) -> Result<(), String> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!(
            "cannot remove the stale lock file {}: {e}; remove it by hand",
            path.display()
        )),
    }
}

/// The PID in a lock file: HDB ASCII, or the 4-byte binary form old Kermit/UUCP wrote.
fn read_pid(path: &Path) -> Option<i32> {
    let bytes = fs::read(path).ok()?;
    parse_pid(&bytes)
}

fn parse_pid(bytes: &[u8]) -> Option<i32> {
    let ascii = std::str::from_utf8(bytes)
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok());
    if let Some(pid) = ascii {
        return (pid > 0).then_some(pid);
    }
    if let Ok(raw) = <[u8; 4]>::try_from(bytes) {
        let pid = i32::from_ne_bytes(raw);
        return (pid > 0).then_some(pid);
    }
    None
}

fn read_holder(path: &Path) -> Holder {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Holder::Gone,
        Err(_) => return Holder::Unreadable,
    };
    let Some(pid) = parse_pid(&bytes) else {
        return Holder::Unreadable;
    };
    // SAFETY: signal 0 only checks for existence and permission; pid > 0 so it never
    // addresses a process group.
    if unsafe { libc::kill(pid, 0) } == 0 {
        return Holder::Alive(pid);
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::ESRCH) => Holder::Dead(pid),
        // EPERM: it exists, it is just not ours to signal.
        _ => Holder::Alive(pid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::temp_dir;

    #[test]
    fn lock_names_follow_minicom() {
        assert_eq!(lock_file_name(Path::new("/dev/ttyUSB0")), "LCK..ttyUSB0");
        assert_eq!(lock_file_name(Path::new("/dev/pts/3")), "LCK..pts_3");
        assert_eq!(lock_file_name(Path::new("/tmp/x/ttyS9")), "LCK..ttyS9");
    }

    #[test]
    fn hdb_is_ten_right_aligned_digits_and_a_newline() {
        assert_eq!(hdb_contents(4242), "      4242\n");
        assert_eq!(hdb_contents(4242).len(), 11);
        assert_eq!(parse_pid(b"      4242\n"), Some(4242));
        assert_eq!(parse_pid(&4242i32.to_ne_bytes()), Some(4242));
        assert_eq!(parse_pid(b"\n"), None);
        assert_eq!(parse_pid(b"         0\n"), None);
        assert_eq!(parse_pid(b"        -1\n"), None);
    }

    #[test]
    fn racing_workers_get_one_lock_per_port_and_leave_no_temp_files() {
        let dir = temp_dir("serial-race");
        let barrier = std::sync::Barrier::new(16);
        let results: Vec<(usize, Result<UucpLock, LockError>)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|i| {
                    let (dir, barrier) = (dir.path(), &barrier);
                    s.spawn(move || {
                        // Eight ports, two workers each.
                        let device = PathBuf::from(format!("/dev/ttyUSB{}", i % 8));
                        barrier.wait();
                        (i % 8, UucpLock::acquire(dir, &device))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for port in 0..8 {
            let won = results
                .iter()
                .filter(|(p, r)| *p == port && r.is_ok())
                .count();
            assert_eq!(won, 1, "ttyUSB{port}: {won} workers got the lock");
            let lost = results.iter().find(|(p, r)| *p == port && r.is_err());
            let msg = lost.unwrap().1.as_ref().err().unwrap().to_string();
            assert!(
                msg.contains(&format!("in use by PID {}", std::process::id())),
                "{msg}"
            );
        }
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 8, "{names:?}");
        assert!(
            names.iter().all(|n| n.starts_with("LCK..ttyUSB")),
            "{names:?}"
        );
        drop(results);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "locks outlived their owners"
        );
    }
}
