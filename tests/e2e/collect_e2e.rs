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

use crate::support;

use std::collections::BTreeMap;
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
use support::config::{Config, Dev, quote};
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

/// A config file for `devices` in `dir`; `defaults` are extra `[defaults]` lines.
fn write_config(dir: &TempDir, workers: usize, defaults: &[&str], devices: &[Dev]) -> PathBuf {
    config(dir, workers, defaults, devices).write(&dir.join("rackhand.toml"))
}

/// `defaults` are `key = value` lines that replace the base `[defaults]` or add to them.
fn config(dir: &TempDir, workers: usize, defaults: &[&str], devices: &[Dev]) -> Config {
    Config::new()
        .agent("id", "\"t\"")
        .agent("workers", &workers.to_string())
        .agent(
            "state_dir",
            &quote(&dir.join("state").display().to_string()),
        )
        .defaults_lines(&[
            "platform = \"cisco_ios\"",
            "username = \"admin\"",
            "password = \"admin\"",
            "connect_timeout = \"10s\"",
            "command_timeout = \"10s\"",
            "commands = [\"show clock\"]",
        ])
        .defaults_lines(defaults)
        .devices(devices.iter().cloned())
}

/// The devices of a config, resolved the way `rackhand collect` resolves them.
fn inventory(
    dir: &TempDir,
    defaults: &[&str],
    devices: &[Dev],
) -> Vec<rackhand::inventory::Device> {
    config(dir, 4, defaults, devices)
        .inventory(&dir.join("inline.toml"))
        .devices
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
    collect_cli_env(config, args, &[])
}

/// [`collect_cli`] with extra environment variables (`RUST_LOG=debug` to see the channel).
fn collect_cli_env(config: &Path, args: &[&str], env: &[(&str, &str)]) -> CliRun {
    let mut cmd = Command::new(rackhand_bin());
    cmd.envs(env.iter().copied());
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
    collected(&capture(platform, command))
}

/// What `rackhand collect` hands back for `capture`: the capture, less the context line a
/// Junos capture ends with (`{master:0}`: Junos prints it right above its prompt, so it is
/// part of the prompt, not of the output).
fn collected(capture: &Capture) -> Vec<u8> {
    let mut want = capture.expected();
    if capture.platform == "juniper_junos" {
        let body = want.strip_suffix(b"\n").unwrap_or(&want);
        let last = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let line = String::from_utf8_lossy(&body[last..]).into_owned();
        let context = (line.starts_with('{') && line.ends_with('}'))
            || (line.starts_with("[edit") && line.ends_with(']'));
        if context {
            want.truncate(last);
        }
    }
    want
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
            if !stuck {
                // What a terminal server line shows before the login.
                telnet_profile.press_return = true;
                telnet_profile.banner =
                    Some("Authorized access only!\nDisconnect now if you are not.".into());
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
            } else if rec.output != collected(cap) {
                problems.push(difference(rec, &collected(cap)));
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

// ---------------------------------------------------------------------------------------
// A password-login sshd (the harness's is key-only)

/// A throwaway system user for password logins, created once (idempotent; the tests run as
/// root) and left in place: other test binaries may run at the same time.
const SSH_USER: &str = "rackhand-c1";
const SSH_PASSWORD: &str = "c1-Rack-pass";

fn ensure_ssh_user() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let exists = Command::new("id")
            .arg("-u")
            .arg(SSH_USER)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        if !exists {
            let out = Command::new("useradd")
                .args(["-M", "-s", "/bin/sh", SSH_USER])
                .output()
                .expect("useradd runs (the tests need root)");
            // 9: created meanwhile by another test binary.
            assert!(
                out.status.success() || out.status.code() == Some(9),
                "useradd {SSH_USER}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut child = Command::new("chpasswd")
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chpasswd runs");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{SSH_USER}:{SSH_PASSWORD}\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "chpasswd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

struct PasswordSshd {
    // Field order: the server dies before its directory is removed.
    guard: ChildGuard,
    addr: SocketAddr,
    _dir: TempDir,
}

impl PasswordSshd {
    /// sshd with password logins for [`SSH_USER`], `LogLevel DEBUG3` (so a test can see that
    /// no credential arrived), a host key of `key_type`, `extra` config lines first (sshd
    /// keeps the first value it reads) and `rackhand sim --stdio SIM_ARGS` as the device.
    fn start(key_type: &str, extra: &str, sim_args: &[&str]) -> PasswordSshd {
        ensure_ssh_user();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let dir = TempDir::new("collect-sshd").unwrap();
        let host_key = dir.join(&format!("host_{key_type}"));
        keygen(&host_key, key_type);
        let force = format!(
            "{} sim --stdio {}",
            rackhand_bin().display(),
            sim_args.join(" ")
        );
        let mut last = String::new();
        for _ in 0..5 {
            let addr = released_loopback_port().unwrap();
            let config = dir.join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "{extra}ListenAddress {addr}\nHostKey {}\nPidFile {}\nUsePAM no\nStrictModes no\n\
                     PubkeyAuthentication no\nPasswordAuthentication yes\nKbdInteractiveAuthentication no\n\
                     PermitEmptyPasswords no\nAllowUsers {SSH_USER}\nAllowTcpForwarding no\n\
                     X11Forwarding no\nPrintMotd no\nPrintLastLog no\nLogLevel DEBUG3\n\
                     ForceCommand {force}\n",
                    host_key.display(),
                    dir.join("sshd.pid").display(),
                ),
            )
            .unwrap();
            let mut cmd = Command::new(SSHD);
            cmd.arg("-D").arg("-e").arg("-f").arg(&config);
            cmd.stdin(Stdio::null()).stdout(Stdio::null());
            let (tx, rx) = mpsc::channel();
            let guard = ChildGuard::spawn(cmd, &format!("sshd on {addr}"), Some(tx)).unwrap();
            let until = deadline(STEP);
            let listening = loop {
                match rx.recv_timeout(remaining(until).unwrap_or_default()) {
                    Ok(line) if line.contains("Server listening on") => break true,
                    Ok(line) if line.contains("Address already in use") => break false,
                    Ok(_) => continue,
                    Err(RecvTimeoutError::Timeout) => {
                        panic!("sshd on {addr} did not listen:\n{}", guard.stderr_text())
                    }
                    Err(RecvTimeoutError::Disconnected) => break false,
                }
            };
            if listening {
                return PasswordSshd {
                    guard,
                    addr,
                    _dir: dir,
                };
            }
            last = guard.stderr_text();
        }
        panic!("sshd could not start:\n{last}");
    }

    fn log(&self) -> String {
        self.guard.stderr_text()
    }

    fn device(&self, name: &str, known_hosts: &Path) -> Dev {
        Dev::new(name, "ssh")
            .set("host", &quote(&self.addr.ip().to_string()))
            .set("port", &self.addr.port().to_string())
            .set("username", &quote(SSH_USER))
            .set("password", &quote(SSH_PASSWORD))
            .set("known_hosts", &quote(&known_hosts.display().to_string()))
            .set("host_key_check", "\"accept-new\"")
    }

    /// Waits until sshd logged the end of `n` connections, so its log is complete.
    fn wait_connections_closed(&self, n: usize) {
        let ended = |log: &str| {
            log.matches("Connection closed by").count()
                + log.matches("Disconnected from").count()
                + log.matches("Received disconnect from").count()
                >= n
        };
        assert!(
            poll_until(deadline(STEP), || ended(&self.log())),
            "sshd did not log the end of connection {n}:\n{}",
            self.log()
        );
    }
}

fn keygen(path: &Path, kind: &str) {
    let mut args = vec!["-q", "-t", kind, "-N", "", "-C", "rackhand-test", "-f"];
    if kind == "rsa" {
        args.splice(3..3, ["-b", "2048"]);
    }
    let out = Command::new("ssh-keygen")
        .args(&args)
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("ssh-keygen runs (scripts/install-deps installs openssh-client)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------
// 2. Failures, each with the status a user can act on

#[test]
fn a_wrong_password_or_enable_secret_is_auth_failed_on_telnet_console_and_ssh() {
    let tmp = TempDir::new("collect-auth").unwrap();
    let (_rack, addr) = rack1(ios());
    let mut with_enable = ios();
    with_enable.enable_secret = Some("en-secret".into());
    let (_rack2, enable_addr) = rack1(with_enable);
    let con = console(&tmp, "tty-auth", ios());
    let ssh = PasswordSshd::start("ed25519", "", &["--page-lines", "0"]);
    let devices = [
        Dev::telnet("tn", addr).set("password", "\"not-admin\""),
        Dev::telnet("tn-enable", enable_addr).set("enable_secret", "\"not-the-secret\""),
        Dev::serial("con", con.link_path()).set("password", "\"not-admin\""),
        ssh.device("ssh", &tmp.join("known_hosts"))
            .set("password", "\"not-the-password\""),
    ];
    let config = write_config(&tmp, 4, &[], &devices);
    let run = collect_cli(&config, &[]);
    let ctx = run.context();
    for d in &devices {
        let recs = run.all(&d.name);
        assert_eq!(recs.len(), 1, "{ctx}");
        assert_eq!(recs[0].status, "auth_failed", "{ctx}");
        let error = recs[0].error.as_deref().unwrap_or_default();
        assert!(
            error.contains(&d.name),
            "the error must name the device: {error}"
        );
    }
    assert_eq!(run.code, 1, "{ctx}");
    // One wrong try only: a second would only count towards locking the account.
    ssh.wait_connections_closed(1);
    assert_eq!(
        ssh.log().matches("Failed password for").count(),
        1,
        "{}",
        ssh.log()
    );
}

#[test]
fn a_closed_port_or_one_that_hangs_up_is_connect_failed_at_once_over_telnet_and_ssh() {
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let hang_up = HangUp::start();
    let tmp = TempDir::new("collect-closed").unwrap();
    let ssh = |name: &str, addr: SocketAddr| {
        Dev::new(name, "ssh")
            .set("host", "\"127.0.0.1\"")
            .set("port", &addr.port().to_string())
            .set("known_hosts", &quote(&tmp.join("kh").display().to_string()))
    };
    let devices = [
        Dev::telnet("tn", closed),
        ssh("ssh", closed),
        Dev::telnet("tn-hangup", hang_up.addr),
        ssh("ssh-hangup", hang_up.addr),
    ];
    let config = write_config(&tmp, 4, &[], &devices);
    let start = Instant::now();
    let run = collect_cli(&config, &[]);
    let took = start.elapsed();
    let ctx = run.context();
    for d in &devices {
        let recs = run.all(&d.name);
        assert_eq!(recs.len(), 1, "{ctx}");
        assert_eq!(recs[0].status, "connect_failed", "{ctx}");
        let error = recs[0].error.as_deref().unwrap_or_default();
        let port = if d.name.ends_with("hangup") {
            hang_up.addr.port()
        } else {
            closed.port()
        };
        assert!(
            error.contains(&port.to_string()) && error.contains(&d.name),
            "{error}"
        );
    }
    assert_eq!(run.code, 1);
    assert!(
        took < Duration::from_secs(3),
        "a refused connect took {took:?}"
    );
}

/// A port that accepts and hangs up at once (a busy terminal-server line does this); the
/// accepting thread is stopped and joined in `Drop`.
struct HangUp {
    addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HangUp {
    fn start() -> HangUp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            // Ends at the stop flag (Drop connects once to wake the accept).
            for conn in listener.incoming() {
                if flag.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                drop(conn);
            }
        });
        HangUp {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HangUp {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A listening socket whose accept queue is full: the kernel drops further SYNs, so a
/// connect hangs as against a firewalled host.
struct FullBacklog {
    _listener: OwnedFd,
    addr: SocketAddr,
    _fillers: Vec<TcpStream>,
}

fn full_backlog() -> FullBacklog {
    // SAFETY: plain socket calls on a descriptor we own; sockaddr_in is initialised.
    let (fd, addr) = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let fd = OwnedFd::from_raw_fd(fd);
        let mut sin: libc::sockaddr_in = std::mem::zeroed();
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let r = libc::bind(
            fd.as_raw_fd(),
            (&sin as *const libc::sockaddr_in).cast(),
            len,
        );
        assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
        assert_eq!(libc::listen(fd.as_raw_fd(), 0), 0);
        let mut len = len;
        let r = libc::getsockname(
            fd.as_raw_fd(),
            (&mut sin as *mut libc::sockaddr_in).cast(),
            &mut len,
        );
        assert_eq!(r, 0);
        let port = u16::from_be(sin.sin_port);
        (fd, SocketAddr::from(([127, 0, 0, 1], port)))
    };
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => fillers.push(s),
            Err(_) => {
                return FullBacklog {
                    _listener: fd,
                    addr,
                    _fillers: fillers,
                };
            }
        }
    }
    panic!(
        "the accept queue of {addr} never filled with {} connections",
        fillers.len()
    );
}

#[test]
fn a_blackholed_device_is_connect_failed_within_connect_timeout() {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let full = full_backlog();
    let tmp = TempDir::new("collect-blackhole").unwrap();
    let kh = tmp.join("known_hosts");
    let ssh = |name: &str, addr: SocketAddr| {
        Dev::new(name, "ssh")
            .set("host", "\"127.0.0.1\"")
            .set("port", &addr.port().to_string())
            .set("known_hosts", &quote(&kh.display().to_string()))
    };
    let timeout = Duration::from_millis(1500);
    let devices = inventory(
        &tmp,
        &["connect_timeout = \"1500ms\""],
        &[
            Dev::telnet("tn-silent", silent_addr),
            Dev::telnet("tn-full", full.addr),
            ssh("ssh-silent", silent_addr),
            ssh("ssh-full", full.addr),
        ],
    );
    // In parallel, as the pool runs them, each timed on its own.
    let results: Vec<(String, Vec<Rec>, Duration)> = std::thread::scope(|s| {
        let handles: Vec<_> = devices
            .iter()
            .map(|d| {
                s.spawn(move || {
                    let start = Instant::now();
                    let outcomes = rackhand::session::collect(d, &d.commands);
                    let took = start.elapsed();
                    let recs = outcomes.into_iter().map(Rec::from_outcome).collect();
                    (d.name.clone(), recs, took)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let limit = timeout + timeout / 10;
    for (name, recs, took) in &results {
        let briefs: Vec<String> = recs.iter().map(Rec::brief).collect();
        assert_eq!(recs.len(), 1, "{name}: {briefs:?}");
        assert_eq!(recs[0].status, "connect_failed", "{name}: {briefs:?}");
        assert!(
            *took >= timeout - Duration::from_millis(50) && *took <= limit,
            "{name}: gave up after {took:?}, connect_timeout is {timeout:?}"
        );
        let error = recs[0].error.as_deref().unwrap_or_default();
        assert!(error.contains(name.as_str()), "{name}: {error}");
    }
    drop(silent);
}

#[test]
fn a_hung_command_times_out_on_time_and_the_next_commands_are_collected_after_a_reconnect() {
    let tmp = TempDir::new("collect-hang").unwrap();
    let (rack, addr) = rack1(ios().with_fault("show version", rackhand::sim::Fault::Hang));
    let s = sshd(&["--fault", "show version=hang"]);
    let commands = ["show clock", "show version", "show inventory", "show clock"];
    let devices = [
        Dev::telnet("tn", addr).commands(&commands),
        Dev::ssh_key("ssh", &s, &tmp.join("known_hosts")).commands(&commands),
    ];
    let config = write_config(&tmp, 2, &["command_timeout = \"1500ms\""], &devices);
    let run = collect_cli(&config, &[]);
    let ctx = run.context();
    let timeout = Duration::from_millis(1500);
    for d in &devices {
        let recs = run.all(&d.name);
        let statuses: Vec<&str> = recs.iter().map(|r| r.status.as_str()).collect();
        assert_eq!(statuses, ["ok", "timeout", "ok", "ok"], "{}: {ctx}", d.name);
        let hung = recs[1];
        assert!(
            hung.duration >= timeout && hung.duration <= timeout + timeout / 10,
            "{}: the hung command took {:?} for a command_timeout of {timeout:?}",
            d.name,
            hung.duration
        );
        let error = hung.error.as_deref().unwrap_or_default();
        assert!(
            error.contains("command_timeout") && error.contains(&d.name),
            "{error}"
        );
        assert_eq!(
            recs[2].output,
            expected("cisco_ios", "show inventory"),
            "{ctx}"
        );
    }
    assert_eq!(rack.stats().total(), 2, "telnet: one reconnect expected");
    assert_eq!(
        s.log().matches("Accepted publickey").count(),
        2,
        "{}",
        s.log()
    );
    assert_eq!(run.code, 1);
}

#[test]
fn a_device_that_hangs_on_the_paging_off_command_fails_fast_and_says_so() {
    let tmp = TempDir::new("collect-setup-hang").unwrap();
    let (rack, addr) = rack1(ios().with_fault("terminal length 0", rackhand::sim::Fault::Hang));
    let devices = [Dev::telnet("tn", addr).commands(&["show version", "show clock"])];
    let config = write_config(&tmp, 1, &["command_timeout = \"1s\""], &devices);
    let start = Instant::now();
    let run = collect_cli(&config, &[]);
    let took = start.elapsed();
    let ctx = run.context();
    let statuses: Vec<&str> = run.records.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses, ["timeout", "timeout"], "{ctx}");
    let error = run.records[0].error.as_deref().unwrap_or_default();
    assert!(
        error.contains("terminal length 0") && error.contains("tn"),
        "{error}"
    );
    // One command_timeout for the setup, not one more per command.
    assert!(took < Duration::from_millis(1800), "took {took:?}\n{ctx}");
    assert_eq!(rack.stats().total(), 1);
}

#[test]
fn a_dropped_connection_keeps_the_partial_output_and_the_next_commands_are_collected() {
    let tmp = TempDir::new("collect-drop").unwrap();
    let (rack, addr) = rack1(ios().with_fault("show interfaces", rackhand::sim::Fault::Drop));
    let s = sshd(&["--fault", "show interfaces=drop"]);
    let commands = ["show clock", "show interfaces", "show version"];
    let devices = [
        Dev::telnet("tn", addr).commands(&commands),
        Dev::ssh_key("ssh", &s, &tmp.join("known_hosts")).commands(&commands),
    ];
    let config = write_config(&tmp, 2, &[], &devices);
    let run = collect_cli(&config, &[]);
    let ctx = run.context();
    let full = expected("cisco_ios", "show interfaces");
    for d in &devices {
        let recs = run.all(&d.name);
        let statuses: Vec<&str> = recs.iter().map(|r| r.status.as_str()).collect();
        assert_eq!(statuses, ["ok", "disconnected", "ok"], "{}: {ctx}", d.name);
        let partial = &recs[1].output;
        assert!(
            !partial.is_empty() && partial.len() < full.len() && full.starts_with(partial),
            "{}: the partial output ({} bytes) is not a beginning of the full one ({} bytes): {:?}",
            d.name,
            partial.len(),
            full.len(),
            recs[1].text()
        );
        assert_eq!(
            recs[2].output,
            expected("cisco_ios", "show version"),
            "{ctx}"
        );
    }
    assert_eq!(rack.stats().total(), 2, "telnet: one reconnect expected");
    assert_eq!(run.code, 1);
}

#[test]
fn a_changed_ssh_host_key_is_host_key_mismatch_and_no_password_is_sent() {
    let tmp = TempDir::new("collect-hostkey").unwrap();
    let ssh = PasswordSshd::start("ed25519", "", &["--page-lines", "0"]);
    let other = tmp.join("other_ed25519");
    keygen(&other, "ed25519");
    let public = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let mut fields = public.split_whitespace();
    let known_hosts = tmp.join("known_hosts");
    std::fs::write(
        &known_hosts,
        format!(
            "[127.0.0.1]:{} {} {}\n",
            ssh.addr.port(),
            fields.next().unwrap(),
            fields.next().unwrap()
        ),
    )
    .unwrap();
    let devices = [ssh
        .device("core1", &known_hosts)
        .set("host_key_check", "\"strict\"")];
    let config = write_config(&tmp, 1, &[], &devices);
    let run = collect_cli(&config, &[]);
    let ctx = run.context();
    assert_eq!(run.records.len(), 1, "{ctx}");
    assert_eq!(run.records[0].status, "host_key_mismatch", "{ctx}");
    let error = run.records[0].error.as_deref().unwrap_or_default();
    assert!(
        error.contains("core1") && error.contains(&known_hosts.display().to_string()),
        "the error must name the device and the known_hosts file: {error}"
    );
    ssh.wait_connections_closed(1);
    let log = ssh.log();
    assert!(
        !log.contains("userauth-request") && !log.contains("method password"),
        "credentials reached the server:\n{log}"
    );
}

const OLD_SWITCH: &str = "KexAlgorithms diffie-hellman-group14-sha1\n\
                          HostKeyAlgorithms ssh-rsa\n\
                          Ciphers aes128-cbc\n\
                          MACs hmac-sha1\n";

#[test]
fn an_old_sha1_only_switch_is_collected_with_legacy_ssh_and_refused_by_name_without() {
    let tmp = TempDir::new("collect-legacy").unwrap();
    let ssh = PasswordSshd::start("rsa", OLD_SWITCH, &["--page-lines", "0"]);
    let devices = [
        ssh.device("old-legacy", &tmp.join("kh1"))
            .set("legacy_ssh", "true")
            .commands(&["show version"]),
        ssh.device("old-modern", &tmp.join("kh2"))
            .commands(&["show version"]),
    ];
    let config = write_config(&tmp, 2, &[], &devices);
    let run = collect_cli(&config, &[]);
    let ctx = run.context();
    let legacy = run.all("old-legacy");
    assert_eq!(legacy.len(), 1, "{ctx}");
    assert_eq!(legacy[0].status, "ok", "{ctx}");
    assert_eq!(legacy[0].output, expected("cisco_ios", "show version"));
    let modern = run.all("old-modern");
    assert_eq!(modern.len(), 1, "{ctx}");
    assert_eq!(modern[0].status, "connect_failed", "{ctx}");
    let error = modern[0].error.as_deref().unwrap_or_default();
    for needle in [
        "diffie-hellman-group14-sha1",
        "ssh-rsa",
        "aes128-cbc",
        "hmac-sha1",
        "legacy_ssh",
        "old-modern",
    ] {
        assert!(error.contains(needle), "missing {needle:?} in: {error}");
    }
    assert!(
        ssh.log()
            .contains("kex: algorithm: diffie-hellman-group14-sha1"),
        "{}",
        ssh.log()
    );
}

#[test]
fn endless_output_stops_at_max_output_with_bounded_memory_and_the_next_command_runs() {
    let tmp = TempDir::new("collect-endless").unwrap();
    let (rack, addr) = rack1(ios().with_fault("show interfaces", rackhand::sim::Fault::Endless));
    let max_output = 1usize << 20;
    let devices = [Dev::telnet("tn", addr)
        .set("max_output", "\"1MiB\"")
        .commands(&["show interfaces", "show clock"])];
    let config = write_config(&tmp, 1, &[], &devices);
    let run = collect_cli(&config, &[]);
    let ctx = run.context();
    let recs = run.all("tn");
    assert_eq!(recs.len(), 2, "{ctx}");
    assert_eq!(recs[0].status, "output_too_large", "{}", recs[0].brief());
    assert_eq!(recs[0].output.len(), max_output);
    // The output is the device's text as far as the cap: the capture, over and over.
    let one = expected("cisco_ios", "show interfaces");
    assert!(recs[0].output.starts_with(&one), "{}", recs[0].brief());
    assert_eq!(recs[1].status, "ok", "{ctx}");
    assert_eq!(recs[1].output, expected("cisco_ios", "show clock"));
    let peak_mib = run.max_rss_kib / 1024;
    assert!(
        peak_mib < 64,
        "the collector peaked at {peak_mib} MiB for a 1 MiB max_output"
    );
    assert_eq!(rack.stats().total(), 2);
}

#[test]
fn garbage_bytes_come_back_in_output_base64_on_every_transport() {
    let tmp = TempDir::new("collect-garbage").unwrap();
    let profile = ios().with_fault("show version", rackhand::sim::Fault::Garbage);
    let (_rack, addr) = rack1(profile.clone());
    let con = console(&tmp, "tty-garbage", profile);
    let s = sshd(&["--fault", "show version=garbage"]);
    let commands = ["show version", "show clock"];
    let devices = [
        Dev::telnet("tn", addr).commands(&commands),
        Dev::serial("con", con.link_path()).commands(&commands),
        Dev::ssh_key("ssh", &s, &tmp.join("known_hosts")).commands(&commands),
    ];
    let config = write_config(&tmp, 3, &[], &devices);
    let run = collect_cli(&config, &[]);
    let ctx = run.context();
    for d in &devices {
        let recs = run.all(&d.name);
        let statuses: Vec<&str> = recs.iter().map(|r| r.status.as_str()).collect();
        assert_eq!(statuses, ["ok", "ok"], "{}: {ctx}", d.name);
        assert!(
            recs[0].json.get("output_base64").is_some() && recs[0].output.contains(&0xff),
            "{}: no 0xFF kept: {}",
            d.name,
            recs[0].brief()
        );
        // `output` is the readable rendering of exactly those bytes.
        assert_eq!(
            recs[0].json["output"].as_str().unwrap(),
            String::from_utf8_lossy(&recs[0].output),
            "{}: output and output_base64 disagree",
            d.name
        );
        assert_eq!(recs[1].output, expected("cisco_ios", "show clock"));
    }
}

/// A UUCP lock file naming a live process (this test), removed in `Drop`.
struct ForeignLock(PathBuf);

impl Drop for ForeignLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_busy_console_port_names_the_lock_holders_pid() {
    let tmp = TempDir::new("collect-busy").unwrap();
    let con = console(&tmp, "tty-busy", ios());
    let lock_dir =
        rackhand::transport::serial::default_lock_dir().expect("a writable /run/lock or /var/lock");
    let lock = ForeignLock(lock_dir.join(rackhand::transport::serial::lock_file_name(
        con.device_path(),
    )));
    std::fs::write(&lock.0, format!("{:>10}\n", std::process::id())).unwrap();
    let devices = [Dev::serial("con-busy", con.link_path())];
    let config = write_config(&tmp, 1, &[], &devices);
    let run = collect_cli(&config, &[]);
    let ctx = run.context();
    assert_eq!(run.records.len(), 1, "{ctx}");
    assert!(
        ["port_busy", "connect_failed"].contains(&run.records[0].status.as_str()),
        "{ctx}"
    );
    let error = run.records[0].error.as_deref().unwrap_or_default();
    assert!(
        error.contains(&format!("PID {}", std::process::id())) && error.contains("con-busy"),
        "the error must name the holder's PID and the device: {error}"
    );
    assert_eq!(
        con.stats().total(),
        0,
        "the collector spoke on a port someone holds"
    );
}

/// Leaves a console the way a person at the rack might: logged in, then `before` done.
fn leave_console(path: &Path, before: impl FnOnce(&mut PromptClient<SerialWire>)) {
    let wire = SerialWire::open(path, 9600).unwrap();
    let mut client = PromptClient::new(wire, &prompt_regex("cisco_ios", "sim", "admin"));
    client.send_raw(b"\r").unwrap();
    login(&mut client, "admin", "admin", deadline(STEP))
        .unwrap_or_else(|e| panic!("console login for the setup failed: {e}"));
    before(&mut client);
}

#[test]
fn a_console_left_in_a_pager_in_config_mode_mid_line_or_at_the_password_is_recovered() {
    let tmp = TempDir::new("collect-left").unwrap();
    let paged = console(&tmp, "tty-paged", ios());
    let config_mode = console(&tmp, "tty-config", ios());
    let mid_line = console(&tmp, "tty-midline", ios());
    leave_console(paged.device_path(), |c| {
        c.send_line("show interfaces").unwrap();
        c.expect(r" --More-- ", deadline(STEP)).unwrap();
    });
    leave_console(config_mode.device_path(), |c| {
        c.send_line("configure terminal").unwrap();
        c.expect(r"sim\(config\)# ?", deadline(STEP)).unwrap();
    });
    leave_console(mid_line.device_path(), |c| {
        c.send_raw(b"show ver").unwrap();
        c.expect("show ver", deadline(STEP)).unwrap();
    });
    // Someone typed the username and walked away from the password prompt.
    let at_password = console(&tmp, "tty-password", ios());
    {
        let wire = SerialWire::open(at_password.device_path(), 9600).unwrap();
        let mut c = PromptClient::new(wire, &prompt_regex("cisco_ios", "sim", "admin"));
        c.send_raw(b"\r").unwrap();
        c.expect(support::device::USERNAME_PROMPT, deadline(STEP))
            .unwrap();
        c.send_line("admin").unwrap();
        c.expect(support::device::PASSWORD_PROMPT, deadline(STEP))
            .unwrap();
    }
    let commands = ["show version", "show clock"];
    let devices = [
        Dev::serial("paged", paged.link_path()).commands(&commands),
        Dev::serial("config", config_mode.link_path()).commands(&commands),
        Dev::serial("midline", mid_line.link_path()).commands(&commands),
        Dev::serial("password", at_password.link_path()).commands(&commands),
    ];
    let config = write_config(&tmp, 4, &[], &devices);
    let run = collect_cli(&config, &[]);
    let ctx = run.context();
    for d in &devices {
        let recs = run.all(&d.name);
        assert_eq!(recs.len(), 2, "{ctx}");
        for (rec, command) in recs.iter().zip(commands) {
            assert_eq!(rec.status, "ok", "{}\n{ctx}", rec.brief());
            assert_eq!(
                rec.output,
                expected("cisco_ios", command),
                "{}",
                rec.brief()
            );
        }
    }
    assert_eq!(run.code, 0, "{ctx}");
}

// ---------------------------------------------------------------------------------------
// 3. Concurrency

/// Milliseconds since the epoch of a record's `started_at` (`2026-11-25T10:00:00.123Z`).
fn epoch_ms(rfc3339: &str) -> u64 {
    let n = |range: std::ops::Range<usize>| -> i64 { rfc3339[range].parse().unwrap() };
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19);
    (secs * 1000 + n(20..23)) as u64
}

#[test]
fn started_at_reads_as_milliseconds_since_the_epoch() {
    assert_eq!(epoch_ms("2026-11-25T10:00:00.123Z"), 1_795_600_800_123);
    assert_eq!(epoch_ms("2000-02-29T00:00:00.000Z"), 951_782_400_000);
    assert_eq!(epoch_ms("1970-01-01T00:00:00.001Z"), 1);
}

/// The most devices whose commands ran at the same time: each device's span runs from its
/// first command's start to its last command's end, half open. Rounded down to milliseconds
/// both ends stay in order, so sessions one after the other on a worker never overlap.
fn most_devices_at_once(records: &[Rec]) -> usize {
    let mut spans: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for r in records {
        let start = epoch_ms(r.json["started_at"].as_str().unwrap());
        let end = start + r.duration.as_millis() as u64;
        let span = spans.entry(&r.device).or_insert((start, end));
        *span = (span.0.min(start), span.1.max(end));
    }
    // Ends sort before starts at the same instant: half-open spans.
    let mut edges: Vec<(u64, i32)> = spans
        .values()
        .flat_map(|&(start, end)| [(start, 1), (end, -1)])
        .collect();
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    most as usize
}

#[test]
fn twenty_devices_on_four_workers_never_exceed_four_sessions_or_one_per_device() {
    let tmp = TempDir::new("collect-pool").unwrap();
    let mut profile = ios();
    // Long enough that sessions overlap; short enough to keep the test quick.
    profile.latency = Duration::from_millis(40);
    let rack = rack(profile, 20);
    let devices: Vec<Dev> = rack
        .addrs()
        .iter()
        .enumerate()
        .map(|(i, (_, addr))| {
            Dev::telnet(&format!("sw{i:02}"), *addr).commands(&["show clock", "show version"])
        })
        .collect();
    let config = write_config(&tmp, 4, &[], &devices);
    let run = collect_cli(&config, &[]);
    let ctx = run.context();
    assert_eq!(run.code, 0, "{ctx}");
    assert_eq!(run.records.len(), 40, "{ctx}");
    assert!(run.records.iter().all(|r| r.status == "ok"), "{ctx}");
    // The pool's bound, from the records: a worker holds one device at a time, so the spans
    // of the devices' commands overlap at most four deep. (The simulator's own count is no
    // upper bound: collect hangs up without waiting for the answer to `exit`, and the
    // simulator notices a moment later, when the worker may be logging in elsewhere.)
    let most = most_devices_at_once(&run.records);
    assert!(
        (2..=4).contains(&most),
        "{most} devices at once with workers = 4\n{ctx}"
    );
    let stats = rack.stats().snapshot();
    assert!(stats.max_concurrent >= 2, "{}", stats.max_concurrent);
    assert_eq!(stats.max_concurrent_per_device, 1);
    assert_eq!(stats.total, 20);
    // Records are numbered in the order they were printed.
    let seqs: Vec<u64> = run
        .records
        .iter()
        .map(|r| r.json["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=40).collect::<Vec<u64>>());
}

// ---------------------------------------------------------------------------------------
// 3b. Leaving a device

/// How long the simulated devices below take to answer `exit`.
const EXIT_DELAY: Duration = Duration::from_secs(3);

/// Opens a session, runs one command, and times `close`.
fn time_to_close(device: &rackhand::inventory::Device) -> Duration {
    let mut session =
        rackhand::session::Session::open(device).unwrap_or_else(|e| panic!("{}: {e}", device.name));
    let outcome = session.run("show clock");
    assert_eq!(outcome.status, rackhand::record::Status::Ok, "{outcome:?}");
    let start = Instant::now();
    session.close();
    start.elapsed()
}

#[test]
fn a_network_session_hangs_up_after_exit_at_once_and_a_console_waits_for_its_logout() {
    let tmp = TempDir::new("collect-close").unwrap();
    let mut slow_logout = ios();
    slow_logout.exit_delay = EXIT_DELAY;
    let (rack, addr) = rack1(slow_logout.clone());
    let delay = format!("{}ms", EXIT_DELAY.as_millis());
    let sshd = sshd(&["--platform", "cisco_ios", "--exit-delay", &delay]);
    let console_delay = Duration::from_secs(1);
    slow_logout.exit_delay = console_delay;
    let con = console(&tmp, "tty-close", slow_logout);
    let devices = inventory(
        &tmp,
        &[],
        &[
            Dev::telnet("tn", addr),
            Dev::ssh_key("ssh", &sshd, &tmp.join("known_hosts")),
            Dev::serial("con", con.link_path()),
        ],
    );

    // Telnet and SSH: the logout is sent, the line hung up, nothing waited for.
    for device in &devices[..2] {
        let took = time_to_close(device);

        assert!(
            took < EXIT_DELAY / 3,
            "{}: close took {took:?}, waiting for the device's answer to exit",
            device.name
        );
    }
    let stats = rack.stats();
    assert!(
        poll_until(deadline(EXIT_DELAY / 2), || stats.current() == 0),
        "the Telnet device was not hung up on before it answered exit"
    );

    // A console: the next user of the port must find it logged out, so close waits for it.
    let took = time_to_close(&devices[2]);
    assert!(
        took >= console_delay,
        "close returned after {took:?}, before the console logged out"
    );
    let stats = con.stats();
    assert!(
        poll_until(deadline(STEP), || stats.current() == 0),
        "the console is still logged in"
    );
}

/// A TCP link on loopback that delivers what the server sends `delay` late, as a long link to
/// a remote rack does; what the client sends goes at once. Serves one connection.
struct SlowLink {
    addr: SocketAddr,
}

impl SlowLink {
    fn start(server: SocketAddr, delay: Duration) -> SlowLink {
        let listener = TcpListener::bind(loopback_any_port()).expect("bind the slow link");
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let Ok((client, _)) = listener.accept() else {
                return;
            };
            let upstream = TcpStream::connect(server).expect("the slow link reaches its server");
            let (client_in, upstream_out) =
                (client.try_clone().unwrap(), upstream.try_clone().unwrap());
            std::thread::spawn(move || relay(client_in, upstream_out, Duration::ZERO));
            relay(upstream, client, delay);
        });
        SlowLink { addr }
    }
}

/// Copies `from` to `to`, each chunk `delay` after it arrived, until either side ends.
fn relay(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = std::thread::spawn(move || {
        for (due, bytes) in rx {
            // The link's latency itself: nothing to wait for but the time.
            if let Some(left) = remaining(due) {
                std::thread::sleep(left);
            }
            if std::io::Write::write_all(&mut to, &bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n @ 1..) = from.read(&mut buf) {
        if tx
            .send((Instant::now() + delay, buf[..n].to_vec()))
            .is_err()
        {
            break;
        }
    }
    drop(tx);
    let _ = writer.join();
}

#[test]
fn closing_a_telnet_or_ssh_session_over_a_slow_link_takes_no_round_trip() {
    const ONE_WAY: Duration = Duration::from_millis(200);
    let tmp = TempDir::new("collect-close-slow").unwrap();
    let (_rack, telnet_addr) = rack1(ios());
    let sshd = sshd(&["--platform", "cisco_ios"]);
    let (telnet_link, ssh_link) = (
        SlowLink::start(telnet_addr, ONE_WAY),
        SlowLink::start(sshd.addr, ONE_WAY),
    );
    let devices = inventory(
        &tmp,
        &["connect_timeout = \"30s\""],
        &[
            Dev::telnet("far-tn", telnet_link.addr),
            Dev::ssh_key("far-ssh", &sshd, &tmp.join("known_hosts"))
                .set("host", &quote(&ssh_link.addr.ip().to_string()))
                .set("port", &ssh_link.addr.port().to_string()),
        ],
    );
    for device in &devices {
        let took = time_to_close(device);
        assert!(
            took < ONE_WAY / 2,
            "{}: close took {took:?} over a link {ONE_WAY:?} long each way: it waited for a reply",
            device.name
        );
    }
}

// ---------------------------------------------------------------------------------------
// 4. The command line

#[test]
fn device_filter_command_override_and_exit_codes() {
    let tmp = TempDir::new("collect-cli").unwrap();
    let rack = rack(ios(), 3);
    let addrs = rack.addrs();
    let devices = [
        Dev::telnet("a", addrs[0].1).commands(&["show clock"]),
        Dev::telnet("b", addrs[1].1).commands(&["show version", "show clock"]),
        Dev::telnet("c", addrs[2].1),
    ];
    let config = write_config(&tmp, 2, &[], &devices);

    let only_b = collect_cli(&config, &["--device", "b"]);
    let names: Vec<(&str, &str)> = only_b
        .records
        .iter()
        .map(|r| (r.device.as_str(), r.command.as_str()))
        .collect();
    assert_eq!(
        names,
        [("b", "show version"), ("b", "show clock")],
        "{}",
        only_b.context()
    );
    assert_eq!(only_b.code, 0, "{}", only_b.context());

    let override_ac = collect_cli(
        &config,
        &[
            "--device",
            "a",
            "--device",
            "c",
            "--",
            "show inventory",
            "show ip route",
        ],
    );
    let ctx = override_ac.context();
    for name in ["a", "c"] {
        let recs = override_ac.all(name);
        let got: Vec<&str> = recs.iter().map(|r| r.command.as_str()).collect();
        assert_eq!(got, ["show inventory", "show ip route"], "{ctx}");
        assert_eq!(recs[0].output, expected("cisco_ios", "show inventory"));
    }
    assert!(override_ac.all("b").is_empty(), "{ctx}");
    assert_eq!(override_ac.code, 0, "{ctx}");

    let unknown = collect_cli(&config, &["--device", "nope"]);
    assert_eq!(unknown.code, 2, "{}", unknown.context());
    assert!(unknown.records.is_empty());
    assert!(unknown.stderr.contains("nope"), "{}", unknown.stderr);

    let rejected = collect_cli(
        &config,
        &["--device", "a", "--", "show clock", "show frobnicate"],
    );
    let statuses: Vec<&str> = rejected.records.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses, ["ok", "command_error"], "{}", rejected.context());
    assert_eq!(rejected.code, 1);
    let error = rejected.records[1].error.as_deref().unwrap_or_default();
    assert!(
        error.contains("show frobnicate") && error.contains('a'),
        "{error}"
    );
    // The complaint is the device's output, kept.
    assert!(
        rejected.records[1].text().contains("% Invalid input"),
        "{}",
        rejected.records[1].brief()
    );
}

#[test]
fn ad_hoc_commands_run_on_a_device_without_configured_commands() {
    let tmp = TempDir::new("collect-ad-hoc").unwrap();
    let rack = rack(ios(), 2);
    let addrs = rack.addrs();
    let devices = [
        Dev::telnet("bare", addrs[0].1),
        Dev::telnet("a", addrs[1].1).commands(&["show version"]),
    ];
    // No commands in [defaults] either: `bare` has none at all.
    let path = write_config(&tmp, 2, &[], &devices);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("commands = [\"show clock\"]\n", "")).unwrap();

    let one = collect_cli(&path, &["--device", "bare", "--", "show clock"]);
    let got: Vec<(&str, &str, &str)> = one
        .records
        .iter()
        .map(|r| (r.device.as_str(), r.command.as_str(), r.status.as_str()))
        .collect();
    assert_eq!(got, [("bare", "show clock", "ok")], "{}", one.context());
    assert_eq!(one.code, 0, "{}", one.context());

    let every = collect_cli(&path, &["--", "show clock"]);
    assert_eq!(every.code, 0, "{}", every.context());
    for name in ["bare", "a"] {
        let commands: Vec<&str> = every.all(name).iter().map(|r| r.command.as_str()).collect();
        assert_eq!(commands, ["show clock"], "{}", every.context());
    }

    // Without `--` there is nothing to run on it, and the message says both ways out.
    let configured = collect_cli(&path, &["--device", "bare"]);
    assert_eq!(configured.code, 2, "{}", configured.context());
    assert!(configured.records.is_empty(), "{}", configured.context());
    assert!(
        configured
            .stderr
            .contains("device `bare` has no commands to run; set commands = ")
            && configured
                .stderr
                .contains("rackhand collect --device bare -- \"show version\""),
        "{}",
        configured.stderr
    );
}

/// glibc's malloc arenas besides the main one in a process's `/proc/PID/maps`: each is a heap
/// of its own, reserved as 64 MiB aligned to 64 MiB, the used part `rw-p` and the rest `---p`.
fn extra_malloc_arenas(pid: u32) -> usize {
    const HEAP_MAX: u64 = 64 << 20;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let regions: Vec<(u64, u64, String, bool)> = maps
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            let perms = fields.next()?.to_string();
            let anonymous = fields.nth(3).is_none();
            Some((
                u64::from_str_radix(start, 16).ok()?,
                u64::from_str_radix(end, 16).ok()?,
                perms,
                anonymous,
            ))
        })
        .collect();
    regions
        .windows(2)
        .filter(|pair| {
            let ((start, end, perms, anon), (next_start, next_end, next_perms, next_anon)) =
                (&pair[0], &pair[1]);
            *anon
                && *next_anon
                && start % HEAP_MAX == 0
                && perms == "rw-p"
                && next_perms == "---p"
                && next_start == end
                && next_end - start == HEAP_MAX
        })
        .count()
}

#[test]
fn collect_allocates_from_one_malloc_arena_however_many_workers_it_runs() {
    // Eight sessions at once, each parked in a command that never answers: every worker has
    // logged in (and allocated) by the time the simulator counts eight sessions.
    let tmp = TempDir::new("collect-arena").unwrap();
    let rack = rack(
        ios().with_fault("show clock", rackhand::sim::Fault::Hang),
        8,
    );
    let devices: Vec<Dev> = rack
        .addrs()
        .iter()
        .enumerate()
        .map(|(i, (_, addr))| Dev::telnet(&format!("d{i}"), *addr))
        .collect();
    let config = write_config(&tmp, 8, &["command_timeout = \"20s\""], &devices);
    let child = Command::new(rackhand_bin())
        .args(["collect", "--format", "json", "-c"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rackhand collect");
    let collector = Collector {
        child,
        reaped: false,
    };
    let stats = rack.stats();
    assert!(
        poll_until(deadline(STEP), || stats.current() == 8),
        "only {} sessions at once",
        stats.current()
    );
    let arenas = extra_malloc_arenas(collector.child.id());
    drop(collector);
    assert_eq!(
        arenas, 0,
        "rackhand collect made {arenas} malloc arenas besides the main one for 8 workers"
    );
}

/// `t:collect-<start ms>-<tag>-<n>` → (start ms, tag, n).
fn ad_hoc_id(id: &str) -> (u64, String, u64) {
    let rest = id
        .strip_prefix("t:collect-")
        .unwrap_or_else(|| panic!("`{id}` is not a collect run's id"));
    let parts: Vec<&str> = rest.split('-').collect();
    assert_eq!(parts.len(), 3, "`{id}`");
    assert!(
        parts[1].len() == 8 && parts[1].bytes().all(|b| b.is_ascii_hexdigit()),
        "`{id}`"
    );
    (
        parts[0].parse().unwrap(),
        parts[1].to_string(),
        parts[2].parse().unwrap(),
    )
}

#[test]
fn collect_ids_have_a_form_of_their_own_and_never_repeat_across_runs() {
    let tmp = TempDir::new("collect-ids").unwrap();
    let (_rack, addr) = rack1(ios());
    let devices = [Dev::telnet("a", addr).commands(&["show clock", "show version"])];
    let path = write_config(&tmp, 1, &[], &devices);
    // Nothing is written to the state folder: it cannot even be created here.
    let blocker = tmp.join("not-a-folder");
    std::fs::write(&blocker, "").unwrap();
    let text = std::fs::read_to_string(&path).unwrap().replace(
        &quote(&tmp.join("state").display().to_string()),
        &quote(&blocker.join("state").display().to_string()),
    );
    std::fs::write(&path, text).unwrap();

    let since_epoch = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let mut ids = std::collections::BTreeSet::new();
    let mut tags = Vec::new();
    for _ in 0..2 {
        let before = since_epoch();
        let run = collect_cli(&path, &[]);
        let after = since_epoch();
        assert_eq!(run.code, 0, "{}", run.context());
        assert_eq!(run.records.len(), 2, "{}", run.context());
        for (i, rec) in run.records.iter().enumerate() {
            let id = rec.json["id"].as_str().unwrap();
            let (start, tag, n) = ad_hoc_id(id);
            assert!((before..=after).contains(&start), "`{id}` not started now");
            assert_eq!(n, i as u64 + 1, "`{id}` numbers the records as printed");
            assert_eq!(rec.json["seq"].as_u64(), Some(n), "{}", rec.json);
            assert_eq!(rec.json["agent"], "t", "{}", rec.json);
            assert!(ids.insert(id.to_string()), "`{id}` came twice");
            tags.push(tag);
        }
    }
    assert_eq!(tags[0], tags[1], "one tag per run");
    assert_ne!(tags[0], tags[2], "each run a tag of its own");
}

#[test]
fn each_config_warning_is_printed_once_whether_or_not_the_config_has_errors() {
    let tmp = TempDir::new("collect-warn-once").unwrap();
    let (_rack, addr) = rack1(ios());
    // The base config writes the password inline: a warning, not an error.
    let warning = "`password` is written in the config itself";
    let valid = write_config(&tmp, 1, &[], &[Dev::telnet("a", addr)]);
    let run = collect_cli(&valid, &[]);
    assert_eq!(run.code, 0, "{}", run.context());
    assert_eq!(run.stderr.matches(warning).count(), 1, "{}", run.stderr);

    let invalid = write_config(
        &tmp,
        1,
        &[],
        &[Dev::telnet("a", addr).set("colour", "\"blue\"")],
    );
    let run = collect_cli(&invalid, &[]);
    assert_eq!(run.code, 2, "{}", run.context());
    assert!(
        run.stderr.contains("unknown key `colour`"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.matches(warning).count(), 1, "{}", run.stderr);
}

#[test]
fn a_generic_device_on_ipv6_loopback_is_collected_with_its_own_prompt_through_the_pager() {
    let tmp = TempDir::new("collect-generic").unwrap();
    let rack = TelnetRack::start("[::1]:0".parse().unwrap(), 1, ios())
        .unwrap_or_else(|e| panic!("cannot start a telnet rack on [::1]: {e}"));
    let addr = rack.addrs()[0].1;
    let commands = ["show interfaces", "show version"];
    // `generic` knows no paging-off command: every page is answered.
    let devices = [Dev::telnet("pdu1", addr)
        .set("platform", "\"generic\"")
        .set("prompt", r"'^sim[>#]\s?$'")
        .commands(&commands)];
    let config = write_config(&tmp, 1, &[], &devices);
    let run = collect_cli(&config, &[]);
    let ctx = run.context();
    let recs = run.all("pdu1");
    assert_eq!(recs.len(), 2, "{ctx}");
    for (rec, command) in recs.iter().zip(commands) {
        assert_eq!(rec.status, "ok", "{}\n{ctx}", rec.brief());
        assert!(
            rec.output == expected("cisco_ios", command),
            "{}",
            difference(rec, &expected("cisco_ios", command))
        );
    }
    assert_eq!(run.code, 0, "{ctx}");
}

#[test]
fn press_return_invitations_are_answered_at_once_not_after_silence() {
    // The login nudges a silent line after 2 s; an invitation that ends its line must be
    // answered before that, on a terminal-server line and on a console after its logout.
    let tmp = TempDir::new("collect-press-return").unwrap();
    let mut profile = ios();
    profile.press_return = true;
    profile.banner = Some("Authorized access only!".into());
    let (_rack, addr) = rack1(profile);
    let con = console(&tmp, "tty-press", ios());
    let devices = [
        Dev::telnet("line", addr),
        Dev::serial("con", con.link_path()),
    ];
    let config = write_config(&tmp, 2, &[], &devices);
    // The second run finds the console at "Press RETURN to get started." after the first
    // run's logout.
    for round in 1..=2 {
        let start = Instant::now();
        let run = collect_cli(&config, &[]);
        let took = start.elapsed();
        assert_eq!(run.code, 0, "round {round}: {}", run.context());
        assert!(
            took < Duration::from_millis(1500),
            "round {round}: collecting took {took:?}: something waited for silence"
        );
    }
    assert_eq!(con.stats().total(), 2);
}

#[test]
fn a_console_paced_at_its_baud_rate_is_collected_from_small_reads() {
    // A real line delivers a few dozen bytes per read: prompt and pager detection must not
    // depend on whole lines arriving together.
    let tmp = TempDir::new("collect-baud").unwrap();
    let link = tmp.join("tty-38400");
    let mut profile = ios();
    profile.page_lines = 10;
    profile.refuse_paging_off = true;
    let con = PtyConsole::start(&link, Some(38400), profile)
        .unwrap_or_else(|e| panic!("cannot start a paced console at {}: {e}", link.display()));
    let commands = ["show version", "show inventory", "show clock"];
    let devices = [Dev::serial("slow-con", con.link_path())
        .set("baud", "38400")
        .commands(&commands)];
    let config = write_config(&tmp, 1, &[], &devices);
    let run = collect_cli(&config, &[]);
    let ctx = run.context();
    let recs = run.all("slow-con");
    assert_eq!(recs.len(), commands.len(), "{ctx}");
    for (rec, command) in recs.iter().zip(commands) {
        assert_eq!(rec.status, "ok", "{}\n{ctx}", rec.brief());
        let want = expected("cisco_ios", command);
        assert!(rec.output == want, "{}", difference(rec, &want));
    }
}

// ---------------------------------------------------------------------------------------
// 5. Devices that talk on their own, and Junos prompts (issue 9)

/// A device of `platform` that logs to its line unasked (`rackhand sim --chatty`).
fn chatty(platform: &str) -> Profile {
    let mut p = Profile::for_platform(platform).unwrap();
    p.chatty = true;
    p
}

/// Checks that `device` has one record per command, in order, each `ok` and byte for byte
/// `want(command)`; what is wrong goes to `problems`, so one run shows the whole picture.
fn check_all_ok(
    run: &CliRun,
    device: &str,
    commands: &[String],
    want: impl Fn(&str) -> Vec<u8>,
    problems: &mut Vec<String>,
) {
    let got = run.all(device);
    if got.len() != commands.len() {
        problems.push(format!(
            "{device}: {} records for {} commands",
            got.len(),
            commands.len()
        ));
        return;
    }
    for (rec, command) in got.iter().zip(commands) {
        if rec.command != *command {
            problems.push(format!(
                "{device}: `{}` where `{command}` was due",
                rec.command
            ));
        } else if rec.status != "ok" {
            problems.push(rec.brief());
        } else if rec.output != want(command) {
            problems.push(difference(rec, &want(command)));
        }
    }
}

fn capture_commands(platform: &str) -> Vec<String> {
    captures(platform).into_iter().map(|c| c.command).collect()
}

#[test]
fn a_chatty_device_gets_every_command_back_ok_and_byte_for_byte_on_console_telnet_and_ssh() {
    let tmp = TempDir::new("collect-chatty").unwrap();
    let known_hosts = tmp.join("known_hosts");
    let con = console(&tmp, "tty-chatty", chatty("cisco_ios"));
    // Paced: small reads split log lines, reprinted prompts and echoes anywhere.
    let paced_link = tmp.join("tty-chatty-38400");
    let paced = PtyConsole::start(&paced_link, Some(38400), chatty("cisco_ios"))
        .unwrap_or_else(|e| panic!("cannot start a paced console: {e}"));
    let (tn, tn_addr) = rack1(chatty("juniper_junos"));
    let ssh = sshd(&["--platform", "arista_eos", "--chatty"]);
    // Nobody has been connected yet: what the console logs now waits on the line for the
    // collector, as it does between two collections.
    assert!(
        poll_until(deadline(STEP), || con.stats().unsolicited_lines() >= 2),
        "the idle console logged nothing"
    );
    let paced_commands: Vec<String> = ["show clock", "show version", "show inventory"]
        .map(String::from)
        .to_vec();
    // (device, platform, commands, the peer the collector names in its log)
    let plan = [
        (
            "con-chatty",
            "cisco_ios",
            capture_commands("cisco_ios"),
            format!("serial {}", con.link_path().display()),
        ),
        (
            "paced-chatty",
            "cisco_ios",
            paced_commands,
            format!("serial {}", paced.link_path().display()),
        ),
        (
            "tn-chatty",
            "juniper_junos",
            capture_commands("juniper_junos"),
            format!("telnet {tn_addr}"),
        ),
        (
            "ssh-chatty",
            "arista_eos",
            capture_commands("arista_eos"),
            format!("ssh {}", ssh.addr),
        ),
    ];
    let devices: Vec<Dev> = plan
        .iter()
        .map(|(name, platform, commands, _)| {
            let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
            let dev = match *name {
                "con-chatty" => Dev::serial(name, con.link_path()),
                "paced-chatty" => Dev::serial(name, paced.link_path()).set("baud", "38400"),
                "tn-chatty" => Dev::telnet(name, tn_addr),
                _ => Dev::ssh_key(name, &ssh, &known_hosts),
            };
            dev.set("platform", &quote(platform)).commands(&commands)
        })
        .collect();
    let config = write_config(&tmp, 4, &[], &devices);
    let debug = [("RUST_LOG", "debug")];
    let run = collect_cli_env(&config, &[], &debug);
    let ctx = run.context();
    let mut problems = Vec::new();
    for (name, platform, commands, peer) in &plan {
        check_all_ok(
            &run,
            name,
            commands,
            |c| collected(&capture(platform, c)),
            &mut problems,
        );
        // The collector met the log lines on every transport, and set them aside.
        if !run.stderr.contains(&format!("{peer}: set aside")) {
            problems.push(format!(
                "{name}: the collector set nothing aside from {peer}"
            ));
        }
    }
    assert!(problems.is_empty(), "{}\n\n{ctx}", problems.join("\n"));
    assert_eq!(
        run.records.len(),
        plan.iter().map(|p| p.2.len()).sum::<usize>(),
        "{ctx}"
    );
    assert_eq!(run.code, 0, "{ctx}");
    // Two log lines per command line typed (before its echo, after its prompt), the session
    // setup included.
    for (console, commands) in [(&con, plan[0].2.len()), (&paced, plan[1].2.len())] {
        let lines = console.stats().unsolicited_lines();
        assert!(
            lines >= 2 * commands as u64,
            "{lines} log lines for {commands} commands"
        );
    }
    assert!(tn.stats().unsolicited_lines() >= 2 * plan[2].2.len() as u64);

    // Logged out, the console is idle again (and logs); the next collection finds it so.
    let again = collect_cli_env(&config, &["--device", "con-chatty"], &debug);
    let mut problems = Vec::new();
    check_all_ok(
        &again,
        "con-chatty",
        &plan[0].2,
        |c| collected(&capture("cisco_ios", c)),
        &mut problems,
    );
    assert!(
        problems.is_empty(),
        "{}\n\n{}",
        problems.join("\n"),
        again.context()
    );
    assert_eq!(again.records.len(), plan[0].2.len());
    assert_eq!(con.stats().total(), 2, "one session per collection");
}

#[test]
fn a_junos_like_device_answering_host_without_user_is_a_timeout_that_quotes_host() {
    let tmp = TempDir::new("collect-host-prompt").unwrap();
    let known_hosts = tmp.join("known_hosts");
    let mut profile = Profile::for_platform("juniper_junos").unwrap();
    profile.prompt = Some("host> ".into());
    let (_rack, addr) = rack1(profile.clone());
    let con = console(&tmp, "tty-host", profile);
    let ssh = sshd(&["--platform", "juniper_junos", "--prompt", "host> "]);
    let commands = ["show version", "show system uptime"];
    let devices = [
        Dev::telnet("tn-host", addr).commands(&commands),
        Dev::serial("con-host", con.link_path()).commands(&commands),
        Dev::ssh_key("ssh-host", &ssh, &known_hosts).commands(&commands),
    ];
    let connect_timeout = Duration::from_secs(3);
    let config = write_config(
        &tmp,
        3,
        &["platform = \"juniper_junos\"", "connect_timeout = \"3s\""],
        &devices,
    );
    let started = Instant::now();
    let run = collect_cli(&config, &[]);
    let took = started.elapsed();
    let ctx = run.context();
    assert_eq!(run.records.len(), devices.len() * commands.len(), "{ctx}");
    for d in &devices {
        let recs = run.all(&d.name);
        assert_eq!(recs.len(), commands.len(), "{ctx}");
        for rec in recs {
            let error = rec.error.as_deref().unwrap_or("");
            assert_eq!(rec.status, "timeout", "{}\n{ctx}", rec.brief());
            assert!(
                error.contains("last line: `host>`") && error.contains("`prompt`"),
                "the error must quote the prompt it saw and name the setting: {error}"
            );
        }
    }
    assert_eq!(run.code, 1, "{ctx}");
    // Each device gives up at its connect timeout, all three at once.
    assert!(
        took < connect_timeout + Duration::from_secs(4),
        "took {took:?} for a {connect_timeout:?} connect timeout"
    );
}

#[test]
fn junos_context_lines_above_the_prompt_are_not_output_on_console_telnet_and_ssh() {
    let tmp = TempDir::new("collect-junos-context").unwrap();
    let known_hosts = tmp.join("known_hosts");
    // The device prints each capture, then its context line and prompt.
    let outputs = tmp.join("outputs");
    std::fs::create_dir(&outputs).unwrap();
    let captures = captures("juniper_junos");
    for cap in &captures {
        std::fs::write(outputs.join(cap.path.file_name().unwrap()), collected(cap)).unwrap();
    }
    let with_context = |line: &str| {
        let mut p = Profile::for_platform("juniper_junos")
            .unwrap()
            .with_outputs_dir(&outputs)
            .unwrap();
        p.context_line = Some(line.into());
        p
    };
    let (_rack, addr) = rack1(with_context("{master:0}"));
    let con = console(&tmp, "tty-cluster", with_context("{secondary:node1}"));
    let outputs_arg = outputs.display().to_string();
    let ssh = sshd(&[
        "--platform",
        "juniper_junos",
        "--outputs",
        &outputs_arg,
        "--context-line",
        "{primary:node0}",
    ]);
    let commands = capture_commands("juniper_junos");
    let list: Vec<&str> = commands.iter().map(String::as_str).collect();
    let devices = [
        Dev::telnet("vc", addr).commands(&list),
        Dev::serial("node1", con.link_path()).commands(&list),
        Dev::ssh_key("node0", &ssh, &known_hosts).commands(&list),
    ];
    let config = write_config(&tmp, 3, &["platform = \"juniper_junos\""], &devices);
    let run = collect_cli(&config, &[]);
    let ctx = run.context();
    let mut problems = Vec::new();
    for d in &devices {
        check_all_ok(
            &run,
            &d.name,
            &commands,
            |c| collected(&capture("juniper_junos", c)),
            &mut problems,
        );
    }
    for rec in &run.records {
        let text = rec.text();
        if ["{master:0}", "{secondary:node1}", "{primary:node0}"]
            .iter()
            .any(|context| text.contains(context))
        {
            problems.push(format!("a context line in the output: {}", rec.brief()));
        }
    }
    assert!(problems.is_empty(), "{}\n\n{ctx}", problems.join("\n"));
    assert_eq!(run.records.len(), devices.len() * commands.len(), "{ctx}");
    assert_eq!(run.code, 0, "{ctx}");
}
