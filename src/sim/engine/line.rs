//! Line editing in the states that read a line: echo, backspace, cursor keys swallowed,
//! Ctrl-C/Ctrl-Z/Ctrl-D, and `?` context help.

use std::time::Instant;

use super::{Engine, MAX_LINE, Out, State};
use crate::sim::commands::completions;
use crate::sim::profile::Style;

impl Engine {
    /// Line editing in the states that read a line.
    pub(super) fn edit(&mut self, b: u8, out: &mut Out, now: Instant) {
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
    pub(super) fn help(&mut self, echo: bool, out: &mut Out) {
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

    pub(super) fn is_enable_password(&self) -> bool {
        matches!(self.state, State::EnablePassword { .. })
    }

    /// Ctrl-C / Ctrl-Z at a prompt: abandon the line (and config mode) and prompt again.
    pub(super) fn interrupt(&mut self, shown: &[u8], out: &mut Out) {
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
}
