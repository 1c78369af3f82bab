//! Child processes the tests start (`rackhand sim`, `sshd`): each is wrapped in a guard that
//! kills and reaps it in `Drop`, so a failing assertion never leaves a server running, and
//! whose waits end at a deadline instead of blocking the test forever.

use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{deadline, rackhand_bin, remaining};

/// Owns a child process: `Drop` sends SIGKILL and reaps it.
pub struct ChildGuard {
    child: Child,
    what: String,
    stderr: Arc<Mutex<Vec<u8>>>,
    reaped: Option<ExitStatus>,
}

impl ChildGuard {
    /// Spawns `cmd`; stderr is drained by a thread into a buffer that error messages quote,
    /// and whose lines are also forwarded to `stderr_lines` if asked.
    pub fn spawn(
        mut cmd: Command,
        what: &str,
        stderr_lines: Option<mpsc::Sender<String>>,
    ) -> io::Result<ChildGuard> {
        cmd.stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot start {what} ({:?}): {e}", cmd.get_program()),
            )
        })?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stderr.take().expect("stderr piped");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || drain_lines(pipe, &sink, stderr_lines));
        Ok(ChildGuard {
            child,
            what: what.to_string(),
            stderr,
            reaped: None,
        })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// What the child wrote to stderr so far (for failure messages).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Sends `signal` unless the child was already reaped.
    pub fn signal(&mut self, signal: Signal) -> io::Result<()> {
        if self.reaped.is_some() {
            return Ok(());
        }
        kill(Pid::from_raw(self.child.id() as i32), signal)
            .map_err(|e| io::Error::other(format!("cannot signal {}: {e}", self.what)))
    }

    /// Waits for the child to exit, at most until `deadline`. Waits on a pidfd, so the exit
    /// itself wakes us; `Ok(None)` means the deadline passed with the child still running.
    pub fn wait_until(&mut self, deadline: Instant) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.reaped {
            return Ok(Some(status));
        }
        let pidfd = pidfd_open(self.child.id())?;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.reaped = Some(status);
                return Ok(Some(status));
            }
            let Some(left) = remaining(deadline) else {
                return Ok(None);
            };
            poll_readable(&pidfd, left)?;
        }
    }

    /// SIGTERM, then wait until `deadline` for a clean exit. Returns the status, or an error
    /// naming the process if it ignored SIGTERM (the guard then kills it on drop).
    pub fn terminate(&mut self, deadline: Instant) -> io::Result<ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        match self.wait_until(deadline)? {
            Some(status) => Ok(status),
            None => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{} (pid {}) still runs after SIGTERM; stderr so far:\n{}",
                    self.what,
                    self.child.id(),
                    self.stderr_text()
                ),
            )),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.reaped.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn drain_lines(pipe: impl Read, sink: &Mutex<Vec<u8>>, lines: Option<mpsc::Sender<String>>) {
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                sink.lock().unwrap().extend_from_slice(&line);
                if let Some(tx) = &lines {
                    let _ = tx.send(String::from_utf8_lossy(&line).trim_end().to_string());
                }
            }
        }
    }
}

/// A pidfd becomes readable when the process exits (Linux ≥ 5.3).
fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with an integer pid and no flags; the result is a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::other(format!(
            "pidfd_open({pid}) failed: {} (needs Linux 5.3 or newer)",
            io::Error::last_os_error()
        )));
    }
    // SAFETY: the syscall returned a fresh, valid file descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Waits until `fd` is readable or `timeout` passes; EINTR just returns early.
pub fn poll_readable(fd: &impl AsRawFd, timeout: Duration) -> io::Result<bool> {
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack, count 1.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(err);
    }
    Ok(n > 0)
}

/// One endpoint a running `rackhand sim` announced on stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `telnet <hostname> <ip>:<port>`
    Telnet {
        hostname: String,
        addr: std::net::SocketAddr,
    },
    /// `console <hostname> <slave-path> <link>`
    Console {
        hostname: String,
        device: PathBuf,
        link: PathBuf,
    },
}

/// Parses one ready line of `rackhand sim`; `None` for anything else.
pub fn parse_endpoint(line: &str) -> Option<Endpoint> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["telnet", host, addr] => Some(Endpoint::Telnet {
            hostname: host.to_string(),
            addr: addr.parse().ok()?,
        }),
        ["console", host, device, link] => Some(Endpoint::Console {
            hostname: host.to_string(),
            device: PathBuf::from(device),
            link: PathBuf::from(link),
        }),
        _ => None,
    }
}

/// `rackhand sim ...` running as a child process, started and awaited until it printed
/// `ready`, with the endpoints it announced.
pub struct SimProcess {
    pub guard: ChildGuard,
    pub endpoints: Vec<Endpoint>,
    /// Stdout lines after `ready` (the simulator should print none, but keep them readable).
    pub stdout: Receiver<String>,
}

/// How long a simulator may take to print `ready`: it only binds sockets or opens a pty.
pub const SIM_READY_WAIT: Duration = Duration::from_secs(10);

impl SimProcess {
    /// Starts `rackhand sim <args>` and waits (bounded) for its `ready` line.
    pub fn start(args: &[&str]) -> io::Result<SimProcess> {
        let mut cmd = Command::new(rackhand_bin());
        cmd.arg("sim").args(args);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        let what = format!("rackhand sim {}", args.join(" "));
        let mut guard = ChildGuard::spawn(cmd, &what, None)?;
        let stdout = guard.child_mut().stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let until = deadline(SIM_READY_WAIT);
        let mut endpoints = Vec::new();
        let mut seen = Vec::new();
        loop {
            let left = remaining(until).unwrap_or_default();
            match rx.recv_timeout(left) {
                Ok(line) if line.trim() == "ready" => break,
                Ok(line) => {
                    if let Some(ep) = parse_endpoint(&line) {
                        endpoints.push(ep);
                    }
                    seen.push(line);
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "`{what}` printed no `ready` within {SIM_READY_WAIT:?}; stdout: {seen:?}; stderr:\n{}",
                            guard.stderr_text()
                        ),
                    ));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = guard.wait_until(deadline(Duration::from_secs(2)))?;
                    return Err(io::Error::other(format!(
                        "`{what}` ended before `ready` (status {status:?}); stdout: {seen:?}; stderr:\n{}",
                        guard.stderr_text()
                    )));
                }
            }
        }
        Ok(SimProcess {
            guard,
            endpoints,
            stdout: rx,
        })
    }

    /// The Telnet endpoints, in the order announced.
    pub fn telnet_addrs(&self) -> Vec<(String, std::net::SocketAddr)> {
        self.endpoints
            .iter()
            .filter_map(|e| match e {
                Endpoint::Telnet { hostname, addr } => Some((hostname.clone(), *addr)),
                Endpoint::Console { .. } => None,
            })
            .collect()
    }

    /// SIGTERM and a bounded wait for the exit status.
    pub fn stop(&mut self) -> io::Result<ExitStatus> {
        self.guard.terminate(deadline(Duration::from_secs(10)))
    }
}

#[test]
fn ready_lines_parse_into_endpoints() {
    assert_eq!(
        parse_endpoint("telnet sim-1 127.0.0.1:4023"),
        Some(Endpoint::Telnet {
            hostname: "sim-1".into(),
            addr: "127.0.0.1:4023".parse().unwrap()
        })
    );
    assert_eq!(
        parse_endpoint("console sim /dev/pts/7 /tmp/x/ttyS0"),
        Some(Endpoint::Console {
            hostname: "sim".into(),
            device: "/dev/pts/7".into(),
            link: "/tmp/x/ttyS0".into()
        })
    );
    assert_eq!(parse_endpoint("ready"), None);
}
