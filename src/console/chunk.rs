//! Cutting a console's byte stream into chunks, one console record each. Pure: no I/O, the
//! clock passed in, so the rules below are tested with a made-up clock.
//!
//! A record per byte would drown upstream, one per day would lose a crash's context until
//! evening. A chunk ends when the line goes quiet ([`Limits::quiet`], a device's burst of
//! messages is one record), at a size bound or a line bound (a console that never stops
//! talking still ships), and at a line end where possible (a cut inside a line leaves half a
//! message in each record). A chunk's `offset` counts the bytes read from the port since
//! capture began, including the bytes a job read ([`Chunker::skip`]), so offsets show where
//! the jobs were and never overlap.
//!
//! A chunk is an alert when one of its lines matches an alert pattern (the device's `alert`
//! regexes and its platform's `alerts`): checked per line, the line end removed, so `^` and
//! `$` anchor to the line.

use std::time::{Duration, Instant, SystemTime};

use regex_lite::Regex;

/// When a chunk ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Silence that ends a chunk.
    pub quiet: Duration,
    /// The largest chunk, in bytes.
    pub max_bytes: usize,
    /// The most lines in a chunk.
    pub max_lines: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            quiet: Duration::from_millis(500),
            max_bytes: 16 * 1024,
            max_lines: 200,
        }
    }
}

/// When bytes arrived: the monotonic clock for gaps, the wall clock for the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    pub at: Instant,
    pub wall: SystemTime,
}

impl Arrival {
    pub fn now() -> Arrival {
        Arrival {
            at: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// One console record's worth of bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleChunk {
    /// Bytes read from the port since capture began, before this chunk's first byte.
    pub offset: u64,
    /// When its first byte arrived.
    pub started_at: SystemTime,
    /// When its last byte arrived.
    pub ended_at: SystemTime,
    pub bytes: Vec<u8>,
    /// A line matched an alert pattern.
    pub alert: bool,
    /// Text a job's session set aside (the device printed it on its own during the job),
    /// not bytes the capture read: its offset lies within the job's bytes.
    pub during_job: bool,
}

/// The alert patterns of one device: its own and its platform's.
#[derive(Debug, Clone, Default)]
pub struct Alerts {
    patterns: Vec<Regex>,
}

impl Alerts {
    pub fn new(patterns: Vec<Regex>) -> Alerts {
        Alerts { patterns }
    }

    /// Whether `line` (one line, its line end removed) is an alert.
    pub fn matches(&self, line: &str) -> bool {
        self.patterns.iter().any(|p| p.is_match(line))
    }

    /// Whether any line of `bytes` is an alert.
    pub fn any_line(&self, bytes: &[u8]) -> bool {
        if self.patterns.is_empty() {
            return false;
        }
        bytes.split(|&b| b == b'\n').any(|line| {
            let line = String::from_utf8_lossy(line);
            self.matches(line.trim_matches(|c| c == '\r'))
        })
    }
}

/// See the module doc.
#[derive(Debug)]
pub struct Chunker {
    alerts: Alerts,
    limits: Limits,
    /// Offset of the first byte of `buf`.
    offset: u64,
    buf: Vec<u8>,
    /// Line ends in `buf`.
    lines: usize,
    first: Option<Arrival>,
    last: Option<Arrival>,
    during_job: bool,
}

impl Chunker {
    /// A chunker whose next byte is at `offset`.
    pub fn new(alerts: Alerts, limits: Limits, offset: u64) -> Chunker {
        Chunker {
            alerts,
            limits: Limits {
                quiet: limits.quiet,
                max_bytes: limits.max_bytes.max(1),
                max_lines: limits.max_lines.max(1),
            },
            offset,
            buf: Vec::new(),
            lines: 0,
            first: None,
            last: None,
            during_job: false,
        }
    }

    /// A chunker for the text a job set aside, starting at the job's first byte.
    pub fn for_job(alerts: Alerts, limits: Limits, offset: u64) -> Chunker {
        Chunker {
            during_job: true,
            ..Chunker::new(alerts, limits, offset)
        }
    }

    /// The offset the next byte gets.
    pub fn offset(&self) -> u64 {
        self.offset + self.buf.len() as u64
    }

    /// Bytes fed and not yet in a chunk.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Bytes arrived at `at`: returns the chunks they finished (a quiet gap before them, a
    /// bound reached).
    pub fn feed(&mut self, bytes: &[u8], at: Arrival) -> Vec<ConsoleChunk> {
        let mut done = Vec::new();
        if bytes.is_empty() {
            return done;
        }
        done.extend(self.poll(at.at));
        if self.first.is_none() {
            self.first = Some(at);
        }
        self.last = Some(at);
        self.buf.extend_from_slice(bytes);
        self.lines += bytes.iter().filter(|&&b| b == b'\n').count();
        // Each turn cuts at least one byte: bounded by the input.
        while self.buf.len() >= self.limits.max_bytes || self.lines >= self.limits.max_lines {
            let end = self.cut_point();
            done.push(self.take(end, at));
        }
        done
    }

    /// When the chunk in progress ends by silence, if one is in progress.
    pub fn deadline(&self) -> Option<Instant> {
        self.last
            .filter(|_| !self.buf.is_empty())
            .map(|l| l.at + self.limits.quiet)
    }

    /// The chunk in progress, if the line has been quiet since its last byte until `now`.
    pub fn poll(&mut self, now: Instant) -> Option<ConsoleChunk> {
        match self.deadline() {
            Some(d) if now >= d => self.flush(),
            _ => None,
        }
    }

    /// The chunk in progress, whatever its state (a job takes the port; capture stops).
    pub fn flush(&mut self) -> Option<ConsoleChunk> {
        if self.buf.is_empty() {
            return None;
        }
        let last = self.last.unwrap_or_else(Arrival::now);
        Some(self.take(self.buf.len(), last))
    }

    /// `n` bytes were read by someone else (a job): the next byte is `n` further on.
    /// Flush first: what was fed keeps its place.
    pub fn skip(&mut self, n: u64) {
        debug_assert!(self.buf.is_empty(), "skip with bytes pending");
        self.offset = self.offset() + n;
        self.buf.clear();
        self.lines = 0;
    }

    /// Where a bound cuts: after the last line end within the bounds, else at the byte
    /// bound (a line longer than a chunk).
    fn cut_point(&self) -> usize {
        let window = &self.buf[..self.buf.len().min(self.limits.max_bytes)];
        let mut seen = 0;
        let mut last_end = None;
        for (i, &b) in window.iter().enumerate() {
            if b == b'\n' {
                seen += 1;
                last_end = Some(i + 1);
                if seen == self.limits.max_lines {
                    break;
                }
            }
        }
        last_end.unwrap_or(window.len())
    }

    /// The first `end` bytes as a chunk; what follows starts the next one, as of `rest_at`.
    fn take(&mut self, end: usize, rest_at: Arrival) -> ConsoleChunk {
        let rest = self.buf.split_off(end);
        let bytes = std::mem::replace(&mut self.buf, rest);
        let first = self.first.unwrap_or(rest_at);
        let last = self.last.unwrap_or(rest_at);
        let chunk = ConsoleChunk {
            offset: self.offset,
            started_at: first.wall,
            ended_at: if self.buf.is_empty() {
                last.wall
            } else {
                rest_at.wall
            },
            alert: self.alerts.any_line(&bytes),
            during_job: self.during_job,
            bytes,
        };
        self.offset += chunk.bytes.len() as u64;
        self.lines = self.buf.iter().filter(|&&b| b == b'\n').count();
        if self.buf.is_empty() {
            self.first = None;
            self.last = None;
        } else {
            self.first = Some(rest_at);
        }
        chunk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Clock {
        base: Instant,
        wall: SystemTime,
    }

    impl Clock {
        fn new() -> Clock {
            Clock {
                base: Instant::now(),
                wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            }
        }

        fn at(&self, ms: u64) -> Arrival {
            Arrival {
                at: self.base + Duration::from_millis(ms),
                wall: self.wall + Duration::from_millis(ms),
            }
        }
    }

    fn chunker(limits: Limits) -> Chunker {
        Chunker::new(Alerts::default(), limits, 0)
    }

    fn texts(chunks: &[ConsoleChunk]) -> Vec<&str> {
        chunks
            .iter()
            .map(|c| std::str::from_utf8(&c.bytes).unwrap())
            .collect()
    }

    #[test]
    fn a_quiet_gap_ends_a_chunk_and_bytes_within_it_do_not() {
        let clock = Clock::new();
        let mut c = chunker(Limits::default());
        assert!(c.feed(b"one\r\n", clock.at(0)).is_empty());
        assert!(c.feed(b"two\r\n", clock.at(499)).is_empty());
        assert_eq!(c.poll(clock.at(998).at), None);
        assert_eq!(c.deadline(), Some(clock.at(999).at));
        let chunk = c.poll(clock.at(999).at).unwrap();
        assert_eq!(chunk.bytes, b"one\r\ntwo\r\n");
        assert_eq!(chunk.offset, 0);
        assert_eq!(chunk.started_at, clock.at(0).wall);
        assert_eq!(chunk.ended_at, clock.at(499).wall);
        assert_eq!(c.deadline(), None);
        // Bytes after a gap the caller did not poll for still start a chunk of their own.
        let done = c.feed(b"three\n", clock.at(5000));
        assert!(done.is_empty());
        let done = c.feed(b"four\n", clock.at(6000));
        assert_eq!(texts(&done), ["three\n"]);
        assert_eq!(done[0].offset, 10);
        assert_eq!(c.flush().unwrap().offset, 16);
    }

    #[test]
    fn a_partial_line_is_kept_until_the_gap_and_then_shipped() {
        let clock = Clock::new();
        let mut c = chunker(Limits::default());
        c.feed(b"rommon 1 ", clock.at(0));
        c.feed(b"> ", clock.at(10));
        let chunk = c.poll(clock.at(600).at).unwrap();
        assert_eq!(chunk.bytes, b"rommon 1 > ");
    }

    #[test]
    fn the_size_bound_cuts_at_the_last_line_end_within_it() {
        let clock = Clock::new();
        let mut c = chunker(Limits {
            max_bytes: 10,
            ..Limits::default()
        });
        let done = c.feed(b"abc\ndefg\nhijkl\n", clock.at(0));
        assert_eq!(texts(&done), ["abc\ndefg\n"]);
        assert_eq!(c.pending(), 6);
        // A line longer than a chunk is cut at the bound.
        let done = c.feed(b"0123456789012", clock.at(1));
        assert_eq!(texts(&done), ["hijkl\n", "0123456789"]);
        assert_eq!(done[1].offset, 15);
        assert!(c.feed(b"x", clock.at(2)).is_empty());
        assert_eq!(c.flush().unwrap().bytes, b"012x");
    }

    #[test]
    fn the_line_bound_cuts_after_that_many_lines() {
        let clock = Clock::new();
        let mut c = chunker(Limits {
            max_lines: 3,
            ..Limits::default()
        });
        let input: String = (1..=8).map(|n| format!("line {n}\n")).collect();
        let done = c.feed(input.as_bytes(), clock.at(0));
        assert_eq!(
            texts(&done),
            ["line 1\nline 2\nline 3\n", "line 4\nline 5\nline 6\n"]
        );
        assert_eq!(done[1].offset, 21);
        assert_eq!(c.flush().unwrap().bytes, b"line 7\nline 8\n");
    }

    #[test]
    fn offsets_count_every_byte_once_including_what_a_job_read() {
        let clock = Clock::new();
        let mut c = chunker(Limits {
            max_bytes: 7,
            ..Limits::default()
        });
        let mut chunks = Vec::new();
        for (i, piece) in [&b"ab\ncd\nef"[..], b"gh\n", b"ijklmnopq\n"]
            .iter()
            .enumerate()
        {
            chunks.extend(c.feed(piece, clock.at(i as u64)));
        }
        chunks.extend(c.flush());
        c.skip(1000);
        chunks.extend(c.feed(b"after\n", clock.at(10)));
        chunks.extend(c.flush());
        let mut next = 0;
        for chunk in &chunks[..chunks.len() - 1] {
            assert_eq!(chunk.offset, next);
            next += chunk.bytes.len() as u64;
        }
        assert_eq!(next, 21);
        assert_eq!(chunks.last().unwrap().offset, 1021);
        let all: Vec<u8> = chunks[..chunks.len() - 1]
            .iter()
            .flat_map(|c| c.bytes.clone())
            .collect();
        assert_eq!(all, b"ab\ncd\nefgh\nijklmnopq\n");
    }

    #[test]
    fn a_line_matching_an_alert_marks_its_chunk_only() {
        let clock = Clock::new();
        let alerts = Alerts::new(vec![Regex::new("%SYS-2-MALLOCFAIL:").unwrap()]);
        let mut c = Chunker::new(alerts, Limits::default(), 0);
        c.feed(b"%LINK-3-UPDOWN: up\r\n", clock.at(0));
        assert!(!c.poll(clock.at(600).at).unwrap().alert);
        // Split across reads, and the line end is \r\n.
        c.feed(b"*Mar 1: %SYS-2-MALL", clock.at(1000));
        c.feed(b"OCFAIL: Memory allocation\r\n", clock.at(1001));
        assert!(c.poll(clock.at(2000).at).unwrap().alert);
    }

    #[test]
    fn anchored_alerts_match_each_line_not_the_chunk() {
        let clock = Clock::new();
        let alerts = Alerts::new(vec![Regex::new(r"^rommon \d+ >").unwrap()]);
        let mut c = Chunker::new(alerts, Limits::default(), 0);
        c.feed(b"booting\r\nrommon 1 > ", clock.at(0));
        assert!(c.flush().unwrap().alert);
        c.feed(b"echo rommon 1 >\r\n", clock.at(0));
        assert!(!c.flush().unwrap().alert);
    }

    #[test]
    fn bytes_that_are_not_utf8_are_kept_exactly() {
        let clock = Clock::new();
        let mut c = chunker(Limits::default());
        let noise = [0xff, 0xfe, b'\n', 0x00, 0x80];
        c.feed(&noise, clock.at(0));
        assert_eq!(c.flush().unwrap().bytes, noise);
    }

    #[test]
    fn a_job_chunker_marks_its_chunks() {
        let clock = Clock::new();
        let mut c = Chunker::for_job(Alerts::default(), Limits::default(), 42);
        c.feed(b"log\n", clock.at(0));
        let chunk = c.flush().unwrap();
        assert!(chunk.during_job);
        assert_eq!(chunk.offset, 42);
    }
}
