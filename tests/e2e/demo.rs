//! `rackhand demo` as a new user meets it (issue 4's acceptance): the README's first command,
//! no setup, a bounded run, a summary table with every simulated device, and records where
//! it says it wrote them.
//!
//! The demo starts its simulated rack itself (Telnet devices and pty consoles on loopback);
//! the test only runs the binary with `--dir` in a temp folder that `Drop` removes, and waits
//! for it with a deadline (the guard kills it if that passes).

use crate::support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use support::process::ChildGuard;
use support::{TempDir, deadline, rackhand_bin};

/// Every device the demo rack has, with the status its last record must show when the
/// device misbehaves on purpose (`None`: a healthy device, `ok`).
const DEVICES: &[(&str, Option<&str>)] = &[
    ("core-1", None),
    ("core-2", None),
    ("dist-1", None),
    ("leaf-1", None),
    ("old-sw", None),
    ("flaky-sw", Some("timeout")),
    ("locked-sw", Some("auth_failed")),
    ("edge-1", None),
    ("con-core-1", None),
    ("con-edge-1", None),
];

/// One row of the summary table: `DEVICE PLATFORM STATUS OK/RECORDS RUNS BUSY NOTE...`.
#[derive(Debug)]
struct Row {
    status: String,
    ok: u64,
    records: u64,
}

fn parse_row(line: &str) -> Option<(String, Row)> {
    let mut words: Vec<&str> = line.split_whitespace().collect();
    // A device that never ran shows the two words `not run` as its status.
    if words.get(2..4) == Some(&["not", "run"][..]) {
        words.splice(2..4, ["not-run"]);
    }
    if words.len() < 6 {
        return None;
    }
    let (ok, records) = words[3].split_once('/')?;
    Some((
        words[0].to_string(),
        Row {
            status: words[2].to_string(),
            ok: ok.parse().ok()?,
            records: records.parse().ok()?,
        },
    ))
}

#[test]
fn demo_runs_a_simulated_rack_and_ends_with_a_summary_and_records() {
    let dir = TempDir::new("demo").unwrap();
    let mut cmd = Command::new(rackhand_bin());
    cmd.args(["demo", "--duration", "5s", "--dir"])
        .arg(dir.path())
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut guard = ChildGuard::spawn(cmd, "rackhand demo", None).expect("start rackhand demo");
    let mut stdout = guard.child_mut().stdout.take().expect("stdout piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    // 5 s of agent, up to 5 s of drain, start-up and the summary.
    let status = guard
        .wait_until(deadline(Duration::from_secs(25)))
        .unwrap()
        .unwrap_or_else(|| {
            panic!(
                "rackhand demo --duration 5s still runs after 25 s; stderr:\n{}",
                guard.stderr_text()
            )
        });
    let took = started.elapsed();
    let stdout = reader.join().unwrap();
    let stderr = guard.stderr_text();
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(status.success(), "exit {status:?}; {context}");
    assert!(
        took >= Duration::from_secs(5),
        "ran only {took:?}; {context}"
    );
    // Every session started within the duration finishes in the drain: nothing is lost.
    assert!(
        !stderr.contains("still running after the drain deadline"),
        "the demo abandoned sessions; {context}"
    );

    // The summary: a header, then one row per device.
    assert!(
        stdout.contains("DEVICE") && stdout.contains("LAST STATUS"),
        "no summary table; {context}"
    );
    let rows: std::collections::HashMap<String, Row> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("DEVICE"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(parse_row)
        .collect();
    // Every device of the config the demo wrote has its row (the rack may grow, e.g. SSH
    // devices where an sshd can run), and no row is made up.
    let config = std::fs::read_to_string(dir.join("rackhand.toml"))
        .unwrap_or_else(|e| panic!("the demo wrote no config in --dir: {e}; {context}"));
    let configured: Vec<String> = config
        .lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .filter_map(|l| l.strip_suffix('"'))
        .map(String::from)
        .collect();
    assert!(configured.len() >= DEVICES.len(), "{config}");
    for name in &configured {
        let row = rows
            .get(name)
            .unwrap_or_else(|| panic!("`{name}` missing from the summary; {context}"));
        assert!(
            row.status != "not-run",
            "`{name}` never ran in 5 s; {context}"
        );
    }
    assert_eq!(rows.len(), configured.len(), "{context}");
    for (name, bad) in DEVICES {
        let row = rows
            .get(*name)
            .unwrap_or_else(|| panic!("`{name}` missing from the summary; {context}"));
        match bad {
            Some(expected) => assert_eq!(
                row.status, *expected,
                "`{name}` shows the wrong status; {context}"
            ),
            None => {
                assert_eq!(row.status, "ok", "`{name}` should be healthy; {context}");
                assert!(row.ok >= 1, "`{name}` collected nothing; {context}");
            }
        }
        assert!(row.records >= 1, "`{name}` has no records; {context}");
    }

    // The records are where the demo says, one JSON object per line, and add up.
    let line = stdout
        .lines()
        .find(|l| l.contains("records in "))
        .unwrap_or_else(|| panic!("the demo does not say where the records are; {context}"));
    let count: u64 = line
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no record count in {line:?}"));
    let path = line
        .split("records in ")
        .nth(1)
        .and_then(|rest| rest.split(" (").next())
        .unwrap_or_else(|| panic!("no path in {line:?}"));
    assert!(
        path.starts_with(dir.path().to_str().unwrap()),
        "records outside --dir: {path}"
    );
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read the records at {path}: {e}; {context}"));
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(records.len() as u64, count, "{context}");
    let summed: u64 = rows.values().map(|r| r.records).sum();
    assert_eq!(
        summed, count,
        "the table's records do not add up; {context}"
    );
    for name in &configured {
        assert!(
            records.iter().any(|r| r["device"] == name.as_str()),
            "no record of `{name}` in {path}"
        );
    }
    // The demo ships on_change: every ok record says whether it changed, and the unchanged
    // ones (output null) are as many as the demo says.
    for r in records.iter().filter(|r| r["status"] == "ok") {
        assert!(
            r["digest"]
                .as_str()
                .is_some_and(|d| d.starts_with("sha256:"))
                && r["changed"].is_boolean(),
            "{r}"
        );
    }
    let unchanged = records.iter().filter(|r| r["output"].is_null()).count();
    let said = stdout
        .lines()
        .find(|l| l.contains("went up unchanged"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("the demo does not say how many went up unchanged; {context}"));
    assert_eq!(unchanged, said, "{context}");
    let locked = records.iter().find(|r| r["device"] == "locked-sw").unwrap();
    assert_eq!(locked["status"], "auth_failed", "{locked}");
    assert!(
        records.iter().any(|r| r["device"] == "flaky-sw"
            && r["command"] == "show inventory"
            && r["status"] == "timeout"),
        "the hang on `show inventory` is a timeout record"
    );
}
