//! A typed command line: abbreviations resolved against the style's built-ins and the
//! profile's outputs, built-ins applied (enable, terminal length, configure), errors with
//! the `^` marker as the real CLIs print them.

use std::time::Instant;

use super::pipes::split_pipes;
use super::{After, Engine, Out, State};
use crate::sim::commands::{Pattern, Resolution, pattern, resolve, word_offsets};
use crate::sim::profile::Style;

/// Built-in commands, per style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Builtin {
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

/// The answer to one line, before it becomes output.
pub(super) enum Reply {
    Lines(Vec<Vec<u8>>, After),
    Output(String),
    /// `enable` with a secret configured: ask for it.
    EnablePassword,
    Error {
        word: Option<usize>,
        message: String,
    },
}

impl Engine {
    pub(super) fn command(&mut self, line: &str, out: &mut Out, now: Instant) {
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

    pub(super) fn linux_command(&mut self, base: &str, words: &[&str]) -> Reply {
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

    pub(super) fn network_command(&mut self, words: &[&str], in_config: bool) -> Reply {
        let patterns = self.patterns(in_config);
        match resolve(&patterns, words) {
            Resolution::Command { kind, words } => self.builtin(kind, &words),
            Resolution::Ambiguous { word, keywords } => self.ambiguous(words, word, &keywords),
            Resolution::Invalid { word } => self.invalid(word),
            Resolution::Incomplete => self.incomplete(words.len()),
        }
    }

    pub(super) fn patterns(&self, in_config: bool) -> Vec<Pattern<Builtin>> {
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

    pub(super) fn builtin(&mut self, kind: Builtin, words: &[String]) -> Reply {
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

    pub(super) fn ambiguous(&self, typed: &[&str], word: usize, keywords: &[String]) -> Reply {
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

    pub(super) fn invalid(&self, word: usize) -> Reply {
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

    pub(super) fn incomplete(&self, words: usize) -> Reply {
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
    pub(super) fn error_lines(
        &self,
        line: &str,
        word: Option<usize>,
        message: &str,
    ) -> Vec<Vec<u8>> {
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
}
