//! The `/metrics` listener: a few threads, `std::net`, and just enough HTTP/1.1 for a
//! Prometheus scrape and a health probe.
//!
//! An HTTP library would bring a runtime or a thread per connection and parse far more than
//! two fixed paths need. What this serves is small and the peer is usually a Prometheus
//! server, but the port may be reachable by others, so every resource is bounded: one
//! accepting thread waits in poll(2) on the socket and a stop pipe (no timeout loop), at most
//! [`HANDLERS`] requests are served at once (a connection beyond that gets a short 503 and is
//! closed), a request head may be [`MAX_HEAD`] bytes, and reading it and writing the answer
//! each have a deadline. Stopping wakes the accepting thread and shuts down the connections
//! in progress, so the agent's stop never waits on a slow client. The text is streamed to the
//! socket as it is rendered (its length counted by a first render), so a connection holds
//! a snapshot and a 16 KiB buffer, never the whole text: four handler threads each keeping
//! a whole scrape in their malloc arena came to a megabyte at 500 devices.
//!
//! Answers: `GET /metrics` (the text format, 200), `GET /healthz` (200 `ok`, or 503 with the
//! reason), `HEAD` of either; other paths 404, other methods 405, a bad request 400, a head
//! too large 431. Every answer closes the connection.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::registry::{Health, Metrics, Snapshot};
use super::render::{CONTENT_TYPE, render_into, rendered_len};

/// Requests served at once; a scrape takes milliseconds, so a few cover Prometheus, a
/// second Prometheus and someone with curl.
pub(crate) const HANDLERS: usize = 4;
/// The largest request head read (request line and headers).
pub(crate) const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request head.
pub(crate) const READ_TIME: Duration = Duration::from_secs(5);
/// How long writing an answer may take.
pub(crate) const WRITE_TIME: Duration = Duration::from_secs(10);
/// Small stacks: a handler holds a buffer of [`MAX_HEAD`] and renders into a [`WRITE_BUFFER`].
const STACK: usize = 256 * 1024;
/// What a handler buffers of an answer before it goes to the socket.
const WRITE_BUFFER: usize = 16 * 1024;

/// The running listener; stopped by [`MetricsServer::stop`] or when dropped.
pub(crate) struct MetricsServer {
    addr: SocketAddr,
    /// Written (or dropped) to wake the accepting thread for the stop.
    wake: Option<UnixStream>,
    accept: Option<JoinHandle<()>>,
    handlers: Vec<JoinHandle<()>>,
    /// The connection each handler is serving, so a stop can cut it short.
    active: Arc<Mutex<Vec<Option<TcpStream>>>>,
}

impl MetricsServer {
    /// Binds `addr` and starts serving `metrics`.
    pub(crate) fn start(addr: SocketAddr, metrics: Arc<Metrics>) -> io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (wake, woken) = UnixStream::pair()?;
        // Room for every handler, so a handover never waits; `in_flight` (queued or being
        // served) is what decides whether a connection is taken.
        let (tx, rx) = sync_channel::<TcpStream>(HANDLERS);
        let rx = Arc::new(Mutex::new(rx));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let active = Arc::new(Mutex::new((0..HANDLERS).map(|_| None).collect()));
        let mut handlers = Vec::with_capacity(HANDLERS);
        for slot in 0..HANDLERS {
            let handler = Handler {
                rx: Arc::clone(&rx),
                active: Arc::clone(&active),
                in_flight: Arc::clone(&in_flight),
                slot,
                metrics: Arc::clone(&metrics),
            };
            handlers.push(
                std::thread::Builder::new()
                    .name("rackhand-metrics-conn".into())
                    .stack_size(STACK)
                    .spawn(move || handler.run())?,
            );
        }
        let accept = std::thread::Builder::new()
            .name("rackhand-metrics".into())
            .stack_size(STACK)
            .spawn(move || accept_loop(&listener, &woken, &tx, &in_flight))?;
        Ok(MetricsServer {
            addr,
            wake: Some(wake),
            accept: Some(accept),
            handlers,
            active,
        })
    }

    /// Where it listens (the bound port when asked for port 0).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, cuts the connections in progress short, and joins every thread.
    pub(crate) fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        // Closing our end makes the accepting thread's poll see a hang-up.
        drop(self.wake.take());
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        // The accepting thread dropped the sender: idle handlers return at once; busy ones
        // return when their socket is shut down under them.
        for stream in lock(&self.active).iter().flatten() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        for t in self.handlers.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits for a connection or the stop; hands connections to an idle handler or refuses them.
fn accept_loop(
    listener: &TcpListener,
    woken: &UnixStream,
    handlers: &SyncSender<TcpStream>,
    in_flight: &AtomicUsize,
) {
    let mut fds = [
        crate::poll::pollfd(listener.as_raw_fd(), libc::POLLIN),
        crate::poll::pollfd(woken.as_raw_fd(), libc::POLLIN),
    ];
    loop {
        for fd in &mut fds {
            fd.revents = 0;
        }
        // No deadline to keep here: the stop arrives as an event. The long timeout only
        // bounds a wait that nothing would otherwise end if the pipe were lost.
        if let Err(e) = crate::poll::poll(&mut fds, Duration::from_secs(3600)) {
            log::error!("metrics listener stopped: poll failed: {e}");
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[0].revents == 0 {
            continue;
        }
        match listener.accept() {
            Ok((stream, _)) => dispatch(stream, handlers, in_flight),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // A connection reset before it was accepted, or out of descriptors for a
            // moment: the next one may work.
            Err(e) => log::debug!("metrics listener: accept: {e}"),
        }
    }
}

/// To a handler, or a 503 when all are busy. Only this thread adds to `in_flight`, so
/// looking and then adding cannot let more than [`HANDLERS`] in.
fn dispatch(stream: TcpStream, handlers: &SyncSender<TcpStream>, in_flight: &AtomicUsize) {
    // Accepted sockets do not inherit non-blocking mode on Linux, but say so anyway.
    let _ = stream.set_nonblocking(false);
    let mut refused = stream;
    if in_flight.load(Ordering::SeqCst) < HANDLERS {
        in_flight.fetch_add(1, Ordering::SeqCst);
        match handlers.try_send(refused) {
            Ok(()) => return,
            Err(TrySendError::Full(stream) | TrySendError::Disconnected(stream)) => {
                in_flight.fetch_sub(1, Ordering::SeqCst);
                refused = stream;
            }
        }
    }
    // A fresh socket's send buffer is empty: this write does not wait.
    let _ = refused.set_write_timeout(Some(Duration::from_millis(100)));
    let busy = Reply::text(503, "too many connections to /metrics at once; try again\n");
    let _ = write_answer(&mut refused, &busy, false);
}

/// One of the threads that serve requests.
struct Handler {
    rx: Arc<Mutex<Receiver<TcpStream>>>,
    active: Arc<Mutex<Vec<Option<TcpStream>>>>,
    in_flight: Arc<AtomicUsize>,
    /// Its place in `active`.
    slot: usize,
    metrics: Arc<Metrics>,
}

impl Handler {
    /// Serves the connections it is handed until the accepting thread is gone.
    fn run(self) {
        loop {
            let stream = match lock(&self.rx).recv() {
                Ok(stream) => stream,
                Err(_) => return,
            };
            lock(&self.active)[self.slot] = stream.try_clone().ok();
            if let Err(e) = serve(stream, &self.metrics) {
                log::debug!("metrics: a request ended early: {e}");
            }
            lock(&self.active)[self.slot] = None;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Reads one request and answers it.
fn serve(mut stream: TcpStream, metrics: &Metrics) -> io::Result<()> {
    let mut head = [0u8; MAX_HEAD];
    let reply = match read_head(&mut stream, &mut head) {
        Ok(len) => route(&head[..len], metrics),
        Err(HeadError::TooLarge) => Reply::text(431, "request head too large\n"),
        Err(HeadError::Malformed) => Reply::text(400, "bad request\n"),
        Err(HeadError::Io(e)) => return Err(e),
    };
    stream.set_write_timeout(Some(WRITE_TIME))?;
    let is_head = head.starts_with(b"HEAD ");
    let mut out = io::BufWriter::with_capacity(WRITE_BUFFER, &stream);
    write_answer(&mut out, &reply, is_head)?;
    out.flush()
}

#[derive(Debug)]
enum HeadError {
    TooLarge,
    Malformed,
    Io(io::Error),
}

/// Reads up to the blank line that ends the head, within [`READ_TIME`]; returns its length.
fn read_head(stream: &mut TcpStream, buf: &mut [u8]) -> Result<usize, HeadError> {
    let until = Instant::now() + READ_TIME;
    let mut filled = 0;
    loop {
        if let Some(end) = head_end(&buf[..filled]) {
            return Ok(end);
        }
        if filled == buf.len() {
            return Err(HeadError::TooLarge);
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HeadError::Io(io::ErrorKind::TimedOut.into()));
        }
        stream.set_read_timeout(Some(left)).map_err(HeadError::Io)?;
        match stream.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => {
                return Err(HeadError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(0) => return Err(HeadError::Malformed),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(HeadError::Io(e)),
        }
    }
}

/// Where the head ends (`\r\n\r\n`, or `\n\n` from lenient clients).
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// What to answer, before it is written.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) code: u16,
    pub(crate) content_type: &'static str,
    pub(crate) body: Body,
}

/// An answer's body.
#[derive(Debug)]
pub(crate) enum Body {
    Text(String),
    /// The exposition of this snapshot at this time, streamed as it is rendered: a scrape
    /// at 500 devices holds the snapshot and a [`WRITE_BUFFER`], not 110 KB of text.
    Metrics(Box<Snapshot>, SystemTime),
}

impl Body {
    fn len(&self) -> usize {
        match self {
            Body::Text(text) => text.len(),
            Body::Metrics(snapshot, now) => rendered_len(snapshot, *now),
        }
    }
}

impl Reply {
    fn text(code: u16, body: &str) -> Reply {
        Reply {
            code,
            content_type: "text/plain; charset=utf-8",
            body: Body::Text(body.to_string()),
        }
    }
}

/// The answer to a request head: the two paths, and the errors around them.
pub(crate) fn route(head: &[u8], metrics: &Metrics) -> Reply {
    let Some((method, path)) = request_line(head) else {
        return Reply::text(400, "bad request\n");
    };
    let known = matches!(path, "/metrics" | "/healthz");
    if !known {
        return Reply::text(404, "not found; rackhand serves /metrics and /healthz\n");
    }
    if method != "GET" && method != "HEAD" {
        return Reply::text(405, "only GET (or HEAD) is served here\n");
    }
    match path {
        "/metrics" => Reply {
            code: 200,
            content_type: CONTENT_TYPE,
            body: Body::Metrics(Box::new(metrics.snapshot()), SystemTime::now()),
        },
        _ => match metrics.health() {
            Health::Healthy => Reply::text(200, "ok\n"),
            Health::Unhealthy(reason) => Reply::text(503, &format!("{reason}\n")),
        },
    }
}

/// `GET /metrics?x=1 HTTP/1.1` → (`GET`, `/metrics`); `None` unless it is one.
fn request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") || method.is_empty() {
        return None;
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    Some((method, path))
}

/// Writes a whole answer to `out` (without its body for HEAD).
fn write_answer(out: &mut impl Write, reply: &Reply, head_only: bool) -> io::Result<()> {
    let reason = match reply.code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let allow = if reply.code == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    write!(
        out,
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        reply.code,
        reply.content_type,
        reply.body.len()
    )?;
    if head_only {
        return Ok(());
    }
    match &reply.body {
        Body::Text(text) => out.write_all(text.as_bytes()),
        Body::Metrics(snapshot, now) => {
            let mut adapter = FmtToIo { out, error: None };
            render_into(&mut adapter, snapshot, *now);
            adapter.error.map_or(Ok(()), Err)
        }
    }
}

/// The renderer writes `fmt::Write`; a socket takes `io::Write`. The first I/O error is
/// kept (and every write after it refused) so the caller sees it.
struct FmtToIo<'a, W: Write> {
    out: &'a mut W,
    error: Option<io::Error>,
}

impl<W: Write> std::fmt::Write for FmtToIo<'_, W> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.error.is_some() {
            return Err(std::fmt::Error);
        }
        self.out.write_all(s.as_bytes()).map_err(|e| {
            self.error = Some(e);
            std::fmt::Error
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_line_gives_method_and_path_without_the_query() {
        assert_eq!(
            request_line(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(
            request_line(b"HEAD /healthz HTTP/1.0\n\n"),
            Some(("HEAD", "/healthz"))
        );
        assert_eq!(request_line(b"GET /metrics\r\n\r\n"), None);
        assert_eq!(request_line(b"GET /metrics SPDY/3\r\n\r\n"), None);
        assert_eq!(request_line(b"\xff\xfe /metrics HTTP/1.1\r\n\r\n"), None);
    }

    #[test]
    fn the_head_ends_at_the_first_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nbody"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
    }

    fn answer(reply: &Reply, head_only: bool) -> String {
        let mut bytes = Vec::new();
        write_answer(&mut bytes, reply, head_only).unwrap();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_head_answer_has_the_length_of_the_body_it_leaves_out() {
        let text = answer(&Reply::text(200, "ok\n"), true);
        assert!(text.contains("Content-Length: 3\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        let allow = answer(&Reply::text(405, "no\n"), false);
        assert!(allow.contains("Allow: GET, HEAD\r\n"), "{allow}");
    }

    #[test]
    fn the_streamed_metrics_are_as_long_as_the_header_says_and_the_same_text() {
        let mut snapshot = Snapshot::default();
        snapshot.devices.insert(
            "sw\"1".into(),
            super::super::registry::DeviceMetrics::default(),
        );
        let now = SystemTime::now();
        let expected = super::super::render::render(&snapshot, now);
        let reply = Reply {
            code: 200,
            content_type: CONTENT_TYPE,
            body: Body::Metrics(Box::new(snapshot), now),
        };
        let text = answer(&reply, false);
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(body, expected);
        assert!(
            head.contains(&format!("Content-Length: {}\r\n", expected.len())),
            "{head}"
        );
    }
}
