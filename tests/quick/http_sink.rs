//! The http sink against a real HTTP/1.1 receiver on loopback: what the collector sees, and
//! how the sink behaves when the collector fails, refuses, throttles, is slow or is gone, or
//! refuses a request as too large (413: the batch is split, a record too large alone goes
//! whole to the dead-letter file).
//!
//! The receiver is a small server on `std::net::TcpListener` (one thread per connection) so a
//! test can script each answer (by its number or by the request), delay it, and count every
//! request it read. It stops in `Drop`, also when an assertion fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use rackhand::batch::{Batch, BatchLimits, Batcher};
use rackhand::record::{Outcome, Status};
use rackhand::sink::dead_letter::{self, FILE as DEAD_LETTER_FILE, OLD as DEAD_LETTER_OLD};
use rackhand::sink::http::{Backoff, HttpConfig, HttpSink, HttpSinkError, Retry, StopFlag};
use rackhand::sink::{Rejected, Shipped};

// Only the certificates of the shared harness: this file has its own receiver.
use crate::support::TempDir;
use crate::support::tls::{SERVER_CERT, SERVER_KEY, TEST_CA};

/// How long a receiver waits for a client's next bytes before it drops the connection.
const IDLE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
struct Request {
    at: Instant,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn ndjson(&self) -> Vec<u8> {
        assert_eq!(self.header("content-encoding"), Some("gzip"));
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&self.body[..])
            .read_to_end(&mut out)
            .expect("the body is valid gzip");
        out
    }
}

/// One scripted answer.
#[derive(Debug, Clone)]
struct Reply {
    delay: Duration,
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

fn reply(status: u16) -> Reply {
    Reply {
        delay: Duration::ZERO,
        status,
        headers: Vec::new(),
        body: String::new(),
    }
}

/// The answer to request number `n` (0-based), which is also given.
type Script = Arc<dyn Fn(usize, &Request) -> Reply + Send + Sync>;

struct Shared {
    requests: Mutex<Vec<Request>>,
    script: Script,
    stop: Arc<StopFlag>,
    stopping: AtomicBool,
}

struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Receiver {
    fn start(script: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Receiver {
        Self::start_on(TcpListener::bind("127.0.0.1:0").unwrap(), script)
    }

    fn start_on(
        listener: TcpListener,
        script: impl Fn(usize) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        Self::start_with(listener, None, move |n, _| script(n))
    }

    /// A receiver that answers by looking at each request.
    fn judging(script: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        Self::start_with(listener, None, move |_, request| script(request))
    }

    /// An HTTPS receiver with the test CA's certificate for 127.0.0.1.
    fn start_tls(script: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Receiver {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(SERVER_CERT.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(SERVER_KEY.as_bytes()).unwrap(),
            )
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        Self::start_with(listener, Some(Arc::new(config)), move |n, _| script(n))
    }

    fn start_with(
        listener: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        script: impl Fn(usize, &Request) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            script: Arc::new(script),
            stop: StopFlag::new(),
            stopping: AtomicBool::new(false),
        });
        let s = Arc::clone(&shared);
        let acceptor = std::thread::spawn(move || {
            let mut connections = Vec::new();
            for stream in listener.incoming() {
                if s.stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
                let s = Arc::clone(&s);
                let tls = tls.clone();
                connections.push(std::thread::spawn(move || match tls {
                    None => serve(stream, &s),
                    Some(config) => {
                        if let Ok(conn) = rustls::ServerConnection::new(config) {
                            serve(rustls::StreamOwned::new(conn, stream), &s);
                        }
                    }
                }));
            }
            for c in connections {
                let _ = c.join();
            }
        });
        Receiver {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/ingest", self.addr)
    }

    fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.stop.stop();
        // Wakes the blocking accept so the acceptor sees `stopping`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

/// Serves requests on one connection until the client closes it, it idles or the receiver stops.
fn serve<S: Read + Write>(stream: S, s: &Shared) {
    let mut reader = BufReader::new(stream);
    let idle_until = || Instant::now() + IDLE;
    let mut deadline = idle_until();
    loop {
        let request = match read_request(&mut reader, s, deadline) {
            Some(r) => r,
            None => return,
        };
        let r = {
            let mut requests = s.requests.lock().unwrap();
            requests.push(request);
            let n = requests.len() - 1;
            (s.script)(n, &requests[n])
        };
        if !r.delay.is_zero() && s.stop.wait_until(Instant::now() + r.delay) {
            return;
        }
        let mut head = format!(
            "HTTP/1.1 {} X\r\nContent-Length: {}\r\n",
            r.status,
            r.body.len()
        );
        for (k, v) in &r.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        head.push_str(&r.body);
        let writer = reader.get_mut();
        if writer
            .write_all(head.as_bytes())
            .and_then(|()| writer.flush())
            .is_err()
        {
            return;
        }
        deadline = idle_until();
    }
}

/// Reads one request; `None` on EOF, error, idle deadline or stop.
fn read_request(reader: &mut impl BufRead, s: &Shared, deadline: Instant) -> Option<Request> {
    let mut head = Vec::new();
    let mut at = None;
    // Read timeouts of 200 ms bound each turn; the deadline bounds the loop.
    while !head.ends_with(b"\r\n\r\n") {
        if s.stopping.load(Ordering::SeqCst) || Instant::now() >= deadline || head.len() > 65536 {
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
    let mut first = lines.next()?.split(' ');
    let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    let mut got = 0;
    while got < len {
        if s.stopping.load(Ordering::SeqCst) || Instant::now() >= deadline {
            return None;
        }
        match reader.read(&mut body[got..]) {
            Ok(0) => return None,
            Ok(n) => got += n,
            Err(e) if is_timeout(&e) => {}
            Err(_) => return None,
        }
    }
    Some(Request {
        at: at?,
        method,
        path,
        headers,
        body,
    })
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

fn config(url: &str, dead_letters: &TempDir) -> HttpConfig {
    HttpConfig {
        url: url.to_string(),
        headers: vec![
            ("Authorization".into(), "Bearer s3cret".into()),
            ("X-Rack".into(), "a12".into()),
        ],
        ca_file: None,
        timeout: Duration::from_secs(5),
        backoff: Backoff {
            base: Duration::from_millis(20),
            cap: Duration::from_millis(160),
        },
        dead_letter_dir: dead_letters.path().to_path_buf(),
        dead_letter_max_bytes: 1 << 20,
        proxy_from_env: false,
    }
}

/// A batch of real records `first..first+n`.
fn batch(first: u64, n: u64) -> Batch {
    let limits = BatchLimits {
        max_records: n as usize,
        max_bytes: 1 << 20,
        max_age: Duration::from_secs(60),
        jitter: 0.0,
    };
    let mut batcher = Batcher::new("rack-a12", limits, 0);
    let now = Instant::now();
    let mut closed = Vec::new();
    for seq in first..first + n {
        let record = Outcome {
            device: "core1".into(),
            transport: "ssh".into(),
            command: "show version".into(),
            status: Status::Ok,
            error: None,
            output: format!("Cisco IOS Software, run {seq}\n").into_bytes(),
            started_at: SystemTime::UNIX_EPOCH,
            duration: Duration::from_millis(12),
        }
        .into_record("rack-a12", seq);
        closed.extend(batcher.push(seq, record.to_json().as_bytes(), now).unwrap());
    }
    assert_eq!(closed.len(), 1);
    closed.pop().unwrap()
}

fn seqs_of(ndjson: &[u8]) -> Vec<u64> {
    std::str::from_utf8(ndjson)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(20)
}

fn acknowledged(attempts: u32) -> Shipped {
    Shipped {
        attempts,
        rejected: Vec::new(),
    }
}

/// A batch of rack-a12's records `first..`, record `i` with `output_len[i]` bytes of output.
fn batch_with_outputs(first: u64, output_len: &[usize]) -> Batch {
    let limits = BatchLimits {
        max_records: output_len.len(),
        max_bytes: u64::MAX,
        max_age: Duration::from_secs(60),
        jitter: 0.0,
    };
    let mut batcher = Batcher::new("rack-a12", limits, 0);
    let now = Instant::now();
    let mut closed = Vec::new();
    for (seq, len) in (first..).zip(output_len) {
        let record = Outcome {
            device: "core1".into(),
            transport: "ssh".into(),
            command: "show tech-support".into(),
            status: Status::Ok,
            error: None,
            output: format!("run {seq}\n{}", "x".repeat(*len)).into_bytes(),
            started_at: SystemTime::UNIX_EPOCH,
            duration: Duration::from_millis(12),
        }
        .into_record("rack-a12", seq);
        closed.extend(batcher.push(seq, record.to_json().as_bytes(), now).unwrap());
    }
    assert_eq!(closed.len(), 1);
    closed.pop().unwrap()
}

/// A collector that takes at most `limit` bytes of NDJSON per request and answers 413 above.
fn collector_limited_to(limit: usize) -> Receiver {
    Receiver::judging(move |r| {
        if r.ndjson().len() > limit {
            Reply {
                body: "request entity too large".into(),
                ..reply(413)
            }
        } else {
            reply(200)
        }
    })
}

/// Each entry of a dead-letter file: its header and the exact bytes of the records after it.
fn dead_letters(path: &std::path::Path) -> Vec<(serde_json::Value, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let mut out: Vec<(serde_json::Value, Vec<u8>)> = Vec::new();
    for line in bytes.split_inclusive(|b| *b == b'\n') {
        let value: serde_json::Value = serde_json::from_slice(line).unwrap();
        if value.get("dead_letter").is_some() {
            out.push((value, Vec::new()));
        } else {
            out.last_mut()
                .expect("a header first")
                .1
                .extend_from_slice(line);
        }
    }
    out
}

/// The key and status of every request a receiver answered, in order.
fn keys_and_statuses(receiver: &Receiver, limit: usize) -> Vec<(String, u16)> {
    receiver
        .requests()
        .iter()
        .map(|r| {
            let status = if r.ndjson().len() > limit { 413 } else { 200 };
            (r.header("idempotency-key").unwrap().to_string(), status)
        })
        .collect()
}

#[test]
fn the_receiver_sees_one_gzip_ndjson_post_with_the_batch_key_and_configured_headers() {
    let receiver = Receiver::start(|_| reply(200));
    let dir = TempDir::new("headers").unwrap();
    let mut sink = HttpSink::new(config(&receiver.url(), &dir)).unwrap();
    let batch = batch(40, 5);
    let shipped = sink.send(&batch, soon(), &StopFlag::new()).unwrap();
    assert_eq!(shipped, acknowledged(1));
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/ingest"));
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    assert_eq!(r.header("idempotency-key"), Some("rack-a12:40-44"));
    assert_eq!(r.header("authorization"), Some("Bearer s3cret"));
    assert_eq!(r.header("x-rack"), Some("a12"));
    let ndjson = r.ndjson();
    assert_eq!(ndjson, batch.body());
    assert_eq!(seqs_of(&ndjson), vec![40, 41, 42, 43, 44]);
    assert!(r.body.len() < ndjson.len(), "gzip made the body smaller");
}

#[test]
fn an_expired_token_is_waited_out_not_dead_lettered() {
    // The operator fixes the token after two refusals; nothing went to the dead-letter file.
    let receiver = Receiver::start(|n| match n {
        0 => reply(401),
        1 => reply(403),
        _ => reply(200),
    });
    let dir = TempDir::new("401").unwrap();
    let mut sink = HttpSink::new(config(&receiver.url(), &dir)).unwrap();
    let mut retries = Vec::new();
    let shipped = sink
        .send_observed(&batch(1, 2), soon(), &StopFlag::new(), &mut |r: &Retry| {
            retries.push(r.clone())
        })
        .unwrap();
    assert_eq!(shipped, acknowledged(3));
    let statuses: Vec<Option<u16>> = retries.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![Some(401), Some(403)]);
    assert!(
        retries[0].error.contains("credentials"),
        "{}",
        retries[0].error
    );
    assert!(!dir.join(DEAD_LETTER_FILE).exists());
}

#[test]
fn a_503_is_retried_with_the_same_batch_and_key_then_a_200_acknowledges_it() {
    let receiver = Receiver::start(|n| if n == 0 { reply(503) } else { reply(200) });
    let dir = TempDir::new("503").unwrap();
    let mut sink = HttpSink::new(config(&receiver.url(), &dir)).unwrap();
    let batch = batch(1, 3);
    let mut retries = Vec::new();
    let shipped = sink
        .send_observed(&batch, soon(), &StopFlag::new(), &mut |r: &Retry| {
            retries.push(r.clone())
        })
        .unwrap();
    assert_eq!(shipped, acknowledged(2));
    assert_eq!(retries.len(), 1);
    assert_eq!(retries[0].status, Some(503));
    assert!(retries[0].error.contains("503"), "{}", retries[0].error);
    let requests = receiver.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].header("idempotency-key"), Some("rack-a12:1-3"));
    assert_eq!(
        requests[0].header("idempotency-key"),
        requests[1].header("idempotency-key")
    );
    assert_eq!(requests[0].ndjson(), requests[1].ndjson());
    assert!(!dir.join(DEAD_LETTER_FILE).exists());
}

#[test]
fn a_429_with_retry_after_1_waits_at_least_a_second() {
    let receiver = Receiver::start(|n| {
        if n == 0 {
            Reply {
                headers: vec![("Retry-After", "1".into())],
                ..reply(429)
            }
        } else {
            reply(204)
        }
    });
    let dir = TempDir::new("429").unwrap();
    let mut sink = HttpSink::new(config(&receiver.url(), &dir)).unwrap();
    let mut retries = Vec::new();
    let shipped = sink
        .send_observed(&batch(7, 2), soon(), &StopFlag::new(), &mut |r: &Retry| {
            retries.push(r.clone())
        })
        .unwrap();
    assert_eq!(shipped, acknowledged(2));
    assert_eq!(retries[0].retry_after, Some(Duration::from_secs(1)));
    assert!(retries[0].wait >= Duration::from_secs(1));
    let requests = receiver.requests();
    let gap = requests[1].at - requests[0].at;
    assert!(gap >= Duration::from_secs(1), "second try after {gap:?}");
    assert!(gap < Duration::from_secs(3), "and not much later: {gap:?}");
}

#[test]
fn a_400_goes_to_the_dead_letter_file_with_the_response_and_is_not_retried() {
    let receiver = Receiver::start(|_| Reply {
        body: "schema mismatch: field `device` is required".into(),
        ..reply(400)
    });
    let dir = TempDir::new("400").unwrap();
    let mut sink = HttpSink::new(config(&receiver.url(), &dir)).unwrap();
    let batch = batch(100, 4);
    let shipped = sink.send(&batch, soon(), &StopFlag::new()).unwrap();
    let path = dir.join(DEAD_LETTER_FILE);
    let reason = format!(
        "{} answered 400 (Bad Request): schema mismatch: field `device` is required",
        receiver.url()
    );
    assert_eq!(
        shipped,
        Shipped {
            attempts: 1,
            rejected: vec![Rejected {
                first_seq: 100,
                last_seq: 103,
                records: 4,
                bytes: batch.body().len() as u64,
                reason: reason.clone(),
                dead_letter: path.clone(),
            }]
        },
        "the whole batch is rejected, not split: only a 413 is about size"
    );
    assert_eq!(receiver.requests().len(), 1, "a 400 is never retried");
    let entries = dead_letters(&path);
    assert_eq!(entries.len(), 1);
    let dl = &entries[0].0["dead_letter"];
    assert_eq!(dl["status"], 400);
    assert_eq!(dl["sink"], "http");
    assert_eq!(dl["idempotency_key"], "rack-a12:100-103");
    assert_eq!(dl["target"], receiver.url());
    assert_eq!(dl["reason"], reason.as_str());
    assert!(dl["response"].as_str().unwrap().contains("schema mismatch"));
    assert_eq!(entries[0].1, batch.body(), "the records, byte for byte");
}

#[test]
fn the_dead_letter_file_is_capped_keeping_one_previous_file() {
    let receiver = Receiver::start(|_| reply(422));
    let dir = TempDir::new("cap").unwrap();
    let one = batch(1, 3);
    let cap = one.body().len() as u64 * 2 + 600;
    let mut sink = HttpSink::new(HttpConfig {
        dead_letter_max_bytes: cap,
        ..config(&receiver.url(), &dir)
    })
    .unwrap();
    for first in [1, 4, 7, 10, 13] {
        let shipped = sink
            .send(&batch(first, 3), soon(), &StopFlag::new())
            .unwrap();
        assert_eq!(shipped.rejected.len(), 1);
        assert!(
            shipped.rejected[0]
                .reason
                .contains("422 (Unprocessable Entity)"),
            "{}",
            shipped.rejected[0].reason
        );
        for name in [DEAD_LETTER_FILE, DEAD_LETTER_OLD] {
            if let Ok(m) = std::fs::metadata(dir.join(name)) {
                assert!(m.len() <= cap, "{name} is {} bytes, cap {cap}", m.len());
            }
        }
    }
    let current = std::fs::read_to_string(dir.join(DEAD_LETTER_FILE)).unwrap();
    assert!(
        current.contains("rack-a12:13-15"),
        "the newest batch is kept"
    );
    assert!(dir.join(DEAD_LETTER_OLD).exists());
    // A batch larger than the cap is still written whole: the cap is about rotation.
    let mut tiny = HttpSink::new(HttpConfig {
        dead_letter_max_bytes: 400,
        ..config(&receiver.url(), &dir)
    })
    .unwrap();
    let big = batch(20, 3);
    assert!(big.body().len() > 400);
    tiny.send(&big, soon(), &StopFlag::new()).unwrap();
    let entries = dead_letters(&dir.join(DEAD_LETTER_FILE));
    assert_eq!(entries.len(), 1, "a file of its own");
    assert_eq!(
        entries[0].0["dead_letter"]["idempotency_key"],
        "rack-a12:20-22"
    );
    assert_eq!(entries[0].1, big.body());
}

#[test]
fn a_413_splits_the_batch_until_the_record_too_large_alone_is_dead_lettered_whole() {
    const LIMIT: usize = 4096;
    let receiver = collector_limited_to(LIMIT);
    let dir = TempDir::new("413").unwrap();
    let mut sink = HttpSink::new(config(&receiver.url(), &dir)).unwrap();
    // Ten records of ~300 bytes (3 KB together: one request would do) and seq 104, 20 KB.
    let mut outputs = vec![50; 10];
    outputs[4] = 20_000;
    let batch = batch_with_outputs(100, &outputs);
    let big = batch.part(4..5);
    assert!(batch.body().len() - big.body().len() <= LIMIT);

    let shipped = sink.send(&batch, soon(), &StopFlag::new()).unwrap();
    let path = dir.join(DEAD_LETTER_FILE);
    let reason = format!(
        "{} answered 413 (Payload Too Large): request entity too large",
        receiver.url()
    );
    assert_eq!(
        shipped,
        Shipped {
            attempts: 9,
            rejected: vec![Rejected {
                first_seq: 104,
                last_seq: 104,
                records: 1,
                bytes: big.body().len() as u64,
                reason,
                dead_letter: path.clone(),
            }]
        }
    );
    // Halves by record, left first, each keyed by its own seq range, down to seq 104 alone.
    let expected: Vec<(String, u16)> = [
        ("100-109", 413),
        ("100-104", 413),
        ("100-101", 200),
        ("102-104", 413),
        ("102-102", 200),
        ("103-104", 413),
        ("103-103", 200),
        ("104-104", 413),
        ("105-109", 200),
    ]
    .iter()
    .map(|(range, status)| (format!("rack-a12:{range}"), *status))
    .collect();
    assert_eq!(keys_and_statuses(&receiver, LIMIT), expected);
    // Every small record was acknowledged exactly once, in seq order, byte for byte.
    let acknowledged: Vec<u8> = receiver
        .requests()
        .iter()
        .map(Request::ndjson)
        .filter(|body| body.len() <= LIMIT)
        .flatten()
        .collect();
    assert_eq!(
        acknowledged,
        [batch.part(0..4).body(), batch.part(5..10).body()].concat()
    );
    let entries = dead_letters(&path);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].1, big.body(), "the record whole, byte for byte");
    let head = &entries[0].0["dead_letter"];
    assert_eq!(head["status"], 413);
    assert_eq!(head["idempotency_key"], "rack-a12:104-104");
    assert_eq!(
        (head["first_seq"].as_u64(), head["records"].as_u64()),
        (Some(104), Some(1))
    );

    // Sent again (the shipper lost the answer): the same parts with the same keys, so a
    // collector that dedupes by key stores nothing twice.
    let receiver_again = collector_limited_to(LIMIT);
    let dir_again = TempDir::new("413-again").unwrap();
    let mut again = HttpSink::new(config(&receiver_again.url(), &dir_again)).unwrap();
    again.send(&batch, soon(), &StopFlag::new()).unwrap();
    assert_eq!(
        dead_letters(&dir_again.join(DEAD_LETTER_FILE))[0].1,
        big.body()
    );
    assert_eq!(keys_and_statuses(&receiver_again, LIMIT), expected);
}

#[test]
fn a_record_over_16_mib_refused_for_its_size_is_dead_lettered_whole() {
    let receiver = collector_limited_to(1 << 20);
    let dir = TempDir::new("16mib").unwrap();
    let mut sink = HttpSink::new(HttpConfig {
        dead_letter_max_bytes: dead_letter::MAX_BYTES,
        ..config(&receiver.url(), &dir)
    })
    .unwrap();
    let batch = batch_with_outputs(7, &[40, (16 << 20) + 1]);
    let huge = batch.part(1..2);
    assert!(huge.body().len() as u64 > dead_letter::MAX_BYTES);

    let shipped = sink.send(&batch, soon(), &StopFlag::new()).unwrap();
    let path = dir.join(DEAD_LETTER_FILE);
    let rejected: Vec<(u64, u64, u64)> = shipped
        .rejected
        .iter()
        .map(|r| (r.first_seq, r.last_seq, r.bytes))
        .collect();
    assert_eq!(rejected, vec![(8, 8, huge.body().len() as u64)]);
    let keys: Vec<(String, u16)> = keys_and_statuses(&receiver, 1 << 20);
    let expected: Vec<(String, u16)> = [("7-8", 413), ("7-7", 200), ("8-8", 413)]
        .iter()
        .map(|(range, status)| (format!("rack-a12:{range}"), *status))
        .collect();
    assert_eq!(keys, expected);
    let entries = dead_letters(&path);
    assert_eq!(entries.len(), 1);
    assert!(
        entries[0].1 == huge.body(),
        "the {} bytes are in the dead-letter file whole",
        huge.body().len()
    );
    assert_eq!(entries[0].0["dead_letter"]["bytes"], huge.body().len());
}

#[test]
fn an_unwritable_dead_letter_file_keeps_the_batch_for_a_later_send() {
    let receiver = collector_limited_to(4096);
    let dir = TempDir::new("dl-unwritable").unwrap();
    // A file where the dead-letter folder should be: nothing can be created in it.
    let blocked = dir.join("state");
    std::fs::write(&blocked, "not a folder").unwrap();
    let mut sink = HttpSink::new(HttpConfig {
        dead_letter_dir: blocked.clone(),
        ..config(&receiver.url(), &dir)
    })
    .unwrap();
    let batch = batch_with_outputs(1, &[40, 10_000]);
    let err = sink.send(&batch, soon(), &StopFlag::new()).unwrap_err();
    assert!(matches!(err, HttpSinkError::DeadLetter(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("records 2-2") && text.contains("stay in the spool"),
        "{text}"
    );
    // Fixed: the same batch goes through, the big record now dead-lettered.
    std::fs::remove_file(&blocked).unwrap();
    let shipped = sink.send(&batch, soon(), &StopFlag::new()).unwrap();
    assert_eq!(shipped.rejected.len(), 1);
    assert_eq!(
        dead_letters(&blocked.join(DEAD_LETTER_FILE))[0].1,
        batch.part(1..2).body()
    );
}

#[test]
fn connection_refused_is_retried_with_growing_backoff_until_the_receiver_is_back() {
    // A port nothing listens on: bind, note it, close.
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dir = TempDir::new("refused").unwrap();
    let mut sink = HttpSink::new(config(&format!("http://{addr}/ingest"), &dir)).unwrap();
    let mut retries: Vec<(Instant, Retry)> = Vec::new();
    let mut receiver = None;
    let batch = batch(1, 2);
    let shipped = sink
        .send_observed(&batch, soon(), &StopFlag::new(), &mut |r: &Retry| {
            retries.push((Instant::now(), r.clone()));
            // The collector comes back after the fifth refusal.
            if retries.len() == 5 {
                let listener = TcpListener::bind(addr).expect("the freed port is still free");
                receiver = Some(Receiver::start_on(listener, |_| reply(200)));
            }
        })
        .unwrap();
    assert_eq!(shipped, acknowledged(6));
    let ceilings: Vec<u64> = retries
        .iter()
        .map(|(_, r)| r.ceiling.as_millis() as u64)
        .collect();
    assert_eq!(ceilings, vec![20, 40, 80, 160, 160]);
    for (i, (at, r)) in retries.iter().enumerate() {
        assert!(r.error.contains("refused"), "{}", r.error);
        assert!(r.wait <= r.ceiling, "full jitter stays under the ceiling");
        if let Some((next, _)) = retries.get(i + 1) {
            assert!(
                *next - *at >= r.wait,
                "attempt {} came before its wait was over",
                i + 2
            );
        }
    }
    let receiver = receiver.expect("started");
    assert_eq!(receiver.requests().len(), 1);
    assert_eq!(receiver.requests()[0].ndjson(), batch.body());
}

#[test]
fn a_slow_receiver_times_out_and_is_retried_without_a_retry_storm() {
    let receiver = Receiver::start(|_| Reply {
        delay: Duration::from_secs(3),
        ..reply(200)
    });
    let dir = TempDir::new("slow").unwrap();
    let timeout = Duration::from_millis(300);
    let mut sink = HttpSink::new(HttpConfig {
        timeout,
        backoff: Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(400),
        },
        ..config(&receiver.url(), &dir)
    })
    .unwrap();
    let window = Duration::from_millis(2500);
    let started = Instant::now();
    let mut retries = Vec::new();
    let err = sink
        .send_observed(
            &batch(1, 2),
            started + window,
            &StopFlag::new(),
            &mut |r: &Retry| retries.push(r.clone()),
        )
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(err, HttpSinkError::DeadlineReached { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("stays in the spool"), "{err}");
    assert!(
        elapsed < window + Duration::from_millis(500),
        "the deadline bounds the send: {elapsed:?}"
    );
    assert!(
        retries.iter().all(|r| r.error.contains("did not answer")),
        "{retries:?}"
    );
    let requests = receiver.requests();
    // Each attempt costs at least the timeout, so the window holds at most window/timeout.
    let most = (window.as_millis() / timeout.as_millis()) as usize;
    assert!(
        (2..=most).contains(&requests.len()),
        "{} requests in {window:?}",
        requests.len()
    );
    assert!(
        requests.len() <= retries.len(),
        "every request seen was a failed attempt"
    );
    // No storm: after each timed-out attempt the sink waited its backoff before the next.
    let slack = Duration::from_millis(60);
    for (i, pair) in requests.windows(2).enumerate() {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap + slack >= timeout + retries[i].wait,
            "request {} came {gap:?} after the previous one; timeout {timeout:?} + wait {:?}",
            i + 2,
            retries[i].wait
        );
        assert_eq!(
            pair[0].header("idempotency-key"),
            pair[1].header("idempotency-key")
        );
    }
}

#[test]
fn a_stop_ends_the_wait_for_retry_after_at_once() {
    let receiver = Receiver::start(|_| Reply {
        headers: vec![("Retry-After", "30".into())],
        ..reply(503)
    });
    let dir = TempDir::new("stop").unwrap();
    let mut sink = HttpSink::new(config(&receiver.url(), &dir)).unwrap();
    let stop = StopFlag::new();
    let (tx, rx) = mpsc::channel::<()>();
    let stopper = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            // Raises the stop from another thread once the sink has decided to wait.
            if rx.recv_timeout(Duration::from_secs(20)).is_ok() {
                stop.stop();
            }
        })
    };
    let started = Instant::now();
    let err = sink
        .send_observed(&batch(1, 1), soon(), &stop, &mut |r: &Retry| {
            assert_eq!(r.retry_after, Some(Duration::from_secs(30)));
            let _ = tx.send(());
        })
        .unwrap_err();
    stopper.join().unwrap();
    assert!(
        matches!(err, HttpSinkError::Stopped { attempts: 1, .. }),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(receiver.requests().len(), 1);
}

#[test]
fn bad_urls_headers_and_ca_files_are_refused_at_start_with_what_to_fix() {
    let dir = TempDir::new("config").unwrap();
    let err = HttpSink::new(config("ftp://example.net/x", &dir))
        .unwrap_err()
        .to_string();
    assert!(err.contains("http(s)://"), "{err}");
    let err = HttpSink::new(HttpConfig {
        headers: vec![("Idempotency-Key".into(), "x".into())],
        ..config("http://127.0.0.1:9/", &dir)
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("sets this header itself"), "{err}");
    let missing = dir.join("missing-ca.pem");
    let err = HttpSink::new(HttpConfig {
        ca_file: Some(missing.clone()),
        ..config("https://127.0.0.1:9/", &dir)
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(&missing.display().to_string()) && err.contains("ca_file"),
        "{err}"
    );
    let not_pem = dir.join("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let err = HttpSink::new(HttpConfig {
        ca_file: Some(not_pem),
        ..config("https://127.0.0.1:9/", &dir)
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("no certificate") && err.contains("PEM"),
        "{err}"
    );
}

#[test]
fn https_to_a_collector_with_a_private_ca_trusts_exactly_the_ca_file() {
    let receiver = Receiver::start_tls(|_| reply(200));
    let dir = TempDir::new("tls").unwrap();
    let ca = dir.join("collector-ca.pem");
    std::fs::write(&ca, TEST_CA).unwrap();
    let url = format!("https://127.0.0.1:{}/ingest", receiver.addr.port());
    let mut sink = HttpSink::new(HttpConfig {
        ca_file: Some(ca),
        ..config(&url, &dir)
    })
    .unwrap();
    let batch = batch(9, 3);
    let shipped = sink.send(&batch, soon(), &StopFlag::new()).unwrap();
    assert_eq!(shipped, acknowledged(1));
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].ndjson(), batch.body());
    assert_eq!(requests[0].header("idempotency-key"), Some("rack-a12:9-11"));

    // Without the CA file the bundled public roots do not know this CA: retried, never sent.
    let mut public_roots = HttpSink::new(config(&url, &dir)).unwrap();
    let mut retries = Vec::new();
    let err = public_roots
        .send_observed(
            &batch,
            Instant::now() + Duration::from_millis(600),
            &StopFlag::new(),
            &mut |r: &Retry| retries.push(r.error.clone()),
        )
        .unwrap_err();
    assert!(
        matches!(err, HttpSinkError::DeadlineReached { .. }),
        "{err}"
    );
    assert!(
        retries[0].contains("TLS") && retries[0].contains("ca_file"),
        "{}",
        retries[0]
    );
    assert_eq!(
        receiver.requests().len(),
        1,
        "no request passed the handshake"
    );
}

#[test]
fn a_url_with_credentials_never_shows_them_in_errors_or_the_dead_letter_file() {
    use rackhand::sink::Sink;
    // The config refuses such a URL (tests/quick/check.rs); this is the sink given one anyway.
    let receiver = Receiver::start(|n| if n == 0 { reply(503) } else { reply(400) });
    let dir = TempDir::new("userinfo").unwrap();
    let url = receiver
        .url()
        .replacen("http://", "http://rack:hunter2@", 1);
    let shown = receiver.url().replacen("http://", "http://***@", 1);
    let mut sink = HttpSink::new(config(&url, &dir)).unwrap();
    assert_eq!(sink.describe(), format!("http {shown}"));
    let debug = format!("{sink:?} {:?}", sink.config());
    assert!(
        !debug.contains("hunter2") && debug.contains(&shown),
        "{debug}"
    );

    let mut errors = Vec::new();
    let shipped = sink
        .send_observed(&batch(1, 2), soon(), &StopFlag::new(), &mut |r: &Retry| {
            errors.push(r.error.clone())
        })
        .unwrap();
    assert_eq!(shipped.rejected.len(), 1, "{shipped:?}");
    let reason = &shipped.rejected[0].reason;
    assert!(
        reason.contains("400") && reason.contains(&shown) && !reason.contains("hunter2"),
        "{reason}"
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains(&format!("{shown} answered 503")),
        "{}",
        errors[0]
    );
    let dead = std::fs::read_to_string(dir.join(DEAD_LETTER_FILE)).unwrap();
    let head: serde_json::Value = serde_json::from_str(dead.lines().next().unwrap()).unwrap();
    assert_eq!(head["dead_letter"]["target"], shown.as_str());
    assert!(!dead.contains("hunter2"), "{dead}");

    let stop = StopFlag::new();
    stop.stop();
    let err = sink
        .send(&batch(3, 1), soon(), &stop)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&shown) && !err.contains("hunter2"), "{err}");
    let err = HttpSink::new(config("http://rack:hunter2@", &dir))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("http://***@") && !err.contains("hunter2"),
        "{err}"
    );
}
