//! Login, enable and setup over an in-memory device: the simulator's I/O-free engine behind
//! a [`Transport`], so every console and login quirk is a table row, with no sockets, ptys
//! or sleeps. Time is simulated: a wait the session makes moves the engine's clock by as
//! long as the wait's deadline is from now, and returns at once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::config::Secret;
use crate::inventory::{Endpoint, HostKeyCheck, Isolation, SshSettings};
use crate::sim::{Action, Engine, Fault, Outputs, Profile};

/// A simulated device on the other end of the line.
struct EngineLine {
    engine: Engine,
    /// The engine's clock: moves only while the session waits.
    now: Instant,
    /// What the device said that the session has not read yet.
    pending: VecDeque<u8>,
    closed: bool,
    /// Everything the session typed, for the cases that check it.
    typed: Arc<std::sync::Mutex<Vec<u8>>>,
    /// What the session set aside (a captured console would ship it as console text).
    aside: Arc<std::sync::Mutex<Vec<u8>>>,
}

impl EngineLine {
    fn new(engine: Engine) -> EngineLine {
        let mut line = EngineLine {
            engine,
            now: Instant::now(),
            pending: VecDeque::new(),
            closed: false,
            typed: Arc::default(),
            aside: Arc::default(),
        };
        let actions = line.engine.start(line.now);
        line.apply(actions);
        line
    }

    fn apply(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send(bytes) => self.pending.extend(bytes),
                Action::Close => self.closed = true,
            }
        }
    }

    /// Types `bytes` before the session comes (a console left in some state) and throws
    /// away what the device answered, as the previous user's screen is gone.
    fn left_by_previous_user(mut self, bytes: &[u8]) -> EngineLine {
        if bytes.is_empty() {
            return self;
        }
        let actions = self.engine.input(bytes, self.now);
        self.apply(actions);
        self.pending.clear();
        self
    }
}

impl Transport for EngineLine {
    fn recv(&mut self, buf: &mut [u8], deadline: Instant) -> Result<usize, TransportError> {
        let until = self.now + deadline.saturating_duration_since(Instant::now());
        // Bounded: each round either returns or runs one of the engine's timed steps.
        for _ in 0..10_000 {
            if !self.pending.is_empty() {
                let n = buf.len().min(self.pending.len());
                for (slot, b) in buf.iter_mut().zip(self.pending.drain(..n)) {
                    *slot = b;
                }
                return Ok(n);
            }
            if self.closed {
                return Err(TransportError::Closed {
                    peer: self.peer().into(),
                });
            }
            match self.engine.deadline() {
                Some(at) if at <= until => {
                    self.now = self.now.max(at);
                    let actions = self.engine.tick(self.now);
                    self.apply(actions);
                }
                _ => break,
            }
        }
        self.now = self.now.max(until);
        Err(TransportError::TimedOut {
            peer: self.peer().into(),
        })
    }

    fn send(&mut self, data: &[u8]) -> Result<(), TransportError> {
        if self.closed {
            return Err(TransportError::Closed {
                peer: self.peer().into(),
            });
        }
        self.typed.lock().unwrap().extend_from_slice(data);
        let actions = self.engine.input(data, self.now);
        self.apply(actions);
        Ok(())
    }

    fn peer(&self) -> &str {
        "memory sim"
    }

    fn set_aside(&mut self, text: &[u8]) {
        self.aside.lock().unwrap().extend_from_slice(text);
    }
}

/// Everything a device prints during a login besides its prompts (a banner, a log line) is
/// set aside, so a captured console ships it (issue 14); the echo of the username and the
/// password never are.
#[test]
fn what_a_device_prints_during_login_is_set_aside_but_not_what_we_typed() {
    for chatty in [false, true] {
        let profile = with(ios(), |p| {
            p.banner = Some(
                "Authorized access only\n%LINK-3-UPDOWN: Interface Gi0/1, changed state to up"
                    .into(),
            );
            p.password = "s3cret-pw".into();
            p.chatty = chatty;
        });
        // A line that shows its banner unasked (a console woken by the session drains it
        // before the login as a backlog, set aside too).
        let mut d = device(TransportKind::Telnet);
        d.password = Some(Secret::inline("s3cret-pw"));
        let line = EngineLine::new(Engine::new(Arc::new(profile), "sim", false));
        let aside = Arc::clone(&line.aside);
        let mut line = Some(line);
        let mut outcomes = Vec::new();
        collect_each_with(
            &d,
            &["show version".to_string()],
            &mut |o| outcomes.push(o),
            &mut |d| {
                Session::start(
                    d,
                    Box::new(line.take().unwrap()),
                    Instant::now() + d.connect_timeout,
                )
            },
        );
        assert_eq!(outcomes.len(), 1);
        assert_eq!(outcomes[0].status, Status::Ok, "{outcomes:#?}");
        assert_eq!(outcomes[0].output, SHOW_VERSION);
        let aside = String::from_utf8_lossy(&aside.lock().unwrap()).into_owned();
        assert!(
            aside.contains("Authorized access only\n")
                && aside.contains("%LINK-3-UPDOWN: Interface Gi0/1, changed state to up\n"),
            "chatty {chatty}: the banner is the device's own: {aside:?}"
        );
        assert!(!aside.contains("s3cret-pw"), "{aside:?}");
        assert!(
            !aside.lines().any(|l| l.trim() == "admin"),
            "the username's echo is ours: {aside:?}"
        );
    }
}

const SHOW_VERSION: &[u8] = b"Cisco IOS Software, Version 15.2\nuptime is 2 days\n";
const LONG_LINES: usize = 30;

fn long_output() -> String {
    (1..=LONG_LINES).map(|i| format!("line {i}\n")).collect()
}

/// A cisco_ios device with login, `admin`/`admin`, paging at 24 lines.
fn ios() -> Profile {
    on("cisco_ios")
}

/// A device of `platform` with login, `admin`/`admin`, paging at 24 lines (Linux: none).
fn on(platform: &str) -> Profile {
    let mut p = Profile::for_platform(platform).unwrap();
    let mut outputs = Outputs::default();
    outputs.insert("show version", SHOW_VERSION);
    outputs.insert("show long", long_output().as_bytes());
    p.outputs = outputs;
    p
}

fn device(transport: TransportKind) -> Device {
    Device {
        name: "sw1".into(),
        groups: vec![],
        transport,
        endpoint: Endpoint::Net {
            host: "127.0.0.1".into(),
            port: 23,
        },
        platform: "cisco_ios".into(),
        prompt: None,
        username: Some("admin".into()),
        password: Some(Secret::inline("admin")),
        enable_secret: None,
        ssh: SshSettings {
            key_file: None,
            key_passphrase: None,
            host_key_check: HostKeyCheck::Strict,
            known_hosts: "/nonexistent".into(),
            legacy: false,
            kex: vec![],
            host_key_algorithms: vec![],
            ciphers: vec![],
            macs: vec![],
            keepalive: Duration::from_secs(30),
        },
        commands: vec![],
        ship: Default::default(),
        interval: Duration::from_secs(60),
        connect_timeout: Duration::from_secs(10),
        command_timeout: Duration::from_secs(10),
        max_output: 1 << 20,
        isolation: Isolation::Thread,
        driver_exec: None,
        capture: None,
    }
}

/// One row: a device, what it is left in, what the session must make of it.
struct Case {
    name: &'static str,
    profile: Profile,
    /// A console (silent until a key; the session wakes it) rather than a Telnet line.
    console: bool,
    /// Typed into the device before the session comes.
    left: &'static [u8],
    device: Device,
    commands: &'static [&'static str],
    /// Per command: the status and the output (for `Ok`) or a part of the error.
    expect: &'static [(Status, &'static str)],
    /// What the session must have typed (in order, among other keys).
    typed: &'static [&'static str],
    /// What it must not have typed.
    not_typed: &'static [&'static str],
}

impl Case {
    fn new(name: &'static str, profile: Profile) -> Case {
        Case {
            name,
            profile,
            console: false,
            left: b"",
            device: device(TransportKind::Telnet),
            commands: &["show version"],
            expect: &[(Status::Ok, "")],
            typed: &[],
            not_typed: &[],
        }
    }

    fn platform(mut self, platform: &str) -> Case {
        self.device.platform = platform.into();
        self
    }

    fn console(mut self, left: &'static [u8]) -> Case {
        self.console = true;
        self.left = left;
        self.device.transport = TransportKind::Serial;
        self
    }

    fn run(self) {
        let line = EngineLine::new(Engine::new(Arc::new(self.profile), "sim", self.console))
            .left_by_previous_user(self.left);
        let typed = Arc::clone(&line.typed);
        let mut line = Some(line);
        let commands: Vec<String> = self.commands.iter().map(|c| c.to_string()).collect();
        let mut outcomes = Vec::new();
        collect_each_with(
            &self.device,
            &commands,
            &mut |o| outcomes.push(o),
            &mut |d| {
                let line = line.take().expect("one session per case");
                Session::start(d, Box::new(line), Instant::now() + d.connect_timeout)
            },
        );
        let name = self.name;
        assert_eq!(outcomes.len(), self.expect.len(), "{name}: {outcomes:#?}");
        for (o, (status, text)) in outcomes.iter().zip(self.expect) {
            assert_eq!(o.status, *status, "{name}: `{}`: {o:#?}", o.command);
            if *status == Status::Ok {
                let want = if text.is_empty() {
                    String::from_utf8_lossy(SHOW_VERSION).into_owned()
                } else {
                    text.to_string()
                };
                assert_eq!(String::from_utf8_lossy(&o.output), want, "{name}: {o:#?}");
            } else {
                let error = o.error.as_deref().unwrap_or("");
                assert!(error.contains(text), "{name}: `{text}` not in: {error}");
            }
        }
        let typed = String::from_utf8_lossy(&typed.lock().unwrap()).into_owned();
        let mut rest = typed.as_str();
        for want in self.typed {
            let at = rest
                .find(want)
                .unwrap_or_else(|| panic!("{name}: did not type {want:?} (in order): {typed:?}"));
            rest = &rest[at + want.len()..];
        }
        for unwanted in self.not_typed {
            assert!(
                !typed.contains(unwanted),
                "{name}: typed {unwanted:?}: {typed:?}"
            );
        }
    }
}

fn with(mut p: Profile, change: impl FnOnce(&mut Profile)) -> Profile {
    change(&mut p);
    p
}

/// A Telnet device whose `enable_secret` is `s`.
fn with_secret(s: &str) -> Device {
    let mut d = device(TransportKind::Telnet);
    d.enable_secret = Some(Secret::inline(s));
    d
}

#[test]
fn login_copes_with_what_lines_and_consoles_show() {
    let refused = {
        let mut d = device(TransportKind::Telnet);
        d.password = Some(Secret::inline("wrong"));
        d
    };
    let cases = vec![
        Case::new("plain login", ios()),
        Case::new(
            "banner before login",
            with(ios(), |p| {
                p.banner = Some("Authorized access only\nUsername: and Password: are ours".into())
            }),
        ),
        Case {
            typed: &["\r", "admin\r"],
            ..Case::new(
                "Press RETURN to get started",
                with(ios(), |p| p.press_return = true),
            )
        },
        Case {
            typed: &["no\r", "admin\r"],
            ..Case::new(
                "initial configuration dialog",
                with(ios(), |p| p.config_dialog = true),
            )
        },
        Case {
            device: refused,
            commands: &["show version", "show long"],
            expect: &[
                (Status::AuthFailed, "login refused"),
                (Status::AuthFailed, "login refused"),
            ],
            ..Case::new("wrong password", ios())
        },
        Case {
            typed: &["end\r", "terminal length 0\n"],
            ..Case::new("console left in config mode", ios())
                .console(b"\radmin\radmin\rconfigure terminal\r")
        },
        Case {
            commands: &["show long"],
            expect: &[(Status::Ok, LONG)],
            ..Case::new("pager mid-page left on the console", ios())
                .console(b"\radmin\radmin\rshow long\r")
        },
        Case::new(
            "log lines printed before the prompt",
            with(ios(), |p| p.chatty = true),
        )
        .console(b""),
        Case {
            typed: &["\x15", "\r", "terminal length 0\n"],
            ..Case::new("half a line typed on the console", ios())
                .console(b"\radmin\radmin\rshow ver")
        },
        Case {
            typed: &["set cli screen-length 0\n"],
            ..Case::new(
                "Junos login with a context line above the prompt",
                with(on("juniper_junos"), |p| {
                    p.context_line = Some("{master:0}".into())
                }),
            )
            .platform("juniper_junos")
        },
    ];
    for case in cases {
        case.run();
    }
}

#[test]
fn enable_and_setup_reach_the_right_prompt_or_say_why() {
    let cases = vec![
        Case {
            typed: &["enable\r", "s3cret\r", "terminal length 0\n"],
            ..Case {
                device: with_secret("s3cret"),
                ..Case::new(
                    "enable with a secret",
                    with(ios(), |p| p.enable_secret = Some("s3cret".into())),
                )
            }
        },
        Case {
            not_typed: &["enable"],
            ..Case::new(
                "enable without a secret configured stays at the user prompt",
                with(ios(), |p| p.enable_secret = Some("s3cret".into())),
            )
        },
        Case {
            device: with_secret("nope"),
            expect: &[(Status::AuthFailed, "the enable secret was refused")],
            ..Case::new(
                "a wrong enable secret",
                with(ios(), |p| p.enable_secret = Some("s3cret".into())),
            )
        },
        Case {
            commands: &["show long"],
            expect: &[(Status::Ok, LONG)],
            ..Case::new(
                "paging off refused: the pager is answered",
                with(ios(), |p| p.refuse_paging_off = true),
            )
        },
        Case {
            expect: &[(
                Status::Timeout,
                "`terminal width 511` (session setup after login)",
            )],
            ..Case::new(
                "setup that never comes back",
                ios().with_fault("terminal width 511", Fault::Hang),
            )
        },
    ];
    for case in cases {
        case.run();
    }
}

const LONG: &str = "line 1\nline 2\nline 3\nline 4\nline 5\nline 6\nline 7\nline 8\nline 9\nline 10\nline 11\nline 12\nline 13\nline 14\nline 15\nline 16\nline 17\nline 18\nline 19\nline 20\nline 21\nline 22\nline 23\nline 24\nline 25\nline 26\nline 27\nline 28\nline 29\nline 30\n";
