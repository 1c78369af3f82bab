//! A console record's JSON: what a captured console printed between (or during) jobs, or the
//! time its port was away. Fields per CONTRACT.md ("Console capture") and docs/reference.md:
//! `"kind": "console"`, `"command": null`, `output` (exact bytes in `output_base64` when not
//! UTF-8, as for commands), `offset`, `started_at` of the first byte, `"alert": true` when an
//! alert pattern matched. Command and gap records keep their own form (`crate::record`).

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::record::{Status, base64, rfc3339_millis};

use super::{Captured, ConsoleEvent};

#[derive(Debug, Serialize)]
struct ConsoleRecord<'a> {
    id: String,
    agent: &'a str,
    seq: u64,
    device: &'a str,
    transport: &'static str,
    kind: &'static str,
    command: Option<&'static str>,
    status: Status,
    error: Option<String>,
    output: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_base64: Option<String>,
    offset: u64,
    started_at: String,
    duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    clock_synced: Option<bool>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    alert: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    during_job: bool,
    /// Only on a port's gap: the most the device can have printed while it was away.
    #[serde(skip_serializing_if = "Option::is_none")]
    lost_bytes_max: Option<u64>,
}

/// Whether `event` is an alert (shipped at once).
pub(crate) fn is_alert(event: &ConsoleEvent) -> bool {
    matches!(&event.what, Captured::Text(chunk) if chunk.alert)
}

/// The record of `event` as record `seq` of agent `agent`, as one JSON line.
pub(crate) fn to_json(
    agent: &str,
    seq: u64,
    clock_synced: Option<bool>,
    event: &ConsoleEvent,
) -> String {
    let span = |from: SystemTime, to: SystemTime| {
        to.duration_since(from)
            .unwrap_or(Duration::ZERO)
            .as_millis() as u64
    };
    let mut record = ConsoleRecord {
        id: format!("{agent}:{seq}"),
        agent,
        seq,
        device: &event.device,
        transport: "serial",
        kind: "console",
        command: None,
        status: Status::Ok,
        error: None,
        output: String::new(),
        output_base64: None,
        offset: 0,
        started_at: String::new(),
        duration_ms: 0,
        clock_synced,
        alert: false,
        during_job: false,
        lost_bytes_max: None,
    };
    match &event.what {
        Captured::Text(chunk) => {
            match std::str::from_utf8(&chunk.bytes) {
                Ok(text) => record.output = text.to_string(),
                Err(_) => {
                    record.output = String::from_utf8_lossy(&chunk.bytes).into_owned();
                    record.output_base64 = Some(base64(&chunk.bytes));
                }
            }
            record.offset = chunk.offset;
            record.started_at = rfc3339_millis(chunk.started_at);
            record.duration_ms = span(chunk.started_at, chunk.ended_at);
            record.alert = chunk.alert;
            record.during_job = chunk.during_job;
        }
        Captured::Gap(gap) => {
            record.status = Status::Disconnected;
            let how_many = match gap.lost_bytes_max {
                Some(n) => {
                    format!("at most {n} bytes at the line's speed; how many it printed is unknown")
                }
                None => "how many bytes is unknown".to_string(),
            };
            record.error = Some(format!(
                "the console port was away from {} to {} ({}); what the device printed meanwhile could not be read ({how_many})",
                rfc3339_millis(gap.from),
                rfc3339_millis(gap.to),
                gap.detail
            ));
            record.lost_bytes_max = gap.lost_bytes_max;
            record.offset = gap.offset;
            record.started_at = rfc3339_millis(gap.from);
            record.duration_ms = span(gap.from, gap.to);
        }
    }
    serde_json::to_string(&record).expect("a console record always serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::PortGap;
    use crate::console::chunk::ConsoleChunk;

    fn text(bytes: &[u8], alert: bool) -> ConsoleEvent {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        ConsoleEvent {
            device: "sw1".into(),
            what: Captured::Text(ConsoleChunk {
                offset: 7,
                started_at: at,
                ended_at: at + Duration::from_millis(250),
                bytes: bytes.to_vec(),
                alert,
                during_job: false,
            }),
        }
    }

    #[test]
    fn a_console_record_has_the_contract_fields() {
        let json = to_json("rack", 5, Some(true), &text(b"%SYS-5-RESTART\r\n", true));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["kind"], "console");
        assert!(v["command"].is_null());
        assert_eq!(v["output"], "%SYS-5-RESTART\r\n");
        assert_eq!(v["offset"], 7);
        assert_eq!(v["started_at"], "2027-01-15T08:00:00.000Z");
        assert_eq!(v["duration_ms"], 250);
        assert_eq!(v["alert"], true);
        assert_eq!(v["id"], "rack:5");
        assert!(v.get("output_base64").is_none());
        let quiet = to_json("rack", 6, None, &text(b"x", false));
        assert!(!quiet.contains("alert"), "{quiet}");
        assert!(!is_alert(&text(b"x", false)) && is_alert(&text(b"x", true)));
    }

    #[test]
    fn bytes_that_are_not_utf8_are_kept_in_base64() {
        let json = to_json("rack", 5, None, &text(b"a\xffb", false));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let b64 = v["output_base64"].as_str().unwrap();
        assert_eq!(crate::record::base64_decode(b64).unwrap(), b"a\xffb");
    }

    #[test]
    fn a_gap_says_when_and_the_most_bytes_it_can_have_lost() {
        let from = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let event = ConsoleEvent {
            device: "sw1".into(),
            what: Captured::Gap(PortGap {
                offset: 99,
                from,
                to: from + Duration::from_secs(3),
                detail: "the port hung up".into(),
                // 3 s at 9600 8N1.
                lost_bytes_max: Some(2880),
            }),
        };
        let v: serde_json::Value = serde_json::from_str(&to_json("r", 1, None, &event)).unwrap();
        assert_eq!(v["status"], "disconnected");
        assert_eq!(v["kind"], "console");
        assert_eq!(v["duration_ms"], 3000);
        assert_eq!(v["offset"], 99);
        assert_eq!(v["lost_bytes_max"], 2880);
        let error = v["error"].as_str().unwrap();
        assert!(
            error.contains("at most 2880 bytes") && error.contains("unknown"),
            "{error}"
        );
    }

    #[test]
    fn the_most_a_line_carries_counts_start_parity_and_stop_bits() {
        use crate::inventory::{FlowControl, Parity, SerialSettings};
        let line = |baud, data_bits, parity, stop_bits| SerialSettings {
            baud,
            data_bits,
            parity,
            stop_bits,
            flow_control: FlowControl::None,
        };
        assert_eq!(line(9600, 8, Parity::None, 1).bytes_per_second(), 960);
        assert_eq!(line(115_200, 8, Parity::None, 1).bytes_per_second(), 11_520);
        assert_eq!(line(9600, 7, Parity::Even, 2).bytes_per_second(), 872);
    }

    /// docs/reference.md lists every field a console record can have.
    #[test]
    fn every_console_field_is_in_the_reference() {
        let reference = include_str!("../../docs/reference.md");
        let mut event = text(b"\xff", true);
        if let Captured::Text(c) = &mut event.what {
            c.during_job = true;
        }
        let v: serde_json::Value =
            serde_json::from_str(&to_json("r", 1, Some(true), &event)).unwrap();
        let missing: Vec<String> = v
            .as_object()
            .unwrap()
            .keys()
            .map(|k| format!("`{k}`"))
            .filter(|k| !reference.contains(k.as_str()))
            .collect();
        assert!(missing.is_empty(), "docs/reference.md lacks {missing:?}");
    }
}
