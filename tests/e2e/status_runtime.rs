//! The status under systemd's `RuntimeDirectory=` (issue 12): the running agent writes its live
//! `status.json` to `$RUNTIME_DIRECTORY` every 2 s and `state_dir/status.json` only when it
//! changed, at most once a minute, and at a clean stop; each device's history of collections
//! shows in both and in `rackhand status`.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rackhand::sim::{Profile, TelnetRack};
use serde_json::Value;

use crate::support::agent::{Agent, Dev, Setup, read_status, status_cli};
use crate::support::{TempDir, loopback_any_port};

/// Upper bound for what normally takes a few seconds.
const STEP: Duration = Duration::from_secs(30);

fn history(status: &Value, device: &str) -> String {
    status["devices"][device]["history"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn modified(dir: &Path) -> SystemTime {
    std::fs::metadata(dir.join("status.json"))
        .and_then(|m| m.modified())
        .expect("status.json in state_dir")
}

#[test]
fn the_live_status_goes_to_the_runtime_folder_and_state_dir_keeps_the_last_one() {
    let dir = TempDir::new("status-runtime").unwrap();
    let runtime = dir.join("run");
    let rack = TelnetRack::start(
        loopback_any_port(),
        1,
        Profile::for_platform("cisco_ios").unwrap(),
    )
    .expect("start the simulated rack");
    let (name, addr) = rack.addrs()[0].clone();
    let setup = Setup {
        agent_id: "rack-rt".into(),
        workers: 2,
        state_dir: dir.join("state"),
        interval: "1s".into(),
        commands: vec!["show version".into()],
        upstream: vec![],
        devices: vec![Dev::telnet(&name, addr)],
    };
    let config = setup.write(dir.path());
    let mut agent = Agent::start_with_runtime_dir(&config, &setup.state_dir, Some(&runtime));

    // The state file is written once at start, naming the live copy.
    let first = agent.wait_status("the start", STEP, |s| s["runtime_file"].is_string());
    assert_eq!(
        first["runtime_file"],
        runtime.join("status.json").display().to_string()
    );
    let written_at_start = modified(&setup.state_dir);

    // The live copy moves with every collection: three of them, well within a minute.
    let pid = u64::from(agent.pid());
    let mut live = None;
    let seen = crate::support::poll_until(crate::support::deadline(STEP), || {
        live = read_status(&runtime).filter(|s| s["pid"].as_u64() == Some(pid));
        live.as_ref().is_some_and(|s| history(s, &name).len() >= 3)
    });
    assert!(seen, "live status: {live:?}\n{}", agent.stderr());
    let live = live.unwrap();
    assert!(history(&live, &name).chars().all(|c| c == '.'), "{live}");
    assert_eq!(live["state_dir"], setup.state_dir.display().to_string());
    assert_eq!(
        modified(&setup.state_dir),
        written_at_start,
        "state_dir/status.json rewritten within a minute of the last write"
    );

    // `rackhand status` shows the live copy, with the history.
    let out = status_cli(&config, false);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(&format!(
            "status file {}",
            runtime.join("status.json").display()
        )),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("HISTORY"), "{}", out.stdout);
    assert!(out.stdout.contains(". ok"), "{}", out.stdout);

    // A clean stop writes the state file: the history as far as it came.
    assert!(agent.stop().success(), "{}", agent.stderr());
    let kept = read_status(&setup.state_dir).expect("state_dir/status.json after the stop");
    let live = read_status(&runtime).expect("the runtime copy (systemd removes the folder)");
    assert!(history(&kept, &name).len() >= 3, "{kept}");
    assert_eq!(history(&kept, &name), history(&live, &name));
    assert_eq!(kept["devices"], live["devices"]);

    // The next start (no runtime folder now) remembers it.
    std::fs::remove_dir_all(&runtime).unwrap();
    let mut again = Agent::start(&config, &setup.state_dir);
    let restarted = again.wait_status("the restart", STEP, |_| true);
    assert!(
        history(&restarted, &name).starts_with(&history(&kept, &name)),
        "{restarted}"
    );
    assert_eq!(restarted["runtime_file"], Value::Null);
    assert!(again.stop().success(), "{}", again.stderr());
}
