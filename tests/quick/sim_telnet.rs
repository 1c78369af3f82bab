//! The simulator over Telnet, told as the collector sees it: every real capture comes back
//! byte for byte, the CLI behaves like the gear it imitates (login, enable, abbreviations,
//! pagers, errors), every fault it can inject really happens, and its session counters
//! (which the load tests rely on) count right. The racks run in-process on 127.0.0.1 port 0;
//! the CLI tests start the `rackhand` binary.

use crate::support;

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rackhand::sim::{Fault, Profile, TelnetRack};
use support::client::{ClientError, DrainEnd, PromptClient, TelnetWire, crlf_to_lf, strip_echo};
use support::device::{
    PASSWORD_PROMPT, USERNAME_PROMPT, assert_not_paged, assert_paged, assert_same_output, login,
    paging_off_command, prompt_regex, run_every_capture,
};
use support::fixtures::{captures, platforms};
use support::process::{Endpoint, SimProcess};
use support::{TempDir, deadline, loopback_any_port, poll_until};

/// Generous per-step budget: a step takes milliseconds; this only bounds a broken simulator.
const STEP: Duration = Duration::from_secs(10);

/// A running rack. `TelnetRack` stops itself on drop; the `Option` lets the hang test take
/// it out and call `stop()` on another thread, to bound how long stopping takes.
struct Rack(Option<TelnetRack>);

impl Rack {
    fn start(count: usize, profile: Profile) -> Rack {
        let rack = TelnetRack::start(loopback_any_port(), count, profile)
            .unwrap_or_else(|e| panic!("cannot start a telnet rack on 127.0.0.1: {e}"));
        Rack(Some(rack))
    }

    fn get(&self) -> &TelnetRack {
        self.0.as_ref().expect("rack running")
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.get().addrs()[i].1
    }
}

impl Drop for Rack {
    fn drop(&mut self) {
        if let Some(rack) = self.0.take() {
            rack.stop();
        }
    }
}

fn connect(addr: SocketAddr, profile: &Profile) -> PromptClient<TelnetWire> {
    let wire = TelnetWire::connect(addr, STEP).unwrap();
    PromptClient::new(
        wire,
        &prompt_regex(&profile.platform, &profile.hostname, &profile.username),
    )
}

/// Connects and logs in with the profile's credentials.
fn session(rack: &Rack, i: usize, profile: &Profile) -> PromptClient<TelnetWire> {
    let mut client = connect(rack.addr(i), profile);
    login(
        &mut client,
        &profile.username,
        &profile.password,
        deadline(STEP),
    )
    .unwrap_or_else(|e| panic!("login to {} failed: {e}", rack.addr(i)));
    client
}

fn profile(platform: &str) -> Profile {
    Profile::for_platform(platform).unwrap()
}

fn turn_paging_off(client: &mut PromptClient<TelnetWire>, platform: &str) {
    let reply = client
        .run(paging_off_command(platform), deadline(STEP))
        .unwrap_or_else(|e| panic!("{platform}: paging off failed: {e}"));
    let text = String::from_utf8_lossy(&reply.output);
    assert!(
        !text.contains("Invalid") && !text.contains("error") && !text.contains("unknown"),
        "{platform}: `{}` was refused: {text:?}",
        paging_off_command(platform)
    );
}

#[test]
fn every_capture_of_every_platform_comes_back_byte_for_byte_over_telnet_with_paging_off() {
    for platform in platforms() {
        let p = profile(&platform);
        let rack = Rack::start(1, p.clone());
        let mut client = session(&rack, 0, &p);
        turn_paging_off(&mut client, &platform);
        let pages = run_every_capture(&mut client, &platform, "telnet", deadline(STEP * 3));
        assert_not_paged(&pages, "telnet");
    }
}

#[test]
fn every_capture_of_every_platform_comes_back_byte_for_byte_over_telnet_through_the_pager() {
    for platform in platforms() {
        let p = profile(&platform);
        assert!(
            p.page_lines > 0,
            "{platform}: paging should be on by default"
        );
        let rack = Rack::start(1, p.clone());
        let mut client = session(&rack, 0, &p);
        let pages = run_every_capture(&mut client, &platform, "telnet", deadline(STEP * 3));
        assert_paged(&pages, p.page_lines, "telnet");
        assert!(
            pages.iter().any(|(_, n)| *n > 0),
            "{platform}: paging is on but no command was paged"
        );
    }
}

#[test]
fn the_telnet_server_negotiates_echo_sga_and_naws_like_a_switch() {
    let p = profile("cisco_ios");
    let rack = Rack::start(1, p.clone());
    let client = session(&rack, 0, &p);
    let seen = &client.wire.negotiated;
    for want in [
        (251, support::client::OPT_ECHO),
        (251, support::client::OPT_SGA),
        (253, support::client::OPT_NAWS),
    ] {
        assert!(
            seen.contains(&want),
            "server did not send IAC {} {}; it sent {seen:?}",
            want.0,
            want.1
        );
    }
}

#[test]
fn abbreviated_commands_print_the_same_as_the_full_ones() {
    let p = profile("cisco_ios");
    let rack = Rack::start(1, p.clone());
    let mut client = session(&rack, 0, &p);
    turn_paging_off(&mut client, "cisco_ios");
    for (short, full) in [
        ("sh ver", "show version"),
        ("sh ip int br", "show ip interface brief"),
        ("sh clock", "show clock"),
    ] {
        let a = client.run(short, deadline(STEP)).unwrap().output;
        let b = client.run(full, deadline(STEP)).unwrap().output;
        assert!(!b.is_empty(), "`{full}` printed nothing");
        assert_eq!(
            String::from_utf8_lossy(&a),
            String::from_utf8_lossy(&b),
            "`{short}` differs from `{full}`"
        );
    }
}

#[test]
fn an_unknown_command_gets_the_platforms_error_marker_and_a_prompt() {
    for (platform, marker) in [
        ("cisco_ios", "% Invalid input detected at '^' marker."),
        ("cisco_nxos", "% Invalid input detected at '^' marker."),
        ("arista_eos", "% Invalid input detected at '^' marker."),
        ("juniper_junos", ""),
    ] {
        let p = profile(platform);
        let rack = Rack::start(1, p.clone());
        let mut client = session(&rack, 0, &p);
        let out = client
            .run("show bogus thing", deadline(STEP))
            .unwrap()
            .output;
        let text = String::from_utf8_lossy(&out);
        if platform == "juniper_junos" {
            assert!(
                text.contains("syntax error.") || text.contains("unknown command."),
                "{platform}: no Junos error for an unknown command: {text:?}"
            );
        } else {
            assert!(text.contains(marker), "{platform}: no `{marker}`: {text:?}");
        }
        // The session goes on normally afterwards.
        let next = captures(platform).remove(0);
        let reply = client
            .run(&next.command, deadline(STEP))
            .unwrap_or_else(|e| panic!("{platform}: after the error: {e}"));
        assert_same_output(&next, &reply.output, "telnet");
    }
}

#[test]
fn enable_with_the_secret_raises_the_prompt_to_privileged() {
    let mut p = profile("cisco_ios");
    p.enable_secret = Some("s3cr3t".into());
    let rack = Rack::start(1, p.clone());
    let mut client = connect(rack.addr(0), &p);
    client.set_prompt(r"sim> ?");
    login(&mut client, "admin", "admin", deadline(STEP)).unwrap();
    client.send_line("enable").unwrap();
    let echo = client.expect(PASSWORD_PROMPT, deadline(STEP)).unwrap();
    assert!(
        String::from_utf8_lossy(&echo).contains("enable"),
        "no echo of `enable`: {echo:?}"
    );
    client.set_prompt(r"sim# ?");
    client.send_line("s3cr3t").unwrap();
    let before = client.wait_prompt(deadline(STEP)).unwrap();
    assert!(
        !String::from_utf8_lossy(&before).contains("s3cr3t"),
        "the secret was echoed: {before:?}"
    );
    // Privileged now: commands still work at the `#` prompt.
    let reply = client.run("show clock", deadline(STEP)).unwrap();
    assert_eq!(reply.prompt.trim_end(), "sim#");
}

#[test]
fn a_wrong_enable_secret_keeps_the_user_unprivileged() {
    let mut p = profile("cisco_ios");
    p.enable_secret = Some("s3cr3t".into());
    let rack = Rack::start(1, p.clone());
    let mut client = connect(rack.addr(0), &p);
    client.set_prompt(r"sim> ?");
    login(&mut client, "admin", "admin", deadline(STEP)).unwrap();
    client.send_line("enable").unwrap();
    client.expect(PASSWORD_PROMPT, deadline(STEP)).unwrap();
    // IOS asks three times, then says so and leaves the user where they were.
    for attempt in 1..=3 {
        if attempt > 1 {
            client
                .expect(PASSWORD_PROMPT, deadline(STEP))
                .unwrap_or_else(|e| panic!("attempt {attempt}: {e}"));
        }
        client.send_line("wrong").unwrap();
    }
    let before = client.wait_prompt(deadline(STEP)).unwrap();
    assert!(
        String::from_utf8_lossy(&before).contains("% Bad secrets"),
        "no `% Bad secrets` after three wrong ones: {before:?}"
    );
    let reply = client.run("show clock", deadline(STEP)).unwrap();
    assert_eq!(
        reply.prompt.trim_end(),
        "sim>",
        "wrong secrets gave {:?}",
        reply.prompt
    );
}

#[test]
fn three_wrong_passwords_end_the_session() {
    let p = profile("cisco_ios");
    let rack = Rack::start(1, p.clone());
    let mut client = connect(rack.addr(0), &p);
    let until = deadline(STEP);
    for attempt in 1..=3 {
        let before = client
            .expect(USERNAME_PROMPT, until)
            .unwrap_or_else(|e| panic!("attempt {attempt}: no username prompt: {e}"));
        if attempt > 1 {
            assert!(
                String::from_utf8_lossy(&before).contains("% Login invalid"),
                "attempt {attempt}: no `% Login invalid` before it: {before:?}"
            );
        }
        client.send_line("admin").unwrap();
        client.expect(PASSWORD_PROMPT, until).unwrap();
        client.send_line("not-the-password").unwrap();
    }
    let rest = client.drain(until, 64 * 1024).unwrap();
    let text = String::from_utf8_lossy(&rest.bytes);
    assert_eq!(
        rest.end,
        DrainEnd::Eof,
        "the session stayed open after three wrong passwords: {text:?}"
    );
    assert!(text.contains("% Login invalid"), "{text:?}");
    assert!(
        !text.contains("Username:"),
        "a fourth login was offered: {text:?}"
    );
}

#[test]
fn press_return_and_the_banner_come_before_the_login() {
    let mut p = profile("cisco_ios");
    p.press_return = true;
    p.banner = Some("Authorized access only. Rack A12.".into());
    let rack = Rack::start(1, p.clone());
    let mut client = connect(rack.addr(0), &p);
    client
        .expect(r"Press RETURN to get started\.?\s*", deadline(STEP))
        .unwrap();
    // Until Return, the device waits: no username prompt may come.
    let idle = client
        .drain(deadline(Duration::from_millis(300)), 4096)
        .unwrap();
    assert_eq!(
        (idle.end, String::from_utf8_lossy(&idle.bytes).into_owned()),
        (DrainEnd::Deadline, String::new()),
        "the device went on without Return"
    );
    client.send_raw(b"\r\n").unwrap();
    let (before, _) = login(&mut client, "admin", "admin", deadline(STEP)).unwrap();
    let before = String::from_utf8_lossy(&before);
    assert!(
        before.contains("Authorized access only. Rack A12."),
        "no banner before the login: {before:?}"
    );
}

#[test]
fn a_refused_paging_off_keeps_the_pager_on() {
    let mut p = profile("cisco_ios");
    p.refuse_paging_off = true;
    let rack = Rack::start(1, p.clone());
    let mut client = session(&rack, 0, &p);
    let reply = client.run("terminal length 0", deadline(STEP)).unwrap();
    assert!(
        !reply.output.is_empty(),
        "`terminal length 0` was refused silently; a collector could not tell"
    );
    let capture = captures("cisco_ios")
        .into_iter()
        .find(|c| c.command == "show interfaces")
        .unwrap();
    let reply = client.run(&capture.command, deadline(STEP)).unwrap();
    assert!(reply.pages > 0, "paging went off although it was refused");
    assert_same_output(&capture, &reply.output, "telnet");
}

// --- faults -----------------------------------------------------------------------------

fn faulty(command: &str, fault: Fault) -> (Rack, Profile, PromptClient<TelnetWire>) {
    let p = profile("cisco_ios").with_fault(command, fault);
    let rack = Rack::start(1, p.clone());
    let mut client = session(&rack, 0, &p);
    turn_paging_off(&mut client, "cisco_ios");
    (rack, p, client)
}

fn capture_of(command: &str) -> support::fixtures::Capture {
    captures("cisco_ios")
        .into_iter()
        .find(|c| c.command == command)
        .unwrap_or_else(|| panic!("no cisco_ios capture for `{command}`"))
}

#[test]
fn a_hanging_command_never_prompts_and_stop_still_ends_the_session() {
    let (mut rack, _, mut client) = faulty("show version", Fault::Hang);
    let err = client
        .run("show version", deadline(Duration::from_millis(700)))
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Timeout { .. }),
        "a hang should end in our deadline, got: {err}"
    );
    // stop() must not wait for the hung session forever: run it on a thread and bound it.
    let taken = rack.0.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        taken.stop();
        let _ = tx.send(());
    });
    rx.recv_timeout(STEP)
        .expect("TelnetRack::stop() did not return while a session hung");
    let rest = client.drain(deadline(STEP), 4096).unwrap();
    assert_eq!(rest.end, DrainEnd::Eof, "the hung session outlived stop()");
}

#[test]
fn a_dropping_command_closes_the_connection_in_the_middle_of_its_output() {
    let (_rack, _, mut client) = faulty("show interfaces", Fault::Drop);
    let err = client.run("show interfaces", deadline(STEP)).unwrap_err();
    let ClientError::Eof { got, .. } = &err else {
        panic!("expected end of stream, got: {err}");
    };
    let partial = crlf_to_lf(strip_echo(got, "show interfaces").unwrap_or(got));
    let want = capture_of("show interfaces").expected();
    assert!(!partial.is_empty(), "the drop came before any output");
    assert!(
        partial.len() < want.len() && want.starts_with(&partial),
        "partial output is not a strict prefix of the capture ({} of {} bytes)",
        partial.len(),
        want.len()
    );
}

#[test]
fn an_endless_command_keeps_sending_until_we_hang_up() {
    let (rack, _, mut client) = faulty("show processes cpu", Fault::Endless);
    client.send_line("show processes cpu").unwrap();
    let got = client.drain(deadline(STEP), 1 << 20).unwrap();
    assert_eq!(
        got.end,
        DrainEnd::Limit,
        "only {} bytes before {:?}",
        got.bytes.len(),
        got.end
    );
    drop(client);
    // The device must notice the hang-up and free the session rather than spin on.
    let stats = rack.get().stats();
    assert!(
        poll_until(deadline(STEP), || stats.current() == 0),
        "the endless session was not closed after the client left (current = {})",
        stats.current()
    );
}

#[test]
fn garbage_output_is_binary_and_still_ends_in_a_prompt() {
    let (_rack, _, mut client) = faulty("show clock", Fault::Garbage);
    let reply = client.run("show clock", deadline(STEP)).unwrap();
    assert!(!reply.output.is_empty(), "no garbage arrived");
    assert!(
        std::str::from_utf8(&reply.output).is_err(),
        "garbage output was valid UTF-8: {:?}",
        String::from_utf8_lossy(&reply.output)
    );
    // And the session is still usable.
    let reply = client.run("show version", deadline(STEP)).unwrap();
    assert_same_output(&capture_of("show version"), &reply.output, "telnet");
}

#[test]
fn slow_output_trickles_but_arrives_whole() {
    let mut p = profile("cisco_ios").with_fault("show version", Fault::Slow);
    p.slow_duration = Duration::from_millis(600);
    p.page_lines = 0;
    let rack = Rack::start(1, p.clone());
    let mut client = session(&rack, 0, &p);
    let reply = client.run_timed("show version", deadline(STEP)).unwrap();
    let spread = reply.prompt_at - reply.first_output_at.unwrap();
    assert!(
        spread >= Duration::from_millis(300),
        "slow output came in {spread:?}, expected it spread over ~600ms"
    );
    assert_same_output(&capture_of("show version"), &reply.output, "telnet");
}

#[test]
fn latency_delays_every_answer() {
    let mut p = profile("cisco_ios");
    p.latency = Duration::from_millis(300);
    p.page_lines = 0;
    let rack = Rack::start(1, p.clone());
    let mut client = session(&rack, 0, &p);
    let sent = Instant::now();
    let reply = client.run_timed("show clock", deadline(STEP)).unwrap();
    let waited = reply.first_output_at.unwrap() - sent;
    assert!(
        waited >= p.latency,
        "the answer came after {waited:?}, before the {:?} latency",
        p.latency
    );
    assert_same_output(&capture_of("show clock"), &reply.output, "telnet");
}

// --- counters ---------------------------------------------------------------------------

#[test]
fn stats_count_concurrent_sessions_per_rack_and_per_device() {
    let p = profile("cisco_ios");
    let rack = Rack::start(3, p.clone());
    let addrs = rack.get().addrs();
    assert_eq!(addrs.len(), 3, "asked for 3 devices: {addrs:?}");
    let names: Vec<&String> = addrs.iter().map(|(n, _)| n).collect();
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 3, "device names repeat: {names:?}");
    // Two sessions to device 0, one each to devices 1 and 2, all logged in at once.
    let mut clients = Vec::new();
    for i in [0, 0, 1, 2] {
        let mut dp = p.clone();
        dp.hostname = addrs[i].0.clone();
        let mut c = connect(addrs[i].1, &dp);
        login(&mut c, "admin", "admin", deadline(STEP))
            .unwrap_or_else(|e| panic!("login to {} failed: {e}", addrs[i].0));
        clients.push(c);
    }
    let stats = rack.get().stats();
    assert_eq!(stats.current(), 4);
    assert_eq!(stats.max_concurrent(), 4);
    assert_eq!(stats.max_concurrent_per_device(), 2);
    assert_eq!(stats.total(), 4);
    drop(clients);
    assert!(
        poll_until(deadline(STEP), || stats.current() == 0),
        "sessions still counted after the clients left: {}",
        stats.current()
    );
    assert_eq!(stats.max_concurrent(), 4, "the high-water mark must stay");
}

// --- the command line -------------------------------------------------------------------

fn stat_field(json: &str, key: &str) -> u64 {
    let re = regex_lite::Regex::new(&format!(r#""{key}"\s*:\s*(\d+)"#)).unwrap();
    let caps = re
        .captures(json)
        .unwrap_or_else(|| panic!("no numeric \"{key}\" in the stats file: {json}"));
    caps[1].parse().unwrap()
}

#[test]
fn the_sim_command_serves_a_rack_and_writes_its_stats_file_on_stop() {
    let dir = TempDir::new("sim-cli").unwrap();
    let stats_file = dir.join("stats.json");
    let stats_arg = stats_file.to_string_lossy().into_owned();
    let mut sim = SimProcess::start(&[
        "--telnet",
        "127.0.0.1:0",
        "--count",
        "2",
        "--platform",
        "arista_eos",
        "--hostname",
        "lab",
        "--username",
        "ops",
        "--password",
        "pw",
        "--page-lines",
        "0",
        "--stats",
        &stats_arg,
    ])
    .unwrap();
    let telnets = sim.telnet_addrs();
    assert_eq!(
        telnets.len(),
        2,
        "want two `telnet` ready lines: {:?}",
        sim.endpoints
    );
    assert!(
        sim.endpoints
            .iter()
            .all(|e| matches!(e, Endpoint::Telnet { .. })),
        "{:?}",
        sim.endpoints
    );
    let capture = captures("arista_eos")
        .into_iter()
        .find(|c| c.command == "show version")
        .unwrap();
    let mut clients = Vec::new();
    for (host, addr) in &telnets {
        assert!(
            host.starts_with("lab-") && addr.ip().is_loopback(),
            "{host} {addr}"
        );
        let wire = TelnetWire::connect(*addr, STEP).unwrap();
        let mut c = PromptClient::new(wire, &prompt_regex("arista_eos", host, "ops"));
        login(&mut c, "ops", "pw", deadline(STEP)).unwrap();
        let reply = c.run("show version", deadline(STEP)).unwrap();
        assert_eq!(reply.pages, 0, "--page-lines 0 still paged");
        assert_same_output(&capture, &reply.output, "telnet (rackhand sim)");
        clients.push(c);
    }
    assert_ne!(telnets[0].0, telnets[1].0, "both devices are named alike");
    // The file follows the sessions while the rack runs, not only at exit.
    let live = std::fs::read_to_string(&stats_file)
        .unwrap_or_else(|e| panic!("no stats file {} while running: {e}", stats_file.display()));
    assert_eq!(stat_field(&live, "current"), 2, "{live}");
    drop(clients);
    let status = sim.stop().unwrap();
    assert!(
        status.success(),
        "rackhand sim exited with {status} on SIGTERM; stderr:\n{}",
        sim.guard.stderr_text()
    );
    let json = std::fs::read_to_string(&stats_file)
        .unwrap_or_else(|e| panic!("no stats file {}: {e}", stats_file.display()));
    assert_eq!(stat_field(&json, "total"), 2, "{json}");
    assert_eq!(stat_field(&json, "max_concurrent"), 2, "{json}");
    assert_eq!(stat_field(&json, "max_concurrent_per_device"), 1, "{json}");
    assert_eq!(stat_field(&json, "current"), 0, "{json}");
}

#[test]
fn faults_and_latency_given_on_the_command_line_take_effect() {
    let mut sim = SimProcess::start(&[
        "--telnet",
        "127.0.0.1:0",
        "--page-lines",
        "0",
        "--latency",
        "200ms",
        "--fault",
        "show interfaces=drop",
        "--fault",
        "show version=hang",
    ])
    .unwrap();
    let (host, addr) = sim.telnet_addrs()[0].clone();
    assert_eq!(host, "sim");
    let wire = TelnetWire::connect(addr, STEP).unwrap();
    let mut c = PromptClient::new(wire, &prompt_regex("cisco_ios", &host, "admin"));
    login(&mut c, "admin", "admin", deadline(STEP)).unwrap();
    let sent = Instant::now();
    let reply = c.run_timed("show clock", deadline(STEP)).unwrap();
    assert!(
        reply.first_output_at.unwrap() - sent >= Duration::from_millis(200),
        "--latency 200ms not applied"
    );
    let err = c.run("show interfaces", deadline(STEP)).unwrap_err();
    assert!(
        matches!(err, ClientError::Eof { .. }),
        "--fault 'show interfaces=drop' did not drop: {err}"
    );
    // A session hung on a command must not keep SIGTERM from ending the simulator.
    let wire = TelnetWire::connect(addr, STEP).unwrap();
    let mut hung = PromptClient::new(wire, &prompt_regex("cisco_ios", &host, "admin"));
    login(&mut hung, "admin", "admin", deadline(STEP)).unwrap();
    let err = hung
        .run("show version", deadline(Duration::from_millis(500)))
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Timeout { .. }),
        "--fault 'show version=hang' answered: {err}"
    );
    let status = sim.stop().unwrap();
    assert!(status.success(), "exit {status}");
    let rest = hung.drain(deadline(STEP), 4096).unwrap();
    assert_eq!(
        rest.end,
        DrainEnd::Eof,
        "the hung session outlived the simulator"
    );
}

// --- the yardstick itself ---------------------------------------------------------------

#[test]
fn the_byte_for_byte_check_catches_a_single_changed_byte() {
    // A device serving the captures with one byte changed must fail the comparison: proof
    // that the passing runs above compare something.
    let dir = TempDir::new("mutated-outputs").unwrap();
    for capture in captures("cisco_ios") {
        let mut bytes = capture.raw.clone();
        if capture.command == "show version" {
            let at = bytes.len() / 2;
            bytes[at] = if bytes[at] == b'X' { b'Y' } else { b'X' };
        }
        let name = capture.path.file_name().unwrap();
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let p = profile("cisco_ios").with_outputs_dir(dir.path()).unwrap();
    let rack = Rack::start(1, p.clone());
    let mut client = session(&rack, 0, &p);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_every_capture(&mut client, "cisco_ios", "telnet", deadline(STEP * 3))
    }));
    let message = match outcome {
        Ok(_) => panic!("a changed byte in show version went unnoticed"),
        Err(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default(),
    };
    assert!(
        message.contains("`show version` differs"),
        "the failure should name the command: {message}"
    );
}
