//! Getting from a fresh line to a CLI prompt: the reactive login loop and enable.
//!
//! Consoles and Telnet lines show whatever they show — a banner, "Press RETURN to get
//! started", the initial configuration dialog, a username or password prompt, a failure
//! message, a prompt left in configuration mode — so the loop does not follow a script: it
//! waits for whichever [`LoginPrompt`] appears next and answers that one, until the CLI
//! prompt shows (or the steps or the deadline run out).

use std::time::Instant;

use regex_lite::Regex;

use super::{KILL_LINE, MAX_LOGIN_STEPS, NUDGE_AFTER, SETTLE_QUIET, Session, SessionError, WAKE};
use crate::channel::{ChannelError, Matched, last_line};
use crate::inventory::TransportKind;
use crate::platform::{self, Common};

/// What the line can show while we log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoginPrompt {
    /// "% Login invalid", "Login incorrect", "Authentication failed": after our password,
    /// a refusal.
    Failed,
    /// The device's CLI prompt: logged in, or never asked.
    Cli,
    Username,
    Password,
    /// "Press RETURN to get started."
    PressReturn,
    /// "Would you like to enter the initial configuration dialog? [yes/no]:"
    ConfigDialog,
}

impl LoginPrompt {
    /// The order they are looked for in: a failure message outranks the prompt that follows
    /// it on the same screen.
    const LOGIN: [LoginPrompt; 6] = [
        LoginPrompt::Failed,
        LoginPrompt::Cli,
        LoginPrompt::Username,
        LoginPrompt::Password,
        LoginPrompt::PressReturn,
        LoginPrompt::ConfigDialog,
    ];
    /// After `enable`: the secret asked for, or the prompt again.
    const ENABLE: [LoginPrompt; 2] = [LoginPrompt::Password, LoginPrompt::Cli];

    fn pattern(self, common: &Common, cli: &Regex) -> Regex {
        match self {
            LoginPrompt::Failed => common.login_failed.clone(),
            LoginPrompt::Cli => cli.clone(),
            LoginPrompt::Username => common.username.clone(),
            LoginPrompt::Password => common.password.clone(),
            LoginPrompt::PressReturn => common.press_return.clone(),
            LoginPrompt::ConfigDialog => common.dialog.clone(),
        }
    }
}

/// The prompts looked for, as the channel takes them, and the names of its indexes.
struct PromptSet {
    names: &'static [LoginPrompt],
    patterns: Vec<Regex>,
    /// Looked for on every completed line too: "Press RETURN to get started." may end
    /// with a line end before the device waits.
    on_lines: [Regex; 1],
}

impl PromptSet {
    fn new(names: &'static [LoginPrompt], cli: &Regex) -> PromptSet {
        let common = &platform::table().common;
        PromptSet {
            names,
            patterns: names.iter().map(|p| p.pattern(common, cli)).collect(),
            on_lines: [common.press_return.clone()],
        }
    }

    /// The prompt a channel match stands for (an index past `patterns` is a line pattern).
    fn name(&self, m: &Matched) -> LoginPrompt {
        self.names
            .get(m.index)
            .copied()
            .unwrap_or(LoginPrompt::PressReturn)
    }
}

/// What the login has done and seen so far.
#[derive(Debug, Default)]
struct LoginProgress {
    usernames_sent: usize,
    passwords_sent: usize,
    /// The last non-empty line the device printed, for the timeout message.
    last_seen: String,
}

/// Where one answered prompt leaves the login.
enum LoginStep {
    Continue,
    AtPrompt,
}

impl Session<'_> {
    /// Reacts to whatever the line shows until a CLI prompt (not in config mode) appears.
    pub(super) fn login(&mut self, deadline: Instant) -> Result<(), SessionError> {
        let prompts = PromptSet::new(&LoginPrompt::LOGIN, &self.prompt.line);
        if self.device.transport == TransportKind::Serial {
            self.wake_console(deadline)?;
        }
        let mut progress = LoginProgress::default();
        for _ in 0..MAX_LOGIN_STEPS {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let wait_until = deadline.min(now + NUDGE_AFTER);
            let Some(m) = self.next_login_prompt(&prompts, wait_until, &mut progress)? else {
                continue;
            };
            progress.last_seen = last_line(m.line.as_bytes());
            match self.answer(prompts.name(&m), &m.line, &mut progress)? {
                LoginStep::Continue => {}
                LoginStep::AtPrompt => return Ok(()),
            }
        }
        Err(self.login_timeout(&progress))
    }

    /// Waits for the next prompt; `None` after a silence or a flood, each answered here.
    fn next_login_prompt(
        &mut self,
        prompts: &PromptSet,
        until: Instant,
        progress: &mut LoginProgress,
    ) -> Result<Option<Matched>, SessionError> {
        match self
            .channel
            .wait_for_lines(&prompts.patterns, &prompts.on_lines, until)
        {
            Ok(mut m) => {
                self.set_aside_login_text(std::mem::take(&mut m.before), progress);
                Ok(Some(m))
            }
            Err(ChannelError::Timeout {
                last_line, output, ..
            }) => {
                if !last_line.is_empty() {
                    progress.last_seen = last_line;
                }
                self.set_aside_login_text(output, progress);
                // Silence: nudge the line (consoles, Telnet servers waiting for a key).
                self.channel.send(WAKE)?;
                Ok(None)
            }
            Err(ChannelError::TooLarge { output, .. }) => {
                // Something keeps printing (a stale command on a console): interrupt it.
                self.channel.set_aside(output);
                self.channel.send(b"\x03")?;
                Ok(None)
            }
            Err(ChannelError::Transport { source, .. }) => Err(if progress.passwords_sent > 0 {
                SessionError::AuthFailed {
                    peer: self.peer(),
                    detail: format!("the device closed the line after the password ({source})"),
                }
            } else {
                source.into()
            }),
        }
    }

    /// What the device printed during the login besides its prompts (a banner, log lines, a
    /// console's backlog) is its own and is set aside (a captured console ships it); the
    /// echo of the username we typed is not. Passwords are not echoed.
    fn set_aside_login_text(&mut self, text: Vec<u8>, progress: &LoginProgress) {
        let text = match &self.device.username {
            Some(user) if progress.usernames_sent > 0 => {
                super::without_echo(&text, std::slice::from_ref(user), &self.prompt.line)
            }
            _ => text,
        };
        self.channel.set_aside(text);
    }

    /// Answers one prompt.
    fn answer(
        &mut self,
        prompt: LoginPrompt,
        line: &str,
        progress: &mut LoginProgress,
    ) -> Result<LoginStep, SessionError> {
        match prompt {
            LoginPrompt::Failed if progress.passwords_sent > 0 => {
                return Err(self.auth_failed(format!("the device said `{}`", line.trim())));
            }
            // A failure shown before we typed anything is someone else's: look on.
            LoginPrompt::Failed => {}
            LoginPrompt::Cli => return self.at_cli_prompt(line),
            // Asked again after a password: it was refused. Trying the same credentials
            // again would only count towards locking the account.
            LoginPrompt::Username | LoginPrompt::Password if progress.passwords_sent > 0 => {
                return Err(self.auth_failed(format!(
                    "the device asked `{}` again after the password",
                    line.trim()
                )));
            }
            LoginPrompt::Username => self.send_username(progress)?,
            LoginPrompt::Password => {
                let password = self.secret(&self.device.password, "password")?;
                progress.passwords_sent += 1;
                let mut line = password.into_bytes();
                line.push(b'\r');
                self.channel.send(&line)?;
            }
            LoginPrompt::PressReturn => self.channel.send(b"\r")?,
            LoginPrompt::ConfigDialog => {
                let answer = format!("{}\r", platform::table().common.dialog_answer);
                self.channel.send(answer.as_bytes())?;
            }
        }
        Ok(LoginStep::Continue)
    }

    /// At a CLI prompt: done, unless a console was left in configuration mode: leave it,
    /// without saving.
    fn at_cli_prompt(&mut self, line: &str) -> Result<LoginStep, SessionError> {
        if let Some(config) = &self.platform.config
            && config.is_match(line)
        {
            let exit = self.platform.config_exit.as_deref().unwrap_or("end");
            self.channel.send(format!("{exit}\r").as_bytes())?;
            return Ok(LoginStep::Continue);
        }
        Ok(LoginStep::AtPrompt)
    }

    fn send_username(&mut self, progress: &mut LoginProgress) -> Result<(), SessionError> {
        if progress.usernames_sent >= 3 {
            return Err(self.auth_failed("asked for the username again and again".into()));
        }
        let Some(user) = self.device.username.as_deref() else {
            return Err(self.auth_failed(
                "the device asks for a username but none is configured; set `username`".into(),
            ));
        };
        progress.usernames_sent += 1;
        self.channel.send(format!("{user}\r").as_bytes())?;
        Ok(())
    }

    fn auth_failed(&self, detail: String) -> SessionError {
        SessionError::AuthFailed {
            peer: self.peer(),
            detail,
        }
    }

    fn login_timeout(&self, progress: &LoginProgress) -> SessionError {
        let silent = self.channel.received() == 0;
        let last_seen = &progress.last_seen;
        SessionError::LoginTimeout {
            peer: self.peer(),
            seen: if silent {
                "the device sent nothing at all".into()
            } else if last_seen.is_empty() {
                "the device printed only blank lines".into()
            } else {
                format!("last line: `{last_seen}`")
            },
            hint: self.login_hint(!silent && !last_seen.is_empty()),
            silent,
        }
    }

    /// A console prints nothing until spoken to, and may be in any state: idle, at a login
    /// prompt, logged in with half a line typed, in a pager. Kill-line comes first (harmless
    /// everywhere); a console that answers it (woken from idle, a pager quit) must not also
    /// get a Return, which would answer its fresh `Username:` with an empty name. One that
    /// stays quiet gets the Return.
    fn wake_console(&mut self, deadline: Instant) -> Result<(), SessionError> {
        self.channel.send(KILL_LINE)?;
        let answered = self
            .channel
            .settle(SETTLE_QUIET, deadline)
            .map_err(|e| match e {
                ChannelError::Transport { source, .. } => SessionError::from(source),
                other => SessionError::Protocol {
                    peer: self.peer(),
                    detail: other.to_string(),
                },
            })?;
        if !answered {
            self.channel.send(b"\r")?;
        }
        Ok(())
    }

    /// Enters privileged mode when the platform has one and the prompt is not in it.
    pub(super) fn enable(&mut self, deadline: Instant) -> Result<(), SessionError> {
        let (Some(privileged), Some(enable)) = (&self.platform.privileged, &self.platform.enable)
        else {
            return Ok(());
        };
        // Ask for a fresh prompt to see the mode we are in.
        self.channel.send(b"\r")?;
        let m = self.wait_prompt(deadline)?;
        if privileged.is_match(&m) {
            return Ok(());
        }
        if self.device.enable_secret.is_none() {
            // Read-only accounts are fine at the user prompt for show commands.
            return Ok(());
        }
        self.channel.send(format!("{enable}\r").as_bytes())?;
        let prompts = PromptSet::new(&LoginPrompt::ENABLE, &self.prompt.line);
        let m = self.wait(&prompts.patterns, deadline)?;
        if prompts.name(&m) == LoginPrompt::Password {
            let secret = self.secret(&self.device.enable_secret, "enable secret")?;
            self.channel.send(format!("{secret}\r").as_bytes())?;
            let m = self.wait(&prompts.patterns, deadline)?;
            if prompts.name(&m) == LoginPrompt::Password || !privileged.is_match(&m.line) {
                return Err(self.auth_failed("the enable secret was refused".into()));
            }
        }
        Ok(())
    }
}
