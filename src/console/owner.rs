//! The port owner: one thread per captured console, holding the port (and its UUCP lock) for
//! the agent's life and reading it whenever no job has it.
//!
//! A job does not open the port: it borrows it ([`Lender::lend`]). The owner flushes the
//! chunk in progress (those bytes were printed before the job), stops reading and hands the
//! open port over as a [`Lease`], a [`Transport`] that counts what the job reads and keeps
//! what the job's session set aside (log lines the device printed during the job). Dropping
//! the lease gives the port back; capture goes on after the job's bytes. So one reader at a
//! time, and every byte is counted once: by the capture or by the job.
//!
//! An unplugged adapter: the serial transport closes the dead descriptor and waits (inotify)
//! for the configured path to come back; meanwhile the owner answers jobs with
//! `connect_failed`, and when the port is back it reports the time it was away as a gap (what
//! the device printed then could not be read, how much is unknown). A port that cannot be
//! opened at all is tried again with a bounded backoff.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::inventory::Device;
use crate::transport::serial::SerialTransport;
use crate::transport::{Transport, TransportError};

use super::chunk::{Alerts, Arrival, Chunker, ConsoleChunk, Limits};
use super::{Captured, ConsoleEvent, PortGap};

/// The longest one read waits: how soon a job's request or a stop is seen while the line is
/// quiet (a wake-up costs microseconds; ten a second is nothing on a Pi).
const READ_SLICE: Duration = Duration::from_millis(100);
/// How long one read waits for a vanished adapter to come back before the owner looks at
/// requests again.
const ABSENT_SLICE: Duration = Duration::from_millis(500);
/// Backoff between attempts at opening a port that could not be opened.
const OPEN_BACKOFF_MIN: Duration = Duration::from_secs(1);
const OPEN_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Text a job's session may set aside for the capture; beyond it, counted and dropped.
const ASIDE_MAX: usize = 256 * 1024;
/// Bytes per read.
const READ_BUF: usize = 4096;

/// A job's request for the port.
struct Request {
    reply: SyncSender<Result<Lease, TransportError>>,
}

/// What a lease brings back.
struct Returned {
    port: SerialTransport,
    read: u64,
    aside: Vec<(Arrival, Vec<u8>)>,
    dropped: u64,
}

/// The port, lent to one job. Reads and writes go to the port; dropping it gives the port
/// back to its owner.
pub struct Lease {
    port: Option<SerialTransport>,
    peer: String,
    read: u64,
    aside: Vec<(Arrival, Vec<u8>)>,
    aside_bytes: usize,
    dropped: u64,
    back: Sender<Returned>,
    /// Never in set-aside text: the device's secrets (should a console echo one).
    redact: Vec<Vec<u8>>,
}

impl Lease {
    /// `secrets` are replaced by `***` in what the job sets aside (a console that echoes a
    /// password must not put it into a console record).
    pub fn redact(&mut self, secrets: impl IntoIterator<Item = String>) {
        self.redact = secrets
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(String::into_bytes)
            .collect();
    }

    fn port(&mut self) -> Result<&mut SerialTransport, TransportError> {
        self.port.as_mut().ok_or_else(|| TransportError::Io {
            peer: self.peer.clone(),
            detail: "the lease has no port (a bug)".into(),
        })
    }

    /// Bytes the job read so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }
}

impl Transport for Lease {
    fn recv(&mut self, buf: &mut [u8], deadline: Instant) -> Result<usize, TransportError> {
        let n = self.port()?.recv(buf, deadline)?;
        self.read += n as u64;
        Ok(n)
    }

    fn send(&mut self, data: &[u8]) -> Result<(), TransportError> {
        self.port()?.send(data)
    }

    fn peer(&self) -> &str {
        &self.peer
    }

    fn send_break(&mut self) -> Result<(), TransportError> {
        self.port()?.send_break()
    }

    fn set_aside(&mut self, text: &[u8]) {
        if self.aside_bytes + text.len() > ASIDE_MAX {
            self.dropped += text.len() as u64;
            return;
        }
        self.aside_bytes += text.len();
        let mut text = text.to_vec();
        for secret in &self.redact {
            // Never longer than the secret: set-aside text stays within the job's bytes.
            text = replace_all(&text, secret, &b"***"[..secret.len().min(3)]);
        }
        self.aside.push((Arrival::now(), text));
    }
}

/// `text` with every `from` replaced by `to`.
fn replace_all(text: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    out
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(port) = self.port.take() {
            // The owner gone (the agent stopping): the port closes here.
            let _ = self.back.send(Returned {
                port,
                read: self.read,
                aside: std::mem::take(&mut self.aside),
                dropped: self.dropped,
            });
        }
    }
}

/// A handle jobs use to borrow the port (cheap to clone).
#[derive(Clone)]
pub struct Lender {
    peer: String,
    requests: Sender<Request>,
}

impl Lender {
    /// The open port for one job, by `deadline`; `connect_failed` (naming the port) while
    /// the adapter is away or the owner has stopped.
    pub fn lend(&self, deadline: Instant) -> Result<Lease, TransportError> {
        let (reply, answer) = mpsc::sync_channel(1);
        let gone = || TransportError::Connect {
            peer: self.peer.clone(),
            detail: "the console capture holding the port has stopped".into(),
        };
        self.requests.send(Request { reply }).map_err(|_| gone())?;
        let left = deadline.saturating_duration_since(Instant::now());
        match answer.recv_timeout(left) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(TransportError::Connect {
                peer: self.peer.clone(),
                detail: "the console capture did not hand the port over before the connect deadline (another job on this port still runs?)".into(),
            }),
            Err(RecvTimeoutError::Disconnected) => Err(gone()),
        }
    }
}

/// One captured port's thread, stopped and joined by [`PortOwner::stop`] (or drop).
pub struct PortOwner {
    lender: Lender,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    device: Device,
}

/// Where finished chunks go, and how the agent is woken for them.
pub struct Outlet {
    pub events: SyncSender<ConsoleEvent>,
    pub wake: Arc<dyn Fn() + Send + Sync>,
}

impl PortOwner {
    /// Starts capturing `device`'s console (opened at once by the thread; a port that is
    /// not there yet is tried again). `lock_dir`: the UUCP lock directory (tests), else the
    /// system's.
    pub fn start(
        device: &Device,
        alerts: Alerts,
        limits: Limits,
        outlet: Outlet,
        lock_dir: Option<std::path::PathBuf>,
    ) -> std::io::Result<PortOwner> {
        let (requests, requests_rx) = mpsc::channel();
        let (back, back_rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let peer = format!("serial {}", device.address());
        let mut capture = Capture {
            device: device.clone(),
            lock_dir,
            alerts: alerts.clone(),
            limits,
            chunker: Chunker::new(alerts, limits, 0),
            requests: requests_rx,
            back_tx: back,
            back: back_rx,
            outlet,
            stop: Arc::clone(&stop),
            away_since: None,
            away_why: String::new(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("console-{}", device.name))
            .spawn(move || capture.run())?;
        Ok(PortOwner {
            lender: Lender { peer, requests },
            stop,
            thread: Some(thread),
            device: device.clone(),
        })
    }

    pub fn lender(&self) -> Lender {
        self.lender.clone()
    }

    /// The device as configured when the capture started (a reload compares).
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Asks the thread to stop (it flushes what it holds and closes the port).
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Stops and joins the thread.
    pub fn stop(mut self) {
        self.request_stop();
        self.join();
    }

    fn join(&mut self) {
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            log::error!("{}: the console capture thread panicked", self.device.name);
        }
    }
}

impl Drop for PortOwner {
    fn drop(&mut self) {
        self.request_stop();
        self.join();
    }
}

/// The owner thread's state.
struct Capture {
    device: Device,
    lock_dir: Option<std::path::PathBuf>,
    alerts: Alerts,
    limits: Limits,
    chunker: Chunker,
    requests: Receiver<Request>,
    back_tx: Sender<Returned>,
    back: Receiver<Returned>,
    outlet: Outlet,
    stop: Arc<AtomicBool>,
    /// The port went away (or never opened) at this time; reported as a gap when it is back.
    away_since: Option<SystemTime>,
    away_why: String,
}

impl Capture {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn run(&mut self) {
        let mut backoff = OPEN_BACKOFF_MIN;
        // Each turn opens the port or waits out a backoff; bounded by the stop flag.
        while !self.stopping() {
            match self.open() {
                Ok(port) => {
                    // Runs until a stop; the port closes (and its lock goes) when dropped.
                    drop(self.capture(port));
                    break;
                }
                Err(e) => {
                    if self.away_since.is_none() {
                        log::warn!(
                            "{}: cannot open the console for capture ({e}); trying again",
                            self.device.name
                        );
                        self.away_since = Some(SystemTime::now());
                        self.away_why = e.to_string();
                    }
                    self.refuse_requests_until(Instant::now() + backoff);
                    backoff = (backoff * 2).min(OPEN_BACKOFF_MAX);
                }
            }
        }
        self.emit_flush();
        if let Some(since) = self.away_since.take() {
            self.emit_gap(
                since,
                SystemTime::now(),
                "the agent stopped before it was back",
            );
        }
    }

    fn open(&self) -> Result<SerialTransport, TransportError> {
        match &self.lock_dir {
            Some(dir) => SerialTransport::open_with_lock_dir(&self.device, dir),
            None => SerialTransport::open(&self.device),
        }
    }

    /// Answers jobs with the reason the port is not there, until `until` (or a stop).
    fn refuse_requests_until(&mut self, until: Instant) {
        // Each turn answers one request or ends at `until`.
        while !self.stopping() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.requests.recv_timeout(left.min(READ_SLICE)) {
                Ok(request) => {
                    let _ = request.reply.send(Err(self.away_error()));
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn away_error(&self) -> TransportError {
        TransportError::Connect {
            peer: format!("serial {}", self.device.address()),
            detail: format!(
                "the console port is away ({}); check the USB serial adapter",
                self.away_why
            ),
        }
    }

    /// Reads the open port until a stop; returns it to be closed.
    fn capture(&mut self, mut port: SerialTransport) -> Option<SerialTransport> {
        if let Some(since) = self.away_since.take() {
            log::info!("{}: console capture has the port", self.device.name);
            self.emit_gap(since, SystemTime::now(), "");
        }
        let mut buf = vec![0u8; READ_BUF];
        // Each turn is one bounded read, a request served, or a lease's wait.
        while !self.stopping() {
            if let Ok(request) = self.requests.try_recv() {
                port = self.lend(port, request)?;
                continue;
            }
            self.read_once(&mut port, &mut buf);
        }
        Some(port)
    }

    fn read_once(&mut self, port: &mut SerialTransport, buf: &mut [u8]) {
        let slice = if self.away_since.is_some() {
            ABSENT_SLICE
        } else {
            READ_SLICE
        };
        let mut until = Instant::now() + slice;
        if let Some(d) = self.chunker.deadline() {
            until = until.min(d);
        }
        let result = port.recv(buf, until);
        let now = Arrival::now();
        self.note_hangup(port, now);
        match result {
            Ok(n) => {
                if let Some(since) = self.away_since.take() {
                    log::info!("{}: the console port is back", self.device.name);
                    self.emit_gap(since, now.wall, "");
                }
                let chunks = self.chunker.feed(&buf[..n], now);
                self.emit_chunks(chunks);
            }
            Err(TransportError::TimedOut { .. }) => {
                if let Some(chunk) = self.chunker.poll(now.at) {
                    self.emit_chunks(vec![chunk]);
                }
                if let Some(since) = self.away_since.take().filter(|_| port.is_attached()) {
                    log::info!("{}: the console port is back", self.device.name);
                    self.emit_gap(since, now.wall, "");
                }
            }
            Err(e) => {
                if self.away_since.is_none() {
                    log::warn!("{}: console capture lost the port: {e}", self.device.name);
                    self.away_since = Some(now.wall);
                }
                self.away_why = e.to_string();
                self.emit_flush();
                // A reopen refused at once (another program took the port) must not spin.
                self.refuse_requests_until(until);
            }
        }
    }

    /// A hangup inside the last read: the chunk before it ends, and the time away starts.
    fn note_hangup(&mut self, port: &mut SerialTransport, _now: Arrival) {
        if let Some(at) = port.take_hangup() {
            self.emit_flush();
            if self.away_since.is_none() {
                self.away_since = Some(at);
                self.away_why = "the port hung up (unplugged?)".into();
            }
        }
    }

    /// Hands the port to a job and waits for it back. `None`: stopped while lent.
    fn lend(&mut self, port: SerialTransport, request: Request) -> Option<SerialTransport> {
        if self.away_since.is_some() {
            if !port.is_attached() {
                let _ = request.reply.send(Err(self.away_error()));
                return Some(port);
            }
            if let Some(since) = self.away_since.take() {
                self.emit_gap(since, SystemTime::now(), "");
            }
        }
        self.emit_flush();
        let job_start = self.chunker.offset();
        let lease = Lease {
            port: Some(port),
            peer: format!("serial {}", self.device.address()),
            read: 0,
            aside: Vec::new(),
            aside_bytes: 0,
            dropped: 0,
            back: self.back_tx.clone(),
            redact: Vec::new(),
        };
        if let Err(mpsc::SendError(unsent)) = request.reply.send(Ok(lease)) {
            // The job gave up waiting: the port comes back through the lease's drop.
            drop(unsent);
        }
        // Each turn waits a slice for the port to come back; ends at a stop.
        loop {
            match self.back.recv_timeout(READ_SLICE) {
                Ok(returned) => return Some(self.take_back(job_start, returned)),
                Err(RecvTimeoutError::Timeout) if self.stopping() => return None,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// The port is back from a job: what its session set aside goes up as console text at
    /// the job's place, and capture goes on after the job's bytes.
    fn take_back(&mut self, job_start: u64, mut returned: Returned) -> SerialTransport {
        let mut job = Chunker::for_job(self.alerts.clone(), self.limits, job_start);
        let mut chunks = Vec::new();
        for (at, text) in &returned.aside {
            chunks.extend(job.feed(text, *at));
        }
        if returned.dropped > 0 {
            // Upstream learns of it in the stream itself, where the text would have been.
            let note = format!(
                "\n[rackhand: {} more bytes the device printed on its own during this job were not kept: over the {} KiB a job's capture holds]\n",
                returned.dropped,
                ASIDE_MAX / 1024
            );
            chunks.extend(job.feed(note.as_bytes(), Arrival::now()));
        }
        chunks.extend(job.flush());
        self.emit_chunks(chunks);
        if returned.dropped > 0 {
            log::warn!(
                "{}: {} bytes the device printed on its own during a job were over the capture's limit and dropped",
                self.device.name,
                returned.dropped
            );
        }
        self.chunker.skip(returned.read);
        if let Some(at) = returned.port.take_hangup() {
            self.away_since.get_or_insert(at);
            self.away_why = "the port hung up during a job (unplugged?)".into();
        }
        returned.port
    }

    fn emit_flush(&mut self) {
        if let Some(chunk) = self.chunker.flush() {
            self.emit_chunks(vec![chunk]);
        }
    }

    fn emit_chunks(&mut self, chunks: Vec<ConsoleChunk>) {
        for chunk in chunks {
            self.emit(Captured::Text(chunk));
        }
    }

    fn emit_gap(&mut self, from: SystemTime, to: SystemTime, note: &str) {
        let detail = if note.is_empty() {
            self.away_why.clone()
        } else {
            format!("{}; {note}", self.away_why)
        };
        let lost_bytes_max = match &self.device.endpoint {
            crate::inventory::Endpoint::Serial { settings, .. } => {
                let away = to.duration_since(from).unwrap_or_default();
                Some((settings.bytes_per_second() as f64 * away.as_secs_f64()).ceil() as u64)
            }
            crate::inventory::Endpoint::Net { .. } => None,
        };
        self.emit(Captured::Gap(PortGap {
            offset: self.chunker.offset(),
            from,
            to,
            detail,
            lost_bytes_max,
        }));
    }

    /// To the agent; waits while its queue is full (the port's own buffer holds meanwhile).
    fn emit(&mut self, what: Captured) {
        let mut event = ConsoleEvent {
            device: self.device.name.clone(),
            what,
        };
        // Each turn hands the event over or waits a slice; a stop ends it.
        loop {
            match self.outlet.events.try_send(event) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return,
                Err(TrySendError::Full(back)) => {
                    event = back;
                    (self.outlet.wake)();
                    if self.stopping() {
                        log::warn!(
                            "{}: console text dropped at stop: the agent's queue is full",
                            self.device.name
                        );
                        return;
                    }
                    std::thread::park_timeout(Duration::from_millis(20));
                }
            }
        }
        (self.outlet.wake)();
    }
}
