//! A minimal HTTP/1.1 client for the tests that talk to `/metrics`, Prometheus' API and
//! node_exporter: one request as raw bytes, the whole answer read until the server closes
//! (every one of them answers with `Connection: close`, or is asked to), within a deadline.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::remaining;

/// A parsed answer.
#[derive(Debug)]
pub struct Response {
    pub code: u16,
    /// The head (status line and headers) as text.
    pub head: String,
    pub body: String,
}

impl Response {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// `GET path` with `Connection: close`.
pub fn get(addr: SocketAddr, path: &str, within: Duration) -> io::Result<Response> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    raw(addr, request.as_bytes(), within)
}

/// `GET path` as HTTP/1.0, for Go's servers (Prometheus, node_exporter): the answer then
/// comes whole until the close, never chunked.
pub fn get_http10(addr: SocketAddr, path: &str, within: Duration) -> io::Result<Response> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    raw(addr, request.as_bytes(), within)
}

/// Sends `request` as is and reads the answer until the server closes, within `within`.
pub fn raw(addr: SocketAddr, request: &[u8], within: Duration) -> io::Result<Response> {
    let until = Instant::now() + within;
    let mut stream = TcpStream::connect_timeout(&addr, within)?;
    stream.set_write_timeout(Some(within))?;
    stream.write_all(request)?;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = remaining(until).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no whole answer from {addr}"),
            )
        })?;
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            // The server may close with a reset after answering (unread request bytes).
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset && !bytes.is_empty() => break,
            Err(e) => return Err(e),
        }
    }
    parse(&bytes)
}

fn parse(bytes: &[u8]) -> io::Result<Response> {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other(format!("no HTTP head in {text:?}")))?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other(format!("no status code in {head:?}")))?;
    Ok(Response {
        code,
        head: head.to_string(),
        body: body.to_string(),
    })
}
