//! `rackhand collect` end to end (issue 3's acceptance): the real binary, a generated config,
//! and real parts on loopback — the simulator as a Telnet rack and as pty consoles, a real
//! `sshd` whose forced command is the simulator — checked through the NDJSON records a user
//! sees. Where timing is the point (timeouts, blackholes) the collection runs in-process
//! through `rackhand::session::collect` with the same config text, so the measurement is of
//! the collector and not of process start-up.
//!
//! The harness (`tests/support/`) is shared and read-only; what it lacks lives here: a
//! password-login `sshd`, the collector process with its peak memory (wait4's `ru_maxrss`,
//! the kernel's VmHWM of the reaped child), a listener whose backlog is full, a UUCP lock
//! held by someone else.

mod support;

use std::fmt::Write as _;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use rackhand::sim::{Profile, PtyConsole, TelnetRack};
use serde_json::Value;

use support::client::{PromptClient, SerialWire};
use support::device::{login, prompt_regex};
use support::fixtures::{Capture, captures, platforms};
use support::process::{ChildGuard, poll_readable};
use support::sshd::{SSHD, Sshd};
use support::{
    TempDir, deadline, loopback_any_port, poll_until, rackhand_bin, released_loopback_port,
    remaining,
};

/// Upper bound for one whole `rackhand collect` run in these tests; each is far quicker.
const RUN_LIMIT: Duration = Duration::from_secs(40);
const STEP: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Configs

/// One `[[device]]` table, as a user writes it.
struct Dev {
    name: String,
    lines: Vec<String>,
}

impl Dev {
    fn new(name: &str, transport: &str) -> Dev {
        Dev {
            name: name.to_string(),
            lines: vec![format!("transport = \"{transport}\"")],
        }
    }

    fn telnet(name: &str, addr: SocketAddr) -> Dev {
        Dev::new(name, "telnet")
            .set("host", &quote(&addr.ip().to_string()))
            .set("port", &addr.port().to_string())
    }

    fn serial(name: &str, path: &Path) -> Dev {
        Dev::new(name, "serial")
            .set("serial_port", &quote(&path.display().to_string()))
            .set("baud", "9600")
    }

    /// Key login to the harness's sshd, host key learned on first use.
    fn ssh_key(name: &str, sshd: &Sshd, known_hosts: &Path) -> Dev {
        Dev::new(name, "ssh")
            .set("host", &quote(&sshd.addr.ip().to_string()))
            .set("port", &sshd.addr.port().to_string())
            .set("username", &quote(&sshd.user))
            .set("key_file", &quote(&sshd.client_key.display().to_string()))
            .set("known_hosts", &quote(&known_hosts.display().to_string()))
            .set("host_key_check", "\"accept-new\"")
    }

    fn set(mut self, key: &str, value: &str) -> Dev {
        self.lines.push(format!("{key} = {value}"));
        self
    }

    fn commands(self, commands: &[&str]) -> Dev {
        let list: Vec<String> = commands.iter().map(|c| quote(c)).collect();
        self.set("commands", &format!("[{}]", list.join(", ")))
    }
}

/// A TOML literal string (our values never hold `'`).
fn quote(s: &str) -> String {
    assert!(!s.contains('\''), "{s:?} cannot be a TOML literal string");
    format!("'{s}'")
}

/// A config file for `devices` in `dir`; `defaults` are extra `[defaults]` lines.
fn write_config(dir: &TempDir, workers: usize, defaults: &[&str], devices: &[Dev]) -> PathBuf {
    let text = config_text(dir, workers, defaults, devices);
    let path = dir.join("rackhand.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn config_text(dir: &TempDir, workers: usize, defaults: &[&str], devices: &[Dev]) -> String {
    let mut text = format!(
        "[agent]\nid = \"t\"\nworkers = {workers}\nstate_dir = {}\n\n[defaults]\n\
         platform = \"cisco_ios\"\nusername = \"admin\"\npassword = \"admin\"\n\
         connect_timeout = \"10s\"\ncommand_timeout = \"10s\"\ncommands = [\"show clock\"]\n",
        quote(&dir.join("state").display().to_string())
    );
    for line in defaults {
        writeln!(text, "{line}").unwrap();
    }
    for d in devices {
        write!(text, "\n[[device]]\nname = \"{}\"\n", d.name).unwrap();
        for line in &d.lines {
            writeln!(text, "{line}").unwrap();
        }
    }
    text
}

/// The devices of a config, resolved the way `rackhand collect` resolves them.
fn inventory(
    dir: &TempDir,
    defaults: &[&str],
    devices: &[Dev],
) -> Vec<rackhand::inventory::Device> {
    let text = config_text(dir, 4, defaults, devices);
    let path = dir.join("inline.toml");
    let (raw, mut report) = rackhand::config::parse_str(&path, &text);
    let inventory = rackhand::inventory::resolve(&raw, &mut report);
    assert!(!report.has_errors(), "bad test config:\n{report}\n{text}");
    inventory.devices
}

// ---------------------------------------------------------------------------------------
// Records

/// One NDJSON record, with `output` as the exact bytes (from `output_base64` when present).
#[derive(Debug, Clone)]
struct Rec {
    device: String,
    command: String,
    status: String,
    error: Option<String>,
    output: Vec<u8>,
    duration: Duration,
    json: Value,
}

impl Rec {
    fn parse(line: &str) -> Rec {
        let json: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("stdout line is not a JSON record ({e}): {line}"));
        let s = |k: &str| {
            json[k]
                .as_str()
                .unwrap_or_else(|| panic!("record without string `{k}`: {line}"))
                .to_string()
        };
        let output = match json.get("output_base64").and_then(Value::as_str) {
            Some(b64) => rackhand::record::base64_decode(b64)
                .unwrap_or_else(|| panic!("output_base64 is not base64: {line}")),
            None => s("output").into_bytes(),
        };
        Rec {
            device: s("device"),
            command: s("command"),
            status: s("status"),
            error: json["error"].as_str().map(str::to_string),
            output,
            duration: Duration::from_millis(json["duration_ms"].as_u64().unwrap()),
            json,
        }
    }

    fn from_outcome(o: rackhand::record::Outcome) -> Rec {
        let record = o.into_record("t", 1);
        Rec::parse(&record.to_json())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output).into_owned()
    }

    /// For failure messages: everything but a long output.
    fn brief(&self) -> String {
        let out = self.text();
        let cut: String = out.chars().take(300).collect();
        format!(
            "{}/{} status={} error={:?} output({} bytes)={cut:?}",
            self.device,
            self.command,
            self.status,
            self.error,
            self.output.len()
        )
    }
}

fn of_device<'r>(records: &'r [Rec], device: &str) -> Vec<&'r Rec> {
    records.iter().filter(|r| r.device == device).collect()
}

// ---------------------------------------------------------------------------------------
// The collector as a process

struct CliRun {
    code: i32,
    records: Vec<Rec>,
    stderr: String,
    /// Peak resident memory of the collector process (VmHWM), from wait4's rusage.
    max_rss_kib: u64,
}

impl CliRun {
    fn all(&self, device: &str) -> Vec<&Rec> {
        of_device(&self.records, device)
    }

    fn context(&self) -> String {
        let records: Vec<String> = self.records.iter().map(Rec::brief).collect();
        format!(
            "exit {}; records:\n{}\nstderr:\n{}",
            self.code,
            records.join("\n"),
            self.stderr
        )
    }
}

/// The collector child: killed and reaped in `Drop` unless it was reaped already.
struct Collector {
    child: Child,
    reaped: bool,
}

impl Drop for Collector {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `rackhand collect -c CONFIG --format json ARGS...` to completion (bounded).
fn collect_cli(config: &Path, args: &[&str]) -> CliRun {
    let mut cmd = Command::new(rackhand_bin());
    cmd.arg("collect")
        .arg("-c")
        .arg(config)
        .args(["--format", "json"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("start rackhand collect");
    let mut collector = Collector {
        child,
        reaped: false,
    };
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = reader(Box::new(collector.child.stdout.take().unwrap()));
    let stderr = reader(Box::new(collector.child.stderr.take().unwrap()));
    let pid = collector.child.id() as libc::pid_t;
    let pidfd = pidfd_open(pid);
    let until = deadline(RUN_LIMIT);
    let (status, rusage) = loop {
        let mut status = 0;
        // SAFETY: zeroed rusage is a valid out-parameter.
        let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: our own child's pid; valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut rusage) };
        assert!(r >= 0, "wait4: {}", std::io::Error::last_os_error());
        if r == pid {
            collector.reaped = true;
            break (status, rusage);
        }
        let Some(left) = remaining(until) else {
            panic!(
                "rackhand collect -c {} {args:?} still runs after {RUN_LIMIT:?}",
                config.display()
            );
        };
        poll_readable(&pidfd, left).unwrap();
    };
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        panic!("rackhand collect died of signal {}", libc::WTERMSIG(status));
    };
    let stdout = String::from_utf8(stdout.join().unwrap()).expect("stdout is UTF-8 NDJSON");
    let stderr = String::from_utf8_lossy(&stderr.join().unwrap()).into_owned();
    let records = stdout.lines().map(Rec::parse).collect();
    CliRun {
        code,
        records,
        stderr,
        max_rss_kib: rusage.ru_maxrss as u64,
    }
}

fn pidfd_open(pid: libc::pid_t) -> OwnedFd {
    // SAFETY: plain syscall, no pointers.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor we own.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

// ---------------------------------------------------------------------------------------
// Simulated devices

fn rack(profile: Profile, count: usize) -> TelnetRack {
    TelnetRack::start(loopback_any_port(), count, profile)
        .unwrap_or_else(|e| panic!("cannot start a telnet rack: {e}"))
}

fn rack1(profile: Profile) -> (TelnetRack, SocketAddr) {
    let r = rack(profile, 1);
    let addr = r.addrs()[0].1;
    (r, addr)
}

fn console(dir: &TempDir, name: &str, profile: Profile) -> PtyConsole {
    let link = dir.join(name);
    PtyConsole::start(&link, None, profile)
        .unwrap_or_else(|e| panic!("cannot start a pty console at {}: {e}", link.display()))
}

fn sshd(args: &[&str]) -> Sshd {
    Sshd::start(args).unwrap_or_else(|e| panic!("cannot start sshd: {e}"))
}

fn ios() -> Profile {
    Profile::for_platform("cisco_ios").unwrap()
}

fn capture(platform: &str, command: &str) -> Capture {
    captures(platform)
        .into_iter()
        .find(|c| c.command == command)
        .unwrap_or_else(|| panic!("no capture of `{command}` for {platform}"))
}

fn expected(platform: &str, command: &str) -> Vec<u8> {
    capture(platform, command).expected()
}

/// Where `rec`'s output first differs from `want`, with a little context.
fn difference(rec: &Rec, want: &[u8]) -> String {
    let at = want
        .iter()
        .zip(&rec.output)
        .position(|(a, b)| a != b)
        .unwrap_or(want.len().min(rec.output.len()));
    let window = |b: &[u8]| {
        let from = at.saturating_sub(60);
        String::from_utf8_lossy(&b[from.min(b.len())..(at + 60).min(b.len())]).into_owned()
    };
    format!(
        "{}/`{}` differs at byte {at} (want {} bytes, got {}):\n want …{:?}…\n  got …{:?}…",
        rec.device,
        rec.command,
        want.len(),
        rec.output.len(),
        window(want),
        window(&rec.output)
    )
}

// ---------------------------------------------------------------------------------------
// 1. Every capture, every platform, every transport, paging off and stuck on

#[test]
fn every_capture_comes_back_byte_for_byte_over_telnet_console_and_ssh_with_and_without_paging() {
    let tmp = TempDir::new("collect-fixtures").unwrap();
    let known_hosts = tmp.join("known_hosts");
    let mut racks = Vec::new();
    let mut consoles = Vec::new();
    let mut sshds = Vec::new();
    let mut devices = Vec::new();
    // (device name, platform, how to count its sessions)
    let mut plan: Vec<(String, String, usize)> = Vec::new();
    for platform in platforms() {
        let commands: Vec<String> = captures(&platform).into_iter().map(|c| c.command).collect();
        let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
        for stuck in [false, true] {
            let tag = if stuck { "stuck" } else { "plain" };
            let mut profile = Profile::for_platform(&platform).unwrap();
            profile.refuse_paging_off = stuck;
            assert!(profile.page_lines > 0, "{platform} must page by default");

            // Telnet; the plain IOS-style ones also make the collector `enable`.
            let mut telnet_profile = profile.clone();
            let has_enable = ["cisco_ios", "arista_eos"].contains(&platform.as_str());
            if has_enable && !stuck {
                telnet_profile.enable_secret = Some("en-secret".into());
            }
            let (r, addr) = rack1(telnet_profile);
            let name = format!("tn-{platform}-{tag}");
            let mut dev = Dev::telnet(&name, addr)
                .set("platform", &quote(&platform))
                .commands(&commands);
            if has_enable && !stuck {
                dev = dev.set("enable_secret", "\"en-secret\"");
            }
            devices.push(dev);
            plan.push((name, platform.clone(), racks.len()));
            racks.push(r);

            // Console.
            let c = console(&tmp, &format!("tty-{platform}-{tag}"), profile.clone());
            let name = format!("con-{platform}-{tag}");
            devices.push(
                Dev::serial(&name, c.link_path())
                    .set("platform", &quote(&platform))
                    .commands(&commands),
            );
            plan.push((name, platform.clone(), consoles.len()));
            consoles.push(c);

            // SSH.
            let mut args = vec!["--platform", platform.as_str()];
            if stuck {
                args.push("--refuse-paging-off");
            }
            let s = sshd(&args);
            let name = format!("ssh-{platform}-{tag}");
            devices.push(
                Dev::ssh_key(&name, &s, &known_hosts)
                    .set("platform", &quote(&platform))
                    .commands(&commands),
            );
            plan.push((name, platform.clone(), sshds.len()));
            sshds.push(s);
        }
    }
    let config = write_config(&tmp, 8, &[], &devices);
    let run = collect_cli(&config, &[]);
    let ctx = run.context();
    // Every device is checked before failing, so one run shows the whole picture.
    let mut problems = Vec::new();
    for (name, platform, index) in &plan {
        let got = run.all(name);
        let want = captures(platform);
        if got.len() != want.len() {
            problems.push(format!(
                "{name}: {} records for {} commands",
                got.len(),
                want.len()
            ));
            continue;
        }
        for (rec, cap) in got.iter().zip(&want) {
            if rec.command != cap.command {
                problems.push(format!(
                    "{name}: `{}` where `{}` was due",
                    rec.command, cap.command
                ));
            } else if rec.status != "ok" {
                problems.push(rec.brief());
                break;
            } else if rec.output != cap.expected() {
                problems.push(difference(rec, &cap.expected()));
            }
        }
        // One session per device for all of its commands.
        let sessions = if name.starts_with("tn-") {
            racks[*index].stats().total()
        } else if name.starts_with("con-") {
            consoles[*index].stats().total()
        } else {
            sshds[*index].log().matches("Accepted publickey").count() as u64
        };
        if sessions != 1 {
            problems.push(format!("{name}: {sessions} sessions for one collection"));
        }
    }
    assert!(problems.is_empty(), "{}\n\n{ctx}", problems.join("\n"));
    assert_eq!(run.code, 0, "{ctx}");
    assert_eq!(
        run.records.len(),
        plan.iter().map(|p| captures(&p.1).len()).sum::<usize>()
    );
}
