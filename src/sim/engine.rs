//! The CLI session of one simulated device, as a state machine with no I/O.
//!
//! Every transport (Telnet, pty console, stdio) feeds typed bytes in and writes out what comes
//! back, so a device behaves the same on all of them and the whole dialogue — login, line
//! editing, abbreviations, paging and its erase sequence, faults — is unit-testable without
//! sockets or sleeps. Time enters only as the `now` argument: the engine says by
//! [`Engine::deadline`] when it next wants [`Engine::tick`], and the transport waits for that
//! deadline or for input, whichever comes first.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::commands::{Resolution, completions, pattern, resolve, word_offsets};
use super::profile::{Fault, Profile, Style};

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

/// Built-in commands, per style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Builtin {
    Enable,
    Disable,
    EndSession,
    TermLength,
    TermWidth,
    Configure,
    End,
    Hostname,
    /// A command with an output, or a fault.
    Output,
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
            self.chatter.idle = (left > 1).then(|| (now + CHATTER_IDLE_EVERY, left - 1));
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

    /// Line editing in the states that read a line.
    fn edit(&mut self, b: u8, out: &mut Out, now: Instant) {
        if self.escape > 0 {
            // Swallow cursor keys and the like: ESC [ params final.
            self.escape = match (self.escape, b) {
                (1, b'[') | (1, b'O') => 2,
                (2, 0x20..=0x3f) => 2,
                _ => 0,
            };
            return;
        }
        let echo = self.echo && self.state != State::Password && !self.is_enable_password();
        match b {
            b'\r' | b'\n' => {
                out.send(b"\r\n");
                let line = String::from_utf8_lossy(&std::mem::take(&mut self.line)).into_owned();
                self.submit(&line, out, now);
            }
            0x08 | 0x7f => {
                if self.line.pop().is_some() && echo {
                    out.send(b"\x08 \x08");
                }
            }
            0x1b => self.escape = 1,
            0x03 => self.interrupt(b"^C", out),
            0x1a => {
                if self.state == State::Exec && self.config {
                    self.interrupt(b"^Z", out);
                }
            }
            0x04 if self.profile.style == Style::Linux
                && self.state == State::Exec
                && self.line.is_empty() =>
            {
                out.send(b"logout\r\n");
                self.end_session(out);
            }
            0x00..=0x1f => {}
            b'?' if self.state == State::Exec && self.profile.style != Style::Linux => {
                self.help(echo, out);
            }
            _ => {
                if self.line.len() < MAX_LINE {
                    if self.profile.chatty && self.state == State::Exec && self.line.is_empty() {
                        // A log line that came just before the device echoed the command.
                        self.log_on_its_own(out);
                    }
                    self.line.push(b);
                    if echo {
                        out.send(&[b]);
                    }
                }
            }
        }
    }

    /// Context help: what may come next at the cursor, then the prompt and the line again,
    /// as IOS and Junos show it.
    fn help(&mut self, echo: bool, out: &mut Out) {
        if echo {
            out.send(b"?");
        }
        out.send(b"\r\n");
        let text = String::from_utf8_lossy(&self.line).into_owned();
        let mut words: Vec<&str> = text.split_whitespace().collect();
        let prefix = if text.ends_with(char::is_whitespace) || text.is_empty() {
            ""
        } else {
            words.pop().unwrap_or("")
        };
        let patterns = self.patterns(self.config);
        let choices = completions(&patterns, &words, prefix);
        if choices.is_empty() {
            out.send(b"% Unrecognized command\r\n");
        }
        for choice in choices {
            out.send(format!("  {choice}\r\n").as_bytes());
        }
        self.send_prompt(out);
        if echo {
            out.send(&self.line);
        }
    }

    fn is_enable_password(&self) -> bool {
        matches!(self.state, State::EnablePassword { .. })
    }

    /// Ctrl-C / Ctrl-Z at a prompt: abandon the line (and config mode) and prompt again.
    fn interrupt(&mut self, shown: &[u8], out: &mut Out) {
        self.line.clear();
        match self.state {
            State::Exec => {
                out.send(shown);
                out.send(b"\r\n");
                self.config = false;
                self.prompt(out);
            }
            State::EnablePassword { .. } => {
                out.send(b"\r\n");
                self.state = State::Exec;
                self.prompt(out);
            }
            _ => {}
        }
    }

    /// A console between sessions: silent until a key, but a chatty one logs a few lines.
    fn go_idle(&mut self) {
        self.state = State::Idle;
        self.chatter.idle = (self.profile.chatty && self.console)
            .then(|| (self.clock + CHATTER_IDLE_EVERY, CHATTER_IDLE_MAX));
    }

    /// Prints the next numbered log line on its own, as a console with `logging console`
    /// does. At a prompt, lines 1-2, 5-6, ... reprint the prompt and the typed line after
    /// them (`logging synchronous`); lines 3-4, 7-8, ... leave the cursor at the start of an
    /// empty line. One command meets two lines (before its echo, after its prompt), so
    /// consecutive commands meet both kinds in both places.
    fn log_on_its_own(&mut self, out: &mut Out) {
        self.chatter.sent += 1;
        let n = self.chatter.sent;
        let reprint = (n - 1) / 2 % 2 == 0;
        out.send(
            format!(
                "\r\n*Mar  1 00:{:02}:{:02}.{:03}: %LINK-3-UPDOWN: Interface GigabitEthernet0/{n}, changed state to up\r\n",
                (n / 60) % 60,
                n % 60,
                n % 1000
            )
            .as_bytes(),
        );
        if reprint && self.state == State::Exec {
            self.send_prompt(out);
            if self.echo {
                out.send(&self.line);
            }
        }
    }

    /// After the key on an idle console or the RETURN: banner and login, or the prompt.
    fn begin(&mut self, out: &mut Out) {
        self.chatter.idle = None;
        self.reset_terminal();
        let style = self.profile.style;
        if style != Style::Linux {
            self.banner(out);
        }
        if self.profile.login {
            self.login_prompt(out);
            return;
        }
        self.user = self.profile.username.clone();
        self.logged_in(out);
    }

    fn banner(&self, out: &mut Out) {
        if let Some(banner) = &self.profile.banner {
            out.send(b"\r\n");
            send_lines(out, banner.as_bytes());
        }
    }

    fn login_prompt(&mut self, out: &mut Out) {
        self.state = State::Username;
        match self.profile.style {
            Style::Ios => out.send(b"\r\nUser Access Verification\r\n\r\nUsername: "),
            Style::Junos => {
                let tty = if self.console { "ttyu0" } else { "ttyp0" };
                out.send(format!("\r\n{} ({tty})\r\n\r\nlogin: ", self.hostname).as_bytes());
            }
            Style::Linux => out.send(format!("\r\n{} login: ", self.hostname).as_bytes()),
        }
    }

    fn logged_in(&mut self, out: &mut Out) {
        if self.profile.style == Style::Linux {
            self.banner(out);
        }
        self.state = State::Exec;
        self.prompt(out);
    }

    /// Terminal settings are per session, as on real gear.
    fn reset_terminal(&mut self) {
        self.page_lines = self.profile.page_lines;
        self.privileged = self.profile.style != Style::Ios || self.profile.enable_secret.is_none();
        self.config = false;
        self.login_failures = 0;
        self.line.clear();
        self.typeahead.clear();
        self.job = None;
    }

    fn prompt_text(&self) -> String {
        if let Some(prompt) = &self.profile.prompt {
            return prompt.clone();
        }
        let host = &self.hostname;
        match self.profile.style {
            Style::Ios if self.config => format!("{host}(config)#"),
            Style::Ios if self.privileged => format!("{host}#"),
            Style::Ios => format!("{host}>"),
            Style::Junos => format!("{}@{host}> ", self.user),
            Style::Linux => format!("{}@{host}:~$ ", self.user),
        }
    }

    fn prompt(&mut self, out: &mut Out) {
        self.state = State::Exec;
        self.send_prompt(out);
    }

    /// The prompt, with the profile's context line above it (Junos `{master:0}`).
    fn send_prompt(&self, out: &mut Out) {
        if let Some(context) = &self.profile.context_line {
            out.send(context.as_bytes());
            out.send(b"\r\n");
        }
        out.send(self.prompt_text().as_bytes());
    }

    fn submit(&mut self, line: &str, out: &mut Out, now: Instant) {
        match self.state {
            State::Username => {
                self.user = line.trim().to_string();
                self.state = State::Password;
                out.send(b"Password: ");
            }
            State::Password => {
                if self.user == self.profile.username && line == self.profile.password {
                    self.login_failures = 0;
                    self.logged_in(out);
                } else {
                    self.login_failed(out);
                }
            }
            State::EnablePassword { tries } => {
                if Some(line) == self.profile.enable_secret.as_deref() {
                    self.privileged = true;
                    self.prompt(out);
                } else if tries + 1 >= MAX_ENABLE_TRIES {
                    out.send(b"% Bad secrets\r\n\r\n");
                    self.prompt(out);
                } else {
                    self.state = State::EnablePassword { tries: tries + 1 };
                    out.send(b"Password: ");
                }
            }
            State::Exec => self.command(line, out, now),
            _ => {}
        }
    }

    fn login_failed(&mut self, out: &mut Out) {
        self.login_failures += 1;
        out.send(match self.profile.style {
            Style::Ios => b"\r\n% Login invalid\r\n",
            Style::Junos | Style::Linux => b"\r\nLogin incorrect\r\n",
        });
        if self.login_failures >= MAX_LOGIN_FAILURES {
            self.end_session(out);
            return;
        }
        self.state = State::Username;
        match self.profile.style {
            Style::Ios => out.send(b"\r\nUsername: "),
            _ => out.send(format!("{} login: ", self.hostname).as_bytes()),
        }
    }

    /// Telnet and stdio close; a console returns to idle as a real console port does.
    fn end_session(&mut self, out: &mut Out) {
        self.job = None;
        if !self.console {
            self.state = State::Closed;
            out.close();
            return;
        }
        if self.profile.style == Style::Ios {
            out.send(
                format!(
                    "\r\n{} con0 is now available\r\n\r\n\r\n\r\n\r\n\r\nPress RETURN to get started.\r\n\r\n",
                    self.hostname
                )
                .as_bytes(),
            );
        } else {
            out.send(b"\r\n");
        }
        self.reset_terminal();
        self.go_idle();
    }

    fn command(&mut self, line: &str, out: &mut Out, now: Instant) {
        // A shell's pipes are the shell's business; the simulated shell has none.
        let (base, pipes) = if self.profile.style == Style::Linux {
            (line.to_string(), Vec::new())
        } else {
            split_pipes(line)
        };
        let words: Vec<&str> = base.split_whitespace().collect();
        if words.is_empty() && pipes.is_empty() {
            self.prompt(out);
            return;
        }
        // IOS config mode runs exec commands behind `do`.
        let (words, offset_shift) =
            if self.config && words.first().is_some_and(|w| w.eq_ignore_ascii_case("do")) {
                (words[1..].to_vec(), 1)
            } else {
                (words, 0)
            };
        let in_config = self.config && offset_shift == 0;
        let reply = match self.profile.style {
            Style::Linux => self.linux_command(&base, &words),
            _ => self.network_command(&words, in_config),
        };
        match reply {
            Reply::Lines(lines, after) => self.start_job(lines, None, after, now, pipes),
            Reply::Output(command) => self.run_output(&command, now, pipes),
            Reply::EnablePassword => {
                self.state = State::EnablePassword { tries: 0 };
                out.send(b"Password: ");
            }
            Reply::Error { word, message } => {
                let lines = self.error_lines(line, word.map(|w| w + offset_shift), &message);
                self.start_job(lines, None, After::Prompt, now, Vec::new());
            }
        }
    }

    fn linux_command(&mut self, base: &str, words: &[&str]) -> Reply {
        let first = words.first().copied().unwrap_or("");
        match first {
            "exit" | "logout" => {
                // A login shell says so on the way out.
                return Reply::Lines(vec![b"logout".to_vec()], After::EndSession);
            }
            "echo" => {
                let rest = base.trim_start()[4..].trim();
                return Reply::Lines(vec![rest.as_bytes().to_vec()], After::Prompt);
            }
            "hostname" if words.len() == 1 => {
                return Reply::Lines(vec![self.hostname.clone().into_bytes()], After::Prompt);
            }
            "whoami" if words.len() == 1 => {
                return Reply::Lines(vec![self.user.clone().into_bytes()], After::Prompt);
            }
            _ => {}
        }
        let command = words.join(" ");
        if self.profile.outputs.get(&command).is_some()
            || self.profile.fault_for(&command).is_some()
        {
            return Reply::Output(command);
        }
        Reply::Error {
            word: None,
            message: format!("bash: {first}: command not found"),
        }
    }

    fn network_command(&mut self, words: &[&str], in_config: bool) -> Reply {
        let patterns = self.patterns(in_config);
        match resolve(&patterns, words) {
            Resolution::Command { kind, words } => self.builtin(kind, &words),
            Resolution::Ambiguous { word, keywords } => self.ambiguous(words, word, &keywords),
            Resolution::Invalid { word } => self.invalid(word),
            Resolution::Incomplete => self.incomplete(words.len()),
        }
    }

    fn patterns(&self, in_config: bool) -> Vec<super::commands::Pattern<Builtin>> {
        let mut p = Vec::new();
        match (self.profile.style, in_config) {
            (Style::Ios, true) => {
                p.push(pattern("end", Builtin::End));
                p.push(pattern("exit", Builtin::End));
                p.push(pattern("hostname <word>", Builtin::Hostname));
                return p;
            }
            (Style::Ios, false) => {
                p.push(pattern("enable", Builtin::Enable));
                p.push(pattern("disable", Builtin::Disable));
                for w in ["exit", "logout", "quit"] {
                    p.push(pattern(w, Builtin::EndSession));
                }
                p.push(pattern("terminal length <0-512>", Builtin::TermLength));
                p.push(pattern("terminal width <0-512>", Builtin::TermWidth));
                if self.privileged {
                    p.push(pattern("configure terminal", Builtin::Configure));
                }
            }
            (Style::Junos, _) => {
                p.push(pattern("exit", Builtin::EndSession));
                p.push(pattern("quit", Builtin::EndSession));
                p.push(pattern(
                    "set cli screen-length <0-100000>",
                    Builtin::TermLength,
                ));
                p.push(pattern("set cli screen-width <0-1024>", Builtin::TermWidth));
            }
            (Style::Linux, _) => {}
        }
        for command in self.profile.outputs.commands() {
            p.push(pattern(command, Builtin::Output));
        }
        for (command, _) in &self.profile.faults {
            p.push(pattern(command, Builtin::Output));
        }
        p
    }

    fn builtin(&mut self, kind: Builtin, words: &[String]) -> Reply {
        let number = || {
            words
                .last()
                .and_then(|w| w.parse::<usize>().ok())
                .unwrap_or(0)
        };
        let none = || Reply::Lines(Vec::new(), After::Prompt);
        match kind {
            Builtin::Output => Reply::Output(words.join(" ")),
            Builtin::Enable => {
                if self.privileged {
                    return none();
                }
                if self.profile.enable_secret.is_none() {
                    self.privileged = true;
                    return none();
                }
                Reply::EnablePassword
            }
            Builtin::Disable => {
                self.privileged = false;
                none()
            }
            Builtin::EndSession => Reply::Lines(Vec::new(), After::EndSession),
            Builtin::TermLength => {
                if self.profile.refuse_paging_off {
                    let message = match self.profile.style {
                        Style::Junos => "error: permission denied",
                        _ => "% Authorization failed.",
                    };
                    return Reply::Lines(vec![message.as_bytes().to_vec()], After::Prompt);
                }
                self.page_lines = number();
                if self.profile.style == Style::Junos {
                    let text = format!("Screen length set to {}", self.page_lines);
                    return Reply::Lines(vec![text.into_bytes()], After::Prompt);
                }
                none()
            }
            Builtin::TermWidth => {
                self.width = number();
                if self.profile.style == Style::Junos {
                    let text = format!("Screen width set to {}", self.width);
                    return Reply::Lines(vec![text.into_bytes()], After::Prompt);
                }
                none()
            }
            Builtin::Configure => {
                self.config = true;
                let text = b"Enter configuration commands, one per line.  End with CNTL/Z.";
                Reply::Lines(vec![text.to_vec()], After::Prompt)
            }
            Builtin::End => {
                self.config = false;
                none()
            }
            Builtin::Hostname => {
                self.hostname = words[1].clone();
                none()
            }
        }
    }

    fn ambiguous(&self, typed: &[&str], word: usize, keywords: &[String]) -> Reply {
        match self.profile.style {
            Style::Junos => {
                let mut message = format!("'{}' is ambiguous.\nPossible completions:", typed[word]);
                for k in keywords {
                    message.push_str(&format!("\n  {k}"));
                }
                Reply::Error {
                    word: Some(word),
                    message,
                }
            }
            _ => Reply::Error {
                word: None,
                message: format!("% Ambiguous command:  \"{}\"", typed.join(" ")),
            },
        }
    }

    fn invalid(&self, word: usize) -> Reply {
        let message = match self.profile.style {
            Style::Junos if word == 0 => "unknown command.",
            Style::Junos => "syntax error.",
            _ => "% Invalid input detected at '^' marker.\n",
        };
        Reply::Error {
            word: Some(word),
            message: message.to_string(),
        }
    }

    fn incomplete(&self, words: usize) -> Reply {
        match self.profile.style {
            Style::Junos => Reply::Error {
                word: Some(words),
                message: "syntax error, expecting <command>.".to_string(),
            },
            _ => Reply::Error {
                word: None,
                message: "% Incomplete command.\n".to_string(),
            },
        }
    }

    /// An error with the `^` marker under word `word` of the typed line.
    fn error_lines(&self, line: &str, word: Option<usize>, message: &str) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        if let Some(word) = word {
            let offsets = word_offsets(line);
            let column = offsets
                .get(word)
                .copied()
                .unwrap_or_else(|| line.trim_end().len() + 1);
            let indent = self.prompt_text().len() + column;
            lines.push(format!("{}^", " ".repeat(indent)).into_bytes());
        }
        for l in message.split('\n') {
            lines.push(l.as_bytes().to_vec());
        }
        lines
    }

    fn run_output(&mut self, command: &str, now: Instant, pipes: Vec<String>) {
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
    fn garbage(&mut self) -> Vec<u8> {
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

    fn next_random(&mut self) -> u64 {
        // xorshift64*: plenty for noise, and no dependency.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn start_job(
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
    fn pump(&mut self, out: &mut Out, now: Instant) {
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

    fn reads_lines(&self) -> bool {
        matches!(
            self.state,
            State::Exec | State::Username | State::Password | State::EnablePassword { .. }
        )
    }

    /// Sends what is due of the running job; `false` while it still runs (waiting for its
    /// time or for a key at the pager).
    fn advance(&mut self, out: &mut Out, now: Instant) -> bool {
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

    fn more_prompt(&self) -> &'static [u8] {
        match self.profile.style {
            Style::Junos => JUNOS_MORE,
            _ => IOS_MORE,
        }
    }

    fn pager_key(&mut self, b: u8, out: &mut Out, now: Instant) {
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

/// The answer to one line, before it becomes output.
enum Reply {
    Lines(Vec<Vec<u8>>, After),
    Output(String),
    /// `enable` with a secret configured: ask for it.
    EnablePassword,
    Error {
        word: Option<usize>,
        message: String,
    },
}

/// Sends `\n`-separated text as `\r\n` lines.
fn send_lines(out: &mut Out, text: &[u8]) {
    for line in output_lines(text) {
        out.send(&line);
        out.send(b"\r\n");
    }
}

/// Output split into lines; a missing final newline is supplied (the device always ends the
/// line before its prompt, so the collected output is the file plus `\n`).
fn output_lines(text: &[u8]) -> Vec<Vec<u8>> {
    if text.is_empty() {
        return Vec::new();
    }
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    body.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect()
}

/// The line at `pos` of `source` and the position after it, wrapping around.
fn next_line(source: &[u8], pos: usize) -> (Vec<u8>, usize) {
    let pos = if pos >= source.len() { 0 } else { pos };
    let rest = &source[pos..];
    match rest.iter().position(|&b| b == b'\n') {
        Some(n) => (rest[..n].to_vec(), pos + n + 1),
        None => (rest.to_vec(), source.len()),
    }
}

/// `show x | include y` → (`show x`, [`include y`]).
fn split_pipes(line: &str) -> (String, Vec<String>) {
    let mut parts = line.split('|');
    let base = parts.next().unwrap_or("").to_string();
    let pipes = parts.map(|p| p.trim().to_string()).collect();
    (base, pipes)
}

/// Output modifiers after `|`. Returns the lines and whether paging applies, or the error
/// message for a modifier the device would reject.
fn apply_pipes(
    style: Style,
    mut lines: Vec<Vec<u8>>,
    pipes: &[String],
) -> Result<(Vec<Vec<u8>>, bool), String> {
    let mut paging = true;
    let modifiers: &[&str] = match style {
        Style::Junos => &["no-more", "match", "except", "count"],
        Style::Ios => &["include", "exclude", "begin", "count"],
        Style::Linux => &[],
    };
    for pipe in pipes {
        let (word, arg) = pipe.split_once(' ').unwrap_or((pipe.as_str(), ""));
        let word = word.to_ascii_lowercase();
        let found: Vec<&&str> = modifiers
            .iter()
            .filter(|m| !word.is_empty() && m.starts_with(&word))
            .collect();
        let [modifier] = found[..] else {
            return Err(match style {
                Style::Junos => "syntax error.".to_string(),
                _ => "% Invalid input detected at '^' marker.".to_string(),
            });
        };
        let arg = arg.trim();
        let regex = if matches!(*modifier, "no-more") || (*modifier == "count" && arg.is_empty()) {
            None
        } else {
            Some(
                regex_lite::Regex::new(arg)
                    .map_err(|e| format!("% Invalid regular expression: {e}"))?,
            )
        };
        let is_match = |l: &Vec<u8>| {
            regex
                .as_ref()
                .is_some_and(|r| r.is_match(&String::from_utf8_lossy(l)))
        };
        match *modifier {
            "no-more" => paging = false,
            "match" | "include" => lines.retain(is_match),
            "except" | "exclude" => lines.retain(|l| !is_match(l)),
            "begin" => {
                let start = lines.iter().position(is_match).unwrap_or(lines.len());
                lines.drain(..start);
            }
            _ => {
                let n = if regex.is_some() {
                    lines.iter().filter(|l| is_match(l)).count()
                } else {
                    lines.len()
                };
                let text = match style {
                    Style::Junos => format!("Count: {n} lines"),
                    _ => format!("Number of lines which match regexp = {n}"),
                };
                lines = vec![text.into_bytes()];
            }
        }
    }
    Ok((lines, paging))
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
