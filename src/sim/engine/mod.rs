//! The CLI session of one simulated device, as a state machine with no I/O.
//!
//! Every transport (Telnet, pty console, stdio) feeds typed bytes in and writes out what comes
//! back, so a device behaves the same on all of them and the whole dialogue — login, line
//! editing, abbreviations, paging and its erase sequence, faults — is unit-testable without
//! sockets or sleeps. Time enters only as the `now` argument: the engine says by
//! [`Engine::deadline`] when it next wants [`Engine::tick`], and the transport waits for that
//! deadline or for input, whichever comes first.
//!
//! Code map: `mod.rs` holds the state and the entry points (`start`, `input`, `tick`);
//! `login.rs` the session around the commands, `line.rs` line editing, `cli.rs` the command
//! line and built-ins, `output.rs` a command's output over time (pager, faults), `pipes.rs`
//! output modifiers.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::profile::Profile;

mod cli;
mod line;
mod login;
mod output;
mod pipes;

/// What the transport must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write these bytes (raw; the Telnet transport escapes them).
    Send(Vec<u8>),
    /// End the connection (Telnet, stdio). A console never closes: it goes back to idle.
    Close,
}

/// The pager prompts; erased after a key with as many backspaces, spaces and backspaces.
const IOS_MORE: &[u8] = b" --More-- ";
const JUNOS_MORE: &[u8] = b"---(more)---";
/// A typed line longer than this is cut (real gear has a similar limit).
const MAX_LINE: usize = 1024;
/// Bytes typed while output runs are kept up to this bound, then dropped.
const MAX_TYPEAHEAD: usize = 4096;
/// Lines produced per step of an endless output; the transport's write back-pressure paces it.
const ENDLESS_CHUNK: usize = 64;
const MAX_LOGIN_FAILURES: u32 = 3;
/// A chatty console between sessions logs this often, at most [`CHATTER_IDLE_MAX`] lines per
/// idle spell: a console nobody reads must not fill the line until its writer gives up.
const CHATTER_IDLE_EVERY: Duration = Duration::from_millis(100);
const CHATTER_IDLE_MAX: usize = 5;
const MAX_ENABLE_TRIES: u32 = 3;
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Console only: silent until a key is pressed.
    Idle,
    PressReturn,
    /// The initial configuration dialog's question, waiting for `no`.
    ConfigDialog,
    Username,
    Password,
    EnablePassword {
        tries: u32,
    },
    Exec,
    /// A command's output is being produced.
    Output,
    /// Waiting for a key at the pager prompt.
    Paging,
    /// A `hang` fault: nothing more, ever.
    Hung,
    Closed,
}

/// What comes out of a command, produced step by step.
#[derive(Debug)]
struct Job {
    chunks: VecDeque<Chunk>,
    /// Nothing is sent before this (per-command latency), then lines at most this often.
    next_at: Instant,
    pace: Option<Duration>,
    /// Endless output: refill from these lines, cycling.
    endless: Option<(Arc<[u8]>, usize)>,
    /// Drop fault: close after this many more lines.
    drop_after: Option<usize>,
    /// Lines shown since the last pager prompt; paging applies when `page` > 0.
    shown: usize,
    page: usize,
    after: After,
}

#[derive(Debug)]
enum Chunk {
    /// Sent followed by `\r\n`; counts for paging.
    Line(Vec<u8>),
    /// Sent as is.
    Raw(Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Prompt,
    EndSession,
}

/// A chatty device's log lines (`Profile::chatty`).
#[derive(Debug, Default)]
struct Chatter {
    /// Lines printed so far; each carries its number.
    sent: u64,
    /// While idle: when the next line is due, and how many more this idle spell.
    idle: Option<(Instant, usize)>,
}

pub struct Engine {
    profile: Arc<Profile>,
    hostname: String,
    console: bool,
    state: State,
    line: Vec<u8>,
    after_cr: bool,
    /// Inside an ANSI escape sequence (arrow keys): 1 = after ESC, 2 = inside CSI.
    escape: u8,
    typeahead: VecDeque<u8>,
    user: String,
    login_failures: u32,
    privileged: bool,
    config: bool,
    page_lines: usize,
    width: usize,
    job: Option<Job>,
    /// Echo typed characters: the profile's choice, unless the client echoes locally.
    echo: bool,
    rng: u64,
    chatter: Chatter,
    /// The `now` of the latest call: when the engine acts on its own, it schedules from here.
    clock: Instant,
}

impl Engine {
    /// A session for `hostname` (already numbered for a rack). `console`: silent until a key
    /// is pressed, and back to idle instead of closing.
    pub fn new(profile: Arc<Profile>, hostname: &str, console: bool) -> Engine {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        let mut engine = Engine {
            profile,
            hostname: hostname.to_string(),
            console,
            state: State::Idle,
            line: Vec::new(),
            after_cr: false,
            escape: 0,
            typeahead: VecDeque::new(),
            user: String::new(),
            login_failures: 0,
            privileged: false,
            config: false,
            page_lines: 0,
            width: 80,
            job: None,
            echo: true,
            rng: seed | 1,
            chatter: Chatter::default(),
            clock: Instant::now(),
        };
        engine.echo = engine.profile.echo;
        engine.reset_terminal();
        engine
    }

    /// Whether the device echoes (Telnet: off when the client refused our WILL ECHO).
    pub fn set_echo(&mut self, on: bool) {
        self.echo = self.profile.echo && on;
    }

    /// Output at session start: nothing for a console (it waits for a key), else the
    /// "Press RETURN" line, banner and login prompt as configured.
    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        self.clock = now;
        let mut out = Out::default();
        if self.console {
            self.go_idle();
        } else {
            if self.profile.press_return {
                out.send(b"\r\nPress RETURN to get started.\r\n");
                self.state = State::PressReturn;
            } else {
                self.begin(&mut out);
            }
        }
        out.done()
    }

    /// Console idle: waiting for a key, no session in progress (for session statistics).
    pub fn is_idle(&self) -> bool {
        self.state == State::Idle
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The terminal width the client reported (NAWS); kept for `show terminal`-like needs.
    pub fn set_width(&mut self, width: u16) {
        if width > 0 {
            self.width = width as usize;
        }
    }

    pub fn width(&self) -> usize {
        self.width
    }

    /// Log lines printed on its own so far (a chatty profile).
    pub fn chatter_sent(&self) -> u64 {
        self.chatter.sent
    }

    /// When [`Engine::tick`] must next be called; `None` = only input can move things on.
    pub fn deadline(&self) -> Option<Instant> {
        match (self.state, &self.job) {
            (State::Output, Some(job)) => Some(job.next_at),
            (State::Idle, _) => self.chatter.idle.map(|(at, _)| at),
            _ => None,
        }
    }

    /// Advances timed output (latency, slow, endless).
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        self.clock = now;
        let mut out = Out::default();
        if self.state == State::Idle
            && let Some((at, left)) = self.chatter.idle
            && at <= now
        {
            self.log_on_its_own(&mut out);
            self.chatter.idle = (left > 1).then(|| (now + self.idle_every(), left - 1));
        }
        self.pump(&mut out, now);
        out.done()
    }

    /// Handles typed bytes.
    pub fn input(&mut self, bytes: &[u8], now: Instant) -> Vec<Action> {
        self.clock = now;
        let mut out = Out::default();
        for &b in bytes {
            self.byte(b, &mut out, now);
        }
        self.pump(&mut out, now);
        out.done()
    }

    fn byte(&mut self, b: u8, out: &mut Out, now: Instant) {
        // CR LF and CR NUL are one line end.
        if std::mem::take(&mut self.after_cr) && (b == b'\n' || b == 0) {
            return;
        }
        if b == b'\r' {
            self.after_cr = true;
        }
        match self.state {
            State::Closed | State::Hung => {}
            State::Output => {
                if self.typeahead.len() < MAX_TYPEAHEAD {
                    self.typeahead.push_back(b);
                }
            }
            State::Paging => self.pager_key(b, out, now),
            State::Idle => self.begin(out),
            State::PressReturn => {
                if b == b'\r' || b == b'\n' {
                    self.begin(out);
                }
            }
            _ => self.edit(b, out, now),
        }
    }
}

/// Collects actions, merging adjacent sends into one write.
#[derive(Default)]
struct Out {
    actions: Vec<Action>,
}

impl Out {
    fn send(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if let Some(Action::Send(prev)) = self.actions.last_mut() {
            prev.extend_from_slice(bytes);
        } else {
            self.actions.push(Action::Send(bytes.to_vec()));
        }
    }

    fn close(&mut self) {
        self.actions.push(Action::Close);
    }

    fn done(self) -> Vec<Action> {
        self.actions
    }
}

#[cfg(test)]
mod tests;
