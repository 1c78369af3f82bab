//! Process isolation with real child processes: `rackhand driver` (the built binary) against
//! the Telnet simulator, external drivers written as small shell scripts that crash, hang or
//! flood on purpose, and the shipped example driver `examples/drivers/pdu.py`.
//!
//! Collections run through `rackhand::isolation::Isolator` in the test process, so the test
//! is the agent: it sees every outcome, the time each call took, and (through /proc) whether
//! a driver it ran is still around as a zombie. Every simulator is stopped in `Drop`; every
//! driver is killed and reaped by the isolator itself before its call returns, which is
//! one of the things checked here.

// A test binary of its own, not a module of tests/e2e: the tests below install a process-wide
// `log` logger to read what the isolator logs, and measure the process's peak memory
// (VmHWM) around a flooding driver; tests of other areas running in the same process would
// write into that log and raise that peak.
#[path = "../support/mod.rs"]
mod support;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rackhand::inventory::Device;
use rackhand::isolation::{Isolator, Limits};
use rackhand::record::{Outcome, Status};
use rackhand::sim::{Fault, Profile, PtyConsole, TelnetRack};
use support::config::{Config, Dev, quote};
use support::process::ChildGuard;
use support::sshd::Sshd;
use support::{TempDir, loopback_any_port, poll_until};

const GRACE: Duration = Duration::from_secs(2);

fn isolator() -> Isolator {
    if log::set_logger(&LOG).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
    Isolator::new(env!("CARGO_BIN_EXE_rackhand")).with_grace(GRACE)
}

/// `[defaults]` every config here starts from.
fn base() -> Config {
    Config::new()
        .defaults("username", "\"admin\"")
        .defaults("password", "\"admin\"")
        .defaults("connect_timeout", "\"5s\"")
        .defaults("command_timeout", "\"5s\"")
}

/// One device from config text, resolved as the agent resolves it (`extra` are TOML lines).
fn device(dir: &TempDir, name: &str, extra: &[String]) -> Device {
    let device = Dev {
        name: name.to_string(),
        lines: extra.to_vec(),
    };
    let inventory = base()
        .device(device)
        .inventory(&dir.join(&format!("{name}.toml")));
    inventory.devices.into_iter().next().expect("one device")
}

fn telnet_lines(rack: &TelnetRack, platform: &str) -> Vec<String> {
    let addr = rack.addrs()[0].1;
    vec![
        "transport = \"telnet\"".into(),
        format!("host = \"{}\"", addr.ip()),
        format!("port = {}", addr.port()),
        format!("platform = \"{platform}\""),
    ]
}

fn commands(list: &[&str]) -> Vec<String> {
    list.iter().map(|c| c.to_string()).collect()
}

fn toml_list(list: &[&str]) -> String {
    let quoted: Vec<String> = list.iter().map(|c| format!("\"{c}\"")).collect();
    format!("commands = [{}]", quoted.join(", "))
}

fn collect(isolator: &Isolator, device: &Device, commands: &[String]) -> (Vec<Outcome>, Duration) {
    let start = Instant::now();
    let mut outcomes = Vec::new();
    isolator.collect(device, commands, &mut |o| outcomes.push(o));
    (outcomes, start.elapsed())
}

/// A shell-script driver in `dir`; `$PIDFILE` in `body` is where it records its pid.
fn script(dir: &TempDir, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    let pidfile = dir.join(&format!("{name}.pid"));
    let text = format!("#!/bin/sh\necho $$ > '{}'\n{}\n", pidfile.display(), body);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn script_pid(dir: &TempDir, name: &str) -> u32 {
    let text = std::fs::read_to_string(dir.join(&format!("{name}.pid"))).expect("the script ran");
    text.trim().parse().expect("a pid")
}

/// The process is gone: neither running nor a zombie waiting for us.
fn assert_reaped(pid: u32) {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => {}
        Ok(stat) => {
            // A recycled pid would belong to someone else; a zombie of ours names our pid as
            // its parent.
            let after = stat.rsplit_once(')').map(|(_, s)| s).unwrap_or("");
            let fields: Vec<&str> = after.split_whitespace().collect();
            let (state, ppid) = (fields[0], fields[1]);
            assert!(
                ppid != std::process::id().to_string(),
                "driver pid {pid} is still our child (state {state}): not reaped"
            );
        }
    }
}

/// An outcome line as a driver writes it.
fn outcome_line(command: &str, output: &str) -> String {
    format!(
        r#"printf '%s\n' '{{"type":"outcome","command":"{command}","status":"ok","error":null,"output":"{output}","duration_ms":1}}'"#
    )
}

#[test]
fn an_isolated_device_collects_what_in_thread_collects() {
    let rack = TelnetRack::start(
        loopback_any_port(),
        1,
        Profile::for_platform("cisco_ios").unwrap(),
    )
    .unwrap();
    let dir = TempDir::new("iso-same").unwrap();
    let list = [
        "show version",
        "show clock",
        "show ip interface brief",
        "show bogus",
    ];
    let mut lines = telnet_lines(&rack, "cisco_ios");
    lines.push(toml_list(&list));
    lines.push("isolation = \"process\"".into());
    let device = device(&dir, "sw1", &lines);
    let commands = commands(&list);

    let in_thread = rackhand::session::collect(&device, &commands);
    let (isolated, _) = collect(&isolator(), &device, &commands);

    assert_eq!(isolated.len(), commands.len());
    for (a, b) in in_thread.iter().zip(&isolated) {
        assert_eq!(a.command, b.command);
        assert_eq!(
            a.status, b.status,
            "{}: {:?} vs {:?}",
            a.command, a.error, b.error
        );
        assert_eq!(a.output, b.output, "{}: output differs", a.command);
        assert_eq!(b.device, "sw1");
        assert_eq!(b.transport, "telnet");
    }
    assert_eq!(isolated[0].status, Status::Ok);
    assert!(
        isolated[0].output.starts_with(b"Cisco IOS"),
        "{:?}",
        String::from_utf8_lossy(&isolated[0].output)
    );
    assert_eq!(
        isolated[3].status,
        Status::CommandError,
        "the rejected command keeps its status"
    );
}

#[test]
fn binary_output_survives_the_pipe_exactly() {
    let profile = Profile::for_platform("cisco_ios")
        .unwrap()
        .with_fault("show clock", Fault::Garbage);
    let rack = TelnetRack::start(loopback_any_port(), 1, profile).unwrap();
    let dir = TempDir::new("iso-garbage").unwrap();
    let mut lines = telnet_lines(&rack, "cisco_ios");
    lines.push(toml_list(&["show clock"]));
    let device = device(&dir, "sw1", &lines);
    let commands = commands(&["show clock"]);
    let in_thread = rackhand::session::collect(&device, &commands);
    let (isolated, _) = collect(&isolator(), &device, &commands);
    assert!(
        std::str::from_utf8(&in_thread[0].output).is_err(),
        "the garbage fault prints bytes that are not UTF-8"
    );
    // The simulator's garbage is random per session: compare what each path can compare.
    assert_eq!(isolated[0].status, in_thread[0].status);
    assert!(
        std::str::from_utf8(&isolated[0].output).is_err(),
        "not lossily converted"
    );
}

#[test]
fn a_hung_device_is_stopped_at_its_deadline_and_a_parallel_device_is_unaffected() {
    let hung_rack = TelnetRack::start(
        loopback_any_port(),
        1,
        Profile::for_platform("cisco_ios")
            .unwrap()
            .with_fault("show clock", Fault::Hang),
    )
    .unwrap();
    let good_rack = TelnetRack::start(
        loopback_any_port(),
        1,
        Profile::for_platform("cisco_ios").unwrap(),
    )
    .unwrap();
    let dir = TempDir::new("iso-hang").unwrap();
    let command_timeout = Duration::from_secs(2);
    let mut lines = telnet_lines(&hung_rack, "cisco_ios");
    lines.push(toml_list(&["show clock"]));
    lines.push("command_timeout = \"2s\"".into());
    lines.push("isolation = \"process\"".into());
    let hung = device(&dir, "hung", &lines);
    let mut lines = telnet_lines(&good_rack, "cisco_ios");
    let good_list = ["show version", "show clock", "show inventory", "show vlan"];
    lines.push(toml_list(&good_list));
    lines.push("isolation = \"process\"".into());
    let good = device(&dir, "good", &lines);

    let (tx, rx) = mpsc::channel();
    std::thread::scope(|scope| {
        let iso = isolator();
        let hung = &hung;
        let tx2 = tx.clone();
        scope.spawn(move || {
            let _ = tx2.send(("hung", collect(&iso, hung, &commands(&["show clock"]))));
        });
        let good = &good;
        let iso = isolator();
        scope.spawn(move || {
            let _ = tx.send(("good", collect(&iso, good, &commands(&good_list))));
        });
    });
    let results: Vec<_> = rx.try_iter().collect();
    let (hung_out, hung_took) = &results.iter().find(|(n, _)| *n == "hung").unwrap().1;
    let (good_out, good_took) = &results.iter().find(|(n, _)| *n == "good").unwrap().1;

    assert_eq!(hung_out.len(), 1);
    assert_eq!(
        hung_out[0].status,
        Status::Timeout,
        "{:?}",
        hung_out[0].error
    );
    let limit = (command_timeout + GRACE).mul_f64(1.1);
    assert!(
        *hung_took >= command_timeout,
        "gave up early: {hung_took:?}"
    );
    assert!(*hung_took <= limit, "took {hung_took:?}, limit {limit:?}");

    assert!(
        good_out.iter().all(|o| o.status == Status::Ok),
        "{good_out:#?}"
    );
    assert!(
        *good_took < command_timeout,
        "the healthy device waited for the hung one: {good_took:?}"
    );
}

#[test]
fn a_driver_that_stops_answering_is_killed_at_its_deadline_and_reaped() {
    let dir = TempDir::new("iso-stuck").unwrap();
    // Answers the first command, then hangs (a library stuck in a read, say).
    let body = format!(
        "read -r request\n{}\nexec sleep 60",
        outcome_line("one", "first\\n")
    );
    let exec = script(&dir, "stuck.sh", &body);
    let lines = vec![
        "transport = \"telnet\"".into(),
        "host = \"127.0.0.1\"".into(),
        "platform = \"generic\"".into(),
        "prompt = '^x>$'".into(),
        "connect_timeout = \"1s\"".into(),
        "command_timeout = \"1s\"".into(),
        toml_list(&["one", "two", "three"]),
        format!("driver_exec = \"{}\"", exec.display()),
    ];
    let device = device(&dir, "stuck", &lines);
    let (outcomes, took) = collect(&isolator(), &device, &commands(&["one", "two", "three"]));

    assert_eq!(outcomes.len(), 3);
    assert_eq!(outcomes[0].status, Status::Ok);
    assert_eq!(outcomes[0].output, b"first\n");
    // After an `ok` the next answer is due within command_timeout + grace.
    let budget = Duration::from_secs(1) + GRACE;
    for o in &outcomes[1..] {
        assert_eq!(o.status, Status::Timeout, "{o:?}");
        let error = o.error.as_deref().unwrap();
        assert!(error.contains("killed after"), "{error}");
        assert!(
            error.contains("`two`"),
            "names the command it waited for: {error}"
        );
    }
    assert!(took >= budget, "killed early: {took:?}");
    assert!(
        took <= budget.mul_f64(1.1) + Duration::from_millis(300),
        "took {took:?}"
    );
    assert_reaped(script_pid(&dir, "stuck.sh"));
}

fn crash_case(tag: &str, crash: &str, expect: &str) {
    let dir = TempDir::new(&format!("iso-{tag}")).unwrap();
    let body = format!(
        "read -r request\n{}\necho 'about to {tag}' >&2\n{crash}",
        outcome_line("one", "first\\n")
    );
    let exec = script(&dir, "crash.sh", &body);
    let lines = vec![
        "transport = \"telnet\"".into(),
        "host = \"127.0.0.1\"".into(),
        "platform = \"generic\"".into(),
        "prompt = '^x>$'".into(),
        toml_list(&["one", "two", "three"]),
        format!("driver_exec = \"{}\"", exec.display()),
    ];
    let device = device(&dir, "crashy", &lines);
    let (outcomes, took) = collect(&isolator(), &device, &commands(&["one", "two", "three"]));

    assert_eq!(outcomes.len(), 3, "{outcomes:#?}");
    assert_eq!(
        outcomes[0].status,
        Status::Ok,
        "the answer before the crash is kept"
    );
    assert_eq!(outcomes[0].output, b"first\n");
    for o in &outcomes[1..] {
        assert_eq!(o.status, Status::DriverCrashed, "{o:?}");
        let error = o.error.as_deref().unwrap();
        assert!(error.contains(expect), "`{expect}` not in: {error}");
        assert!(error.contains("crashy"), "names the device: {error}");
    }
    assert!(
        took < Duration::from_secs(3),
        "a crash is seen at once, took {took:?}"
    );
    assert_reaped(script_pid(&dir, "crash.sh"));
}

#[test]
fn a_driver_killed_by_sigsegv_is_driver_crashed_naming_it() {
    crash_case("segv", "kill -SEGV $$", "SIGSEGV");
    // Its last words reach the agent's log, under the device's name.
    let lines = captured_log();
    assert!(
        lines
            .iter()
            .any(|(level, text)| *level == log::Level::Warn
                && text == "crashy: driver: about to segv"),
        "{lines:#?}"
    );
}

#[test]
fn a_driver_killed_by_sigabrt_is_driver_crashed_naming_it() {
    crash_case("abrt", "kill -ABRT $$", "SIGABRT");
}

#[test]
fn a_driver_exiting_3_is_driver_crashed_naming_the_status() {
    crash_case("exit3", "exit 3", "exited with status 3");
}

#[test]
fn a_driver_exiting_0_without_done_is_a_crash_too() {
    crash_case("exit0", "exit 0", "exited with status 0");
}

/// The agent's log as this test binary sees it (all tests share one logger).
fn captured_log() -> Vec<(log::Level, String)> {
    LOG.lines.lock().unwrap().clone()
}

struct Capture {
    lines: std::sync::Mutex<Vec<(log::Level, String)>>,
}

static LOG: Capture = Capture {
    lines: std::sync::Mutex::new(Vec::new()),
};

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        self.lines
            .lock()
            .unwrap()
            .push((record.level(), record.args().to_string()));
    }

    fn flush(&self) {}
}

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_driver_flooding_one_endless_line_is_stopped_with_bounded_memory() {
    let dir = TempDir::new("iso-flood").unwrap();
    let exec = script(&dir, "flood.sh", "read -r request\nexec cat /dev/zero");
    let lines = vec![
        "transport = \"telnet\"".into(),
        "host = \"127.0.0.1\"".into(),
        "platform = \"generic\"".into(),
        "prompt = '^x>$'".into(),
        "max_output = \"64KiB\"".into(),
        toml_list(&["one", "two"]),
        format!("driver_exec = \"{}\"", exec.display()),
    ];
    let device = device(&dir, "flood", &lines);
    let before = vm_hwm_kib();
    let (outcomes, took) = collect(&isolator(), &device, &commands(&["one", "two"]));
    let grown = vm_hwm_kib().saturating_sub(before);

    assert_eq!(outcomes.len(), 2);
    for o in &outcomes {
        assert_eq!(o.status, Status::DriverCrashed, "{o:?}");
        let error = o.error.as_deref().unwrap();
        assert!(error.contains("protocol violation"), "{error}");
        assert!(error.contains("longer than"), "{error}");
    }
    // Stopped at the cap (64 KiB × 2 + 64 KiB), not at the deadline (5 s + 5 s + grace).
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(
        grown < 32 << 10,
        "the agent's peak memory grew by {grown} KiB"
    );
    assert_reaped(script_pid(&dir, "flood.sh"));
}

#[test]
fn secrets_travel_on_the_pipe_not_in_argv_or_the_environment() {
    let dir = TempDir::new("iso-secret").unwrap();
    let seen = dir.join("seen");
    let body = format!(
        "read -r request\n{{ echo \"ARGS: $*\"; env; echo \"REQUEST: $request\"; }} > '{}'\n{}\nprintf '%s\\n' '{{\"type\":\"done\"}}'",
        seen.display(),
        outcome_line("one", "")
    );
    let exec = script(&dir, "spy.sh", &body);
    let lines = vec![
        "transport = \"telnet\"".into(),
        "host = \"127.0.0.1\"".into(),
        "platform = \"generic\"".into(),
        "prompt = '^x>$'".into(),
        "password = \"s3cret-Pa55\"".into(),
        toml_list(&["one"]),
        format!("driver_exec = \"{}\"", exec.display()),
    ];
    let device = device(&dir, "spied", &lines);
    let (outcomes, _) = collect(&isolator(), &device, &commands(&["one"]));
    assert_eq!(outcomes[0].status, Status::Ok, "{outcomes:?}");
    let text = std::fs::read_to_string(&seen).unwrap();
    let (outside, request) = text.split_once("REQUEST: ").unwrap();
    assert!(
        !outside.contains("s3cret-Pa55"),
        "secret in argv/env:\n{outside}"
    );
    assert!(
        request.contains("s3cret-Pa55"),
        "the request carries the password"
    );
    for line in outside.lines().skip(1) {
        let key = line.split('=').next().unwrap();
        assert!(
            [
                "PATH",
                "LANG",
                "LC_ALL",
                "LC_CTYPE",
                "TZ",
                "TMPDIR",
                "RUST_LOG",
                "RUST_BACKTRACE",
                "PWD",
                "SHLVL",
                "_"
            ]
            .contains(&key),
            "the driver inherited `{key}`"
        );
    }
}

#[test]
fn a_missing_driver_program_is_driver_crashed_with_the_path() {
    let dir = TempDir::new("iso-missing").unwrap();
    let exec = script(&dir, "gone.sh", "exit 0");
    let lines = vec![
        "transport = \"telnet\"".into(),
        "host = \"127.0.0.1\"".into(),
        "platform = \"generic\"".into(),
        "prompt = '^x>$'".into(),
        toml_list(&["one"]),
        format!("driver_exec = \"{}\"", exec.display()),
    ];
    let device = device(&dir, "nodriver", &lines);
    std::fs::remove_file(&exec).unwrap();
    let (outcomes, _) = collect(&isolator(), &device, &commands(&["one"]));
    assert_eq!(outcomes[0].status, Status::DriverCrashed);
    let error = outcomes[0].error.as_deref().unwrap();
    assert!(
        error.contains("gone.sh") && error.contains("driver_exec"),
        "{error}"
    );
}

#[test]
fn an_address_space_limit_turns_a_memory_hog_into_a_crash() {
    let dir = TempDir::new("iso-rlimit").unwrap();
    // The shell holds 48 MB in a variable, then answers: fine by default, fatal under 24 MiB.
    let body = format!(
        "read -r request\nx=$(head -c 48000000 /dev/zero | tr '\\0' x)\n{}\nprintf '%s\\n' '{{\"type\":\"done\"}}'",
        outcome_line("one", "")
    );
    let exec = script(&dir, "hog.sh", &body);
    let lines = vec![
        "transport = \"telnet\"".into(),
        "host = \"127.0.0.1\"".into(),
        "platform = \"generic\"".into(),
        "prompt = '^x>$'".into(),
        toml_list(&["one"]),
        format!("driver_exec = \"{}\"", exec.display()),
    ];
    let device = device(&dir, "hog", &lines);
    let (outcomes, _) = collect(&isolator(), &device, &commands(&["one"]));
    assert_eq!(
        outcomes[0].status,
        Status::Ok,
        "within the default limits: {outcomes:?}"
    );
    let confined = isolator().with_limits(Limits {
        address_space: 24 << 20,
        open_files: 64,
    });
    let (outcomes, _) = collect(&confined, &device, &commands(&["one"]));
    assert_eq!(outcomes[0].status, Status::DriverCrashed, "{outcomes:?}");
}

fn pdu_driver() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/drivers/pdu.py")
}

const PDU_STATUS: &str = " 1: Outlet 1: On\n 2: Outlet 2: On\n 3: Outlet 3: Off\n";

#[test]
fn the_example_pdu_driver_collects_from_the_simulator() {
    let mut profile = Profile::for_platform("linux").unwrap();
    profile.hostname = "pdu1".into();
    profile
        .outputs
        .insert("olstatus all", PDU_STATUS.as_bytes());
    let rack = TelnetRack::start(loopback_any_port(), 1, profile).unwrap();
    let dir = TempDir::new("iso-pdu").unwrap();
    let list = ["olstatus all", "whoami", "nosuchcommand"];
    let mut lines = telnet_lines(&rack, "generic");
    lines.push(r"prompt = '^admin@pdu1:~\$ ?$'".into());
    lines.push(toml_list(&list));
    let in_thread_device = device(&dir, "pdu1", &lines);
    lines.push(format!("driver_exec = \"{}\"", pdu_driver().display()));
    let device = device(&dir, "pdu1", &lines);
    let commands = commands(&list);

    let (outcomes, took) = collect(&isolator(), &device, &commands);
    assert_eq!(outcomes.len(), 3, "{outcomes:#?}");
    assert_eq!(outcomes[0].status, Status::Ok, "{:?}", outcomes[0].error);
    assert_eq!(String::from_utf8_lossy(&outcomes[0].output), PDU_STATUS);
    assert_eq!(outcomes[1].status, Status::Ok);
    assert_eq!(outcomes[1].output, b"admin\n");
    assert_eq!(
        outcomes[2].status,
        Status::CommandError,
        "{:?}",
        outcomes[2]
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");

    // It logged its login at info level, and nothing as a warning (a Python warning would be).
    let log = captured_log();
    let mine: Vec<_> = log
        .iter()
        .filter(|(_, text)| text.starts_with("pdu1: driver: "))
        .collect();
    assert!(
        mine.iter()
            .any(|(level, text)| *level == log::Level::Info && text.contains("logged in")),
        "{log:#?}"
    );
    assert!(
        mine.iter().all(|(level, _)| *level == log::Level::Info),
        "{mine:#?}"
    );

    // The built-in generic driver sees the same outputs.
    let reference = rackhand::session::collect(&in_thread_device, &commands);
    assert_eq!(reference[0].output, outcomes[0].output);
    assert_eq!(reference[1].output, outcomes[1].output);
}

#[test]
fn the_example_pdu_driver_reports_a_refused_login() {
    let mut profile = Profile::for_platform("linux").unwrap();
    profile.hostname = "pdu1".into();
    profile.password = "other".into();
    let rack = TelnetRack::start(loopback_any_port(), 1, profile).unwrap();
    let dir = TempDir::new("iso-pdu-auth").unwrap();
    let mut lines = telnet_lines(&rack, "generic");
    lines.push(r"prompt = '^admin@pdu1:~\$ ?$'".into());
    lines.push(toml_list(&["whoami"]));
    lines.push(format!("driver_exec = \"{}\"", pdu_driver().display()));
    let device = device(&dir, "pdu-auth", &lines);
    let (outcomes, _) = collect(&isolator(), &device, &commands(&["whoami"]));
    assert_eq!(outcomes[0].status, Status::AuthFailed, "{outcomes:?}");
}

// ---------------------------------------------------------------------------------------
// Through the command line: `rackhand collect` dispatches on `isolation`.

fn config_file(dir: &TempDir, devices: &[(&str, Vec<String>)]) -> PathBuf {
    let devices = devices.iter().map(|(name, lines)| Dev {
        name: name.to_string(),
        lines: lines.clone(),
    });
    base()
        .agent("id", "\"t\"")
        .agent("workers", "4")
        .agent(
            "state_dir",
            &quote(&dir.join("state").display().to_string()),
        )
        .devices(devices)
        .write(&dir.join("rackhand.toml"))
}

fn rackhand_collect(config: &Path) -> (ChildGuard, mpsc::Receiver<Vec<u8>>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rackhand"));
    cmd.args(["collect", "--format", "json", "-c"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut guard = ChildGuard::spawn(cmd, "rackhand collect", None).unwrap();
    let mut stdout = guard.child_mut().stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = stdout.read_to_end(&mut all);
        let _ = tx.send(all);
    });
    (guard, rx)
}

#[test]
fn rackhand_collect_runs_process_isolated_devices_in_drivers() {
    let rack = TelnetRack::start(
        loopback_any_port(),
        2,
        Profile::for_platform("cisco_ios").unwrap(),
    )
    .unwrap();
    let dir = TempDir::new("iso-cli").unwrap();
    let addrs = rack.addrs();
    let lines = |i: usize, isolation: &str| {
        vec![
            "transport = \"telnet\"".to_string(),
            format!("host = \"{}\"", addrs[i].1.ip()),
            format!("port = {}", addrs[i].1.port()),
            "platform = \"cisco_ios\"".into(),
            toml_list(&["show version", "show clock"]),
            format!("isolation = \"{isolation}\""),
        ]
    };
    let config = config_file(
        &dir,
        &[
            ("inproc", lines(0, "thread")),
            ("isolated", lines(1, "process")),
        ],
    );
    let (mut guard, stdout) = rackhand_collect(&config);
    let status = guard
        .wait_until(Instant::now() + Duration::from_secs(30))
        .unwrap()
        .expect("rackhand collect finished");
    let out = stdout.recv_timeout(Duration::from_secs(5)).unwrap();
    let records: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(status.success(), "{status:?}\n{}", guard.stderr_text());
    assert_eq!(records.len(), 4, "{records:#?}");
    for name in ["inproc", "isolated"] {
        let mine: Vec<_> = records.iter().filter(|r| r["device"] == name).collect();
        assert_eq!(mine.len(), 2, "{records:#?}");
        assert!(mine.iter().all(|r| r["status"] == "ok"), "{mine:#?}");
    }
    let version = |name: &str| {
        records
            .iter()
            .find(|r| r["device"] == name && r["command"] == "show version")
            .map(|r| r["output"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(version("inproc"), version("isolated"));
}

#[test]
fn a_driver_exec_device_needs_neither_platform_nor_prompt() {
    let mut profile = Profile::for_platform("linux").unwrap();
    profile.hostname = "pdu1".into();
    profile
        .outputs
        .insert("olstatus all", PDU_STATUS.as_bytes());
    let rack = TelnetRack::start(loopback_any_port(), 1, profile).unwrap();
    let dir = TempDir::new("iso-exec-bare").unwrap();
    let addr = rack.addrs()[0].1;
    // What the example driver's own header asks for, and nothing the built-in driver needs.
    let config = config_file(
        &dir,
        &[(
            "pdu1",
            vec![
                "transport = \"telnet\"".to_string(),
                format!("host = \"{}\"", addr.ip()),
                format!("port = {}", addr.port()),
                toml_list(&["olstatus all"]),
                format!("driver_exec = \"{}\"", pdu_driver().display()),
            ],
        )],
    );
    let check = Command::new(env!("CARGO_BIN_EXE_rackhand"))
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let (mut guard, stdout) = rackhand_collect(&config);
    let status = guard
        .wait_until(Instant::now() + Duration::from_secs(30))
        .unwrap()
        .expect("rackhand collect finished");
    let out = String::from_utf8(stdout.recv_timeout(Duration::from_secs(5)).unwrap()).unwrap();
    assert!(
        status.success(),
        "{status:?}\n{out}\n{}",
        guard.stderr_text()
    );
    let record: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(record["status"], "ok", "{record:#}");
    assert_eq!(record["output"], PDU_STATUS, "{record:#}");
}

#[test]
fn a_driver_dies_with_the_agent() {
    let dir = TempDir::new("iso-pdeathsig").unwrap();
    let exec = script(&dir, "stuck.sh", "read -r request\nexec sleep 120");
    let device = vec![
        "transport = \"telnet\"".to_string(),
        "host = \"127.0.0.1\"".into(),
        "platform = \"generic\"".into(),
        "prompt = '^x>$'".into(),
        "connect_timeout = \"60s\"".into(),
        "command_timeout = \"60s\"".into(),
        toml_list(&["one"]),
        format!("driver_exec = \"{}\"", exec.display()),
    ];
    let config = config_file(&dir, &[("orphan", device)]);
    let (mut agent, _stdout) = rackhand_collect(&config);
    let pidfile = dir.join("stuck.sh.pid");
    let mut pid = None;
    let started = poll_until(Instant::now() + Duration::from_secs(10), || {
        pid = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok());
        pid.is_some()
    });
    assert!(
        started,
        "the driver never started:\n{}",
        agent.stderr_text()
    );
    let pid = pid.unwrap();
    let _sweep = Sweep(pid);
    assert!(alive(pid), "the driver is running before the agent dies");

    agent.signal(Signal::SIGKILL).unwrap();
    agent
        .wait_until(Instant::now() + Duration::from_secs(5))
        .unwrap()
        .expect("the agent died");
    let gone = poll_until(Instant::now() + Duration::from_secs(5), || !alive(pid));
    assert!(gone, "driver pid {pid} outlived the agent");
}

/// Kills the test's `sleep` driver if the agent failed to take it down (so a failing test
/// leaves nothing running); checks the command line first, the pid may be someone else's now.
struct Sweep(u32);

impl Drop for Sweep {
    fn drop(&mut self) {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", self.0)).unwrap_or_default();
        if alive(self.0) && cmdline.starts_with(b"sleep\x00120") {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0 as i32), Signal::SIGKILL);
        }
    }
}

/// Running (not gone, not a zombie waiting for whoever inherited it).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or("");
            state != "Z" && state != "X"
        }
    }
}

// ---------------------------------------------------------------------------------------
// Every transport works from inside a driver (its rlimits, its cleared environment).

fn assert_same_as_in_thread(device: &Device, list: &[&str]) {
    let commands = commands(list);
    let in_thread = rackhand::session::collect(device, &commands);
    let (isolated, _) = collect(&isolator(), device, &commands);
    assert_eq!(isolated.len(), commands.len());
    for (a, b) in in_thread.iter().zip(&isolated) {
        assert_eq!(
            a.status,
            Status::Ok,
            "{}: in-thread {:?}",
            device.name,
            a.error
        );
        assert_eq!(
            b.status,
            Status::Ok,
            "{}: isolated {:?}",
            device.name,
            b.error
        );
        assert_eq!(a.output, b.output, "{} `{}`", device.name, a.command);
        assert!(!b.output.is_empty(), "{} `{}`", device.name, b.command);
    }
}

#[test]
fn an_ssh_device_works_isolated() {
    let sshd = Sshd::start(&["--platform", "cisco_ios"]).unwrap_or_else(|e| panic!("{e}"));
    let dir = TempDir::new("iso-ssh").unwrap();
    let lines = vec![
        "transport = \"ssh\"".to_string(),
        format!("host = \"{}\"", sshd.addr.ip()),
        format!("port = {}", sshd.addr.port()),
        format!("username = \"{}\"", sshd.user),
        format!("key_file = '{}'", sshd.client_key.display()),
        format!("known_hosts = '{}'", dir.join("known_hosts").display()),
        "host_key_check = \"accept-new\"".into(),
        "platform = \"cisco_ios\"".into(),
        toml_list(&["show version", "show clock"]),
        "isolation = \"process\"".into(),
    ];
    let device = device(&dir, "ssh1", &lines);
    assert_same_as_in_thread(&device, &["show version", "show clock"]);
}

#[test]
fn a_console_device_works_isolated() {
    let dir = TempDir::new("iso-console").unwrap();
    let link = dir.join("tty");
    let console = PtyConsole::start(&link, None, Profile::for_platform("cisco_ios").unwrap())
        .unwrap_or_else(|e| panic!("cannot start a pty console at {}: {e}", link.display()));
    let lines = vec![
        "transport = \"serial\"".to_string(),
        format!("serial_port = '{}'", console.link_path().display()),
        "baud = 9600".into(),
        "platform = \"cisco_ios\"".into(),
        toml_list(&["show version", "show clock"]),
        "isolation = \"process\"".into(),
    ];
    let device = device(&dir, "con1", &lines);
    assert_same_as_in_thread(&device, &["show version", "show clock"]);
}

#[test]
fn what_a_driver_leaves_running_is_killed_with_it() {
    let dir = TempDir::new("iso-leftover").unwrap();
    let bg = dir.join("bg.pid");
    // The background sleep inherits stdout: left alone it would hold the pipe open.
    let body = format!(
        "read -r request\nsleep 120 &\necho $! > '{}'\n{}\nprintf '%s\\n' '{{\"type\":\"done\"}}'\nexit 0",
        bg.display(),
        outcome_line("one", "")
    );
    let exec = script(&dir, "leaver.sh", &body);
    let lines = vec![
        "transport = \"telnet\"".into(),
        "host = \"127.0.0.1\"".into(),
        "platform = \"generic\"".into(),
        "prompt = '^x>$'".into(),
        toml_list(&["one"]),
        format!("driver_exec = \"{}\"", exec.display()),
    ];
    let device = device(&dir, "leaver", &lines);
    let (outcomes, took) = collect(&isolator(), &device, &commands(&["one"]));
    let pid: u32 = std::fs::read_to_string(&bg)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _sweep = Sweep(pid);
    assert_eq!(outcomes[0].status, Status::Ok, "{outcomes:?}");
    assert!(
        took < Duration::from_secs(1),
        "waited for the leftover: {took:?}"
    );
    let gone = poll_until(Instant::now() + Duration::from_secs(2), || !alive(pid));
    assert!(gone, "the driver's background process {pid} survived it");
    assert_reaped(script_pid(&dir, "leaver.sh"));
}

// ---------------------------------------------------------------------------------------
// Chatter: only an outcome restarts the deadline

/// A driver script for device `name` with 1 s timeouts, asked for `one`, `two`, `three`.
fn chatty(dir: &TempDir, name: &str, body: &str) -> (Device, Vec<String>) {
    let exec = script(dir, &format!("{name}.sh"), body);
    let list = ["one", "two", "three"];
    let lines = vec![
        "transport = \"telnet\"".into(),
        "host = \"127.0.0.1\"".into(),
        "platform = \"generic\"".into(),
        "prompt = '^x>$'".into(),
        "connect_timeout = \"1s\"".into(),
        "command_timeout = \"1s\"".into(),
        toml_list(&list),
        format!("driver_exec = \"{}\"", exec.display()),
    ];
    (device(dir, name, &lines), commands(&list))
}

/// [`collect`], failing the test if it has not returned within `limit` (a driver that is
/// never killed would otherwise hang the test; it dies with the test process: PDEATHSIG).
fn collect_within(device: &Device, asked: &[String], limit: Duration) -> (Vec<Outcome>, Duration) {
    let (tx, rx) = mpsc::channel();
    let (device, asked) = (device.clone(), asked.to_vec());
    std::thread::spawn(move || {
        let _ = tx.send(collect(&isolator(), &device, &asked));
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("the driver was not stopped within {limit:?}"))
}

/// One outcome per command asked, in order; `first` of them answered `ok`, the rest `status`
/// with an error containing each of `words`.
fn assert_accounted(
    outcomes: &[Outcome],
    asked: &[String],
    first: usize,
    status: Status,
    words: &[&str],
) {
    let names: Vec<&str> = outcomes.iter().map(|o| o.command.as_str()).collect();
    assert_eq!(names, asked, "{outcomes:#?}");
    for o in &outcomes[..first] {
        assert_eq!(o.status, Status::Ok, "{o:?}");
    }
    for o in &outcomes[first..] {
        assert_eq!(o.status, status, "{o:?}");
        let error = o.error.as_deref().unwrap_or_default();
        for word in words {
            assert!(error.contains(word), "`{word}` not in: {error}");
        }
    }
}

#[test]
fn a_driver_printing_blank_lines_forever_is_killed_at_its_deadline() {
    let dir = TempDir::new("iso-blank").unwrap();
    // Answers `one`, then prints an empty line 20 times a second: each used to restart the
    // deadline, so it was never killed.
    let body = format!(
        "read -r request\n{}\nwhile :; do echo; sleep 0.05; done",
        outcome_line("one", "first\\n")
    );
    let (device, asked) = chatty(&dir, "blank", &body);
    let (outcomes, took) = collect_within(&device, &asked, Duration::from_secs(15));

    assert_accounted(
        &outcomes,
        &asked,
        1,
        Status::Timeout,
        &[
            "no answer for `two`",
            "that are not outcomes (blank)",
            "killed after",
        ],
    );
    // After an `ok`: command_timeout + grace, counted from that outcome, not from the last
    // blank line.
    let budget = Duration::from_secs(1) + GRACE;
    assert!(took >= budget, "killed early: {took:?}");
    assert!(
        took < budget + Duration::from_secs(3),
        "killed late: {took:?}"
    );
    assert_reaped(script_pid(&dir, "blank.sh"));
}

#[test]
fn a_driver_printing_log_lines_and_unknown_json_forever_is_killed_at_its_deadline() {
    let dir = TempDir::new("iso-logs").unwrap();
    // Never answers; logs to stdout (where logs do not belong) and reports progress in a
    // message type the agent does not know.
    let body = "read -r request\nwhile :; do\n  echo 'INFO still logging in to 10.0.0.9'\n  \
                echo '{\"type\":\"progress\",\"percent\":50}'\n  sleep 0.05\ndone";
    let (device, asked) = chatty(&dir, "logs", body);
    let (outcomes, took) = collect_within(&device, &asked, Duration::from_secs(15));

    assert_accounted(
        &outcomes,
        &asked,
        0,
        Status::Timeout,
        &[
            "no answer for `one`",
            "e.g. `INFO still logging in to 10.0.0.9`",
            "only an outcome restarts the deadline",
        ],
    );
    // Before the first outcome: connect_timeout + command_timeout + grace.
    let budget = Duration::from_secs(2) + GRACE;
    assert!(took >= budget, "killed early: {took:?}");
    assert!(
        took < budget + Duration::from_secs(3),
        "killed late: {took:?}"
    );
    assert_reaped(script_pid(&dir, "logs.sh"));
    // The first stray line is logged once, under the device's name.
    let warned: Vec<String> = captured_log()
        .into_iter()
        .filter(|(_, text)| {
            text.starts_with("logs: ") && text.contains("neither an outcome nor `done`")
        })
        .map(|(_, text)| text)
        .collect();
    assert_eq!(warned.len(), 1, "{warned:#?}");
    assert!(warned[0].contains("INFO still logging"), "{}", warned[0]);
}

#[test]
fn a_driver_flooding_short_lines_is_stopped_at_its_chatter_budget() {
    let dir = TempDir::new("iso-lines").unwrap();
    // Answers `one`, then floods lines as fast as the pipe takes them.
    let body = format!(
        "read -r request\n{}\nexec yes 'DEBUG tick'",
        outcome_line("one", "first\\n")
    );
    let (device, asked) = chatty(&dir, "lines", &body);
    let (outcomes, took) = collect_within(&device, &asked, Duration::from_secs(15));

    assert_accounted(
        &outcomes,
        &asked,
        1,
        Status::DriverCrashed,
        &[
            "protocol violation",
            "neither an outcome nor `done` while waiting for the outcome of `two`",
            "(the first: `DEBUG tick`)",
            "logs belong on stderr",
        ],
    );
    assert_eq!(
        outcomes[0].output, b"first\n",
        "the answer before the flood is kept"
    );
    // Stopped at the budget (1000 lines), long before its deadline (1 s + grace).
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_reaped(script_pid(&dir, "lines.sh"));
}
