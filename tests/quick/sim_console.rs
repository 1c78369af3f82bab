//! The simulator as a serial console on a pseudo-terminal, opened the way the collector opens
//! a USB serial adapter (serialport, raw mode): every capture comes back byte for byte, the
//! console keeps quiet until a key is pressed like real gear, and it survives a logout so the
//! next collection can log in again.

use crate::support;

use std::path::Path;
use std::time::{Duration, Instant};

use rackhand::sim::{Profile, PtyConsole};
use support::client::{DrainEnd, FdWire, PromptClient, SerialWire};
use support::device::{
    USERNAME_PROMPT, assert_not_paged, assert_paged, login, paging_off_command, prompt_regex,
    run_every_capture,
};
use support::fixtures::platforms;
use support::process::{Endpoint, SimProcess};
use support::{TempDir, deadline};

const STEP: Duration = Duration::from_secs(10);
const BAUD: u32 = 9600;

/// A console whose link lives in a temp dir; the console stops (and removes its link)
/// before the dir goes.
struct Console {
    console: Option<PtyConsole>,
    _dir: TempDir,
}

impl Console {
    fn start(profile: Profile) -> Console {
        let dir = TempDir::new("console").unwrap();
        let link = dir.join("ttyS0");
        let console = PtyConsole::start(&link, None, profile)
            .unwrap_or_else(|e| panic!("cannot start a pty console at {}: {e}", link.display()));
        Console {
            console: Some(console),
            _dir: dir,
        }
    }

    fn device(&self) -> &Path {
        self.console.as_ref().unwrap().device_path()
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        if let Some(c) = self.console.take() {
            c.stop();
        }
    }
}

fn open(path: &Path, p: &Profile) -> PromptClient<SerialWire> {
    let wire = SerialWire::open(path, BAUD).unwrap();
    PromptClient::new(wire, &prompt_regex(&p.platform, &p.hostname, &p.username))
}

/// Presses Return and logs in, as a collector does on a console.
fn wake_and_login(client: &mut PromptClient<SerialWire>, p: &Profile) {
    client.send_raw(b"\r").unwrap();
    login(client, &p.username, &p.password, deadline(STEP))
        .unwrap_or_else(|e| panic!("{}: console login failed: {e}", p.platform));
}

#[test]
fn every_capture_of_every_platform_comes_back_byte_for_byte_on_the_console_with_paging_off() {
    for platform in platforms() {
        let p = Profile::for_platform(&platform).unwrap();
        let console = Console::start(p.clone());
        let mut client = open(console.device(), &p);
        wake_and_login(&mut client, &p);
        client
            .run(paging_off_command(&platform), deadline(STEP))
            .unwrap();
        let pages = run_every_capture(&mut client, &platform, "console", deadline(STEP * 3));
        assert_not_paged(&pages, "console");
    }
}

#[test]
fn every_capture_of_every_platform_comes_back_byte_for_byte_on_the_console_through_the_pager() {
    for platform in platforms() {
        let p = Profile::for_platform(&platform).unwrap();
        let console = Console::start(p.clone());
        let mut client = open(console.device(), &p);
        wake_and_login(&mut client, &p);
        let pages = run_every_capture(&mut client, &platform, "console", deadline(STEP * 3));
        assert_paged(&pages, p.page_lines, "console");
        assert!(
            pages.iter().any(|(_, n)| *n > 0),
            "{platform}: nothing paged"
        );
    }
}

#[test]
fn the_console_is_silent_until_a_key_and_survives_a_logout() {
    let p = Profile::for_platform("cisco_ios").unwrap();
    let console = Console::start(p.clone());
    let mut client = open(console.device(), &p);
    let idle = client
        .drain(deadline(Duration::from_millis(300)), 4096)
        .unwrap();
    assert_eq!(
        (idle.end, String::from_utf8_lossy(&idle.bytes).into_owned()),
        (DrainEnd::Deadline, String::new()),
        "a console prints nothing before a key is pressed"
    );
    for round in 1..=2 {
        wake_and_login(&mut client, &p);
        let reply = client
            .run("show clock", deadline(STEP))
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(!reply.output.is_empty(), "round {round}: empty show clock");
        client.send_line("exit").unwrap();
        // The echo of `exit` arrives together with the logout (see the reopen test).
        client
            .expect(r"exit\r\n(?s:.)*", deadline(STEP))
            .unwrap_or_else(|e| panic!("round {round}: no logout: {e}"));
        // After logout the line is idle again; whatever it prints, no login prompt comes
        // until the next key.
        let after = client
            .drain(deadline(Duration::from_millis(300)), 4096)
            .unwrap();
        assert_ne!(
            after.end,
            DrainEnd::Eof,
            "round {round}: the console closed on logout"
        );
        let text = String::from_utf8_lossy(&after.bytes);
        assert!(
            !regex_lite::Regex::new(USERNAME_PROMPT)
                .unwrap()
                .is_match(&text),
            "round {round}: login offered again without a key: {text:?}"
        );
    }
}

#[test]
fn the_console_link_can_be_reopened_after_the_collector_closed_it() {
    let p = Profile::for_platform("juniper_junos").unwrap();
    let console = Console::start(p.clone());
    for round in 1..=2 {
        let mut client = open(console.device(), &p);
        wake_and_login(&mut client, &p);
        client
            .run("show version", deadline(STEP))
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        client.send_line("exit").unwrap();
        // The echo of `exit` comes in the same breath as the logout itself: once it is in,
        // the console is idle again. Closing earlier would let the next round's Return
        // arrive while the logout is still running, where the device rightly drops it.
        client
            .expect(r"exit\r\n(?s:.)*", deadline(STEP))
            .unwrap_or_else(|e| panic!("round {round}: no logout: {e}"));
    }
}

#[test]
fn the_sim_command_announces_its_console_and_serves_it_at_the_link() {
    let dir = TempDir::new("sim-pty").unwrap();
    let link = dir.join("console-a");
    let link_arg = link.to_string_lossy().into_owned();
    let mut sim = SimProcess::start(&[
        "--pty",
        &link_arg,
        "--baud",
        "115200",
        "--platform",
        "cisco_nxos",
        "--hostname",
        "leaf1",
    ])
    .unwrap();
    let Some(Endpoint::Console {
        hostname,
        device,
        link: announced,
    }) = sim.endpoints.first().cloned()
    else {
        panic!("no `console` ready line: {:?}", sim.endpoints);
    };
    assert_eq!(hostname, "leaf1");
    assert_eq!(announced, link);
    assert_eq!(
        std::fs::read_link(&link)
            .unwrap_or_else(|e| panic!("{} is no symlink: {e}", link.display())),
        device,
        "the link must point at the announced pty"
    );
    let mut p = Profile::for_platform("cisco_nxos").unwrap();
    p.hostname = "leaf1".into();
    // Through the link, as a config's `serial_port` would name it.
    let mut client = open(&link, &p);
    wake_and_login(&mut client, &p);
    client.run("terminal length 0", deadline(STEP)).unwrap();
    let capture = support::fixtures::captures("cisco_nxos")
        .into_iter()
        .find(|c| c.command == "show version")
        .unwrap();
    let reply = client.run("show version", deadline(STEP)).unwrap();
    support::device::assert_same_output(&capture, &reply.output, "console (rackhand sim)");
    drop(client);
    let status = sim.stop().unwrap();
    assert!(
        status.success(),
        "exit {status}: {}",
        sim.guard.stderr_text()
    );
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "the link {} outlived the simulator",
        link.display()
    );
}

#[test]
fn a_slow_console_line_paces_its_output_to_the_baud_rate() {
    // 1200 baud is 120 bytes a second: a console collector's timeouts must allow for it.
    const SLOW_BAUD: u32 = 1200;
    let mut p = Profile::for_platform("cisco_ios").unwrap();
    p.login = false;
    p.page_lines = 0;
    let dir = TempDir::new("slow-console").unwrap();
    let link = dir.join("ttyS1");
    let console = PtyConsole::start(&link, Some(SLOW_BAUD), p.clone()).unwrap();
    // A plain file on the device, as `screen` would hold it (the simulator set raw mode).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&link)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", link.display()));
    let mut client = PromptClient::new(
        FdWire::new(file, b"\r"),
        &prompt_regex(&p.platform, &p.hostname, &p.username),
    );
    client.send_raw(b"\r").unwrap();
    client.wait_prompt(deadline(STEP)).unwrap();
    let started = Instant::now();
    let reply = client.run("show clock", deadline(STEP)).unwrap();
    let took = started.elapsed();
    // Echo, output and prompt; the pacer may send up to 1/20 s worth at once.
    let bytes = "show clock\r\n".len() + reply.output.len() + reply.prompt.len() + 1;
    let rate = f64::from(SLOW_BAUD / 10);
    let floor = Duration::from_secs_f64((bytes as f64 - rate / 20.0) / rate);
    assert!(
        took >= floor,
        "{bytes} bytes at {SLOW_BAUD} baud took only {took:?} (at least {floor:?} expected)"
    );
    let want = support::fixtures::captures("cisco_ios")
        .into_iter()
        .find(|c| c.command == "show clock")
        .unwrap();
    support::device::assert_same_output(&want, &reply.output, "console at 1200 baud");
    drop(client);
    console.stop();
}
