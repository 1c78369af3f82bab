//! A collector on loopback for the agent to ship to: an HTTP/1.1 server on
//! `std::net::TcpListener` (one thread per connection) that keeps every POST it read — when,
//! its `Idempotency-Key`, its gunzipped NDJSON lines — and answers as the test says at that
//! moment: 200, an error status, 429 with `Retry-After`, a response slower than the agent's
//! timeout, or no answer at all because it is down.
//!
//! "Down" closes the listening socket (and every open connection): connecting is refused, as
//! when the collector process or its host is down while the rack's own uplink is fine — the
//! outage an agent sees most, and the one that must not lose records. Coming back binds the
//! same port again. The port is picked outside the kernel's ephemeral range, so while it is
//! closed no outgoing connection of the agent can take it (and a connect to it can never end
//! up connected to itself). A link that silently drops packets shows to the agent as
//! timeouts; [`Mode::Slow`] covers that.
//!
//! Memory is bounded: at most [`MAX_STORED_BYTES`] of record lines are kept (past that the
//! collector still answers but marks itself [`Collector::overflowed`], which tests assert
//! against), bodies above [`MAX_BODY`] are refused with 413. Every thread is joined in `Drop`.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::deadline;
use super::process::poll_readable;

/// Record lines kept across all POSTs, at most.
pub const MAX_STORED_BYTES: usize = 256 << 20;
/// Largest request body (gzip) accepted.
pub const MAX_BODY: usize = 64 << 20;
/// How long an idle keep-alive connection is kept open.
const IDLE: Duration = Duration::from_secs(30);
/// How often blocked threads look at the mode and the stop flag.
const TICK: Duration = Duration::from_millis(50);

/// How the collector answers from now on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200 at once: every POST is acknowledged.
    Accept,
    /// This status at once (503: overloaded, 500: broken).
    Status(u16),
    /// 429 with `Retry-After: <seconds>`.
    Throttle { retry_after: u64 },
    /// Reads the POST (and keeps it), then waits this long before answering 200: longer than
    /// the agent's timeout, the agent gives up first and sends the batch again later.
    Slow(Duration),
    /// Not listening: connections are refused, open ones are closed.
    Down,
}

/// One POST as the collector read it.
#[derive(Debug, Clone)]
pub struct Post {
    /// When its first byte arrived.
    pub at: Instant,
    pub key: Option<String>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    /// The mode that answered it.
    pub mode: Mode,
    /// The NDJSON body, one entry per line (without `\n`).
    pub lines: Vec<Vec<u8>>,
    /// Each line parsed, `Value::Null` when it is not JSON.
    pub records: Vec<Value>,
    /// The body was not gzip, or not NDJSON ending in `\n`: what was wrong.
    pub malformed: Option<String>,
}

impl Post {
    /// The `seq` of each record, `None` for a record without one.
    pub fn seqs(&self) -> Vec<Option<u64>> {
        self.records.iter().map(|r| r["seq"].as_u64()).collect()
    }
}

struct State {
    mode: Mode,
    /// The acceptor's view: whether the listening socket is open now.
    listening: bool,
    /// Set when binding the port again failed: what went wrong.
    bind_error: Option<String>,
    stopping: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    posts: Mutex<Vec<Post>>,
    stored: AtomicU64,
    overflowed: AtomicU64,
    /// Open connections, so going down can close them.
    connections: Mutex<HashMap<u64, TcpStream>>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mode(&self) -> Mode {
        self.state().mode
    }

    fn stopping(&self) -> bool {
        self.state().stopping
    }

    fn close_connections(&self) {
        let conns = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        for stream in conns.values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

pub struct Collector {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Collector {
    /// Starts listening (in [`Mode::Accept`]) on a loopback port outside the ephemeral range.
    pub fn start() -> Collector {
        let listener = bind_fixed_port().expect("bind the collector on loopback");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                mode: Mode::Accept,
                listening: true,
                bind_error: None,
                stopping: false,
            }),
            changed: Condvar::new(),
            posts: Mutex::new(Vec::new()),
            stored: AtomicU64::new(0),
            overflowed: AtomicU64::new(0),
            connections: Mutex::new(HashMap::new()),
        });
        let s = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name("collector-accept".into())
            .spawn(move || accept_loop(Some(listener), addr, &s))
            .expect("start the collector's accept thread");
        Collector {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the agent's `[upstream] url` is.
    pub fn url(&self) -> String {
        format!("http://{}/ingest", self.addr)
    }

    pub fn mode(&self) -> Mode {
        self.shared.mode()
    }

    /// Answers with `mode` from now on. Returns once the listening socket agrees: closed
    /// (connections refused) for [`Mode::Down`], open again for the others (bounded: panics
    /// if the port cannot be bound again within 10 s).
    pub fn set_mode(&self, mode: Mode) {
        let want_listening = mode != Mode::Down;
        let mut state = self.shared.state();
        state.mode = mode;
        state.bind_error = None;
        self.shared.changed.notify_all();
        if !want_listening {
            drop(state);
            self.shared.close_connections();
            state = self.shared.state();
        }
        let until = deadline(Duration::from_secs(10));
        while state.listening != want_listening {
            let left = until.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "the collector on {} did not {} within 10 s: {}",
                self.addr,
                if want_listening {
                    "listen again"
                } else {
                    "close"
                },
                state.bind_error.as_deref().unwrap_or("no error seen")
            );
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// How many POSTs were read so far.
    pub fn post_count(&self) -> usize {
        self.posts().len()
    }

    /// The POSTs read so far, in the order they arrived (locked while `f` runs).
    pub fn with_posts<R>(&self, f: impl FnOnce(&[Post]) -> R) -> R {
        f(&self.posts())
    }

    fn posts(&self) -> MutexGuard<'_, Vec<Post>> {
        self.shared.posts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records dropped because [`MAX_STORED_BYTES`] was reached (tests assert it is 0).
    pub fn overflowed(&self) -> u64 {
        self.shared.overflowed.load(Ordering::SeqCst)
    }

    /// Every record received, by `id`: the raw line of its first arrival and how many times it
    /// arrived. Records without a string `id` are under `""`.
    pub fn records_by_id(&self) -> BTreeMap<String, (Vec<u8>, usize)> {
        let mut out: BTreeMap<String, (Vec<u8>, usize)> = BTreeMap::new();
        self.with_posts(|posts| {
            for post in posts {
                for (line, record) in post.lines.iter().zip(&post.records) {
                    let id = record["id"].as_str().unwrap_or("").to_string();
                    out.entry(id).or_insert_with(|| (line.clone(), 0)).1 += 1;
                }
            }
        });
        out
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        {
            let mut state = self.shared.state();
            state.stopping = true;
            self.shared.changed.notify_all();
        }
        self.shared.close_connections();
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

/// A loopback port outside the kernel's ephemeral range (`ip_local_port_range`), tried at
/// random, so no outgoing connection takes it while the collector is down.
fn bind_fixed_port() -> io::Result<TcpListener> {
    let range: Vec<u32> = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let (eph_lo, eph_hi) = match range.as_slice() {
        [lo, hi] => (*lo, *hi),
        _ => (32768, 60999),
    };
    let (lo, hi) = if eph_lo >= 12000 {
        (10000, eph_lo)
    } else {
        (eph_hi + 1, 65536)
    };
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ u64::from(std::process::id()) << 32;
    let mut last = None;
    for _ in 0..200 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let port = lo + ((x >> 33) as u32 % (hi - lo));
        match TcpListener::bind((Ipv4Addr::LOCALHOST, port as u16)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free port")))
}

fn accept_loop(mut listener: Option<TcpListener>, addr: SocketAddr, s: &Arc<Shared>) {
    let mut handlers: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id = 0u64;
    loop {
        let (mode, stopping) = {
            let st = s.state();
            (st.mode, st.stopping)
        };
        if stopping {
            break;
        }
        match (mode == Mode::Down, listener.is_some()) {
            (true, true) => {
                // Closing the socket makes the kernel refuse (RST) new connections and drop
                // those queued but not accepted yet.
                listener = None;
                s.close_connections();
                s.state().listening = false;
                s.changed.notify_all();
            }
            (false, false) => match TcpListener::bind(addr) {
                Ok(l) => {
                    listener = Some(l);
                    s.state().listening = true;
                    s.changed.notify_all();
                }
                Err(e) => {
                    s.state().bind_error = Some(format!("bind {addr}: {e}"));
                    std::thread::sleep(TICK);
                    continue;
                }
            },
            _ => {}
        }
        let Some(l) = &listener else {
            // Down: wait for the next change of mode.
            let st = s.state();
            let _ = s.changed.wait_timeout(st, TICK);
            continue;
        };
        match poll_readable(l, TICK) {
            Ok(true) => {}
            _ => continue,
        }
        let Ok((stream, _)) = l.accept() else {
            continue;
        };
        handlers.retain(|h| !h.is_finished());
        let id = next_id;
        next_id += 1;
        if let Ok(clone) = stream.try_clone() {
            s.connections
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, clone);
        }
        // Went down between poll and accept: close at once.
        if s.mode() == Mode::Down {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let s2 = Arc::clone(s);
        let spawned = std::thread::Builder::new()
            .name("collector-conn".into())
            .spawn(move || {
                serve(stream, &s2);
                s2.connections
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
            });
        if let Ok(h) = spawned {
            handlers.push(h);
        }
    }
    drop(listener);
    s.close_connections();
    for h in handlers {
        let _ = h.join();
    }
}

/// Serves requests on one connection until the client closes it, it idles, the collector
/// goes down or stops.
fn serve(stream: TcpStream, s: &Shared) {
    let _ = stream.set_read_timeout(Some(TICK));
    let mut reader = BufReader::new(stream);
    loop {
        let until = Instant::now() + IDLE;
        let Some(request) = read_request(&mut reader, s, until) else {
            return;
        };
        let mode = s.mode();
        if mode == Mode::Down {
            return;
        }
        let (status, extra) = match request {
            Request::TooLarge => (413, String::new()),
            Request::Post(post) => {
                let mut post = *post;
                post.mode = mode;
                keep(s, post);
                match mode {
                    Mode::Accept => (200, String::new()),
                    Mode::Status(code) => (code, String::new()),
                    Mode::Throttle { retry_after } => {
                        (429, format!("Retry-After: {retry_after}\r\n"))
                    }
                    Mode::Slow(delay) => {
                        if !wait_out(s, delay) {
                            return;
                        }
                        (200, String::new())
                    }
                    Mode::Down => return,
                }
            }
            Request::Other => (405, String::new()),
        };
        let head = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n{extra}\r\n");
        let writer = reader.get_mut();
        if writer
            .write_all(head.as_bytes())
            .and_then(|()| writer.flush())
            .is_err()
            // The refused body was not read: the connection cannot go on.
            || status == 413
        {
            return;
        }
    }
}

/// Waits `delay` unless the collector goes down or stops meanwhile; true if it ran out.
fn wait_out(s: &Shared, delay: Duration) -> bool {
    let until = Instant::now() + delay;
    let mut st = s.state();
    loop {
        if st.stopping || st.mode == Mode::Down {
            return false;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        st = s
            .changed
            .wait_timeout(st, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

fn keep(s: &Shared, mut post: Post) {
    let size: usize = post.lines.iter().map(Vec::len).sum();
    let before = s.stored.fetch_add(size as u64, Ordering::SeqCst) as usize;
    if before + size > MAX_STORED_BYTES {
        s.overflowed
            .fetch_add(post.lines.len() as u64, Ordering::SeqCst);
        post.lines.clear();
        post.records.clear();
    }
    s.posts.lock().unwrap_or_else(|e| e.into_inner()).push(post);
}

enum Request {
    Post(Box<Post>),
    TooLarge,
    Other,
}

/// Reads one request; `None` on EOF, error, idle deadline, down or stop.
fn read_request(reader: &mut BufReader<TcpStream>, s: &Shared, until: Instant) -> Option<Request> {
    let mut head = Vec::new();
    let mut at = None;
    while !head.ends_with(b"\r\n\r\n") {
        if Instant::now() >= until || head.len() > 65536 || s.stopping() {
            return None;
        }
        let mut line = Vec::new();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(_) => return None,
        }
        if !line.is_empty() {
            at.get_or_insert_with(Instant::now);
            head.extend_from_slice(&line);
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let method = lines.next()?.split(' ').next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    if header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        let w = reader.get_mut();
        let _ = w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    let len: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if len > MAX_BODY {
        return Some(Request::TooLarge);
    }
    let mut body = vec![0; len];
    let mut got = 0;
    while got < len {
        if Instant::now() >= until || s.stopping() {
            return None;
        }
        match reader.read(&mut body[got..]) {
            Ok(0) => return None,
            Ok(n) => got += n,
            Err(e) if is_timeout(&e) => {}
            Err(_) => return None,
        }
    }
    if method != "POST" {
        return Some(Request::Other);
    }
    let content_encoding = header("content-encoding");
    let mut malformed = None;
    let ndjson = if content_encoding.as_deref() == Some("gzip") {
        let mut out = Vec::new();
        match flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut out) {
            Ok(_) => out,
            Err(e) => {
                malformed = Some(format!("body is not valid gzip: {e}"));
                Vec::new()
            }
        }
    } else {
        malformed = Some(format!(
            "Content-Encoding is {content_encoding:?}, not gzip"
        ));
        body
    };
    if !ndjson.is_empty() && !ndjson.ends_with(b"\n") && malformed.is_none() {
        malformed = Some("the NDJSON body does not end with a newline".into());
    }
    let mut record_lines = Vec::new();
    let mut records = Vec::new();
    for line in ndjson.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        records.push(serde_json::from_slice(line).unwrap_or(Value::Null));
        record_lines.push(line.to_vec());
    }
    Some(Request::Post(Box::new(Post {
        at: at?,
        key: header("idempotency-key"),
        content_type: header("content-type"),
        content_encoding,
        mode: Mode::Accept,
        lines: record_lines,
        records,
        malformed,
    })))
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// What the batches a collector received must satisfy, whatever happened to the agent:
/// each POST is gzip NDJSON of records of `agent`, ids `<agent>:<seq>`, seqs strictly
/// increasing inside it, and an `Idempotency-Key` `<agent>:<first>-<last>` naming them; one
/// key always carries the same records (a receiver that drops a key it has seen loses
/// nothing). Returns every problem found, empty when none.
pub fn batch_problems(posts: &[Post], agent: &str) -> Vec<String> {
    batch_problems_after_damage(posts, agent, &|_| false)
}

/// [`batch_problems`] for a spool whose records may be damaged while a batch waits to be
/// acknowledged: the batch sent again after a restart (cut at the same place, so under the
/// same key) can no longer carry a record that was `damaged` (reported lost instead), so
/// there a key may carry what it carried before minus such records, in the same order.
pub fn batch_problems_after_damage(
    posts: &[Post],
    agent: &str,
    damaged: &dyn Fn(u64) -> bool,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut by_key: HashMap<&str, usize> = HashMap::new();
    for (i, post) in posts.iter().enumerate() {
        let what = format!("POST #{i} (key {:?})", post.key);
        if let Some(m) = &post.malformed {
            problems.push(format!("{what}: {m}"));
        }
        if post.content_type.as_deref() != Some("application/x-ndjson") {
            problems.push(format!("{what}: Content-Type {:?}", post.content_type));
        }
        if post.lines.is_empty() {
            problems.push(format!("{what}: no records"));
            continue;
        }
        let mut last = 0u64;
        for (line, r) in post.lines.iter().zip(&post.records) {
            let seq = r["seq"].as_u64();
            let ok = r["agent"] == agent
                && seq.is_some_and(|s| r["id"] == format!("{agent}:{s}").as_str());
            if !ok {
                problems.push(format!(
                    "{what}: malformed record {}",
                    String::from_utf8_lossy(line)
                ));
                continue;
            }
            let seq = seq.unwrap_or(0);
            if seq <= last {
                problems.push(format!("{what}: seq {seq} after {last}"));
            }
            last = seq;
        }
        let first = post.records[0]["seq"].as_u64().unwrap_or(0);
        let want = format!("{agent}:{first}-{last}");
        if post.key.as_deref() != Some(want.as_str()) {
            problems.push(format!("{what}: key should be {want}"));
        }
        if let Some(key) = post.key.as_deref() {
            match by_key.get(key) {
                Some(&j) if !resent_whole(&posts[j], post, damaged) => problems.push(format!(
                    "{what}: same key as POST #{j} but other records ({} vs {})",
                    post.lines.len(),
                    posts[j].lines.len()
                )),
                Some(_) => {}
                None => {
                    by_key.insert(key, i);
                }
            }
        }
    }
    problems
}

/// `again` carries the records of `before`, in order, but for `damaged` ones left out.
fn resent_whole(before: &Post, again: &Post, damaged: &dyn Fn(u64) -> bool) -> bool {
    let mut left = again.lines.iter().peekable();
    for (line, record) in before.lines.iter().zip(&before.records) {
        if left.peek() == Some(&line) {
            left.next();
        } else if !record["seq"].as_u64().is_some_and(damaged) {
            return false;
        }
    }
    left.next().is_none()
}

#[test]
fn a_resend_under_the_same_key_may_lack_only_records_reported_damaged() {
    let post = |seqs: &[u64]| {
        let records: Vec<Value> = seqs
            .iter()
            .map(|s| serde_json::json!({"id": format!("a:{s}"), "agent": "a", "seq": s}))
            .collect();
        Post {
            at: Instant::now(),
            key: Some("a:1-3".into()),
            content_type: Some("application/x-ndjson".into()),
            content_encoding: Some("gzip".into()),
            mode: Mode::Accept,
            lines: records.iter().map(|r| r.to_string().into_bytes()).collect(),
            records,
            malformed: None,
        }
    };
    let posts = [post(&[1, 2, 3]), post(&[1, 3])];
    assert!(batch_problems_after_damage(&posts, "a", &|s| s == 2).is_empty());
    assert_eq!(
        batch_problems(&posts, "a").len(),
        1,
        "not damaged: a problem"
    );
    let grown = [post(&[1, 3]), post(&[1, 2, 3])];
    assert_eq!(
        batch_problems_after_damage(&grown, "a", &|s| s == 2).len(),
        1,
        "a resend never gains records"
    );
}
