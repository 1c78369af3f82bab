//! Logging in once the host key is trusted: a key file, a password, or keyboard-interactive
//! answered with the password, whichever the server offers the user.
//!
//! Why it exists apart from the transport: each way in fails for its own reasons, and a
//! field engineer needs the one that applies (which key, where the password comes from,
//! what the server offers instead). Every step runs within the connection's one deadline,
//! and a step that ran out of time is a connect failure, not a refused credential.

use std::fs;
use std::io;
use std::path::Path;
use std::time::Instant;

use ssh2::{KeyboardInteractivePrompt, Prompt, Session};

use super::{arm, is_timeout};
use crate::config::Secret;
use crate::inventory::Device;
use crate::transport::TransportError;

/// Rounds of keyboard-interactive prompts we answer with the password; the server gives up
/// after its own limit if we keep answering wrong.
const MAX_PASSWORD_ROUNDS: u32 = 3;

/// Answers keyboard-interactive prompts that ask for a password with the password.
struct PasswordPrompter<'a> {
    password: &'a str,
    rounds: u32,
}

impl KeyboardInteractivePrompt for PasswordPrompter<'_> {
    fn prompt<'b>(
        &mut self,
        _user: &str,
        _instructions: &str,
        prompts: &[Prompt<'b>],
    ) -> Vec<String> {
        self.rounds += 1;
        prompts
            .iter()
            .map(|p| {
                // A hidden prompt or one that asks for a password gets the password; the
                // server gives up after its own limit if we keep answering wrong.
                let wants_password = !p.echo || p.text.to_ascii_lowercase().contains("password");
                if wants_password && self.rounds <= MAX_PASSWORD_ROUNDS {
                    self.password.to_string()
                } else {
                    String::new()
                }
            })
            .collect()
    }
}

fn secret_value<'a>(
    secret: Option<&'a Secret>,
    what: &str,
    device: &Device,
    peer: &str,
) -> Result<&'a str, TransportError> {
    let auth = |detail: String| TransportError::Auth {
        peer: peer.to_string(),
        detail,
    };
    let Some(secret) = secret else {
        return Err(auth(format!(
            "device `{}` has no {what}; set {what}_env, {what}_file or key_file",
            device.name
        )));
    };
    secret.expose().ok_or_else(|| {
        auth(format!(
            "the {what} of device `{}` comes from {}, which is not set in rackhand's environment; set it (systemd: Environment= or EnvironmentFile=) or use {what}_file",
            device.name,
            secret.describe()
        ))
    })
}

/// One login attempt's context: the session, the device, the deadline, the user.
struct Login<'a> {
    session: &'a Session,
    device: &'a Device,
    deadline: Instant,
    peer: &'a str,
    user: &'a str,
    /// The methods the server offers the user, as it lists them (`publickey,password`).
    methods: String,
}

/// Logs in as the device's user with its key file or password, before `deadline`.
pub(super) fn authenticate(
    session: &Session,
    device: &Device,
    deadline: Instant,
    peer: &str,
) -> Result<(), TransportError> {
    let Some(user) = device.username.as_deref() else {
        return Err(TransportError::Auth {
            peer: peer.to_string(),
            detail: format!(
                "device `{}` has no username; set username = \"...\" on it, a group or [defaults]",
                device.name
            ),
        });
    };
    let mut login = Login {
        session,
        device,
        deadline,
        peer,
        user,
        methods: String::new(),
    };
    login.arm()?;
    login.methods = match session.auth_methods(user) {
        Ok(list) => list.to_string(),
        // The server let us in with "none" (some consoles do).
        Err(_) if session.authenticated() => return Ok(()),
        Err(e) => {
            return Err(login.step_failed(&e, format!("asking which logins user `{user}` may use")));
        }
    };
    match &device.ssh.key_file {
        Some(key) => login.with_key(key),
        None => login.with_password(),
    }
}

impl Login<'_> {
    fn auth(&self, detail: String) -> TransportError {
        TransportError::Auth {
            peer: self.peer.to_string(),
            detail,
        }
    }

    /// A step that ran out of time is a connect failure; any other failure a refusal.
    fn step_failed(&self, e: &ssh2::Error, what: String) -> TransportError {
        if is_timeout(e) {
            TransportError::Connect {
                peer: self.peer.to_string(),
                detail: format!(
                    "no answer to {what} within connect_timeout ({:?}): {e}",
                    self.device.connect_timeout
                ),
            }
        } else {
            self.auth(format!("{what} failed: {}", e.message()))
        }
    }

    /// Gives the next step what is left of the deadline.
    fn arm(&self) -> Result<(), TransportError> {
        arm(self.session, self.deadline, self.device.connect_timeout).map_err(|e| {
            TransportError::Connect {
                peer: self.peer.to_string(),
                detail: e.to_string(),
            }
        })
    }

    fn offers(&self, method: &str) -> bool {
        self.methods.split(',').any(|x| x == method)
    }

    fn with_key(&self, key: &Path) -> Result<(), TransportError> {
        let user = self.user;
        if !self.offers("publickey") {
            return Err(self.auth(format!(
                "the server does not accept keys for `{user}` (it offers: {}); remove key_file to log in with a password",
                self.methods
            )));
        }
        check_key_file(key).map_err(|e| {
            self.auth(format!(
                "cannot read key_file {}: {e}; check the path and that rackhand's user may read it",
                key.display()
            ))
        })?;
        let passphrase = match &self.device.ssh.key_passphrase {
            Some(secret) => Some(secret_value(
                Some(secret),
                "key_passphrase",
                self.device,
                self.peer,
            )?),
            None => None,
        };
        self.arm()?;
        self.session
            .userauth_pubkey_file(user, None, key, passphrase)
            .map_err(|e| {
                self.step_failed(
                    &e,
                    format!(
                        "key login as `{user}` with {} (is the public key in the device's authorized keys for `{user}`, and the passphrase right?)",
                        key.display()
                    ),
                )
            })
    }

    fn with_password(&self) -> Result<(), TransportError> {
        let (user, device) = (self.user, self.device);
        let password = secret_value(device.password.as_ref(), "password", device, self.peer)?;
        self.arm()?;
        let source = device
            .password
            .as_ref()
            .map(Secret::describe)
            .unwrap_or_default();
        if self.offers("password") {
            return self.session.userauth_password(user, password).map_err(|e| {
                self.step_failed(
                    &e,
                    format!("password login as `{user}` (password from {source}); check the username and password"),
                )
            });
        }
        if self.offers("keyboard-interactive") {
            let mut prompter = PasswordPrompter {
                password,
                rounds: 0,
            };
            self.session
                .userauth_keyboard_interactive(user, &mut prompter)
                .map_err(|e| {
                    self.step_failed(
                        &e,
                        format!("keyboard-interactive login as `{user}` (password from {source}); check the username and password"),
                    )
                })?;
            if self.session.authenticated() {
                return Ok(());
            }
            return Err(self.auth(format!(
                "keyboard-interactive login as `{user}` did not complete; check the username and password"
            )));
        }
        Err(self.auth(format!(
            "the server offers no password login for `{user}` (it offers: {}); set key_file",
            self.methods
        )))
    }
}

/// Whether the key file can be read, so a missing one is named before libssh2's vaguer error.
fn check_key_file(path: &Path) -> io::Result<()> {
    fs::File::open(path).map(drop)
}
