//! The channel: send a command, read until the device's prompt comes back, and return exactly
//! what the device printed for it.
//!
//! Every read has a deadline (no fixed sleeps: the transport waits for bytes or the deadline,
//! whichever comes first). The raw stream goes through [`screen::Screen`] (escapes, backspace,
//! line ends), pagers the device shows anyway are answered and removed, and the text is
//! capped at `max_output` so an endless stream cannot eat the board's memory. Prompt and
//! pager detection look only at the unfinished last line, at most [`TAIL_WINDOW`] bytes of
//! it, so each read costs the same however long the output grows.
//!
//! Devices also talk on their own: consoles log to the line, reprint their prompt, print
//! banners. `reply` finds a command's reply between its echo and the next prompt; what came
//! before the echo, after the prompt or between commands is nobody's answer and goes to
//! `Channel::discard_unsolicited`, the one place such text leaves the channel.

pub(crate) mod reply;
pub mod screen;

use std::time::{Duration, Instant};

use regex_lite::Regex;

use crate::transport::{Transport, TransportError};
pub use reply::Prompt;
use reply::{ECHO_QUIET, Reply, Step};
use screen::Screen;

/// How much of the unfinished last line prompt and pager patterns see.
pub const TAIL_WINDOW: usize = 256;
/// The most [`Channel::settle`] reads before it stops waiting for quiet.
pub const SETTLE_MAX: usize = 64 * 1024;
/// The longest line an error message quotes.
pub const QUOTE_MAX: usize = 80;

/// A pager prompt and the key that answers it.
#[derive(Debug, Clone)]
pub struct Pager {
    pub(crate) pattern: Regex,
    pub(crate) answer: Vec<u8>,
}

/// Why a command's output is incomplete. Each carries the output as far as it came.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error(
        "no prompt from {peer} within the command timeout ({})",
        quote_last_line(last_line)
    )]
    Timeout {
        peer: String,
        output: Vec<u8>,
        /// The last line the device printed, quoted for people (see [`last_line`]).
        last_line: String,
    },
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

/// `last line: `host>`` or what stands for it, for messages.
pub fn quote_last_line(last_line: &str) -> String {
    if last_line.is_empty() {
        "it printed no line".to_string()
    } else {
        format!("last line: `{last_line}`")
    }
}

/// The last line of `text` with something on it, as a person would quote it: what follows its
/// last carriage return, trimmed, at most [`QUOTE_MAX`] characters (the end kept: that is
/// where a prompt is).
pub fn last_line(text: &[u8]) -> String {
    let line = text
        .split(|&b| b == b'\n')
        .rev()
        .map(|l| String::from_utf8_lossy(l))
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    let line = line.trim();
    let line = line.rsplit('\r').next().unwrap_or(line).trim();
    let chars = line.chars().count();
    if chars <= QUOTE_MAX {
        return line.to_string();
    }
    let kept: String = line.chars().skip(chars - (QUOTE_MAX - 1)).collect();
    format!("…{kept}")
}

/// What a wait for patterns found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// Index of the pattern that matched the unfinished line.
    pub(crate) index: usize,
    /// Text before the matching line.
    pub(crate) before: Vec<u8>,
    /// The matching line (e.g. the prompt).
    pub(crate) line: String,
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
    /// How far completed lines of the text have been matched against line patterns.
    lines_seen: usize,
    /// The line that ended the last wait (a prompt, `Username:`): a command's reply ends at a
    /// completed line identical to it, when it is a prompt.
    last_match: Option<String>,
    /// Bytes set aside by [`Channel::discard_unsolicited`].
    unsolicited: u64,
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
            last_match: None,
            unsolicited: 0,
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

    /// How many bytes the device printed on its own (log lines, reprinted prompts) and the
    /// channel set aside.
    pub fn unsolicited_bytes(&self) -> u64 {
        self.unsolicited
    }

    /// Sets aside what the session read and did not use (see `discard_unsolicited`):
    /// `text` it took out itself, then whatever is still unread on the screen. For the end
    /// of a session.
    pub fn set_aside_rest(&mut self, text: Vec<u8>) {
        self.discard_unsolicited(text);
        let rest = self.take_text();
        self.discard_unsolicited(rest);
    }

    /// Sets aside text a caller took out of a wait (what came before a login prompt, what a
    /// wait that timed out had seen): the device printed it on its own.
    pub(crate) fn set_aside(&mut self, text: Vec<u8>) {
        self.discard_unsolicited(text);
    }

    /// Sends raw bytes (a line, a key, a password).
    pub fn send(&mut self, data: &[u8]) -> Result<(), TransportError> {
        self.transport.send(data)
    }

    /// Text the device printed that answers nothing we asked: a console's backlog drained at
    /// wake-up, lines before a command's echo, what followed its prompt, what was left over
    /// between commands. Every such byte leaves the channel here and only here: counted,
    /// logged, and handed to the transport ([`Transport::set_aside`]), which keeps it when
    /// the console is captured (`crate::console`).
    fn discard_unsolicited(&mut self, text: Vec<u8>) {
        if text.is_empty() {
            return;
        }
        self.unsolicited += text.len() as u64;
        self.transport.set_aside(&text);
        log::debug!(
            "{}: set aside {} bytes the device printed on its own ({})",
            self.peer(),
            text.len(),
            quote_last_line(&last_line(&text))
        );
    }

    /// Runs one command: sends it, reads until `prompt` comes back after its echo, and returns
    /// the device's output for it: without the echo, the prompt (and its context line), and
    /// what the device printed on its own before the echo or after the prompt.
    pub fn command(
        &mut self,
        command: &str,
        prompt: &Prompt,
        deadline: Instant,
    ) -> Result<Vec<u8>, ChannelError> {
        let leftover = self.take_text();
        self.discard_unsolicited(leftover);
        let mut line = command.as_bytes().to_vec();
        line.push(b'\n');
        self.transport
            .send(&line)
            .map_err(|source| ChannelError::Transport {
                source,
                output: Vec::new(),
            })?;
        let mut reply = Reply::new(command, prompt, self.last_match.as_deref());
        loop {
            match reply.examine(self.screen.text(), self.screen.line_start()) {
                Step::Echo { noise, end } => {
                    let noise = self.take_front(noise);
                    self.take_front(end - noise.len());
                    self.discard_unsolicited(noise);
                    continue;
                }
                Step::Done { output, prompt_end } => return self.finish(output, prompt_end),
                Step::PromptBeforeEcho { output } => {
                    // A reprinted prompt is followed by the echo at once; a device that does
                    // not echo stays quiet after its prompt.
                    let quiet_until = deadline.min(Instant::now() + ECHO_QUIET);
                    match self.read(quiet_until) {
                        Ok(()) => continue,
                        Err(TransportError::TimedOut { .. }) => {
                            let end = self.screen.text().len();
                            return self.finish(output, end);
                        }
                        Err(source) => return Err(self.transport_error(source)),
                    }
                }
                Step::Read => {}
            }
            self.answer_pager()?;
            // `max_output` bounds what the device printed for the command; the echo and the
            // prompt line come on top until they are cut.
            let limit = self.max_output + reply.echo_allowance() + TAIL_WINDOW;
            if self.screen.text().len() > limit {
                let output = self.take_text();
                return Err(self.too_large(output));
            }
            match self.read(deadline) {
                Ok(()) => {}
                Err(TransportError::TimedOut { peer }) => return Err(self.timeout(peer)),
                Err(source) => return Err(self.transport_error(source)),
            }
        }
    }

    /// Hands out `text[..output]`, drops the prompt up to `prompt_end` (remembering it) and
    /// sets aside what followed.
    fn finish(&mut self, output: usize, prompt_end: usize) -> Result<Vec<u8>, ChannelError> {
        let output = self.take_front(output);
        let prompt = self.take_front(prompt_end - output.len());
        self.last_match = Some(last_line_raw(&prompt));
        let after = self.take_text();
        self.discard_unsolicited(after);
        if output.len() > self.max_output {
            return Err(self.too_large(output));
        }
        Ok(output)
    }

    /// Reads until the line has been quiet for `quiet` (or `deadline` passes) and says whether
    /// anything arrived. For a console woken with one key: whether it answered decides the
    /// next key, and reacting before it is done talking would answer a prompt it is about to
    /// replace. Only the unfinished last line is kept (that is what the next wait looks at);
    /// a line that never stops talking ends the settling after [`SETTLE_MAX`] bytes.
    pub fn settle(&mut self, quiet: Duration, deadline: Instant) -> Result<bool, ChannelError> {
        let before = self.received;
        // Bounded by `SETTLE_MAX` (each round reads at least one byte) and by `deadline`.
        while self.received - before < SETTLE_MAX as u64 {
            let until = deadline.min(Instant::now() + quiet);
            match self.read(until) {
                Ok(()) => {}
                Err(TransportError::TimedOut { .. }) => break,
                Err(source) => return Err(self.transport_error(source)),
            }
            let completed = self.take_front(self.screen.line_start());
            self.discard_unsolicited(completed);
            if Instant::now() >= deadline {
                break;
            }
        }
        Ok(self.received > before)
    }

    /// Reads until one of `patterns` matches the unfinished last line (a prompt, `Username:`,
    /// `Password:`, `[yes/no]`), answering pagers on the way.
    pub fn wait_for(
        &mut self,
        patterns: &[Regex],
        deadline: Instant,
    ) -> Result<Matched, ChannelError> {
        self.wait_until(patterns, &[], deadline)
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
        self.wait_until(patterns, line_patterns, deadline)
    }

    /// One read into the screen, waiting at most until `until`.
    fn read(&mut self, until: Instant) -> Result<(), TransportError> {
        let n = self.transport.recv(&mut self.read_buf, until)?;
        self.received += n as u64;
        self.screen.feed(&self.read_buf[..n]);
        Ok(())
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

    fn timeout(&mut self, peer: String) -> ChannelError {
        let output = self.take_text();
        ChannelError::Timeout {
            peer,
            last_line: last_line(&output),
            output,
        }
    }

    fn transport_error(&mut self, source: TransportError) -> ChannelError {
        ChannelError::Transport {
            source,
            output: self.take_text(),
        }
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

    /// [`Channel::wait_for`] with line patterns, the text bounded by `max_output`.
    fn wait_until(
        &mut self,
        patterns: &[Regex],
        line_patterns: &[Regex],
        deadline: Instant,
    ) -> Result<Matched, ChannelError> {
        loop {
            if let Some(found) = self.check_tail(patterns) {
                return Ok(found);
            }
            self.answer_pager()?;
            if !line_patterns.is_empty()
                && let Some(found) = self.check_lines(patterns.len(), line_patterns)
            {
                return Ok(found);
            }
            if self.screen.text().len() > self.max_output {
                self.screen.truncate(self.max_output);
                let output = self.take_text();
                return Err(ChannelError::TooLarge {
                    peer: self.peer().to_string(),
                    limit: self.max_output,
                    output,
                });
            }
            match self.read(deadline) {
                Ok(()) => {}
                Err(TransportError::TimedOut { peer }) => return Err(self.timeout(peer)),
                Err(source) => return Err(self.transport_error(source)),
            }
        }
    }

    /// The unfinished line as patterns see it, if there is one.
    fn tail(&self) -> Option<String> {
        let unfinished = self.screen.unfinished();
        let tail = reply::view(unfinished);
        (!tail.is_empty()).then(|| tail.into_owned())
    }

    /// A pattern matching the unfinished line ends the wait: the text before it is handed out,
    /// the line itself remembered.
    fn check_tail(&mut self, patterns: &[Regex]) -> Option<Matched> {
        let tail = self.tail()?;
        let index = patterns.iter().position(|p| p.is_match(&tail))?;
        let before = self.take_front(self.screen.line_start());
        self.take_text();
        self.last_match = Some(tail.trim_end().to_string());
        Some(Matched {
            index,
            before,
            line: tail,
        })
    }

    /// A pager on the unfinished line is answered and removed.
    fn answer_pager(&mut self) -> Result<(), ChannelError> {
        let Some(tail) = self.tail() else {
            return Ok(());
        };
        let Some(pager) = self.pagers.iter().find(|p| p.pattern.is_match(&tail)) else {
            return Ok(());
        };
        let answer = pager.answer.clone();
        self.screen.drop_unfinished();
        self.transport
            .send(&answer)
            .map_err(|source| self.transport_error(source))
    }

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
                let mut consumed = self.take_front(start);
                consumed.truncate(begin);
                self.lines_seen = 0;
                self.last_match = Some(line.trim_end().to_string());
                return Some(Matched {
                    index: offset + i,
                    before: consumed,
                    line,
                });
            }
            begin = end + 1;
        }
        self.lines_seen = start;
        None
    }
}

/// The last line of a prompt as it was printed (after its last carriage return, trailing
/// blanks dropped), for comparing with the next prompt.
fn last_line_raw(prompt: &[u8]) -> String {
    let end = prompt.strip_suffix(b"\n").unwrap_or(prompt);
    let begin = end.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    reply::view(&end[begin..]).trim_end().to_string()
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
        let prompt = Prompt::new(Regex::new(r"^sw1[>#]\s*$").unwrap());
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
        let prompt = Prompt::new(Regex::new(r"^sw1#$").unwrap());
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
        let prompt = Prompt::new(Regex::new(r"^sw1#$").unwrap());
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
        let prompt = Prompt::new(Regex::new(r"^sw1#$").unwrap());
        let mut ch = channel(vec![vec![b"show tech\r\npart one\r\npart t"]]);
        match ch.command("show tech", &prompt, deadline()) {
            Err(ChannelError::Timeout { output, .. }) => assert_eq!(output, b"part one\npart t"),
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[test]
    fn endless_output_stops_at_the_cap_with_what_came() {
        let prompt = Prompt::new(Regex::new(r"^sw1#$").unwrap());
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
        let prompt = Prompt::new(Regex::new(r"^sw1#$").unwrap());
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
    fn without_an_echo_the_output_is_everything_before_the_prompt() {
        let prompt = Prompt::new(Regex::new(r"^sw1#$").unwrap());
        let mut ch = channel(vec![vec![b"data\r\nmore\r\nsw1#"]]);
        let out = ch.command("show x", &prompt, deadline()).unwrap();
        assert_eq!(out, b"data\nmore\n");
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
        match wait(&mut ch) {
            Err(ChannelError::Timeout { last_line, .. }) => {
                assert!(last_line.ends_with("changed state to up"), "{last_line}")
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        ch.send(b"\r").unwrap();
        assert_eq!(wait(&mut ch).unwrap().line, "sw1#");
    }

    #[test]
    fn log_lines_and_reprinted_prompts_around_commands_are_not_output() {
        let prompt = Prompt::new(Regex::new(r"^sw1#$").unwrap());
        let log = |n: u32| {
            format!(
                "*Mar  1 00:00:{n:02}.000: %LINK-3-UPDOWN: Interface Gi0/{n}, changed state to up"
            )
        };
        let leak = |s: String| -> &'static [u8] { Box::leak(s.into_bytes().into_boxed_slice()) };
        let mut ch = channel(vec![
            // Before the echo, with a reprinted prompt; after the prompt, pushed up.
            vec![
                leak(format!("\r\n{}\r\nsw1#", log(1))),
                b"show clock\r\n10:00\r\nsw1#",
                leak(format!("\r\n{}\r\n", log(2))),
            ],
            // Before the echo without a reprint; the prompt and a log line in one read.
            vec![leak(format!(
                "\r\n{}\r\nshow version\r\nIOS 15\r\nsw1#\r\n{}\r\nsw1#",
                log(3),
                log(4)
            ))],
            vec![b"show clock\r\n10:01\r\nsw1#"],
        ]);
        ch.last_match = Some("sw1#".into());
        assert_eq!(
            ch.command("show clock", &prompt, deadline()).unwrap(),
            b"10:00\n"
        );
        assert_eq!(
            ch.command("show version", &prompt, deadline()).unwrap(),
            b"IOS 15\n"
        );
        assert_eq!(
            ch.command("show clock", &prompt, deadline()).unwrap(),
            b"10:01\n"
        );
        assert!(ch.unsolicited_bytes() >= 4 * log(1).len() as u64);
    }

    #[test]
    fn junos_context_lines_are_part_of_the_prompt() {
        let platform = crate::platform::table().get("juniper_junos").unwrap();
        let prompt = Prompt {
            line: platform.prompt.clone().unwrap(),
            context: platform.prompt_context.clone(),
        };
        let mut ch = channel(vec![vec![
            b"show version \r\nHostname: edge1\r\n\r\n{master:0}\r\nnetops@edge1> ",
        ]]);
        let out = ch.command("show version", &prompt, deadline()).unwrap();
        assert_eq!(out, b"Hostname: edge1\n\n");
    }

    #[test]
    fn a_command_timeout_quotes_the_last_line_bounded() {
        let prompt = Prompt::new(Regex::new(r"^admin@host[>#] $").unwrap());
        let mut ch = channel(vec![vec![b"show version\r\nJunos: 21.4\r\n\r\nhost> "]]);
        let e = ch.command("show version", &prompt, deadline()).unwrap_err();
        assert!(e.to_string().contains("last line: `host>`"), "{e}");
        let long = format!("{}>", "x".repeat(500));
        assert_eq!(last_line(long.as_bytes()).chars().count(), QUOTE_MAX);
        assert!(last_line(long.as_bytes()).ends_with("x>"));
        assert_eq!(last_line(b"a\r\n\n  \n"), "a");
    }
}
