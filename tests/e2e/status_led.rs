//! The status LED with the real agent (issue 12): `[board] status_led` pointed at a fake LED
//! class directory (a temp folder with `trigger` and `brightness`, as the kernel lays one
//! out). The agent owns it while it runs (trigger `none`, the state in its log), and gives
//! the old trigger back when it stops, also when SIGTERM comes while it is starting up. A
//! missing LED is a warning, and the agent runs.

use crate::support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rackhand::sim::{Profile, TelnetRack};

use support::agent::{Agent, Setup};
use support::config::Dev;
use support::{TempDir, deadline, loopback_any_port, poll_until};

/// Upper bound for anything waited for here; each normally takes well under a second.
const STEP: Duration = Duration::from_secs(20);

fn fake_led(dir: &TempDir) -> PathBuf {
    let led = dir.join("ACT");
    std::fs::create_dir(&led).unwrap();
    std::fs::write(led.join("trigger"), "none [mmc0] timer heartbeat\n").unwrap();
    std::fs::write(led.join("brightness"), "0\n").unwrap();
    std::fs::write(led.join("max_brightness"), "1\n").unwrap();
    led
}

fn trigger(led: &Path) -> String {
    std::fs::read_to_string(led.join("trigger"))
        .unwrap()
        .trim()
        .to_string()
}

/// A config with `devices` and `status_led`, written into `dir`.
fn config(dir: &TempDir, devices: Vec<Dev>, status_led: &Path) -> PathBuf {
    let setup = Setup {
        agent_id: "rack-led".into(),
        workers: 2,
        state_dir: dir.join("state"),
        interval: "300ms".into(),
        commands: vec!["show clock".into()],
        upstream: Vec::new(),
        devices,
    };
    let text = format!(
        "{}\n[board]\nstatus_led = \"{}\"\n",
        setup.text(),
        status_led.display()
    );
    let path = dir.join("rackhand.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn rack() -> TelnetRack {
    let profile = Profile::for_platform("cisco_ios").unwrap();
    TelnetRack::start(loopback_any_port(), 1, profile).expect("start a simulated device")
}

#[test]
fn the_agent_owns_the_led_shows_healthy_and_gives_the_trigger_back_on_sigterm() {
    let dir = TempDir::new("led-e2e").unwrap();
    let led = fake_led(&dir);
    let rack = rack();
    let devices = vec![Dev::telnet("sw1", rack.addrs()[0].1)];
    let config = config(&dir, devices, &led);
    let mut agent = Agent::start(&config, &dir.join("state"));
    assert!(
        poll_until(deadline(STEP), || trigger(&led) == "none"),
        "the agent did not take the LED over:\n{}",
        agent.stderr()
    );
    assert!(
        poll_until(deadline(STEP), || agent
            .stderr()
            .contains("status LED: starting → healthy")),
        "the LED never showed healthy:\n{}",
        agent.stderr()
    );
    let status = agent.stop();
    assert!(status.success(), "{status:?}\n{}", agent.stderr());
    assert_eq!(trigger(&led), "mmc0", "the old trigger is not back");
    agent.assert_no_panic("led");
}

#[test]
fn a_device_failing_its_collections_shows_degraded() {
    let dir = TempDir::new("led-e2e").unwrap();
    let led = fake_led(&dir);
    let rack = rack();
    // A port nobody listens on: connection refused at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let devices = vec![
        Dev::telnet("sw1", rack.addrs()[0].1),
        Dev::telnet("sw2", closed),
    ];
    let config = config(&dir, devices, &led);
    let mut agent = Agent::start(&config, &dir.join("state"));
    assert!(
        poll_until(deadline(STEP), || agent
            .stderr()
            .contains("status LED: starting → degraded")),
        "the LED never showed degraded:\n{}",
        agent.stderr()
    );
    assert!(agent.stop().success(), "{}", agent.stderr());
    assert_eq!(trigger(&led), "mmc0");
}

#[test]
fn sigterm_while_the_agent_starts_gives_the_led_back() {
    let dir = TempDir::new("led-e2e").unwrap();
    let led = fake_led(&dir);
    // A device that does not answer keeps the agent in its first round ("starting").
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let devices = vec![Dev::telnet("sw1", silent.local_addr().unwrap())];
    let config = config(&dir, devices, &led);
    let mut agent = Agent::start(&config, &dir.join("state"));
    // The LED is taken after the signal handlers are installed: SIGTERM at once after.
    assert!(
        poll_until(deadline(STEP), || trigger(&led) == "none"),
        "the agent did not take the LED over:\n{}",
        agent.stderr()
    );
    kill(Pid::from_raw(agent.pid() as i32), Signal::SIGTERM).unwrap();
    assert!(
        poll_until(deadline(STEP), || agent.check_running().is_err()),
        "the agent did not stop:\n{}",
        agent.stderr()
    );
    assert_eq!(trigger(&led), "mmc0", "{}", agent.stderr());
}

#[test]
fn a_missing_led_is_a_warning_naming_it_and_the_agent_runs() {
    let dir = TempDir::new("led-e2e").unwrap();
    let rack = rack();
    let devices = vec![Dev::telnet("sw1", rack.addrs()[0].1)];
    let missing = dir.join("no-such-led");
    let config = config(&dir, devices, &missing);
    let mut agent = Agent::start(&config, &dir.join("state"));
    agent.wait_status(
        "a first status: the agent runs without its LED",
        STEP,
        |s| s["pid"].is_u64(),
    );
    let log = agent.stderr();
    let warning = log
        .lines()
        .find(|l| l.contains("status LED"))
        .unwrap_or_else(|| panic!("no warning:\n{log}"));
    assert!(
        warning.contains(&missing.display().to_string()),
        "{warning}"
    );
    assert!(warning.contains("ls /sys/class/leds"), "{warning}");
    assert!(agent.stop().success(), "{}", agent.stderr());
}
