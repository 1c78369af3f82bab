//! The `http` sink: one gzip NDJSON `POST` per batch, retried until the collector takes it.
//!
//! Delivery is at-least-once, so a batch leaves the spool only once a 2xx acknowledged it.
//! Everything that may pass by itself is retried: connect errors, timeouts, 408, 429, 5xx (and
//! a redirect or a refused credential or path (401, 403, 404, 405, 407), which only an
//! operator can fix, but must not lose data meanwhile). The waits
//! grow exponentially with full jitter (1 s → 60 s by default) and honour `Retry-After`, so a
//! fleet of agents coming back after an outage does not hammer the collector in step.
//!
//! A 413 (Payload Too Large) is about size, and a smaller request may pass: the batch is sent
//! again in two halves by record, each keyed by its own seq range (so a resend after a restart
//! makes the same parts with the same keys), and so on down to single records. A record still
//! refused alone, and a batch or part refused with any other 4xx (the collector will never
//! take it), goes whole to the dead-letter file (`super::dead_letter`) and is reported as
//! rejected; the rest is delivered, so one bad record cannot block the stream forever.
//!
//! [`HttpSink::send`] blocks, but the agent can always stop it: the caller passes a deadline
//! and a [`StopFlag`], every wait between attempts is a condvar wait on that flag, and one
//! attempt never outlasts the configured `timeout` (nor the deadline).

use std::borrow::Cow;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flate2::Compression;
use flate2::write::GzEncoder;
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

use super::dead_letter::{self, DeadLetterError, DeadLetters, Refusal, Refuser};
pub use super::{Backoff, Retry, StopFlag};
use super::{Jitter, Shipped};
use crate::batch::Batch;
use crate::config::url::{redact, redact_in};
use crate::inventory::Upstream;

/// How much of a response body is kept for the dead-letter file and error messages.
pub(crate) const RESPONSE_EXCERPT: usize = 2048;
/// A `Retry-After` longer than this is cut to it: an HTTP date read with an unsynchronised
/// clock (a Pi without RTC boots in 1970) could otherwise mean a wait of decades.
pub(crate) const RETRY_AFTER_MAX: Duration = Duration::from_secs(600);

/// Headers the sink sets itself; config may not override them.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-encoding",
    "content-length",
    "transfer-encoding",
    "idempotency-key",
    "host",
];

/// What the sink needs, resolved: header values already read from env or files.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpConfig {
    pub url: String,
    /// Extra headers (e.g. `Authorization`), values already resolved.
    pub headers: Vec<(String, String)>,
    /// PEM file with the CA certificate(s) to trust instead of the bundled Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// The longest one attempt may take, connect to last response byte.
    pub timeout: Duration,
    pub backoff: Backoff,
    /// Where `dead-letter.ndjson` goes (the agent passes its `state_dir`).
    pub dead_letter_dir: PathBuf,
    /// Where the dead-letter file rotates (see `super::dead_letter`).
    pub dead_letter_max_bytes: u64,
    /// Honour `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY` from the environment.
    pub proxy_from_env: bool,
}

/// Header values are left out: they are often credentials (`Authorization`).
impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("HttpConfig")
            .field("url", &redact(&self.url))
            .field("headers", &names)
            .field("ca_file", &self.ca_file)
            .field("timeout", &self.timeout)
            .field("backoff", &self.backoff)
            .field("dead_letter_dir", &self.dead_letter_dir)
            .field("dead_letter_max_bytes", &self.dead_letter_max_bytes)
            .field("proxy_from_env", &self.proxy_from_env)
            .finish()
    }
}

impl HttpConfig {
    /// From `[upstream]`. `headers` are the upstream's `headers` with the values the caller
    /// resolved (read from env or files); the sink never reads secrets itself.
    pub fn from_upstream(
        upstream: &Upstream,
        headers: Vec<(String, String)>,
        dead_letter_dir: &Path,
    ) -> HttpConfig {
        HttpConfig {
            url: upstream.target.clone(),
            headers,
            ca_file: upstream.ca_file.clone(),
            timeout: upstream.timeout,
            backoff: Backoff::default(),
            dead_letter_dir: dead_letter_dir.to_path_buf(),
            dead_letter_max_bytes: dead_letter::MAX_BYTES,
            proxy_from_env: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpSinkError {
    #[error(
        "[upstream] url `{url}` is not usable ({detail}); write it as http(s)://host[:port]/path"
    )]
    BadUrl { url: String, detail: String },
    #[error(
        "cannot read the CA file {path} for upstream {url}: {error}; check ca_file in [upstream] and that the agent may read it"
    )]
    CaFileRead {
        path: PathBuf,
        url: String,
        error: io::Error,
    },
    #[error(
        "the CA file {path} for upstream {url} {detail}; it must hold the collector's CA certificate(s) in PEM (-----BEGIN CERTIFICATE-----)"
    )]
    CaFileInvalid {
        path: PathBuf,
        url: String,
        detail: String,
    },
    #[error("[upstream] header `{name}` for {url}: {detail}")]
    BadHeader {
        name: String,
        url: String,
        detail: String,
    },
    #[error(
        "batch {key} to {url} not delivered: stopped after {attempts} attempt(s) (last: {last}); it stays in the spool and is sent again later"
    )]
    Stopped {
        url: String,
        key: String,
        attempts: u32,
        last: String,
    },
    #[error(
        "batch {key} to {url} not delivered before its deadline, {attempts} attempt(s) (last: {last}); it stays in the spool and is sent again"
    )]
    DeadlineReached {
        url: String,
        key: String,
        attempts: u32,
        last: String,
    },
    #[error(transparent)]
    DeadLetter(#[from] DeadLetterError),
}

/// How the collector settled one batch or part: taken, or refused for good.
enum Answer {
    Acknowledged,
    Refused { status: u16, excerpt: String },
}

/// What one attempt came to.
enum Attempt {
    Acknowledged,
    Refused {
        status: u16,
        excerpt: String,
    },
    Retry {
        error: String,
        status: Option<u16>,
        retry_after: Option<Duration>,
    },
}

pub struct HttpSink {
    config: HttpConfig,
    /// The URL as shown in dead-letter entries and rejections: without user info.
    shown_url: String,
    dead_letters: DeadLetters,
    agent: ureq::Agent,
    jitter: Jitter,
}

impl std::fmt::Debug for HttpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSink")
            .field("url", &self.shown_url)
            .finish_non_exhaustive()
    }
}

impl HttpSink {
    /// Checks the URL, headers and CA file now, so a mistake shows at start, not at the
    /// first batch.
    pub fn new(config: HttpConfig) -> Result<HttpSink, HttpSinkError> {
        let url = redact(&config.url).into_owned();
        let uri: ureq::http::Uri = config.url.parse().map_err(|e| HttpSinkError::BadUrl {
            url: url.clone(),
            detail: format!("{e}"),
        })?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(HttpSinkError::BadUrl {
                url,
                detail: "it needs an http:// or https:// scheme and a host".into(),
            });
        }
        for (name, value) in &config.headers {
            check_header(name, value, &url)?;
        }
        let mut tls = TlsConfig::builder();
        if let Some(path) = &config.ca_file {
            tls = tls.root_certs(read_ca_file(path, &url)?);
        }
        let mut builder = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // A redirected POST would be replayed as a GET (301/302/303) or refused: better
            // to see the 3xx and tell the operator which URL to configure.
            .max_redirects(0)
            .user_agent(format!("rackhand/{}", env!("CARGO_PKG_VERSION")))
            .timeout_global(Some(config.timeout))
            .tls_config(tls.build());
        if !config.proxy_from_env {
            builder = builder.proxy(None);
        }
        let agent = ureq::Agent::new_with_config(builder.build());
        Ok(HttpSink {
            jitter: Jitter::new(),
            shown_url: redact(&config.url).into_owned(),
            dead_letters: DeadLetters::new(&config.dead_letter_dir, config.dead_letter_max_bytes),
            config,
            agent,
        })
    }

    pub fn config(&self) -> &HttpConfig {
        &self.config
    }

    /// Sends `batch` until every record is acknowledged or dead-lettered, `until` passes or
    /// `stop` is raised.
    pub fn send(
        &mut self,
        batch: &Batch,
        until: Instant,
        stop: &StopFlag,
    ) -> Result<Shipped, HttpSinkError> {
        self.send_observed(batch, until, stop, &mut |_| {})
    }

    /// As [`HttpSink::send`], telling `observe` about every failed attempt before waiting.
    ///
    /// Parts refused for good are written to the dead-letter file only once every other part
    /// is acknowledged: a send that ends early (stop, deadline) leaves the whole batch in the
    /// spool and no dead-letter entry that the next send would write a second time.
    pub fn send_observed(
        &mut self,
        batch: &Batch,
        until: Instant,
        stop: &StopFlag,
        observe: &mut dyn FnMut(&Retry),
    ) -> Result<Shipped, HttpSinkError> {
        let mut attempts = 0u32;
        let mut refused = Vec::new();
        // Parts still to send, as record positions in `batch`; a stack, so the next part is
        // the last one pushed and the parts go out in seq order.
        let mut todo = Vec::with_capacity(8);
        todo.push(0..batch.len());
        while let Some(records) = todo.pop() {
            let part = if records.len() == batch.len() {
                Cow::Borrowed(batch)
            } else {
                Cow::Owned(batch.part(records.clone()))
            };
            match self.send_part(&part, until, stop, observe, &mut attempts)? {
                Answer::Acknowledged => {}
                Answer::Refused { status: 413, .. } if records.len() > 1 => {
                    let middle = records.start + records.len() / 2;
                    log::warn!(
                        "{} answered 413 (Payload Too Large) to batch {} ({} records, {} bytes): sending it again in two parts",
                        self.shown_url,
                        part.idempotency_key(),
                        part.len(),
                        part.body().len()
                    );
                    todo.push(middle..records.end);
                    todo.push(records.start..middle);
                }
                Answer::Refused { status, excerpt } => refused.push(Refusal {
                    part,
                    status: Some(status),
                    reason: refusal_reason(&self.shown_url, status, &excerpt),
                    response: Some(excerpt),
                }),
            }
        }
        let refuser = Refuser {
            sink: "http",
            target: &self.shown_url,
        };
        let rejected = self.dead_letters.write(refuser, &refused)?;
        Ok(Shipped { attempts, rejected })
    }

    /// Sends one batch or part until the collector acknowledges or refuses it for good;
    /// counts every request in `attempts`.
    fn send_part(
        &mut self,
        part: &Batch,
        until: Instant,
        stop: &StopFlag,
        observe: &mut dyn FnMut(&Retry),
        attempts: &mut u32,
    ) -> Result<Answer, HttpSinkError> {
        let body = gzip(part.body());
        let key = part.idempotency_key().to_string();
        let mut tries = 0u32;
        let mut last = String::from("no attempt made");
        loop {
            if stop.is_stopped() {
                return Err(self.not_delivered(true, &key, tries, last));
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.not_delivered(false, &key, tries, last));
            }
            tries += 1;
            *attempts += 1;
            let (error, status, retry_after) = match self.attempt(&body, &key, left) {
                Attempt::Acknowledged => return Ok(Answer::Acknowledged),
                Attempt::Refused { status, excerpt } => {
                    return Ok(Answer::Refused { status, excerpt });
                }
                Attempt::Retry {
                    error,
                    status,
                    retry_after,
                } => (error, status, retry_after),
            };
            let ceiling = self.config.backoff.ceiling(tries);
            let jittered = self.config.backoff.wait(tries, &mut self.jitter);
            let wait = retry_after.map_or(jittered, |r| r.max(jittered));
            let retry = Retry {
                attempt: tries,
                error,
                status,
                ceiling,
                retry_after,
                wait,
            };
            log::warn!(
                "batch {key}: attempt {tries} failed: {}; retrying in {:.1}s",
                retry.error,
                wait.as_secs_f64()
            );
            observe(&retry);
            last = retry.error;
            let next = Instant::now() + wait;
            if stop.wait_until(next.min(until)) {
                return Err(self.not_delivered(true, &key, tries, last));
            }
            if next > until {
                return Err(self.not_delivered(false, &key, tries, last));
            }
        }
    }

    fn not_delivered(
        &self,
        stopped: bool,
        key: &str,
        attempts: u32,
        last: String,
    ) -> HttpSinkError {
        let (url, key) = (self.shown_url.clone(), key.to_string());
        if stopped {
            HttpSinkError::Stopped {
                url,
                key,
                attempts,
                last,
            }
        } else {
            HttpSinkError::DeadlineReached {
                url,
                key,
                attempts,
                last,
            }
        }
    }

    fn attempt(&self, gz: &[u8], key: &str, left: Duration) -> Attempt {
        let url = &self.shown_url;
        let mut request = self
            .agent
            .post(&self.config.url)
            .header("Content-Type", "application/x-ndjson")
            .header("Content-Encoding", "gzip")
            .header("Idempotency-Key", key);
        for (name, value) in &self.config.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let timeout = self.config.timeout.min(left);
        let result = request
            .config()
            .timeout_global(Some(timeout))
            .build()
            .send(gz);
        let mut response = match result {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Retry {
                    error: describe(&e, url, timeout),
                    status: None,
                    retry_after: None,
                };
            }
        };
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let retry_after = header("retry-after")
            .and_then(|v| parse_retry_after(&v, SystemTime::now()))
            .map(|d| d.min(RETRY_AFTER_MAX));
        let location = header("location");
        // Reading a little of the body lets the connection be reused and gives the
        // dead-letter file the collector's reason; never more than the excerpt.
        let mut excerpt = Vec::new();
        let _ = response
            .body_mut()
            .as_reader()
            .take(RESPONSE_EXCERPT as u64)
            .read_to_end(&mut excerpt);
        let excerpt = String::from_utf8_lossy(&excerpt).into_owned();
        match status {
            200..=299 => Attempt::Acknowledged,
            408 | 429 | 500..=599 => Attempt::Retry {
                error: format!("{url} answered {status}: {}", one_line(&excerpt)),
                status: Some(status),
                retry_after,
            },
            300..=399 => Attempt::Retry {
                error: format!(
                    "{url} redirects ({status}) to {}; set [upstream] url to the address it redirects to",
                    redact(location.as_deref().unwrap_or("an unnamed location"))
                ),
                status: Some(status),
                retry_after,
            },
            // The collector refuses *us*, not this batch: a wrong or expired credential, a
            // wrong path. Every batch would fail alike, so dead-lettering would empty the
            // spool into the dead-letter file; wait for the operator instead.
            401 | 403 | 404 | 405 | 407 => Attempt::Retry {
                error: format!(
                    "{url} answered {status} ({}): {}; check [upstream] url and headers (credentials); records stay in the spool meanwhile",
                    match status {
                        401 | 407 => "not authenticated",
                        403 => "forbidden",
                        404 => "no such path",
                        _ => "method not allowed",
                    },
                    one_line(&excerpt)
                ),
                status: Some(status),
                retry_after,
            },
            400..=499 => Attempt::Refused { status, excerpt },
            _ => Attempt::Retry {
                error: format!("{url} answered with unexpected status {status}"),
                status: Some(status),
                retry_after,
            },
        }
    }
}

/// Why the collector refused records for good, in words: the URL, the status and its name,
/// and the start of the collector's answer.
fn refusal_reason(url: &str, status: u16, excerpt: &str) -> String {
    let name = ureq::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("refused");
    let answer = one_line(excerpt);
    if answer.is_empty() {
        format!("{url} answered {status} ({name})")
    } else {
        format!("{url} answered {status} ({name}): {answer}")
    }
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(
        Vec::with_capacity(body.len() / 4 + 64),
        Compression::default(),
    );
    encoder
        .write_all(body)
        .and_then(|()| encoder.finish())
        .expect("gzip into a Vec cannot fail")
}

fn one_line(text: &str) -> String {
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut cut: String = line.chars().take(200).collect();
    if cut.len() < line.len() {
        cut.push('…');
    }
    cut
}

fn check_header(name: &str, value: &str, url: &str) -> Result<(), HttpSinkError> {
    let bad = |detail: String| HttpSinkError::BadHeader {
        name: name.to_string(),
        url: url.to_string(),
        detail,
    };
    if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(bad(
            "the http sink sets this header itself; remove it from [upstream] headers".into(),
        ));
    }
    ureq::http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
        bad("not a valid header name (letters, digits and -, no spaces or colons)".into())
    })?;
    ureq::http::HeaderValue::from_str(value).map_err(|_| {
        bad("its value holds a control character or newline (a file with a trailing newline is trimmed; check the env variable or file it comes from)".into())
    })?;
    Ok(())
}

fn read_ca_file(path: &Path, url: &str) -> Result<RootCerts, HttpSinkError> {
    let pem = fs::read(path).map_err(|error| HttpSinkError::CaFileRead {
        path: path.to_path_buf(),
        url: url.to_string(),
        error,
    })?;
    let invalid = |detail: String| HttpSinkError::CaFileInvalid {
        path: path.to_path_buf(),
        url: url.to_string(),
        detail,
    };
    let mut certs: Vec<Certificate<'static>> = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(PemItem::Certificate(cert)) => certs.push(cert),
            Ok(_) => {}
            Err(e) => return Err(invalid(format!("is not valid PEM ({e})"))),
        }
    }
    if certs.is_empty() {
        return Err(invalid("holds no certificate".into()));
    }
    Ok(RootCerts::new_with_certs(&certs))
}

/// Says what a transport error means for the operator. `url` is already redacted; ureq's
/// own text may hold the URL as given (`bad uri: ...`), so the whole is redacted again.
fn describe(error: &ureq::Error, url: &str, timeout: Duration) -> String {
    let text = match error {
        ureq::Error::Timeout(what) => format!(
            "{url} did not answer within {:.1}s ({what}); the collector is slow or unreachable (raise [upstream] timeout if it is just slow)",
            timeout.as_secs_f64()
        ),
        ureq::Error::Io(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            format!("connection to {url} refused: is the collector running and listening there?")
        }
        ureq::Error::Io(e) if e.kind() == io::ErrorKind::TimedOut => format!(
            "{url} did not answer within {:.1}s; the collector is slow or unreachable",
            timeout.as_secs_f64()
        ),
        // rustls reports a failed handshake (unknown CA, expired or mismatched certificate)
        // as invalid data on the socket.
        ureq::Error::Io(e)
            if e.kind() == io::ErrorKind::InvalidData && url.starts_with("https:") =>
        {
            format!(
                "TLS with {url} failed ({e}); check ca_file in [upstream] (the CA that signed the collector's certificate) and that the certificate names this host"
            )
        }
        ureq::Error::Io(e) => format!("network error talking to {url}: {e}"),
        ureq::Error::HostNotFound => {
            format!("cannot resolve the host of {url}: check DNS on this machine and the url")
        }
        ureq::Error::ConnectionFailed => {
            format!("cannot connect to {url}: check the network path and the url")
        }
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::Pem(_) => format!(
            "TLS with {url} failed ({error}); check ca_file in [upstream] and the collector's certificate"
        ),
        other => format!("request to {url} failed: {other}"),
    };
    redact_in(&text).into_owned()
}

/// `Retry-After` as seconds or an HTTP date (IMF-fixdate, RFC 850 or asctime, RFC 9110).
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_http_date(value)?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs() as i64;
    Some(Duration::from_secs(at.saturating_sub(now).max(0) as u64))
}

/// Seconds since the epoch of an HTTP date.
fn parse_http_date(value: &str) -> Option<i64> {
    let parts: Vec<&str> = value.split([' ', ',']).filter(|p| !p.is_empty()).collect();
    let (day, month, year, time) = match parts.as_slice() {
        // Sun, 06 Nov 1994 08:49:37 GMT
        [_, d, m, y, t, "GMT"] => (*d, *m, y.parse::<i64>().ok()?, *t),
        // Sunday, 06-Nov-94 08:49:37 GMT
        [_, dmy, t, "GMT"] => {
            let mut it = dmy.split('-');
            let (d, m, y) = (it.next()?, it.next()?, it.next()?);
            let y: i64 = y.parse().ok()?;
            (d, m, if y < 70 { 2000 + y } else { 1900 + y }, *t)
        }
        // Sun Nov  6 08:49:37 1994
        [_, m, d, t, y] => (*d, *m, y.parse::<i64>().ok()?, *t),
        _ => return None,
    };
    let day: i64 = day.parse().ok()?;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    let mut hms = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, mi, s) = (hms.next()??, hms.next()??, hms.next()??);
    if !(1..=31).contains(&day) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + mi * 60 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl super::Sink for HttpSink {
    fn ship(
        &mut self,
        batch: &Batch,
        until: Instant,
        stop: &StopFlag,
        observe: &mut dyn FnMut(&Retry),
    ) -> Result<super::Shipped, super::SinkError> {
        Ok(self.send_observed(batch, until, stop, observe)?)
    }

    fn describe(&self) -> String {
        format!("http {}", self.shown_url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_as_seconds_or_any_http_date_form() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        let later = |v: &str| parse_retry_after(v, now);
        assert_eq!(later("120"), Some(Duration::from_secs(120)));
        assert_eq!(later(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            later("Sun, 06 Nov 1994 08:50:37 GMT"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            later("Sunday, 06-Nov-94 08:49:47 GMT"),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            later("Sun Nov  6 08:49:40 1994"),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            later("Sat, 05 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO),
            "past dates mean now"
        );
        assert_eq!(later("soon"), None);
        assert_eq!(later("-5"), None);
        assert_eq!(later("Sun, 06 Foo 1994 08:49:37 GMT"), None);
        assert_eq!(later("Sun, 06 Nov 1994 25:49:37 GMT"), None);
        assert_eq!(
            parse_http_date("Thu, 29 Feb 2024 00:00:00 GMT"),
            Some(1_709_164_800)
        );
    }

    #[test]
    fn the_backoff_ceiling_doubles_from_base_up_to_cap() {
        let b = Backoff::default();
        let secs: Vec<u64> = (1..=9).map(|n| b.ceiling(n).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn headers_the_sink_owns_or_that_are_malformed_are_refused() {
        assert!(check_header("Authorization", "Bearer x", "u").is_ok());
        let err = check_header("Content-Encoding", "br", "u")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sets this header itself"), "{err}");
        assert!(check_header("Bad Name", "x", "u").is_err());
        let err = check_header("Authorization", "Bearer x\n", "u")
            .unwrap_err()
            .to_string();
        assert!(err.contains("newline"), "{err}");
    }

    fn config() -> HttpConfig {
        HttpConfig {
            url: "http://127.0.0.1:9/ingest".into(),
            headers: vec![("Authorization".into(), "Bearer s3cret".into())],
            ca_file: None,
            timeout: Duration::from_secs(1),
            backoff: Backoff::default(),
            dead_letter_dir: std::env::temp_dir(),
            dead_letter_max_bytes: 1024,
            proxy_from_env: false,
        }
    }

    #[test]
    fn what_is_written_down_names_the_url_without_its_credentials() {
        assert_eq!(
            redact("https://user:s3cret@c.example:8443/ingest?x=a@b"),
            "https://***@c.example:8443/ingest?x=a@b"
        );
        assert_eq!(redact("http://c/ingest"), "http://c/ingest");
        assert_eq!(
            refusal_reason("https://c/ingest", 413, "body\n  too large"),
            "https://c/ingest answered 413 (Payload Too Large): body too large"
        );
        assert_eq!(
            refusal_reason("https://c/ingest", 422, ""),
            "https://c/ingest answered 422 (Unprocessable Entity)"
        );
    }

    #[test]
    fn debug_output_names_headers_but_never_shows_their_values() {
        let text = format!("{:?}", config());
        assert!(text.contains("Authorization"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }
}
