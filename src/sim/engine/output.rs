//! A command's output over time: latency, pacing, the pager and its erase sequence, faults
//! (hang, drop, endless, garbage, slow), and typeahead replayed once the output is done.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::pipes::apply_pipes;
use super::{After, Chunk, ENDLESS_CHUNK, Engine, IOS_MORE, JUNOS_MORE, Job, Out, State};
use crate::sim::profile::{Fault, Style};

impl Engine {
    pub(super) fn run_output(&mut self, command: &str, now: Instant, pipes: Vec<String>) {
        let output: Arc<[u8]> = self
            .profile
            .outputs
            .get(command)
            .map(Arc::from)
            .unwrap_or_else(|| Arc::from(&b""[..]));
        let fault = self.profile.fault_for(command);
        let lines = output_lines(&output);
        match fault {
            None => self.start_job(lines, None, After::Prompt, now, pipes),
            Some(Fault::Hang) => {
                self.state = State::Hung;
                self.job = None;
            }
            Some(Fault::Slow) => {
                let pace = self.profile.slow_duration / lines.len().max(1) as u32;
                self.start_job(lines, Some(pace), After::Prompt, now, Vec::new())
            }
            Some(Fault::Drop) => {
                let keep = lines.len() / 2;
                self.start_job(lines, None, After::Prompt, now, Vec::new());
                if let Some(job) = &mut self.job {
                    job.drop_after = Some(keep);
                }
            }
            Some(Fault::Endless) => {
                let source: Arc<[u8]> = if output.is_empty() {
                    Arc::from(format!("{command}: endless output\n").as_bytes())
                } else {
                    output
                };
                self.start_job(Vec::new(), None, After::Prompt, now, Vec::new());
                if let Some(job) = &mut self.job {
                    job.endless = Some((source, 0));
                }
            }
            Some(Fault::Garbage) => {
                let mut bytes = self.garbage();
                bytes.extend(b"\r\n");
                self.start_job(Vec::new(), None, After::Prompt, now, Vec::new());
                if let Some(job) = &mut self.job {
                    job.chunks.push_back(Chunk::Raw(bytes));
                }
            }
        }
    }

    /// Random bytes that always include 0xFF, NUL and an invalid UTF-8 sequence.
    pub(super) fn garbage(&mut self) -> Vec<u8> {
        let len = 256 + (self.next_random() % 768) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| self.next_random() as u8).collect();
        for marker in [
            &[0xff, 0xff][..],
            &[0x00],
            &[0xc3, 0x28],
            &[0xff, 0xfb, 0x01],
        ] {
            let at = (self.next_random() as usize) % bytes.len();
            bytes.splice(at..at, marker.iter().copied());
        }
        bytes
    }

    pub(super) fn next_random(&mut self) -> u64 {
        // xorshift64*: plenty for noise, and no dependency.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(super) fn start_job(
        &mut self,
        lines: Vec<Vec<u8>>,
        pace: Option<Duration>,
        after: After,
        now: Instant,
        pipes: Vec<String>,
    ) {
        let (lines, page) = match apply_pipes(self.profile.style, lines, &pipes) {
            // A shell has no pager.
            Ok((lines, paging)) if paging && self.profile.style != Style::Linux => {
                (lines, self.page_lines)
            }
            Ok((lines, _)) => (lines, 0),
            Err(message) => (vec![message.into_bytes()], 0),
        };
        self.job = Some(Job {
            chunks: lines.into_iter().map(Chunk::Line).collect(),
            next_at: now
                + self.profile.latency
                + if after == After::EndSession {
                    self.profile.exit_delay
                } else {
                    Duration::ZERO
                },
            pace,
            endless: None,
            drop_after: None,
            shown: 0,
            page,
            after,
        });
        self.state = State::Output;
    }

    /// Moves the session on: runs the job as far as time and the pager allow, then the
    /// lines typed ahead meanwhile. Each round consumes typeahead or returns, so it ends.
    pub(super) fn pump(&mut self, out: &mut Out, now: Instant) {
        loop {
            if self.state == State::Output && !self.advance(out, now) {
                return;
            }
            if !self.reads_lines() || self.typeahead.is_empty() {
                return;
            }
            while self.reads_lines()
                && let Some(b) = self.typeahead.pop_front()
            {
                self.byte(b, out, now);
            }
        }
    }

    pub(super) fn reads_lines(&self) -> bool {
        matches!(
            self.state,
            State::Exec
                | State::ConfigDialog
                | State::Username
                | State::Password
                | State::EnablePassword { .. }
        )
    }

    /// Sends what is due of the running job; `false` while it still runs (waiting for its
    /// time or for a key at the pager).
    pub(super) fn advance(&mut self, out: &mut Out, now: Instant) -> bool {
        let more_prompt = self.more_prompt();
        let Some(job) = &mut self.job else {
            self.state = State::Exec;
            return true;
        };
        if now < job.next_at {
            return false;
        }
        let mut sent = 0;
        let ending = loop {
            if job.chunks.is_empty()
                && let Some((source, pos)) = &mut job.endless
            {
                if sent >= ENDLESS_CHUNK {
                    // Let the transport write (and notice a stop or a closed client) first.
                    job.next_at = now;
                    return false;
                }
                for _ in 0..ENDLESS_CHUNK {
                    let (line, next) = next_line(source, *pos);
                    *pos = next;
                    job.chunks.push_back(Chunk::Line(line));
                }
            }
            let Some(chunk) = job.chunks.pop_front() else {
                // A drop fault on a command with too little output still drops.
                break if job.drop_after.is_some() {
                    After::EndSession
                } else {
                    job.after
                };
            };
            if job.drop_after == Some(0) {
                break After::EndSession;
            }
            match chunk {
                Chunk::Raw(bytes) => out.send(&bytes),
                Chunk::Line(line) => {
                    out.send(&line);
                    out.send(b"\r\n");
                    job.shown += 1;
                    sent += 1;
                    if let Some(n) = &mut job.drop_after {
                        *n -= 1;
                    }
                }
            }
            let more = !job.chunks.is_empty() || job.endless.is_some();
            if more && job.page > 0 && job.shown + 1 >= job.page {
                out.send(more_prompt);
                self.state = State::Paging;
                return false;
            }
            if let Some(pace) = job.pace
                && more
            {
                job.next_at = now + pace;
                return false;
            }
        };
        self.job = None;
        match ending {
            After::Prompt => {
                self.prompt(out);
                if self.profile.chatty {
                    // A log line right after the prompt, in the same write.
                    self.log_on_its_own(out);
                }
            }
            After::EndSession => self.end_session(out),
        }
        true
    }

    pub(super) fn more_prompt(&self) -> &'static [u8] {
        match self.profile.style {
            Style::Junos => JUNOS_MORE,
            _ => IOS_MORE,
        }
    }

    pub(super) fn pager_key(&mut self, b: u8, out: &mut Out, now: Instant) {
        let more = self.more_prompt();
        let mut erase = vec![0x08; more.len()];
        erase.extend(std::iter::repeat_n(b' ', more.len()));
        erase.extend(std::iter::repeat_n(0x08, more.len()));
        out.send(&erase);
        let Some(job) = &mut self.job else {
            self.prompt(out);
            return;
        };
        match b {
            b' ' => job.shown = 0,
            // One more line: the pager comes back after it.
            b'\r' | b'\n' => job.shown = job.page.saturating_sub(2),
            _ => {
                job.chunks.clear();
                job.endless = None;
            }
        }
        self.state = State::Output;
        job.next_at = job.next_at.min(now);
    }
}

/// Sends `\n`-separated text as `\r\n` lines.
pub(super) fn send_lines(out: &mut Out, text: &[u8]) {
    for line in output_lines(text) {
        out.send(&line);
        out.send(b"\r\n");
    }
}

/// Output split into lines; a missing final newline is supplied (the device always ends the
/// line before its prompt, so the collected output is the file plus `\n`).
pub(super) fn output_lines(text: &[u8]) -> Vec<Vec<u8>> {
    if text.is_empty() {
        return Vec::new();
    }
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    body.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect()
}

/// The line at `pos` of `source` and the position after it, wrapping around.
pub(super) fn next_line(source: &[u8], pos: usize) -> (Vec<u8>, usize) {
    let pos = if pos >= source.len() { 0 } else { pos };
    let rest = &source[pos..];
    match rest.iter().position(|&b| b == b'\n') {
        Some(n) => (rest[..n].to_vec(), pos + n + 1),
        None => (rest.to_vec(), source.len()),
    }
}
