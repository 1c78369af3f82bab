//! Issue 13 end to end: change-only shipping with the real agent, a real `sshd` whose
//! sessions run the simulator (each session reads its outputs folder afresh, so the test
//! changes the device's running-config by rewriting a file), and the HTTP collector upstream.
//!
//! The story: the running-config changes only in its volatile lines (IOS's "Last
//! configuration change" and "NVRAM config last updated" stamps, the byte count, the ntp
//! clock-period), then for real. Upstream must see one whole output, then unchanged records
//! with the same digest and no output, then the whole new output with `changed = true` and a
//! diff that shows the change (and none of the volatile lines). After a kill -9 and a restart
//! the agent still knows what upstream holds: the next record is unchanged, not whole.

use crate::support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use support::accounting::received;
use support::agent::{Agent, http_upstream};
use support::collector::{Collector, batch_problems};
use support::config::{Config, Dev};
use support::sshd::Sshd;
use support::{TempDir, deadline, poll_until};

const AGENT_ID: &str = "rack-chg";
const RUN: &str = "show running-config";
/// Upper bound for one thing the test waits for (a collection every second).
const STEP: Duration = Duration::from_secs(30);

/// An IOS running-config; `stamp` goes into the volatile lines only, `extra` is a real change.
fn running_config(stamp: &str, clock_period: u32, extra: &str) -> String {
    let body = format!(
        "!\nversion 15.2\nservice timestamps log datetime msec\nhostname core1\n!\n\
         interface GigabitEthernet0/1\n description uplink\n ip address 192.0.2.1 255.255.255.0\n!\n\
         {extra}interface GigabitEthernet0/2\n shutdown\n!\n\
         ntp clock-period {clock_period}\nntp server 192.0.2.123\n!\nend\n"
    );
    format!(
        "Building configuration...\n\nCurrent configuration : {} bytes\n!\n\
         ! Last configuration change at {stamp} UTC Fri Dec 4 2026 by admin\n\
         ! NVRAM config last updated at {stamp} UTC Fri Dec 4 2026 by admin\n{body}",
        body.len() + 120
    )
}

/// Replaces the device's output atomically (the next SSH session reads it whole).
fn set_output(dir: &Path, text: &str) {
    let tmp = dir.join("next.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("show_running-config.txt")).unwrap();
}

/// The `show running-config` records upstream holds, in seq order.
fn runs(collector: &Collector) -> Vec<Value> {
    received(collector)
        .into_values()
        .map(|(_, r)| r)
        .filter(|r| r["command"] == RUN)
        .collect()
}

fn wait_runs(collector: &Collector, agent: &Agent, n: usize, what: &str) -> Vec<Value> {
    let ok = poll_until(deadline(STEP), || runs(collector).len() >= n);
    assert!(
        ok,
        "{what}: upstream has {} running-config records, waited for {n}; log:\n{}",
        runs(collector).len(),
        agent.stderr()
    );
    runs(collector)
}

fn unchanged(r: &Value, digest: &str) -> bool {
    r["status"] == "ok"
        && r["changed"] == false
        && r["output"].is_null()
        && r.get("output_base64").is_none()
        && r.get("diff").is_none()
        && r["digest"] == digest
}

#[test]
fn volatile_lines_ship_nothing_a_real_change_ships_whole_with_a_diff_and_a_restart_remembers() {
    let dir = TempDir::new("change").unwrap();
    let outputs = dir.join("outputs");
    std::fs::create_dir_all(&outputs).unwrap();
    let v1 = running_config("10:00:01", 17179869, "");
    set_output(&outputs, &v1);
    let version = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/sim/captures/cisco_ios/show_version.txt"),
    )
    .unwrap();
    std::fs::write(outputs.join("show_version.txt"), &version).unwrap();
    let outputs_arg = outputs.display().to_string();
    let sshd = Sshd::start(&["--platform", "cisco_ios", "--outputs", &outputs_arg])
        .unwrap_or_else(|e| panic!("cannot start sshd for the simulator: {e}"));
    let collector = Collector::start();
    let state = dir.join("state");
    let config = Config::new()
        .agent("id", &format!("\"{AGENT_ID}\""))
        .agent("state_dir", &format!("\"{}\"", state.display()))
        .defaults("platform", "\"cisco_ios\"")
        .defaults("interval", "\"1s\"")
        .defaults("connect_timeout", "\"5s\"")
        .defaults("command_timeout", "\"5s\"")
        .upstream_lines(&http_upstream(
            &collector.url(),
            &["batch_max_age = \"200ms\""],
        ))
        .device(Dev::ssh_key("core1", &sshd, &dir.join("known_hosts")).set(
            "commands",
            "[{ run = \"show running-config\", ship = \"on_change\" }, \"show version\"]",
        ))
        .write(&dir.join("rackhand.toml"));
    let mut agent = Agent::start(&config, &state);

    // 1. The first output goes up whole, as the device printed it.
    let got = wait_runs(&collector, &agent, 1, "first collection");
    let first = &got[0];
    assert_eq!(first["status"], "ok", "{first}");
    assert_eq!(first["changed"], true, "{first}");
    assert_eq!(first["output"], v1.as_str());
    assert!(
        first.get("diff").is_none(),
        "no diff the first time: {first}"
    );
    let d1 = first["digest"].as_str().expect("a digest").to_string();
    assert!(
        d1.starts_with("sha256:") && d1.len() == 7 + 64,
        "digest {d1}"
    );

    // 2. Only volatile lines change: unchanged records, same digest, no output.
    set_output(&outputs, &running_config("10:15:42", 17179870, ""));
    let n = runs(&collector).len();
    let got = wait_runs(&collector, &agent, n + 3, "volatile-only changes");
    for r in &got[1..] {
        assert!(unchanged(r, &d1), "expected an unchanged record, got {r}");
    }

    // 3. A real change: whole output, changed, and a diff that shows it.
    let change = "interface Loopback7\n description new-peering\n!\n";
    let v2 = running_config("10:31:05", 17179871, change);
    set_output(&outputs, &v2);
    let ok = poll_until(deadline(STEP), || {
        runs(&collector)
            .iter()
            .any(|r| r["changed"] == true && r["output"] == v2.as_str())
    });
    assert!(
        ok,
        "the real change never went up; log:\n{}",
        agent.stderr()
    );
    let got = runs(&collector);
    let at = got.iter().position(|r| r["output"] == v2.as_str()).unwrap();
    // Everything before it (but the first) was unchanged: volatile lines shipped nothing.
    assert!(got[1..at].iter().all(|r| unchanged(r, &d1)));
    let changed = &got[at];
    let d2 = changed["digest"].as_str().unwrap().to_string();
    assert_ne!(d1, d2);
    let diff = changed["diff"].as_str().expect("a diff with the change");
    assert!(
        diff.contains("+interface Loopback7\n") && diff.contains("+ description new-peering\n"),
        "{diff}"
    );
    assert!(
        !diff.contains("Last configuration change") && !diff.contains("clock-period"),
        "volatile lines are not part of the comparison: {diff}"
    );
    let got = wait_runs(&collector, &agent, at + 3, "after the change");
    assert!(got[at + 1..].iter().all(|r| unchanged(r, &d2)), "{got:?}");

    // `show version` ships always: whole, with no change fields.
    let versions: Vec<Value> = received(&collector)
        .into_values()
        .map(|(_, r)| r)
        .filter(|r| r["command"] == "show version")
        .collect();
    assert!(!versions.is_empty());
    for r in &versions {
        assert_eq!(r["output"].as_str().map(str::as_bytes), Some(&version[..]));
        assert!(
            r.get("digest").is_none() && r.get("changed").is_none(),
            "{r}"
        );
    }

    // The agent counts what it did not send, for `rackhand status` and the metrics.
    agent.wait_status("unchanged records counted", STEP, |s| {
        s["upstream"]["unchanged_records"].as_u64() >= Some(4)
            && s["upstream"]["bytes_saved"].as_u64() > Some(4 * 400)
    });

    // 4. kill -9 and a restart: the agent still knows what upstream holds. A batch is shaped
    // only after the one before it was acknowledged and its baselines written, so once one
    // more batch arrived, everything before it is on disk.
    let posts = collector.post_count();
    let ok = poll_until(deadline(STEP), || collector.post_count() > posts);
    assert!(ok, "no batch after {posts}; log:\n{}", agent.stderr());
    agent.kill9();
    let before = runs(&collector).len();
    let mut agent = Agent::start(&config, &state);
    let got = wait_runs(&collector, &agent, before + 2, "after the restart");
    assert!(
        got[before..].iter().all(|r| unchanged(r, &d2)),
        "after a restart the output is still known upstream: {:?}",
        &got[before..]
    );
    agent.stop();
    agent.assert_no_panic("change-only shipping");
    // Every batch sent twice was sent identically (shaping is the same on a resend).
    collector.with_posts(|posts| {
        let problems = batch_problems(posts, AGENT_ID);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    });
}
