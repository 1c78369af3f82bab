//! Console capture end to end (issue 14's acceptance): the real agent (`rackhand run`) with a
//! captured serial device (`capture = true`) on the simulator's pty console, which prints
//! numbered log lines while idle (`idle_log_every`), right after each command's prompt and
//! before each command's echo (`chatty`), while the agent runs commands on it every second.
//!
//! Observed from the outside, in the file sink: every numbered log line the console printed
//! reaches upstream exactly once (in console records: between jobs as read, during jobs as
//! set aside by the session), every command record is `ok` with its exact output, no console
//! record holds the password, and the console records' offsets increase without overlap.

use crate::support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rackhand::sim::{Profile, PtyConsole};
use serde_json::Value;

use support::agent::Agent;
use support::config::{Config, Dev, quote};
use support::fixtures::captures;
use support::{TempDir, deadline, poll_until};

const PASSWORD: &str = "c0nsole-Secret";
const COMMANDS: &[&str] = &["show clock", "show version"];
const STEP: Duration = Duration::from_secs(30);
/// The scheduler's backoff after a device's first failed collection (with its jitter).
const BACKOFF: Duration = Duration::from_secs(40);

fn profile() -> Profile {
    let mut p = Profile::for_platform("cisco_ios").unwrap();
    p.page_lines = 0;
    p.password = PASSWORD.into();
    p.chatty = true;
    p.idle_log_every = Some(Duration::from_millis(150));
    p
}

fn config(dir: &TempDir, link: &Path) -> PathBuf {
    Config::new()
        .agent("id", "\"rack-c\"")
        .agent("workers", "2")
        .agent(
            "state_dir",
            &quote(&dir.join("state").display().to_string()),
        )
        .upstream("sink", "\"file\"")
        .upstream("path", &quote(&dir.join("outbox").display().to_string()))
        .upstream("batch_max_age", "\"300ms\"")
        .device(
            Dev::serial("con1", link)
                .set("platform", "\"cisco_ios\"")
                .set("username", "\"admin\"")
                .set("password", &quote(PASSWORD))
                .set("interval", "\"1s\"")
                .set("connect_timeout", "\"5s\"")
                .set("command_timeout", "\"5s\"")
                .set("capture", "true")
                .set("alert", "['GigabitEthernet0/7,']")
                .commands(COMMANDS),
        )
        .write(&dir.join("rackhand.toml"))
}

/// Every complete record line in the sink's folder.
fn records(outbox: &Path) -> Vec<Value> {
    let Ok(entries) = std::fs::read_dir(outbox) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "ndjson"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
        out.extend(
            complete
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap()),
        );
    }
    out.sort_by_key(|r| r["seq"].as_u64());
    out
}

fn is_console(r: &Value) -> bool {
    r["kind"] == "console"
}

/// The numbers of the sim's log lines (`... GigabitEthernet0/<n>, changed state to up`).
fn log_numbers(text: &str) -> Vec<u64> {
    text.match_indices("%LINK-3-UPDOWN: Interface GigabitEthernet0/")
        .filter_map(|(at, m)| {
            let rest = &text[at + m.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

fn expected(command: &str) -> Vec<u8> {
    captures("cisco_ios")
        .into_iter()
        .find(|c| c.command == command)
        .unwrap_or_else(|| panic!("no capture of `{command}`"))
        .expected()
}

#[test]
fn every_log_line_of_a_chatty_captured_console_reaches_upstream_once_and_every_command_is_ok() {
    let dir = TempDir::new("console-e2e").unwrap();
    let link = dir.join("ttyS0");
    let console = PtyConsole::start(&link, None, profile()).unwrap();
    let stats = console.stats();
    let config = config(&dir, &link);
    let outbox = dir.join("outbox");
    let mut agent = Agent::start(&config, &dir.join("state"));

    // Several collections, with idle spells between them.
    let enough = poll_until(deadline(STEP), || {
        let recs = records(&outbox);
        let commands = recs.iter().filter(|r| !is_console(r)).count();
        let console = recs.iter().filter(|r| is_console(r)).count();
        commands >= 4 * COMMANDS.len() && console >= 6
    });
    assert!(enough, "too few records; agent log:\n{}", agent.stderr());
    // The lines printed so far must all arrive before the stop.
    let printed = stats.unsolicited_lines();
    let arrived = poll_until(deadline(STEP), || {
        let recs = records(&outbox);
        let all: String = recs
            .iter()
            .map(|r| r["output"].as_str().unwrap_or(""))
            .collect();
        log_numbers(&all).into_iter().max().unwrap_or(0) >= printed
    });
    assert!(
        arrived,
        "line {printed} never arrived; log:\n{}",
        agent.stderr()
    );
    let status = agent.stop();
    assert!(
        status.success(),
        "agent exit {status:?}:\n{}",
        agent.stderr()
    );
    agent.assert_no_panic("console capture");
    console.stop();

    let recs = records(&outbox);
    let mut problems = Vec::new();

    // Every command ok, byte for byte.
    for r in recs.iter().filter(|r| !is_console(r)) {
        let command = r["command"].as_str().unwrap_or("?");
        if r["status"] != "ok" {
            problems.push(format!("`{command}`: {} {}", r["status"], r["error"]));
        } else if r["output"].as_str().unwrap().as_bytes() != expected(command) {
            problems.push(format!("`{command}` output differs: {:?}", r["output"]));
        }
        assert!(r.get("kind").is_none(), "a command record has no kind: {r}");
    }

    // Every log line 1..=printed exactly once, in console records only.
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    for r in &recs {
        let numbers = log_numbers(r["output"].as_str().unwrap_or(""));
        if !numbers.is_empty() && !is_console(r) {
            problems.push(format!("log lines {numbers:?} in a command's output: {r}"));
        }
        for n in numbers {
            *seen.entry(n).or_default() += 1;
        }
    }
    for n in 1..=printed {
        if !seen.contains_key(&n) {
            problems.push(format!("log line {n} never arrived"));
        }
    }
    for (n, k) in &seen {
        if *k > 1 {
            problems.push(format!("log line {n} arrived {k} times"));
        }
    }

    // Console records: the contract's fields, no password, offsets without overlap.
    let console: Vec<&Value> = recs.iter().filter(|r| is_console(r)).collect();
    let mut next = 0u64;
    let mut during_job = 0;
    let mut alerts = 0;
    for r in &console {
        assert!(r["command"].is_null(), "{r}");
        let output = r["output"].as_str().unwrap();
        if output.contains(PASSWORD) {
            problems.push(format!("the password is in a console record: {r}"));
        }
        let offset = r["offset"].as_u64().unwrap();
        if offset < next {
            problems.push(format!(
                "offset {offset} overlaps the record before (ends at {next}): {r}"
            ));
        }
        next = offset + output.len() as u64;
        if r["during_job"] == true {
            during_job += 1;
        }
        if r["alert"] == true {
            alerts += 1;
            if !output.contains("GigabitEthernet0/7,") {
                problems.push(format!("an alert without its line: {r}"));
            }
        }
    }
    eprintln!(
        "{} records ({} console, {during_job} during jobs, {alerts} alerts), {printed} log lines printed",
        recs.len(),
        console.len()
    );
    assert!(during_job > 0, "no log line was met during a job");
    assert!(
        console.len() > during_job,
        "no console text was read between jobs"
    );
    if printed >= 7 {
        assert_eq!(alerts, 1, "line 7 matches the device's alert pattern");
    }
    assert!(
        problems.is_empty(),
        "{}\n\n{} records, {printed} log lines printed",
        problems.join("\n"),
        recs.len()
    );

    // `rackhand status --device` shows the console's last lines (the stopped agent's file).
    let shown = std::process::Command::new(support::rackhand_bin())
        .args(["status", "--device", "con1", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&shown.stdout);
    let last = log_numbers(console.last().unwrap()["output"].as_str().unwrap());
    let last = last.last().expect("the last console record has a log line");
    assert!(
        text.contains("console lines, oldest first:")
            && text.contains(&format!("GigabitEthernet0/{last},")),
        "status --device shows no console tail ending at line {last}:\n{text}{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    assert!(!text.contains(PASSWORD));
}

#[test]
fn an_unplugged_console_fails_its_jobs_then_is_a_gap_record_and_capture_goes_on() {
    let dir = TempDir::new("console-e2e-unplug").unwrap();
    let link = dir.join("ttyS0");
    let first = PtyConsole::start(&link, None, profile()).unwrap();
    let config = config(&dir, &link);
    let outbox = dir.join("outbox");
    let mut agent = Agent::start(&config, &dir.join("state"));
    let ok_commands = |recs: &[Value]| {
        recs.iter()
            .filter(|r| !is_console(r) && r["status"] == "ok")
            .count()
    };
    assert!(
        poll_until(deadline(STEP), || ok_commands(&records(&outbox)) >= 2),
        "no command ran; log:\n{}",
        agent.stderr()
    );

    // Unplugged: the next job fails naming the port.
    first.stop();
    let failed = poll_until(deadline(STEP), || {
        records(&outbox).iter().any(|r| {
            !is_console(r)
                && r["status"] == "connect_failed"
                && r["error"].as_str().unwrap_or("").contains("ttyS0")
        })
    });
    assert!(
        failed,
        "no job failed on the unplugged port; log:\n{}",
        agent.stderr()
    );

    // Plugged back in: a gap record, then console text and commands again.
    let second = PtyConsole::start(&link, None, profile()).unwrap();
    let seen_gap = |recs: &[Value]| {
        recs.iter()
            .position(|r| is_console(r) && r["status"] == "disconnected")
    };
    let listing = |recs: &[Value]| {
        recs.iter()
            .map(|r| format!("{} {} {} {}", r["seq"], r["kind"], r["status"], r["offset"]))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let back = poll_until(deadline(STEP), || {
        let recs = records(&outbox);
        seen_gap(&recs).is_some_and(|at| {
            recs[at..]
                .iter()
                .any(|r| is_console(r) && r["status"] == "ok")
        })
    });
    assert!(
        back,
        "capture did not go on after the replug; records:\n{}\nlog:\n{}",
        listing(&records(&outbox)),
        agent.stderr()
    );
    // The scheduler backs the failed device off (about 30 s after a first failure).
    let commands_back = poll_until(deadline(BACKOFF + STEP), || {
        let recs = records(&outbox);
        seen_gap(&recs).is_some_and(|at| {
            recs[at..]
                .iter()
                .any(|r| !is_console(r) && r["status"] == "ok")
        })
    });
    assert!(
        commands_back,
        "no command ran after the replug; records:\n{}\nlog:\n{}",
        listing(&records(&outbox)),
        agent.stderr()
    );
    assert!(agent.stop().success(), "{}", agent.stderr());
    agent.assert_no_panic("unplug");
    second.stop();

    let recs = records(&outbox);
    let gaps: Vec<&Value> = recs
        .iter()
        .filter(|r| is_console(r) && r["status"] == "disconnected")
        .collect();
    assert_eq!(gaps.len(), 1, "one gap for one unplug: {gaps:?}");
    let gap = gaps[0];
    let error = gap["error"].as_str().unwrap();
    assert!(
        error.contains("unknown") && error.contains("away"),
        "{error}"
    );
    assert!(gap["duration_ms"].as_u64().unwrap() > 0, "{gap}");
    assert_eq!(gap["output"], "");
    // The most the device can have printed meanwhile: the line's speed over the time away.
    let baud_bytes = gap["duration_ms"].as_u64().unwrap() as f64 / 1000.0 * 960.0;
    let most = gap["lost_bytes_max"]
        .as_u64()
        .expect("lost_bytes_max on a gap") as f64;
    assert!((most - baud_bytes).abs() <= 2.0, "{gap}");
    // Offsets still never overlap across the gap.
    let mut next = 0;
    for r in recs.iter().filter(|r| is_console(r)) {
        let offset = r["offset"].as_u64().unwrap();
        assert!(offset >= next, "offset {offset} overlaps ({next}): {r}");
        next = offset + r["output"].as_str().unwrap().len() as u64;
    }
}
