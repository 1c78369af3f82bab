//! The session around the commands: idle console, banner, login and its failures, prompts,
//! enable secret, logout — what a device says before and after the CLI proper.

use std::time::Instant;

use super::output::send_lines;
use super::{
    CHATTER_IDLE_EVERY, CHATTER_IDLE_MAX, Engine, MAX_ENABLE_TRIES, MAX_LOGIN_FAILURES, Out, State,
};
use crate::sim::profile::Style;

/// The question a factory-fresh IOS box asks before anything else.
const DIALOG_QUESTION: &[u8] =
    b"Would you like to enter the initial configuration dialog? [yes/no]: ";

impl Engine {
    /// A console between sessions: silent until a key, but a chatty one logs a few lines.
    pub(super) fn go_idle(&mut self) {
        self.state = State::Idle;
        let logs = self.profile.chatty || self.profile.idle_log_every.is_some();
        let lines = match self.profile.idle_log_every {
            Some(_) => usize::MAX,
            None => CHATTER_IDLE_MAX,
        };
        self.chatter.idle = (logs && self.console).then(|| (self.clock + self.idle_every(), lines));
    }

    /// How often an idle console logs: `Profile::idle_log_every`, else a chatty one's pace.
    pub(super) fn idle_every(&self) -> std::time::Duration {
        self.profile.idle_log_every.unwrap_or(CHATTER_IDLE_EVERY)
    }

    /// Prints the next numbered log line on its own, as a console with `logging console`
    /// does. At a prompt, lines 1-2, 5-6, ... reprint the prompt and the typed line after
    /// them (`logging synchronous`); lines 3-4, 7-8, ... leave the cursor at the start of an
    /// empty line. One command meets two lines (before its echo, after its prompt), so
    /// consecutive commands meet both kinds in both places.
    pub(super) fn log_on_its_own(&mut self, out: &mut Out) {
        self.chatter.sent += 1;
        let n = self.chatter.sent;
        let reprint = ((n - 1) / 2).is_multiple_of(2);
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

    /// After the key on an idle console or the RETURN: the initial configuration dialog
    /// when asked for, then banner and login, or the prompt.
    pub(super) fn begin(&mut self, out: &mut Out) {
        self.chatter.idle = None;
        self.reset_terminal();
        if self.profile.config_dialog {
            out.send(b"\r\n         --- System Configuration Dialog ---\r\n\r\n");
            out.send(DIALOG_QUESTION);
            self.state = State::ConfigDialog;
            return;
        }
        self.after_dialog(out);
    }

    /// Any answer but `no` asks again (the real dialog would start asking for a hostname).
    fn dialog_answer(&mut self, line: &str, out: &mut Out) {
        if line.trim().eq_ignore_ascii_case("no") {
            out.send(b"\r\n");
            self.after_dialog(out);
        } else {
            out.send(b"% Please answer 'yes' or 'no'.\r\n");
            out.send(DIALOG_QUESTION);
        }
    }

    fn after_dialog(&mut self, out: &mut Out) {
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

    pub(super) fn banner(&self, out: &mut Out) {
        if let Some(banner) = &self.profile.banner {
            out.send(b"\r\n");
            send_lines(out, banner.as_bytes());
        }
    }

    pub(super) fn login_prompt(&mut self, out: &mut Out) {
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

    pub(super) fn logged_in(&mut self, out: &mut Out) {
        if self.profile.style == Style::Linux {
            self.banner(out);
        }
        self.state = State::Exec;
        self.prompt(out);
    }

    /// Terminal settings are per session, as on real gear.
    pub(super) fn reset_terminal(&mut self) {
        self.page_lines = self.profile.page_lines;
        self.privileged = self.profile.style != Style::Ios || self.profile.enable_secret.is_none();
        self.config = false;
        self.login_failures = 0;
        self.line.clear();
        self.typeahead.clear();
        self.job = None;
    }

    pub(super) fn prompt_text(&self) -> String {
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

    pub(super) fn prompt(&mut self, out: &mut Out) {
        self.state = State::Exec;
        self.send_prompt(out);
    }

    /// The prompt, with the profile's context line above it (Junos `{master:0}`).
    pub(super) fn send_prompt(&self, out: &mut Out) {
        if let Some(context) = &self.profile.context_line {
            out.send(context.as_bytes());
            out.send(b"\r\n");
        }
        out.send(self.prompt_text().as_bytes());
    }

    pub(super) fn submit(&mut self, line: &str, out: &mut Out, now: Instant) {
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
            State::ConfigDialog => self.dialog_answer(line, out),
            _ => {}
        }
    }

    pub(super) fn login_failed(&mut self, out: &mut Out) {
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
    pub(super) fn end_session(&mut self, out: &mut Out) {
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
}
