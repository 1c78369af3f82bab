//! `rackhand status`: the story of an engineer asking, from another shell, what the agent on
//! the rack's Pi is doing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use rackhand::record::rfc3339_millis;
use rackhand::status_file::{AgentStatus, STATUS_FILE};

use crate::support::TempDir;
use crate::support::config::{Config, Dev, list, quote};

/// One test's folder: the agent's `state` in it, and its config.
struct Folder(TempDir);

impl Folder {
    fn new(tag: &str) -> Folder {
        let dir = TempDir::new(&format!("status-cli-{tag}")).unwrap();
        std::fs::create_dir_all(dir.join("state")).unwrap();
        Folder(dir)
    }

    fn state_dir(&self) -> PathBuf {
        self.0.join("state")
    }

    /// A valid config whose `[agent] state_dir` is this folder's `state`.
    fn config(&self) -> PathBuf {
        Config::new()
            .agent("id", "\"rack-a12\"")
            .agent("state_dir", &quote(&self.state_dir().display().to_string()))
            .defaults("platform", "\"cisco_ios\"")
            .defaults("username", "\"admin\"")
            .defaults("password_env", "\"RACKHAND_PASSWORD\"")
            .defaults("commands", &list(&["show version"]))
            .device(Dev::new("core1", "telnet").set("host", "\"127.0.0.1\""))
            .write(&self.0.join("rackhand.toml"))
    }

    fn write_config(&self, text: &str) -> PathBuf {
        self.0.write("rackhand.toml", text)
    }
}

/// A real rackhand process standing in for the agent (the simulator on stdio, waiting for
/// input), so the status command sees a live process named rackhand. Killed on drop.
struct StandIn(Child);

impl StandIn {
    fn start() -> StandIn {
        StandIn(
            Command::new(env!("CARGO_BIN_EXE_rackhand"))
                .args(["sim", "--stdio", "--platform", "cisco_ios"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start rackhand sim --stdio"),
        )
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The pid of a process that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

fn status(config: &Path, extra: &[&str]) -> Outcome {
    status_with_runtime_dir(config, extra, None)
}

/// `rackhand status`, with `$RUNTIME_DIRECTORY` set to `runtime_dir` or unset.
fn status_with_runtime_dir(config: &Path, extra: &[&str], runtime_dir: Option<&Path>) -> Outcome {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rackhand"));
    cmd.args(["status", "-c"])
        .arg(config)
        .args(extra)
        .env_remove("RACKHAND_CONFIG")
        .env_remove("RUNTIME_DIRECTORY");
    if let Some(dir) = runtime_dir {
        cmd.env("RUNTIME_DIRECTORY", dir);
    }
    let out = cmd.output().expect("run rackhand status");
    Outcome {
        code: out.status.code().expect("exit code"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// What an agent that has been busy for a while saves.
fn busy_status(pid: u32, updated: SystemTime) -> AgentStatus {
    let mut s = AgentStatus::new("rack-a12");
    s.pid = pid;
    s.updated_at = rfc3339_millis(updated);
    s.clock_synced = Some(true);
    s.spool.dir = "/var/lib/rackhand/spool".into();
    s.spool.records = 1200;
    s.spool.bytes = 3 << 20;
    s.spool.max_bytes = 512 << 20;
    s.spool.full_policy = "block".into();
    s.spool.oldest_unshipped_seq = Some(4711);
    s.spool.oldest_unshipped_at = Some(rfc3339_millis(
        SystemTime::now() - Duration::from_secs(5 * 60),
    ));
    s.upstream.sink = "http".into();
    s.upstream.target = "https://collector.example/ingest".into();
    s.upstream.state = "retrying".into();
    s.upstream.last_error = Some("HTTP 503 Service Unavailable".into());
    s.upstream.last_error_at = Some(rfc3339_millis(SystemTime::now()));
    s.upstream.consecutive_failures = 3;
    let two_minutes_ago = rfc3339_millis(SystemTime::now() - Duration::from_secs(120));
    s.devices
        .entry("core1".into())
        .or_default()
        .collected(&two_minutes_ago, "ok", None);
    s.devices.entry("pdu1".into()).or_default().collected(
        &two_minutes_ago,
        "timeout",
        Some("command `show version` timed out after 30s"),
    );
    s
}

#[test]
fn before_the_agent_ever_ran_status_says_how_to_start_it() {
    let dir = Folder::new("nofile");
    let out = status(&dir.config(), &[]);
    assert_eq!(out.code, 1, "stderr:\n{}", out.stderr);
    let file = dir.state_dir().join(STATUS_FILE);
    assert!(
        out.stderr
            .contains(&format!("no status in {}", file.display())),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("rackhand run"), "{}", out.stderr);

    let out = status(&dir.config(), &["--format", "json"]);
    assert_eq!(out.code, 1);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["running"], false);
}

#[test]
fn a_running_agent_is_reported_with_its_spool_upstream_and_devices() {
    let dir = Folder::new("running");
    let agent = StandIn::start();
    busy_status(agent.pid(), SystemTime::now())
        .save(&dir.state_dir())
        .unwrap();
    let out = status(&dir.config(), &[]);
    assert_eq!(
        out.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    for needle in [
        format!("agent rack-a12: running (pid {}, updated ", agent.pid()),
        "clock: synchronised".into(),
        "1200 records, 3MiB of 512MiB (0%)".into(),
        "oldest unshipped: seq 4711, collected 5m".into(),
        "upstream http https://collector.example/ingest: retrying, 3 consecutive failures".into(),
        "HTTP 503 Service Unavailable".into(),
        "DEVICE".into(),
        "core1".into(),
        "timed out after 30s".into(),
    ] {
        assert!(
            out.stdout.contains(&needle),
            "{needle:?} missing:\n{}",
            out.stdout
        );
    }
    assert!(!out.stdout.contains("WARNING"), "{}", out.stdout);
}

#[test]
fn an_agent_that_died_is_not_running_and_its_last_status_is_still_shown() {
    let dir = Folder::new("dead");
    busy_status(dead_pid(), SystemTime::now() - Duration::from_secs(600))
        .save(&dir.state_dir())
        .unwrap();
    let out = status(&dir.config(), &[]);
    assert_eq!(
        out.code, 1,
        "stdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    assert!(
        out.stdout
            .contains("agent rack-a12: not running (last seen 10m ago"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("core1"), "{}", out.stdout);
}

#[test]
fn a_live_agent_that_stopped_saving_is_reported_stuck() {
    let dir = Folder::new("stuck");
    let agent = StandIn::start();
    busy_status(agent.pid(), SystemTime::now() - Duration::from_secs(300))
        .save(&dir.state_dir())
        .unwrap();
    let out = status(&dir.config(), &[]);
    assert_eq!(out.code, 1, "stdout:\n{}", out.stdout);
    assert!(out.stdout.contains("stuck (pid"), "{}", out.stdout);
    assert!(out.stdout.contains("journalctl"), "{}", out.stdout);
}

#[test]
fn json_is_the_status_file_plus_whether_the_agent_runs() {
    let dir = Folder::new("json");
    let agent = StandIn::start();
    let saved = busy_status(agent.pid(), SystemTime::now());
    saved.save(&dir.state_dir()).unwrap();

    let out = status(&dir.config(), &["--format", "json"]);
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 1, "one object:\n{}", out.stdout);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["running"], true);
    let read: AgentStatus = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(read, saved);
    assert_eq!(json["devices"]["pdu1"]["last_status"], "timeout");
    assert_eq!(json["spool"]["oldest_unshipped_seq"], 4711);

    drop(agent);
    let out = status(&dir.config(), &["--format", "json"]);
    assert_eq!(out.code, 1);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["running"], false);
}

#[test]
fn a_broken_config_is_reported_like_check_does() {
    let dir = Folder::new("badconfig");
    let config = dir.write_config("[agent]\nworkers = \"many\"\nstate_dirr = \"/tmp\"\n");
    let out = status(&config, &[]);
    assert_eq!(out.code, 2, "stderr:\n{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("{}:2:", config.display())),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("rackhand check"), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "{}", out.stdout);

    let out = status(&dir.0.join("missing.toml"), &[]);
    assert_eq!(out.code, 2, "stderr:\n{}", out.stderr);
    assert!(out.stderr.contains("missing.toml"), "{}", out.stderr);
}

#[test]
fn a_config_being_edited_with_errors_outside_agent_still_shows_the_agent() {
    // The agent runs on the config it loaded; someone is half way through adding a device.
    let dir = Folder::new("editing");
    busy_status(dead_pid(), SystemTime::now() - Duration::from_secs(600))
        .save(&dir.state_dir())
        .unwrap();
    let config = dir.config();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[[device]]\nname = \"core2\"\ntransport = \"telnt\"\n");
    let config = dir.write_config(&text);
    let out = status(&config, &[]);
    assert_eq!(
        out.code, 1,
        "stdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    assert!(
        out.stdout.contains("agent rack-a12: not running"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("outside [agent]") && out.stderr.contains("rackhand check"),
        "{}",
        out.stderr
    );

    // A file that is not TOML at all says nothing reliable about state_dir.
    let config = dir.write_config("[agent\nid = \"rack-a12\"\n");
    let out = status(&config, &[]);
    assert_eq!(out.code, 2, "stderr:\n{}", out.stderr);
}

#[test]
fn a_corrupt_status_file_is_named_with_what_to_do() {
    let dir = Folder::new("corrupt");
    let file = dir.state_dir().join(STATUS_FILE);
    std::fs::write(&file, "{\"agent\": \"rack-a12\", \"pi").unwrap();
    let out = status(&dir.config(), &[]);
    assert_eq!(out.code, 2, "stderr:\n{}", out.stderr);
    assert!(
        out.stderr.contains(&file.display().to_string()),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("delete the file"), "{}", out.stderr);
}

/// Under systemd the agent writes its live status to the runtime folder every 2 s and the copy
/// in `state_dir` at most once a minute: status shows the live one, which the state file names.
#[test]
fn the_live_copy_in_the_runtime_folder_is_shown_over_the_state_dirs() {
    let dir = Folder::new("runtime");
    let runtime = dir.0.join("run");
    std::fs::create_dir_all(&runtime).unwrap();
    let agent = StandIn::start();
    let mut kept = busy_status(agent.pid(), SystemTime::now() - Duration::from_secs(50));
    kept.state_dir = dir.state_dir().display().to_string();
    kept.runtime_file = Some(runtime.join(STATUS_FILE).display().to_string());
    kept.save(&dir.state_dir()).unwrap();
    let mut live = kept.clone();
    live.updated_at = rfc3339_millis(SystemTime::now());
    live.spool.records = 3;
    live.save(&runtime).unwrap();

    let out = status(&dir.config(), &[]);
    assert_eq!(
        out.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    assert!(
        out.stdout.contains(&format!(
            "status file {}",
            runtime.join(STATUS_FILE).display()
        )),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("3 records"), "{}", out.stdout);
    let out = status(&dir.config(), &["--format", "json"]);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["spool"]["records"], 3);
    assert_eq!(json["running"], true);

    // The agent stopped cleanly: systemd removed the runtime folder, the state file (written
    // at the stop) is what is left, as the package's prerm reads it.
    drop(agent);
    std::fs::remove_dir_all(&runtime).unwrap();
    let out = status(&dir.config(), &["--format", "json"]);
    assert_eq!(out.code, 1);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["spool"]["records"], 1200);
    assert_eq!(json["running"], false);
}

/// A full card may leave `state_dir/status.json` broken or stale; the live copy in the runtime
/// folder (`/run/rackhand`, or `$RUNTIME_DIRECTORY` when set) still shows, for its state_dir only.
#[test]
fn a_broken_state_file_does_not_hide_the_runtime_copy() {
    let dir = Folder::new("runtime-only");
    let runtime = dir.0.join("run");
    std::fs::create_dir_all(&runtime).unwrap();
    std::fs::write(
        dir.state_dir().join(STATUS_FILE),
        "{\"agent\": \"rack-a12\", \"pi",
    )
    .unwrap();
    let agent = StandIn::start();
    let mut live = busy_status(agent.pid(), SystemTime::now());
    live.state_dir = dir.state_dir().display().to_string();
    live.save(&runtime).unwrap();
    let out = status_with_runtime_dir(&dir.config(), &[], Some(&runtime));
    assert_eq!(
        out.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    assert!(
        out.stdout.contains("agent rack-a12: running"),
        "{}",
        out.stdout
    );

    // Another agent's runtime copy is not this one's.
    live.state_dir = "/var/lib/someone-else".into();
    live.save(&runtime).unwrap();
    let out = status_with_runtime_dir(&dir.config(), &[], Some(&runtime));
    assert_eq!(
        out.code, 2,
        "stdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    assert!(out.stderr.contains("delete the file"), "{}", out.stderr);
}
