//! The channel: send a command, read until the device's prompt comes back, and return exactly
//! what the device printed for it.
//!
//! Every read has a deadline (no fixed sleeps: the transport waits for bytes or the deadline,
//! whichever comes first). The raw stream goes through [`screen::Screen`] (escapes, backspace,
//! line ends), pagers the device shows anyway are answered and removed, the echoed command is
//! dropped, and the text is capped at `max_output` so an endless stream cannot eat the board's
//! memory. Prompt and pager detection look only at the unfinished last line, at most
//! [`TAIL_WINDOW`] bytes of it, so each read costs the same however long the output grows.

pub mod screen;

use std::time::Instant;

use regex_lite::Regex;

use crate::transport::{Transport, TransportError};
use screen::Screen;

/// How much of the unfinished last line prompt and pager patterns see.
pub const TAIL_WINDOW: usize = 256;
/// The most [`Channel::settle`] reads before it stops waiting for quiet.
pub const SETTLE_MAX: usize = 64 * 1024;

/// A pager prompt and the key that answers it.
#[derive(Debug, Clone)]
pub struct Pager {
    pub pattern: Regex,
    pub answer: Vec<u8>,
}

/// Why a command's output is incomplete. Each carries the output as far as it came.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("no prompt from {peer} within the command timeout")]
    Timeout { peer: String, output: Vec<u8> },
    #[error("output from {peer} exceeded {limit} bytes; raise max_output if that much is expected")]
    TooLarge {
        peer: String,
        limit: usize,
        output: Vec<u8>,
    },
    #[error("{source}")]
    Transport {
        source: TransportError,
        output: Vec<u8>,
    },
}

impl ChannelError {
    /// The output collected before things went wrong.
    pub fn output(&self) -> &[u8] {
        match self {
            ChannelError::Timeout { output, .. }
            | ChannelError::TooLarge { output, .. }
            | ChannelError::Transport { output, .. } => output,
        }
    }
}

/// What a wait for patterns found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// Index of the pattern that matched the unfinished line.
    pub index: usize,
    /// Text before the matching line.
    pub before: Vec<u8>,
    /// The matching line (e.g. the prompt).
    pub line: String,
}

/// A prompt-driven conversation over one transport.
pub struct Channel<T: Transport> {
    transport: T,
    /// The text read and not yet handed out; its unfinished line is what patterns see.
    screen: Screen,
    pagers: Vec<Pager>,
    max_output: usize,
    read_buf: Box<[u8]>,
    /// Bytes the device sent over the channel's life (after transport framing).
    received: u64,
    /// How far completed lines of `text` have been matched against line patterns.
    lines_seen: usize,
}

impl<T: Transport> Channel<T> {
    pub fn new(transport: T, pagers: Vec<Pager>, max_output: usize) -> Self {
        Channel {
            transport,
            screen: Screen::new(),
            pagers,
            max_output,
            read_buf: vec![0; 16 * 1024].into_boxed_slice(),
            received: 0,
            lines_seen: 0,
        }
    }

    pub fn transport(&mut self) -> &mut T {
        &mut self.transport
    }

    pub fn into_transport(self) -> T {
        self.transport
    }

    pub fn peer(&self) -> &str {
        self.transport.peer()
    }

    /// How many bytes the device has sent so far: zero means it never said a word.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Sends raw bytes (a line, a key, a password).
    pub fn send(&mut self, data: &[u8]) -> Result<(), TransportError> {
        self.transport.send(data)
    }

    /// Forgets what was read so far (e.g. a banner before the first prompt).
    pub fn clear(&mut self) {
        self.take_text();
    }

    /// Runs one command: sends it, reads until `prompt` matches the last line, and returns the
    /// output without the echoed command and without the prompt.
    pub fn command(
        &mut self,
        command: &str,
        prompt: &Regex,
        deadline: Instant,
    ) -> Result<Vec<u8>, ChannelError> {
        self.clear();
        let mut line = command.as_bytes().to_vec();
        line.push(b'\n');
        self.transport
            .send(&line)
            .map_err(|source| ChannelError::Transport {
                source,
                output: Vec::new(),
            })?;
        // `max_output` bounds what the device printed for the command; its echo (the command
        // and a line end, at most) comes on top, and is stripped before the bound is applied.
        let limit = self.max_output + line.len() + 1;
        match self.wait_until(std::slice::from_ref(prompt), &[], deadline, limit) {
            Ok(m) => {
                let output = strip_echo(m.before, command);
                if output.len() > self.max_output {
                    return Err(self.too_large(output));
                }
                Ok(output)
            }
            Err(ChannelError::TooLarge { output, .. }) => {
                Err(self.too_large(strip_echo(output, command)))
            }
            Err(e) => Err(match e {
                ChannelError::Timeout { peer, output } => ChannelError::Timeout {
                    peer,
                    output: strip_echo(output, command),
                },
                too_large @ ChannelError::TooLarge { .. } => too_large,
                ChannelError::Transport { source, output } => ChannelError::Transport {
                    source,
                    output: strip_echo(output, command),
                },
            }),
        }
    }

    /// Reads until the line has been quiet for `quiet` (or `deadline` passes) and says whether
    /// anything arrived. For a console woken with one key: whether it answered decides the
    /// next key, and reacting before it is done talking would answer a prompt it is about to
    /// replace. Only the unfinished last line is kept (that is what the next wait looks at);
    /// a line that never stops talking ends the settling after [`SETTLE_MAX`] bytes.
    pub fn settle(
        &mut self,
        quiet: std::time::Duration,
        deadline: Instant,
    ) -> Result<bool, ChannelError> {
        let mut received = 0usize;
        // Bounded by `SETTLE_MAX` (each round reads at least one byte) and by `deadline`.
        while received < SETTLE_MAX {
            let until = deadline.min(Instant::now() + quiet);
            let n = match self.transport.recv(&mut self.read_buf, until) {
                Ok(n) => n,
                Err(TransportError::TimedOut { .. }) => break,
                Err(source) => {
                    return Err(ChannelError::Transport {
                        source,
                        output: self.take_text(),
                    });
                }
            };
            received += n;
            self.received += n as u64;
            self.screen.feed(&self.read_buf[..n]);
            self.take_front(self.screen.line_start());
            if Instant::now() >= deadline {
                break;
            }
        }
        Ok(received > 0)
    }

    /// Reads until one of `patterns` matches the unfinished last line (a prompt, `Username:`,
    /// `Password:`, `[yes/no]`), answering pagers on the way.
    pub fn wait_for(
        &mut self,
        patterns: &[Regex],
        deadline: Instant,
    ) -> Result<Matched, ChannelError> {
        self.wait_until(patterns, &[], deadline, self.max_output)
    }

    /// [`Channel::wait_for`], and also `line_patterns` against every line as it completes:
    /// for what a device prints with a line end and then waits (`Press RETURN to get
    /// started.`). A match of `line_patterns[i]` has index `patterns.len() + i` and consumes
    /// the completed lines.
    pub fn wait_for_lines(
        &mut self,
        patterns: &[Regex],
        line_patterns: &[Regex],
        deadline: Instant,
    ) -> Result<Matched, ChannelError> {
        self.wait_until(patterns, line_patterns, deadline, self.max_output)
    }

    /// Removes the first `end` bytes of the text; line-pattern bookkeeping moves with it.
    fn take_front(&mut self, end: usize) -> Vec<u8> {
        let front = self.screen.take_front(end);
        self.lines_seen = self.lines_seen.saturating_sub(front.len());
        front
    }

    fn take_text(&mut self) -> Vec<u8> {
        self.lines_seen = 0;
        self.screen.take_all()
    }

    /// The output cut to `max_output`, as an error.
    fn too_large(&self, mut output: Vec<u8>) -> ChannelError {
        output.truncate(self.max_output);
        ChannelError::TooLarge {
            peer: self.peer().to_string(),
            limit: self.max_output,
            output,
        }
    }

    /// [`Channel::wait_for`] with the text bounded by `limit` bytes.
    fn wait_until(
        &mut self,
        patterns: &[Regex],
        line_patterns: &[Regex],
        deadline: Instant,
        limit: usize,
    ) -> Result<Matched, ChannelError> {
        loop {
            if let Some(found) = self.check_tail(patterns)? {
                return Ok(found);
            }
            if !line_patterns.is_empty()
                && let Some(found) = self.check_lines(patterns.len(), line_patterns)
            {
                return Ok(found);
            }
            if self.screen.text().len() > limit {
                self.screen.truncate(limit);
                return Err(ChannelError::TooLarge {
                    peer: self.peer().to_string(),
                    limit: self.max_output,
                    output: self.take_text(),
                });
            }
            let n = match self.transport.recv(&mut self.read_buf, deadline) {
                Ok(n) => n,
                Err(TransportError::TimedOut { peer }) => {
                    return Err(ChannelError::Timeout {
                        peer,
                        output: self.take_text(),
                    });
                }
                Err(source) => {
                    return Err(ChannelError::Transport {
                        source,
                        output: self.take_text(),
                    });
                }
            };
            self.received += n as u64;
            self.screen.feed(&self.read_buf[..n]);
        }
    }

    /// Looks at the unfinished line: a pager is answered and removed; a pattern match ends
    /// the wait.
    fn check_tail(&mut self, patterns: &[Regex]) -> Result<Option<Matched>, ChannelError> {
        let text = self.screen.text();
        let start = self.screen.line_start();
        if start >= text.len() {
            return Ok(None);
        }
        let mut tail_start = start.max(text.len().saturating_sub(TAIL_WINDOW));
        // A prompt redrawn after a bare CR (`\rsw1#`) starts where the CR left the cursor.
        if let Some(cr) = text[tail_start..].iter().rposition(|&b| b == b'\r') {
            tail_start += cr + 1;
            if tail_start >= text.len() {
                return Ok(None);
            }
        }
        let tail = String::from_utf8_lossy(&text[tail_start..]).into_owned();
        if let Some(index) = patterns.iter().position(|p| p.is_match(&tail)) {
            let before = self.take_front(start);
            self.take_text();
            return Ok(Some(Matched {
                index,
                before,
                line: tail,
            }));
        }
        if let Some(pager) = self.pagers.iter().find(|p| p.pattern.is_match(&tail)) {
            let answer = pager.answer.clone();
            self.screen.drop_unfinished();
            self.transport
                .send(&answer)
                .map_err(|source| ChannelError::Transport {
                    source,
                    output: self.take_text(),
                })?;
        }
        Ok(None)
    }
}

impl<T: Transport> Channel<T> {
    /// Matches the lines completed since the last look against `line_patterns`; each line is
    /// looked at once (at most its last [`TAIL_WINDOW`] bytes), so the cost stays linear.
    fn check_lines(&mut self, offset: usize, line_patterns: &[Regex]) -> Option<Matched> {
        let start = self.screen.line_start();
        let mut begin = self.lines_seen.min(start);
        while begin < start {
            let text = self.screen.text();
            let end = text[begin..start]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(start, |i| begin + i);
            let from = begin.max(end.saturating_sub(TAIL_WINDOW));
            let line = String::from_utf8_lossy(&text[from..end]).into_owned();
            if let Some(i) = line_patterns.iter().position(|p| p.is_match(&line)) {
                let mut before = self.take_front(start);
                before.truncate(begin);
                self.lines_seen = 0;
                return Some(Matched {
                    index: offset + i,
                    before,
                    line,
                });
            }
            begin = end + 1;
        }
        self.lines_seen = start;
        None
    }
}

/// Drops the echoed command line, if the first line is one.
fn strip_echo(mut text: Vec<u8>, command: &str) -> Vec<u8> {
    let end = text.iter().position(|&b| b == b'\n').unwrap_or(text.len());
    let first = String::from_utf8_lossy(&text[..end]);
    let cmd = command.trim();
    if !cmd.is_empty() && first.trim_end().ends_with(cmd) {
        let cut = (end + 1).min(text.len());
        text.drain(..cut);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::time::Duration;

    /// A scripted device: each `send` of a line releases the next batch of reads.
    struct Script {
        reads: VecDeque<Vec<u8>>,
        sent: Vec<u8>,
        on_send: VecDeque<Vec<Vec<u8>>>,
    }

    impl Transport for Script {
        fn recv(&mut self, buf: &mut [u8], _deadline: Instant) -> Result<usize, TransportError> {
            match self.reads.pop_front() {
                Some(chunk) => {
                    buf[..chunk.len()].copy_from_slice(&chunk);
                    Ok(chunk.len())
                }
                None => Err(TransportError::TimedOut {
                    peer: "script".into(),
                }),
            }
        }
        fn send(&mut self, data: &[u8]) -> Result<(), TransportError> {
            self.sent.extend_from_slice(data);
            if let Some(batch) = self.on_send.pop_front() {
                self.reads.extend(batch);
            }
            Ok(())
        }
        fn peer(&self) -> &str {
            "script"
        }
    }

    fn channel(on_send: Vec<Vec<&[u8]>>) -> Channel<Script> {
        let pagers = vec![Pager {
            pattern: Regex::new(r"^\s*--\s?More\s?--\s*$").unwrap(),
            answer: b" ".to_vec(),
        }];
        Channel::new(
            Script {
                reads: VecDeque::new(),
                sent: Vec::new(),
                on_send: on_send
                    .into_iter()
                    .map(|b| b.into_iter().map(|c| c.to_vec()).collect())
                    .collect(),
            },
            pagers,
            1 << 20,
        )
    }

    fn deadline() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn output_is_what_the_device_printed_without_echo_or_prompt() {
        let prompt = Regex::new(r"^sw1[>#]\s*$").unwrap();
        let mut ch = channel(vec![vec![
            b"show cl",
            b"ock\r\n*10:00:00.123 UTC Thu Nov 26 2026\r\n",
            b"sw1#",
        ]]);
        let out = ch.command("show clock", &prompt, deadline()).unwrap();
        assert_eq!(out, b"*10:00:00.123 UTC Thu Nov 26 2026\n");
        assert_eq!(ch.transport().sent, b"show clock\n");
    }

    #[test]
    fn pagers_are_answered_and_leave_no_trace() {
        let prompt = Regex::new(r"^sw1#$").unwrap();
        let erase = [&[8u8; 10][..], &[b' '; 10][..], &[8u8; 10][..]].concat();
        let erase: &'static [u8] = Box::leak(erase.into_boxed_slice());
        let mut ch = channel(vec![
            vec![b"show x\r\nline1\r\n --More-- "],
            vec![erase, b"line2\r\nsw1#"],
        ]);
        let out = ch.command("show x", &prompt, deadline()).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "line1\nline2\n");
        assert_eq!(ch.transport().sent, b"show x\n ");
    }

    #[test]
    fn a_prompt_after_a_bare_carriage_return_is_found() {
        let prompt = Regex::new(r"^sw1#$").unwrap();
        let mut ch = channel(vec![vec![b"show x\r\nout\r\n  \x08\x08x", b"\rsw1#"]]);
        let out = ch.command("show x", &prompt, deadline()).unwrap();
        assert_eq!(out, b"out\n");
    }

    #[test]
    fn line_patterns_see_completed_lines_once() {
        let press = Regex::new(r"(?i)press return to get started").unwrap();
        let prompt = Regex::new(r"^Username: $").unwrap();
        let mut ch = channel(vec![]);
        ch.transport().reads.extend([
            b"\r\nsw1 con0 is now available\r\n\r\nPress RETURN to get started.\r\n\r\n".to_vec(),
            b"Username: ".to_vec(),
        ]);
        let m = ch
            .wait_for_lines(
                std::slice::from_ref(&prompt),
                std::slice::from_ref(&press),
                deadline(),
            )
            .unwrap();
        assert_eq!(
            (m.index, m.line.as_str()),
            (1, "Press RETURN to get started.")
        );
        // The consumed line does not match again; the tail pattern comes next.
        let m = ch
            .wait_for_lines(
                std::slice::from_ref(&prompt),
                std::slice::from_ref(&press),
                deadline(),
            )
            .unwrap();
        assert_eq!(m.index, 0);
    }

    #[test]
    fn a_timeout_keeps_what_came() {
        let prompt = Regex::new(r"^sw1#$").unwrap();
        let mut ch = channel(vec![vec![b"show tech\r\npart one\r\npart t"]]);
        match ch.command("show tech", &prompt, deadline()) {
            Err(ChannelError::Timeout { output, .. }) => assert_eq!(output, b"part one\npart t"),
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[test]
    fn endless_output_stops_at_the_cap_with_what_came() {
        let prompt = Regex::new(r"^sw1#$").unwrap();
        let chunk: &'static [u8] = Box::leak(vec![b'y'; 4096].into_boxed_slice());
        let mut ch = channel(vec![vec![chunk; 64]]);
        ch.max_output = 10_000;
        match ch.command("yes", &prompt, deadline()) {
            Err(ChannelError::TooLarge { output, limit, .. }) => {
                assert_eq!(limit, 10_000);
                assert_eq!(output.len(), 10_000);
            }
            other => panic!("expected output_too_large, got {other:?}"),
        }
    }

    #[test]
    fn the_cap_counts_the_output_without_the_echo() {
        let prompt = Regex::new(r"^sw1#$").unwrap();
        let chunk: &'static [u8] = Box::leak(vec![b'y'; 4096].into_boxed_slice());
        let mut batch: Vec<&[u8]> = vec![b"yes\r\n"];
        batch.extend(std::iter::repeat_n(chunk, 8));
        let mut ch = channel(vec![batch]);
        ch.max_output = 10_000;
        match ch.command("yes", &prompt, deadline()) {
            Err(ChannelError::TooLarge { output, .. }) => {
                assert_eq!(output, vec![b'y'; 10_000]);
            }
            other => panic!("expected output_too_large, got {other:?}"),
        }
        // Without an echo, output just over the cap that ends at a prompt is still too large.
        let over: &'static [u8] = Box::leak(vec![b'z'; 10_003].into_boxed_slice());
        let mut ch = channel(vec![vec![over, b"\r\nsw1#"]]);
        ch.max_output = 10_000;
        match ch.command("yes", &prompt, deadline()) {
            Err(ChannelError::TooLarge { output, .. }) => assert_eq!(output.len(), 10_000),
            other => panic!("expected output_too_large, got {other:?}"),
        }
    }

    #[test]
    fn no_echo_means_nothing_is_stripped() {
        assert_eq!(
            strip_echo(b"data\nmore\n".to_vec(), "show x"),
            b"data\nmore\n"
        );
        assert_eq!(
            strip_echo(b"sw1#show x\nout\n".to_vec(), "show x"),
            b"out\n"
        );
    }

    #[test]
    fn a_wait_after_a_timeout_with_completed_lines_does_not_panic() {
        // The crash of issue 9: a log line, no prompt within the wait, then the next wait.
        let prompt = Regex::new(r"^sw1#$").unwrap();
        let press = Regex::new(r"(?i)press return").unwrap();
        let mut ch = channel(vec![vec![b"\r\nsw1#"]]);
        ch.transport().reads.push_back(
            b"*Mar  1 00:01:02.123: %LINK-3-UPDOWN: Interface Gi0/1, changed state to up\r\n"
                .to_vec(),
        );
        let wait = |ch: &mut Channel<Script>| {
            ch.wait_for_lines(
                std::slice::from_ref(&prompt),
                std::slice::from_ref(&press),
                deadline(),
            )
        };
        assert!(matches!(wait(&mut ch), Err(ChannelError::Timeout { .. })));
        ch.send(b"\r").unwrap();
        assert_eq!(wait(&mut ch).unwrap().line, "sw1#");
    }
}
