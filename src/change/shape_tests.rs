//! The filter's behaviour, batch by batch, over a real `changes/` folder.

use std::time::{Duration, Instant, UNIX_EPOCH};

use serde_json::{Value, json};

use super::*;
use crate::batch::{BatchLimits, Batcher};
use crate::inventory::{ShipMode, ShipRule};

const T0: u64 = 1_795_600_800_123;
const MIN: u64 = 60_000;
const HOUR: u64 = 60 * MIN;

fn config(at: &str, hostname: &str) -> String {
    format!(
        "Building configuration...\n\nCurrent configuration : 1234 bytes\n!\n\
         ! Last configuration change at {at} UTC Tue Mar 3 2026 by admin\n!\n\
         version 15.2\nhostname {hostname}\n!\ninterface Gi0/1\n description uplink\n!\nend\n"
    )
}

fn record(seq: u64, device: &str, command: &str, output: &str, started_ms: u64) -> Value {
    json!({
        "id": format!("rack:{seq}"), "agent": "rack", "seq": seq, "device": device,
        "transport": "ssh", "command": command, "status": "ok", "error": null,
        "output": output,
        "started_at": crate::record::rfc3339_millis(UNIX_EPOCH + Duration::from_millis(started_ms)),
        "duration_ms": 412
    })
}

fn batch(records: &[Value]) -> Batch {
    let limits = BatchLimits {
        max_records: 10_000,
        max_bytes: 1 << 30,
        max_age: Duration::from_secs(5),
        jitter: 0.0,
    };
    let mut b = Batcher::new("rack", limits, 0);
    for r in records {
        let seq = r["seq"].as_u64().unwrap();
        b.push(seq, &serde_json::to_vec(r).unwrap(), Instant::now())
            .unwrap();
    }
    b.flush().unwrap()
}

fn policy() -> ChangePolicy {
    let rule = ShipRule {
        mode: ShipMode::OnChange,
        ignore: vec![],
        full_every: Duration::from_secs(24 * 3600),
    };
    let mut p = ChangePolicy::default();
    p.add("r1", "cisco_ios", "show running-config", &rule);
    p.add("r2", "cisco_ios", "show running-config", &rule);
    p.add("r1", "cisco_ios", "show version", &ShipRule::default());
    p
}

/// Shapes and delivers one batch; the records as sent.
fn ship(filter: &mut ChangeFilter, records: &[Value]) -> Vec<Value> {
    let sent = sent(&filter.shape(&batch(records)));
    filter.delivered(&[]);
    sent
}

fn sent(b: &Batch) -> Vec<Value> {
    b.lines()
        .map(|l| serde_json::from_slice(l.line).unwrap())
        .collect()
}

fn rc(seq: u64, device: &str, at: &str, hostname: &str, ms: u64) -> Value {
    record(
        seq,
        device,
        "show running-config",
        &config(at, hostname),
        ms,
    )
}

#[test]
fn first_whole_then_unchanged_with_a_null_output_then_changed_with_a_diff() {
    let dir = crate::test_support::temp_dir("change-shape");
    let mut f = ChangeFilter::open(dir.path(), policy());
    let first = &ship(&mut f, &[rc(1, "r1", "10:00:00", "router1", T0)])[0];
    assert_eq!(first["changed"], json!(true));
    assert_eq!(first["output"], json!(config("10:00:00", "router1")));
    assert!(first.get("diff").is_none(), "no diff the first time");
    let digest = first["digest"].as_str().unwrap().to_string();
    assert!(digest.starts_with("sha256:") && digest.len() == 71);

    // Only the volatile line moved: unchanged, same digest, no output.
    let second = &ship(&mut f, &[rc(2, "r1", "10:15:00", "router1", T0 + 15 * MIN)])[0];
    assert_eq!(second["changed"], json!(false));
    assert_eq!(second["output"], Value::Null);
    assert_eq!(second["digest"], json!(digest));
    assert!(second.get("diff").is_none());

    let third = &ship(&mut f, &[rc(3, "r1", "10:30:00", "router9", T0 + 30 * MIN)])[0];
    assert_eq!(third["changed"], json!(true));
    assert_eq!(third["output"], json!(config("10:30:00", "router9")));
    assert_ne!(third["digest"], json!(digest));
    let diff = third["diff"].as_str().unwrap();
    assert!(diff.starts_with("--- previous\n+++ current\n"), "{diff}");
    assert!(
        diff.contains("\n-hostname router1\n+hostname router9\n"),
        "{diff}"
    );
    assert!(
        !diff.contains("Last configuration change"),
        "volatile lines are not in the diff"
    );
    assert_eq!(
        f.counts(),
        ChangeCounts {
            shaped: 3,
            unchanged: 1,
            bytes_saved: f.counts().bytes_saved
        }
    );
    assert!(f.counts().bytes_saved > 50, "{:?}", f.counts());
}

#[test]
fn shaped_records_keep_the_field_order_with_the_new_fields_after_the_output() {
    let dir = crate::test_support::temp_dir("change-shape");
    let mut f = ChangeFilter::open(dir.path(), policy());
    let b = f.shape(&batch(&[rc(1, "r1", "10:00:00", "router1", T0)]));
    let line = std::str::from_utf8(b.body()).unwrap();
    assert!(
        line.starts_with(r#"{"id":"rack:1","agent":"rack","seq":1,"device":"r1","#),
        "{line}"
    );
    let keys: Vec<String> = serde_json::from_str::<serde_json::Map<String, Value>>(line)
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let expected = [
        "id",
        "agent",
        "seq",
        "device",
        "transport",
        "command",
        "status",
        "error",
        "output",
        "digest",
        "changed",
        "started_at",
        "duration_ms",
    ];
    assert_eq!(keys, expected);
    assert_eq!(b.idempotency_key(), "rack:1-1");
}

#[test]
fn an_unchanged_output_goes_whole_again_once_full_every_has_passed_since_the_last_full_one() {
    let dir = crate::test_support::temp_dir("change-shape");
    let mut f = ChangeFilter::open(dir.path(), policy());
    let outputs: Vec<bool> = (0..200u64)
        .map(|i| {
            let r = rc(i + 1, "r1", &format!("t{i}"), "router1", T0 + i * 15 * MIN);
            !ship(&mut f, &[r])[0]["output"].is_null()
        })
        .collect();
    let whole: Vec<usize> = (0..200).filter(|&i| outputs[i]).collect();
    assert_eq!(
        whole,
        vec![0, 96, 192],
        "one whole output a day (96 runs of 15 min)"
    );
    // A refresh is whole but not a change.
    let r = rc(500, "r1", "x", "router1", T0 + 200 * 15 * MIN + 24 * HOUR);
    let refreshed = &ship(&mut f, &[r])[0];
    assert_eq!(refreshed["changed"], json!(false));
    assert!(refreshed["output"].is_string() && refreshed.get("diff").is_none());
}

#[test]
fn a_batch_sent_again_is_shaped_the_same_also_after_a_restart() {
    let dir = crate::test_support::temp_dir("change-shape");
    let mut f = ChangeFilter::open(dir.path(), policy());
    ship(&mut f, &[rc(1, "r1", "a", "router1", T0)]);
    let b = batch(&[
        rc(2, "r1", "b", "router1", T0 + MIN),
        rc(3, "r2", "b", "router2", T0 + MIN),
        rc(4, "r1", "c", "router7", T0 + 2 * MIN),
    ]);
    let once = f.shape(&b);
    // Not acknowledged (the sink failed): the resend is identical.
    assert_eq!(f.shape(&b), once);
    drop(f);
    let mut reopened = ChangeFilter::open(dir.path(), policy());
    assert_eq!(reopened.shape(&b), once, "the same after a restart");
    reopened.delivered(&[]);
    // Acknowledged: the baselines moved (r1's to router7, its last whole record).
    let again = sent(&reopened.shape(&b));
    assert!(again[1]["output"].is_null(), "r2 is now unchanged");
    assert!(
        again[0]["diff"]
            .as_str()
            .unwrap()
            .contains("-hostname router7\n+hostname router1\n")
    );
}

#[test]
fn records_upstream_refused_for_good_set_no_baseline() {
    let dir = crate::test_support::temp_dir("change-shape");
    let mut f = ChangeFilter::open(dir.path(), policy());
    f.shape(&batch(&[
        rc(1, "r1", "a", "router1", T0),
        rc(2, "r2", "a", "router2", T0),
    ]));
    f.delivered(&[(2, 2)]);
    let next = ship(
        &mut f,
        &[
            rc(3, "r1", "b", "router1", T0 + MIN),
            rc(4, "r2", "b", "router2", T0 + MIN),
        ],
    );
    assert!(next[0]["output"].is_null(), "r1's first was delivered");
    assert_eq!(
        next[1]["changed"],
        json!(true),
        "r2's first was refused: whole again"
    );
    assert!(next[1]["output"].is_string());
    assert_eq!(f.counts().shaped, 3, "the refused record is not counted");
}

#[test]
fn gap_records_failed_commands_always_commands_and_odd_lines_pass_byte_for_byte() {
    let dir = crate::test_support::temp_dir("change-shape");
    let mut f = ChangeFilter::open(dir.path(), policy());
    let mut failed = rc(2, "r1", "a", "router1", T0);
    failed["status"] = json!("timeout");
    let gap = json!({"id": "rack:3", "agent": "rack", "seq": 3, "status": "gap", "output": "",
        "gap": {"cause": "spool_full", "lost": [[1, 1]]}});
    let always = record(4, "r1", "show version", "router1 uptime is 1 day\n", T0);
    let other_device = rc(5, "r3", "a", "router3", T0);
    let mut b = Batcher::new(
        "rack",
        BatchLimits {
            max_records: 100,
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(5),
            jitter: 0.0,
        },
        0,
    );
    let now = Instant::now();
    for (seq, r) in [(2, &failed), (3, &gap), (4, &always), (5, &other_device)] {
        b.push(seq, &serde_json::to_vec(r).unwrap(), now).unwrap();
    }
    b.push(6, b"not json at all", now).unwrap();
    b.push(
        7,
        br#"{"status":"ok","device":"r1","command":"show running-config"}"#,
        now,
    )
    .unwrap();
    let original = b.flush().unwrap();
    assert_eq!(f.shape(&original), original);
    f.delivered(&[]);
    // Nothing set a baseline: the first ok record of r1 is whole.
    assert_eq!(
        ship(&mut f, &[rc(8, "r1", "a", "router1", T0)])[0]["changed"],
        json!(true)
    );
    // An empty policy does not even parse.
    let mut none = ChangeFilter::open(dir.path(), ChangePolicy::default());
    let b = batch(&[rc(9, "r1", "a", "router1", T0)]);
    assert_eq!(none.shape(&b), b);
}

#[test]
fn an_earlier_record_of_the_same_batch_is_the_baseline_of_a_later_one() {
    let dir = crate::test_support::temp_dir("change-shape");
    let mut f = ChangeFilter::open(dir.path(), policy());
    let out = ship(
        &mut f,
        &[
            rc(1, "r1", "a", "router1", T0),
            rc(2, "r1", "b", "router1", T0 + MIN),
            rc(3, "r1", "c", "router5", T0 + 2 * MIN),
            rc(4, "r1", "d", "router5", T0 + 3 * MIN),
        ],
    );
    let shape: Vec<(bool, bool, bool)> = out
        .iter()
        .map(|r| {
            (
                r["changed"] == json!(true),
                r["output"].is_null(),
                r.get("diff").is_some(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        vec![
            (true, false, false),
            (false, true, false),
            (true, false, true),
            (false, true, false)
        ]
    );
    assert!(
        out[2]["diff"]
            .as_str()
            .unwrap()
            .contains("+hostname router5\n")
    );
    // The last whole one is the baseline kept on disk.
    drop(f);
    let mut reopened = ChangeFilter::open(dir.path(), policy());
    let next = &ship(&mut reopened, &[rc(5, "r1", "e", "router5", T0 + 4 * MIN)])[0];
    assert!(next["output"].is_null());
    let changed = &ship(&mut reopened, &[rc(6, "r1", "e", "router6", T0 + 5 * MIN)])[0];
    assert!(
        changed["diff"]
            .as_str()
            .unwrap()
            .contains("-hostname router5\n+hostname router6\n")
    );
}

#[test]
fn an_output_with_bytes_that_are_not_utf8_loses_output_base64_when_unchanged() {
    let dir = crate::test_support::temp_dir("change-shape");
    let mut f = ChangeFilter::open(dir.path(), policy());
    let with_b64 = |seq: u64, ms: u64| {
        let mut r = rc(seq, "r1", "a", "router1", ms);
        let exact = [config("a", "router1").as_bytes(), b"\xff\n"].concat();
        let map = r.as_object_mut().unwrap();
        map.insert("output".into(), json!(String::from_utf8_lossy(&exact)));
        map.shift_insert(
            9,
            "output_base64".into(),
            json!(crate::record::base64(&exact)),
        );
        r
    };
    let first = &ship(&mut f, &[with_b64(1, T0)])[0];
    assert!(first["output_base64"].is_string());
    let keys: Vec<&String> = first.as_object().unwrap().keys().collect();
    assert_eq!(
        &keys[8..12],
        ["output", "output_base64", "digest", "changed"]
    );
    let second = &ship(&mut f, &[with_b64(2, T0 + MIN)])[0];
    assert!(second["output"].is_null() && second.get("output_base64").is_none());
}

#[test]
fn a_reload_forgets_commands_no_longer_on_change_and_removes_their_files() {
    let dir = crate::test_support::temp_dir("change-shape");
    let mut f = ChangeFilter::open(dir.path(), policy());
    ship(
        &mut f,
        &[
            rc(1, "r1", "a", "router1", T0),
            rc(2, "r2", "a", "router2", T0),
        ],
    );
    let files = || {
        std::fs::read_dir(dir.path().join("changes"))
            .unwrap()
            .count()
    };
    assert_eq!(files(), 2);
    let mut only_r1 = ChangePolicy::default();
    only_r1.add(
        "r1",
        "cisco_ios",
        "show running-config",
        &ShipRule {
            mode: ShipMode::OnChange,
            ..ShipRule::default()
        },
    );
    f.set_policy(only_r1);
    assert_eq!(files(), 1);
    f.set_policy(policy());
    let out = ship(
        &mut f,
        &[
            rc(3, "r1", "b", "router1", T0 + MIN),
            rc(4, "r2", "b", "router2", T0 + MIN),
        ],
    );
    assert!(out[0]["output"].is_null());
    assert_eq!(
        out[1]["changed"],
        json!(true),
        "r2's baseline was forgotten"
    );
}

#[test]
fn a_damaged_baseline_file_costs_one_whole_output_and_nothing_else() {
    let dir = crate::test_support::temp_dir("change-shape");
    let mut f = ChangeFilter::open(dir.path(), policy());
    ship(&mut f, &[rc(1, "r1", "a", "router1", T0)]);
    drop(f);
    let path = dir
        .path()
        .join("changes")
        .join(super::file_name("r1", "show running-config"));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[20] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let mut f = ChangeFilter::open(dir.path(), policy());
    let out = ship(&mut f, &[rc(2, "r1", "b", "router1", T0 + MIN)]);
    assert!(out[0]["output"].is_string() && out[0].get("diff").is_none());
    assert!(ship(&mut f, &[rc(3, "r1", "c", "router1", T0 + 2 * MIN)])[0]["output"].is_null());
}

#[test]
fn without_a_writable_state_dir_baselines_live_in_memory() {
    let dir = crate::test_support::temp_dir("change-shape");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let mut f = ChangeFilter::open(&file, policy());
    ship(&mut f, &[rc(1, "r1", "a", "router1", T0)]);
    assert!(ship(&mut f, &[rc(2, "r1", "b", "router1", T0 + MIN)])[0]["output"].is_null());
    let changed = &ship(&mut f, &[rc(3, "r1", "b", "router2", T0 + 2 * MIN)])[0];
    assert!(changed["output"].is_string());
    assert!(
        changed.get("diff").is_none(),
        "the previous text could not be kept"
    );
}

#[test]
fn started_at_is_read_back_to_the_millisecond() {
    for ms in [0, T0, 951_782_400_000, 4_102_444_799_999] {
        let text = crate::record::rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms));
        assert_eq!(unix_ms(&text), Some(ms), "{text}");
    }
    for bad in [
        "",
        "2026-11-25T10:00:00Z",
        "2026-13-25T10:00:00.123Z",
        "x026-11-25T10:00:00.123Z",
    ] {
        assert_eq!(unix_ms(bad), None, "{bad}");
    }
}

/// docs/reference.md lists every record field: those shaping adds too.
#[test]
fn every_field_a_shaped_record_carries_is_in_the_reference() {
    let reference = include_str!("../../docs/reference.md");
    let dir = crate::test_support::temp_dir("change-shape");
    let mut f = ChangeFilter::open(dir.path(), policy());
    let out = ship(
        &mut f,
        &[
            rc(1, "r1", "a", "router1", T0),
            rc(2, "r1", "b", "router2", T0 + MIN),
        ],
    );
    assert!(out[1].get("diff").is_some());
    for field in out[1].as_object().unwrap().keys() {
        assert!(
            reference.contains(&format!("| `{field}` |")),
            "{field} is not in docs/reference.md"
        );
    }
    assert!(reference.contains("| `output` | string or null |"));
}
