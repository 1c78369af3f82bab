//! The session dialogue, byte for byte, with a fake clock.

use super::*;
use crate::sim::outputs::Outputs;
use crate::sim::profile::Fault;

const HOST: &str = "sim";

fn numbered(n: usize) -> String {
    (1..=n).map(|i| format!("line {i}\n")).collect()
}

fn profile(platform: &str) -> Profile {
    let mut p = Profile::for_platform(platform).unwrap();
    let mut outputs = Outputs::default();
    outputs.insert("show version", b"Version 1.0\r\nUptime 2 days\r\n");
    outputs.insert("show clock", b"*10:00:00.000 UTC Thu Nov 26 2026");
    outputs.insert("show ip interface brief", b"Interface IP-Address\n");
    outputs.insert("show long", numbered(30).as_bytes());
    p.outputs = outputs;
    p.login = false;
    p
}

/// A terminal on one engine: what was typed in, what came out, and a clock we move by hand.
struct Term {
    engine: Engine,
    now: Instant,
    screen: Vec<u8>,
    closed: bool,
}

impl Term {
    fn new(profile: Profile, console: bool) -> Term {
        let mut t = Term {
            engine: Engine::new(Arc::new(profile), HOST, console),
            now: Instant::now(),
            screen: Vec::new(),
            closed: false,
        };
        let actions = t.engine.start(t.now);
        t.apply(actions);
        t
    }

    fn apply(&mut self, actions: Vec<Action>) {
        for a in actions {
            assert!(!self.closed, "output after Close");
            match a {
                Action::Send(b) => self.screen.extend(b),
                Action::Close => self.closed = true,
            }
        }
    }

    fn type_bytes(&mut self, bytes: &[u8]) {
        let actions = self.engine.input(bytes, self.now);
        self.apply(actions);
    }

    /// Moves the clock on, ticking at every deadline the engine asks for (bounded).
    fn wait(&mut self, d: Duration) {
        let until = self.now + d;
        for _ in 0..10_000 {
            match self.engine.deadline() {
                Some(at) if at <= until => {
                    self.now = self.now.max(at);
                    let actions = self.engine.tick(self.now);
                    self.apply(actions);
                }
                _ => break,
            }
        }
        self.now = until;
    }

    fn take(&mut self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut self.screen)).into_owned()
    }

    fn run(&mut self, line: &str) -> String {
        self.type_bytes(format!("{line}\r\n").as_bytes());
        self.wait(Duration::ZERO);
        self.take()
    }
}

#[test]
fn ios_session_without_secret_starts_privileged_and_answers_abbreviations() {
    let mut t = Term::new(profile("cisco_ios"), false);
    assert_eq!(t.take(), "sim#");
    assert_eq!(
        t.run("sh ver"),
        "sh ver\r\nVersion 1.0\r\nUptime 2 days\r\nsim#"
    );
    assert_eq!(
        t.run("SH IP INT BR"),
        "SH IP INT BR\r\nInterface IP-Address\r\nsim#"
    );
    assert_eq!(t.run(""), "\r\nsim#");
}

#[test]
fn output_without_final_newline_still_ends_the_line() {
    let mut t = Term::new(profile("cisco_ios"), false);
    t.take();
    assert_eq!(
        t.run("show clock"),
        "show clock\r\n*10:00:00.000 UTC Thu Nov 26 2026\r\nsim#"
    );
}

#[test]
fn invalid_input_marker_sits_under_the_bad_word() {
    let mut t = Term::new(profile("cisco_ios"), false);
    t.take();
    let out = t.run("sh foo");
    let expected = format!(
        "sh foo\r\n{}^\r\n% Invalid input detected at '^' marker.\r\n\r\nsim#",
        " ".repeat("sim#".len() + 3)
    );
    assert_eq!(out, expected);
    let out = t.run("e");
    assert_eq!(out, "e\r\n% Ambiguous command:  \"e\"\r\nsim#");
    assert_eq!(t.run("sh ip"), "sh ip\r\n% Incomplete command.\r\n\r\nsim#");
}

#[test]
fn line_ends_and_editing() {
    let mut t = Term::new(profile("cisco_ios"), false);
    t.take();
    // CR NUL, bare LF and backspace/DEL editing all work.
    t.type_bytes(b"sh vx\x08er\r\0");
    assert_eq!(
        t.take(),
        "sh vx\x08 \x08er\r\nVersion 1.0\r\nUptime 2 days\r\nsim#"
    );
    t.type_bytes(b"sh verz\x7f\n");
    assert!(t.take().ends_with("Uptime 2 days\r\nsim#"));
    // Cursor keys are swallowed, not typed.
    t.type_bytes(b"\x1b[Ash clock\r");
    assert!(t.take().starts_with("sh clock\r\n*10:00"));
}

#[test]
fn paging_shows_pages_and_erases_the_pager_prompt() {
    let mut t = Term::new(profile("cisco_ios"), false);
    t.take();
    let first = t.run("show long");
    assert_eq!(
        first,
        format!(
            "show long\r\n{} --More-- ",
            numbered(23).replace('\n', "\r\n")
        )
    );
    let erase = format!(
        "{}{}{}",
        "\x08".repeat(10),
        " ".repeat(10),
        "\x08".repeat(10)
    );
    // Return: one more line, then the pager again.
    t.type_bytes(b"\r");
    assert_eq!(t.take(), format!("{erase}line 24\r\n --More-- "));
    // Space: the rest (6 lines fit in the next page), then the prompt.
    t.type_bytes(b" ");
    let rest: String = (25..=30).map(|i| format!("line {i}\r\n")).collect();
    assert_eq!(t.take(), format!("{erase}{rest}sim#"));
    // q stops the output.
    t.run("show long");
    t.type_bytes(b"q");
    assert_eq!(t.take(), format!("{erase}sim#"));
}

#[test]
fn terminal_length_zero_turns_paging_off_unless_refused() {
    let mut t = Term::new(profile("cisco_ios"), false);
    t.take();
    assert_eq!(t.run("term len 0"), "term len 0\r\nsim#");
    let out = t.run("show long");
    assert!(
        !out.contains("More") && out.ends_with("line 30\r\nsim#"),
        "{out}"
    );

    let mut p = profile("cisco_ios");
    p.refuse_paging_off = true;
    let mut t = Term::new(p, false);
    t.take();
    assert_eq!(
        t.run("terminal length 0"),
        "terminal length 0\r\n% Authorization failed.\r\nsim#"
    );
    assert!(t.run("show long").ends_with(" --More-- "));
}

#[test]
fn login_accepts_the_right_password_without_echoing_it() {
    let mut p = profile("cisco_ios");
    p.login = true;
    p.banner = Some("Authorized access only".into());
    let mut t = Term::new(p, false);
    assert_eq!(
        t.take(),
        "\r\nAuthorized access only\r\n\r\nUser Access Verification\r\n\r\nUsername: "
    );
    t.type_bytes(b"admin\r");
    assert_eq!(t.take(), "admin\r\nPassword: ");
    t.type_bytes(b"admin\r");
    assert_eq!(t.take(), "\r\nsim#");
}

#[test]
fn the_initial_configuration_dialog_comes_first_and_only_no_goes_on() {
    let mut p = profile("cisco_ios");
    p.config_dialog = true;
    let mut t = Term::new(p, false);
    let question = "Would you like to enter the initial configuration dialog? [yes/no]: ";
    assert_eq!(
        t.take(),
        format!("\r\n         --- System Configuration Dialog ---\r\n\r\n{question}")
    );
    t.type_bytes(b"maybe\r");
    assert_eq!(
        t.take(),
        format!("maybe\r\n% Please answer 'yes' or 'no'.\r\n{question}")
    );
    t.type_bytes(b"no\r");
    assert_eq!(t.take(), "no\r\n\r\nsim#");
}

#[test]
fn three_failed_logins_close_a_network_session() {
    let mut p = profile("cisco_ios");
    p.login = true;
    let mut t = Term::new(p, false);
    for attempt in 1..=3 {
        t.type_bytes(b"admin\rwrong\r");
        let out = t.take();
        assert!(out.contains("% Login invalid"), "{out}");
        assert_eq!(t.closed, attempt == 3, "attempt {attempt}");
    }
}

#[test]
fn console_is_silent_until_a_key_and_survives_logout_and_failures() {
    let mut p = profile("cisco_ios");
    p.login = true;
    let mut t = Term::new(p, true);
    assert_eq!(t.take(), "");
    assert!(t.engine.is_idle());
    t.type_bytes(b"\r");
    assert!(t.take().ends_with("Username: "));
    for _ in 0..3 {
        t.type_bytes(b"admin\rnope\r");
    }
    let out = t.take();
    assert!(
        out.contains("con0 is now available") && out.contains("Press RETURN"),
        "{out}"
    );
    assert!(t.engine.is_idle() && !t.closed);
    t.type_bytes(b"\radmin\radmin\r");
    assert!(t.take().ends_with("sim#"));
    assert_eq!(
        t.run("exit"),
        "exit\r\n\r\nsim con0 is now available\r\n\r\n\r\n\r\n\r\n\r\nPress RETURN to get started.\r\n\r\n"
    );
    assert!(t.engine.is_idle() && !t.closed);
}

#[test]
fn enable_secret_and_config_mode() {
    let mut p = profile("cisco_ios");
    p.enable_secret = Some("s3cret".into());
    let mut t = Term::new(p, false);
    assert_eq!(t.take(), "sim>");
    // configure is not there in user mode.
    assert!(t.run("conf t").contains("% Invalid input"));
    assert_eq!(t.run("en"), "en\r\nPassword: ");
    t.type_bytes(b"bad\r");
    assert_eq!(t.take(), "\r\nPassword: ");
    t.type_bytes(b"bad\rbad\r");
    assert_eq!(t.take(), "\r\nPassword: \r\n% Bad secrets\r\n\r\nsim>");
    t.run("enable");
    t.type_bytes(b"s3cret\r");
    assert_eq!(t.take(), "\r\nsim#");
    assert_eq!(
        t.run("conf t"),
        "conf t\r\nEnter configuration commands, one per line.  End with CNTL/Z.\r\nsim(config)#"
    );
    assert_eq!(t.run("hostname core1"), "hostname core1\r\ncore1(config)#");
    assert!(
        t.run("do sh ver")
            .ends_with("Uptime 2 days\r\ncore1(config)#")
    );
    t.type_bytes(b"\x1a");
    assert_eq!(t.take(), "^Z\r\ncore1#");
    t.run("conf t");
    assert_eq!(t.run("end"), "end\r\ncore1#");
    assert_eq!(t.run("disable"), "disable\r\ncore1>");
}

#[test]
fn exit_closes_a_network_session() {
    let mut t = Term::new(profile("cisco_nxos"), false);
    t.take();
    t.run("exit");
    assert!(t.closed);
}

#[test]
fn exit_delay_holds_back_the_logout_of_a_network_session_and_a_console() {
    for console in [false, true] {
        let mut p = profile("cisco_ios");
        p.exit_delay = Duration::from_secs(3);
        let mut t = Term::new(p, console);
        if console {
            t.type_bytes(b"\r");
        }
        t.take();
        // Other commands are not delayed.
        assert_eq!(
            t.run("show clock"),
            "show clock\r\n*10:00:00.000 UTC Thu Nov 26 2026\r\nsim#"
        );
        assert_eq!(t.run("exit"), "exit\r\n");
        t.wait(Duration::from_millis(2999));
        assert!(!t.closed && !t.engine.is_idle(), "console {console}");
        t.wait(Duration::from_millis(1));
        assert_eq!(t.closed, !console);
        assert_eq!(t.engine.is_idle(), console);
    }
}

#[test]
fn latency_delays_output_and_typeahead_runs_in_order() {
    let mut p = profile("cisco_ios");
    p.latency = Duration::from_millis(200);
    let mut t = Term::new(p, false);
    t.take();
    t.type_bytes(b"show clock\rshow version\r");
    assert_eq!(t.take(), "show clock\r\n");
    assert_eq!(
        t.engine.deadline(),
        Some(t.now + Duration::from_millis(200))
    );
    t.wait(Duration::from_millis(199));
    assert_eq!(t.take(), "");
    t.wait(Duration::from_millis(1));
    assert_eq!(
        t.take(),
        "*10:00:00.000 UTC Thu Nov 26 2026\r\nsim#show version\r\n"
    );
    t.wait(Duration::from_millis(200));
    assert_eq!(t.take(), "Version 1.0\r\nUptime 2 days\r\nsim#");
}

#[test]
fn hang_fault_answers_nothing_ever() {
    let p = profile("cisco_ios").with_fault("show version", Fault::Hang);
    let mut t = Term::new(p, false);
    t.take();
    assert_eq!(t.run("sh ver"), "sh ver\r\n");
    assert_eq!(t.engine.deadline(), None);
    t.type_bytes(b"\r\x03show clock\r");
    t.wait(Duration::from_secs(3600));
    assert_eq!(t.take(), "");
    assert!(!t.closed);
}

#[test]
fn drop_fault_closes_mid_output() {
    let p = profile("cisco_ios").with_fault("show long", Fault::Drop);
    let mut t = Term::new(p, false);
    t.run("term len 0");
    let out = t.run("show long");
    assert!(t.closed);
    assert!(
        out.contains("line 15\r\n") && !out.contains("line 16"),
        "{out}"
    );
    assert!(!out.ends_with("sim#"));
}

#[test]
fn endless_fault_never_reaches_the_prompt() {
    let p = profile("cisco_ios").with_fault("show version", Fault::Endless);
    let mut t = Term::new(p, false);
    t.run("terminal length 0");
    let mut total = 0;
    t.type_bytes(b"show version\r");
    for _ in 0..100 {
        let actions = t.engine.tick(t.now);
        t.apply(actions);
        let out = t.take();
        assert!(!out.contains("sim#"));
        total += out.len();
    }
    assert!(total > 100 * ENDLESS_CHUNK * 10, "only {total} bytes");
    assert!(t.engine.deadline().is_some());
}

#[test]
fn garbage_fault_sends_binary_then_the_prompt() {
    let p = profile("cisco_ios").with_fault("show clock", Fault::Garbage);
    let mut t = Term::new(p, false);
    t.take();
    t.type_bytes(b"show clock\r");
    t.wait(Duration::ZERO);
    let out = std::mem::take(&mut t.screen);
    assert!(out.contains(&0xff) && out.contains(&0x00));
    assert!(std::str::from_utf8(&out).is_err());
    assert!(out.ends_with(b"\r\nsim#"));
}

#[test]
fn slow_fault_trickles_over_the_slow_duration() {
    let p = profile("cisco_ios").with_fault("show long", Fault::Slow);
    let mut t = Term::new(p, false);
    t.run("terminal length 0");
    t.type_bytes(b"show long\r");
    let start = t.now;
    let mut seen = 0;
    while !t.screen.ends_with(b"sim#") {
        let at = t.engine.deadline().expect("slow output has a deadline");
        assert!(at > t.now || seen == 0);
        t.now = at;
        let actions = t.engine.tick(t.now);
        t.apply(actions);
        seen += 1;
        assert!(seen <= 31);
    }
    let took = t.now - start;
    assert!(
        took >= Duration::from_millis(2800) && took <= Duration::from_secs(3),
        "{took:?}"
    );
    assert!(t.take().contains("line 30\r\n"));
}

#[test]
fn junos_style() {
    let mut t = Term::new(profile("juniper_junos"), false);
    assert_eq!(t.take(), "admin@sim> ");
    let out = t.run("show long");
    assert!(out.ends_with("line 23\r\n---(more)---"), "{out}");
    t.type_bytes(b"q");
    t.take();
    let out = t.run("show long | no-more");
    assert!(out.ends_with("line 30\r\nadmin@sim> "), "{out}");
    assert_eq!(
        t.run("set cli screen-length 0"),
        "set cli screen-length 0\r\nScreen length set to 0\r\nadmin@sim> "
    );
    let out = t.run("show foo");
    assert!(out.contains("^\r\nsyntax error."), "{out}");
    let out = t.run("foo");
    assert!(out.contains("unknown command."), "{out}");
    let out = t.run("show version | match Up");
    assert_eq!(
        out,
        "show version | match Up\r\nUptime 2 days\r\nadmin@sim> "
    );
    t.run("quit");
    assert!(t.closed);
}

#[test]
fn linux_style() {
    let mut p = profile("linux");
    p.login = true;
    let mut t = Term::new(p, false);
    assert_eq!(t.take(), "\r\nsim login: ");
    t.type_bytes(b"admin\radmin\r");
    assert!(t.take().ends_with("admin@sim:~$ "));
    assert_eq!(
        t.run("foo bar"),
        "foo bar\r\nbash: foo: command not found\r\nadmin@sim:~$ "
    );
    assert_eq!(
        t.run("echo hi there"),
        "echo hi there\r\nhi there\r\nadmin@sim:~$ "
    );
    // No abbreviations on a shell.
    assert!(t.run("sh ver").contains("bash: sh: command not found"));
    assert_eq!(t.run("exit"), "exit\r\nlogout\r\n");
    assert!(t.closed);
}

#[test]
fn ctrl_c_abandons_the_line() {
    let mut t = Term::new(profile("cisco_ios"), false);
    t.take();
    t.type_bytes(b"show ver\x03");
    assert_eq!(t.take(), "show ver^C\r\nsim#");
    assert_eq!(
        t.run("sh clock"),
        "sh clock\r\n*10:00:00.000 UTC Thu Nov 26 2026\r\nsim#"
    );
}

#[test]
fn question_mark_lists_what_may_follow_and_keeps_the_line() {
    let mut t = Term::new(profile("cisco_ios"), false);
    t.take();
    t.type_bytes(b"sh ip ?");
    assert_eq!(t.take(), "sh ip ?\r\n  interface\r\nsim#sh ip ");
    t.type_bytes(b"int br\r");
    t.wait(Duration::ZERO);
    assert_eq!(t.take(), "int br\r\nInterface IP-Address\r\nsim#");
}

/// The log line a chatty device prints as its `n`th.
fn log_line(n: u64) -> String {
    format!(
        "\r\n*Mar  1 00:00:{n:02}.{n:03}: %LINK-3-UPDOWN: Interface GigabitEthernet0/{n}, changed state to up\r\n"
    )
}

#[test]
fn a_chatty_device_logs_before_the_echo_and_after_the_prompt_with_and_without_reprint() {
    let mut p = profile("cisco_ios");
    p.chatty = true;
    let mut t = Term::new(p, false);
    assert_eq!(t.take(), "sim#");
    let clock = "*10:00:00.000 UTC Thu Nov 26 2026";
    // Lines 1 and 2 reprint the prompt (the echo goes on after it) ...
    assert_eq!(
        t.run("show clock"),
        format!(
            "{}sim#show clock\r\n{clock}\r\nsim#{}sim#",
            log_line(1),
            log_line(2)
        )
    );
    // ... lines 3 and 4 do not: the echo starts at column 0, the cursor ends there.
    assert_eq!(
        t.run("show clock"),
        format!(
            "{}show clock\r\n{clock}\r\nsim#{}",
            log_line(3),
            log_line(4)
        )
    );
    assert_eq!(t.engine.chatter_sent(), 4);
    // An empty line is no command: no log line.
    assert_eq!(t.run(""), "\r\nsim#");
}

#[test]
fn a_chatty_console_logs_a_few_lines_while_idle_and_stops() {
    let mut p = profile("cisco_ios");
    p.chatty = true;
    let mut t = Term::new(p, true);
    assert_eq!(t.take(), "");
    t.wait(CHATTER_IDLE_EVERY * 3);
    assert_eq!(
        t.take(),
        format!("{}{}{}", log_line(1), log_line(2), log_line(3))
    );
    t.wait(CHATTER_IDLE_EVERY * 100);
    assert_eq!(t.take(), format!("{}{}", log_line(4), log_line(5)));
    assert_eq!(t.engine.chatter_sent(), CHATTER_IDLE_MAX as u64);
    assert!(t.engine.deadline().is_none() && t.engine.is_idle());
    // A key starts a session; the idle spell ends.
    t.type_bytes(b"\r");
    assert_eq!(t.take(), "sim#");
    assert!(t.engine.deadline().is_none());
}

#[test]
fn an_idle_log_pace_keeps_an_idle_console_logging_until_a_key() {
    let mut p = profile("cisco_ios");
    p.idle_log_every = Some(Duration::from_millis(40));
    let mut t = Term::new(p, true);
    for _ in 0..(CHATTER_IDLE_MAX * 3) {
        t.wait(Duration::from_millis(40));
    }
    let lines: String = (1..=(CHATTER_IDLE_MAX * 3) as u64).map(log_line).collect();
    assert_eq!(t.take(), lines);
    t.type_bytes(b"\r");
    assert_eq!(t.take(), "sim#");
    assert!(t.engine.deadline().is_none());
}

#[test]
fn prompt_override_and_context_line() {
    let mut p = profile("juniper_junos");
    p.prompt = Some("host> ".into());
    p.context_line = Some("{master:0}".into());
    let mut t = Term::new(p, false);
    assert_eq!(t.take(), "{master:0}\r\nhost> ");
    assert_eq!(
        t.run("show version"),
        "show version\r\nVersion 1.0\r\nUptime 2 days\r\n{master:0}\r\nhost> "
    );
}
