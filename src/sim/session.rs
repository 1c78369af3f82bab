//! The loop that carries one CLI session over a file descriptor, shared by every transport.
//!
//! Telnet, pty console and stdio differ only in how bytes are framed (Telnet's IAC layer, a
//! console's baud rate) and where they come from, so each provides a [`Link`] and this loop
//! does the rest the same way: wait in `poll` for input, for the engine's next deadline or
//! for the rack's stop signal — never a fixed sleep — and write with back-pressure, so a
//! client that stops reading or a stop request ends the session promptly.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::engine::{Action, Engine};
use super::stats::{SessionGuard, Stats};

/// A client that accepts no output for this long is considered gone.
pub const WRITE_STALL: Duration = Duration::from_secs(120);
/// Bytes read per `read` call.
const READ_CHUNK: usize = 4096;

/// Tells every loop of a rack to end: a pipe whose read end becomes readable (and stays so)
/// once [`StopSignal::stop`] is called, so threads blocked in `poll` wake at once.
#[derive(Debug)]
pub struct StopSignal {
    read: OwnedFd,
    write: OwnedFd,
    stopped: AtomicBool,
}

impl StopSignal {
    pub fn new() -> io::Result<Arc<StopSignal>> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        Ok(Arc::new(StopSignal {
            read,
            write,
            stopped: AtomicBool::new(false),
        }))
    }

    pub fn stop(&self) {
        if !self.stopped.swap(true, Ordering::SeqCst) {
            // One byte is enough: nobody reads it, so the pipe stays readable.
            let _ = nix::unistd::write(&self.write, b"x");
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }
}

/// How one transport moves a session's bytes.
pub trait Link {
    fn input(&self) -> BorrowedFd<'_>;
    fn output(&self) -> BorrowedFd<'_>;
    /// Bytes to send before the session starts (Telnet option requests).
    fn greeting(&mut self) -> Vec<u8> {
        Vec::new()
    }
    /// Turns received bytes into typed bytes for the engine; protocol answers go to `replies`.
    fn decode(
        &mut self,
        raw: &[u8],
        engine: &mut Engine,
        typed: &mut Vec<u8>,
        replies: &mut Vec<u8>,
    ) {
        let _ = (engine, replies);
        typed.extend_from_slice(raw);
    }
    /// Frames the engine's output for the wire.
    fn encode(&mut self, data: &[u8]) -> Vec<u8> {
        data.to_vec()
    }
    /// Output pacing in bytes per second (a console's baud / 10).
    fn rate(&self) -> Option<u32> {
        None
    }
}

/// Why a session loop returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The device ended it (logout, failed logins, a drop fault).
    Closed,
    /// The client went away (EOF, reset, stalled writes).
    ClientGone,
    /// The rack was stopped.
    Stopped,
}

/// Counts the session in `stats` while it is active (a console's idle periods are not
/// sessions).
pub struct Counting<'a> {
    pub(crate) stats: &'a Arc<Stats>,
    pub(crate) device: usize,
}

/// Runs `engine` over `link` until the session ends, the client goes away or `stop` fires.
pub fn run(
    link: &mut dyn Link,
    engine: &mut Engine,
    stop: Option<&StopSignal>,
    counting: Counting<'_>,
) -> End {
    let mut guard: Option<SessionGuard> = None;
    let mut pacer = Pacer::new(link.rate());
    let greeting = link.greeting();
    if let Err(end) = send(link, &greeting, stop, &mut pacer) {
        return end;
    }
    let mut actions = engine.start(Instant::now());
    let mut buf = vec![0u8; READ_CHUNK];
    let mut chatter_counted = 0;
    // Each round blocks in poll until input, a deadline or stop: the loop is bounded by the
    // session's life, and every wait by `stop`.
    loop {
        let active = !engine.is_idle() && !engine.is_closed();
        if active && guard.is_none() {
            guard = Some(counting.stats.session(counting.device));
        }
        let chatter = engine.chatter_sent();
        counting.stats.count_unsolicited(chatter - chatter_counted);
        chatter_counted = chatter;
        for action in actions.drain(..) {
            match action {
                Action::Send(bytes) => {
                    let wire = link.encode(&bytes);
                    if let Err(end) = send(link, &wire, stop, &mut pacer) {
                        return end;
                    }
                }
                Action::Close => return End::Closed,
            }
        }
        if engine.is_idle() {
            guard = None;
        }
        let now = Instant::now();
        if let Some(deadline) = engine.deadline()
            && deadline <= now
        {
            actions = engine.tick(now);
            if stop.is_some_and(StopSignal::is_stopped) {
                return End::Stopped;
            }
            continue;
        }
        let timeout = engine.deadline().map(|d| d.saturating_duration_since(now));
        match wait_readable(link.input(), stop, timeout) {
            Wait::Stopped => return End::Stopped,
            Wait::Timeout => actions = engine.tick(Instant::now()),
            Wait::Ready => match nix::unistd::read(link.input(), &mut buf) {
                Ok(0) => return End::ClientGone,
                Ok(n) => {
                    let (mut typed, mut replies) = (Vec::new(), Vec::new());
                    link.decode(&buf[..n], engine, &mut typed, &mut replies);
                    if let Err(end) = send(link, &replies, stop, &mut pacer) {
                        return end;
                    }
                    actions = engine.input(&typed, Instant::now());
                }
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                // EIO: the other side of a pty is gone; anything else: the socket broke.
                Err(_) => return End::ClientGone,
            },
        }
    }
}

enum Wait {
    Ready,
    Timeout,
    Stopped,
}

fn wait_readable(fd: BorrowedFd<'_>, stop: Option<&StopSignal>, timeout: Option<Duration>) -> Wait {
    wait(fd, PollFlags::POLLIN, stop, timeout)
}

fn wait(
    fd: BorrowedFd<'_>,
    events: PollFlags,
    stop: Option<&StopSignal>,
    timeout: Option<Duration>,
) -> Wait {
    let mut fds = vec![PollFd::new(fd, events)];
    if let Some(stop) = stop {
        fds.push(PollFd::new(stop.fd(), PollFlags::POLLIN));
    }
    // Durations beyond poll's range are capped; the caller loops.
    let timeout = match timeout {
        None => PollTimeout::NONE,
        Some(d) => PollTimeout::try_from(d.min(Duration::from_secs(3600)))
            .unwrap_or(PollTimeout::MAX)
            .max(PollTimeout::try_from(Duration::from_millis(1)).unwrap_or(PollTimeout::ZERO)),
    };
    match poll(&mut fds, timeout) {
        Ok(0) => Wait::Timeout,
        Ok(_) => {
            if fds
                .get(1)
                .and_then(PollFd::revents)
                .is_some_and(|r| !r.is_empty())
            {
                return Wait::Stopped;
            }
            Wait::Ready
        }
        Err(Errno::EINTR) => Wait::Timeout,
        // A broken descriptor: report it ready so the following read/write sees the error.
        Err(_) => Wait::Ready,
    }
}

/// Output pacing for a console: a token bucket filled at `rate` bytes per second, holding at
/// most 50 ms worth, so the line never runs faster than the baud rate on average.
struct Pacer {
    rate: Option<f64>,
    tokens: f64,
    last: Instant,
}

impl Pacer {
    fn new(rate: Option<u32>) -> Pacer {
        Pacer {
            rate: rate.filter(|r| *r > 0).map(f64::from),
            tokens: 0.0,
            last: Instant::now(),
        }
    }

    /// How many bytes may go out now, or when the next one may.
    fn allowance(&mut self, wanted: usize) -> Result<usize, Instant> {
        let Some(rate) = self.rate else {
            return Ok(wanted);
        };
        let now = Instant::now();
        let burst = (rate / 20.0).max(1.0);
        self.tokens = (self.tokens + (now - self.last).as_secs_f64() * rate).min(burst);
        self.last = now;
        if self.tokens < 1.0 {
            return Err(now + Duration::from_secs_f64((1.0 - self.tokens) / rate));
        }
        Ok((self.tokens as usize).min(wanted))
    }

    fn consumed(&mut self, n: usize) {
        if self.rate.is_some() {
            self.tokens -= n as f64;
        }
    }
}

/// Writes all of `data`, waiting for the descriptor (and the pacer) in `poll` so `stop` can
/// interrupt; a client that takes nothing for [`WRITE_STALL`] is gone.
fn send(
    link: &dyn Link,
    data: &[u8],
    stop: Option<&StopSignal>,
    pacer: &mut Pacer,
) -> Result<(), End> {
    let mut rest = data;
    let mut stalled_since = Instant::now();
    while !rest.is_empty() {
        if stop.is_some_and(StopSignal::is_stopped) {
            return Err(End::Stopped);
        }
        let n = match pacer.allowance(rest.len()) {
            Ok(n) => n,
            Err(next) => {
                let timeout = next.saturating_duration_since(Instant::now());
                match stop {
                    Some(stop) => {
                        if let Wait::Ready = wait(stop.fd(), PollFlags::POLLIN, None, Some(timeout))
                        {
                            return Err(End::Stopped);
                        }
                    }
                    // Without a stop signal there is nothing to wait on but time itself.
                    None => {
                        wait(link.output(), PollFlags::empty(), None, Some(timeout));
                    }
                }
                continue;
            }
        };
        match nix::unistd::write(link.output(), &rest[..n]) {
            Ok(written) => {
                pacer.consumed(written);
                rest = &rest[written..];
                stalled_since = Instant::now();
            }
            Err(Errno::EAGAIN) => {
                let left = WRITE_STALL.saturating_sub(stalled_since.elapsed());
                if left.is_zero() {
                    return Err(End::ClientGone);
                }
                if let Wait::Stopped = wait(link.output(), PollFlags::POLLOUT, stop, Some(left)) {
                    return Err(End::Stopped);
                }
            }
            Err(Errno::EINTR) => {}
            Err(_) => return Err(End::ClientGone),
        }
    }
    Ok(())
}
