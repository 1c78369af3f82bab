//! The record: what one command on one device produced, as docs/reference.md describes it.
//!
//! `output` is a JSON string. Devices sometimes print bytes that are not UTF-8 (a console
//! with line noise, a binary banner); the record then carries `output` with those bytes
//! replaced by U+FFFD for reading, **and** `output_base64` with the exact bytes, so nothing
//! the device printed is lost. Valid UTF-8 output has no `output_base64` field.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use serde::Serialize;

pub use crate::outcome::{Outcome, Status};

/// One record, serialised as one JSON object (one NDJSON line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Record {
    pub(crate) id: String,
    pub(crate) agent: String,
    pub(crate) seq: u64,
    pub(crate) device: String,
    pub(crate) transport: String,
    pub(crate) command: String,
    pub(crate) status: Status,
    pub(crate) error: Option<String>,
    pub(crate) output: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) output_base64: Option<String>,
    pub(crate) started_at: String,
    pub(crate) duration_ms: u64,
    /// Whether the wall clock (and so `started_at`) was NTP-synchronised when the record was
    /// taken; absent when that cannot be told. See [`crate::clock`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) clock_synced: Option<bool>,
    /// Only on `status = "gap"` records: what was lost or paused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) gap: Option<Gap>,
}

/// Why records were lost or collections did not happen: a gap record's `gap.cause`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum GapCause {
    /// The spool reached `spool_max_bytes`: `drop_oldest` deleted unshipped records, or
    /// `block` paused collections.
    SpoolFull,
    /// A spooled record was damaged on the card (a bad checksum, a torn or garbled frame).
    Corrupt,
    /// A spool segment could not be read at all (an I/O error on the card).
    Unreadable,
    /// Writing the spool failed for another reason than space (EIO on the card).
    IoError,
    /// The filesystem holding `state_dir` was full.
    DiskFull,
    /// Upstream refused records for good (e.g. too large for it); they went whole to the
    /// dead-letter file.
    Rejected,
}

impl GapCause {
    pub fn as_str(self) -> &'static str {
        match self {
            GapCause::SpoolFull => "spool_full",
            GapCause::Corrupt => "corrupt",
            GapCause::Unreadable => "unreadable",
            GapCause::IoError => "io_error",
            GapCause::DiskFull => "disk_full",
            GapCause::Rejected => "rejected",
        }
    }

    pub const ALL: [GapCause; 6] = [
        GapCause::SpoolFull,
        GapCause::Corrupt,
        GapCause::Unreadable,
        GapCause::IoError,
        GapCause::DiskFull,
        GapCause::Rejected,
    ];
}

/// What was lost or paused, reported upstream as its own record so a loss is never silent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap {
    pub(crate) cause: GapCause,
    /// The `spool_full` policy in force (`block` or `drop_oldest`).
    pub(crate) policy: String,
    /// The seqs of the lost records as `[first, last]` ranges, where they are known. A range
    /// may be wider than what it lost (seqs are not always consecutive: a restart skips some).
    pub(crate) lost: Vec<[u64; 2]>,
    /// True when more ranges were lost than one record can list; the counts stay exact.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) lost_incomplete: bool,
    /// Records that will never arrive, since the previous gap record of this cause.
    pub(crate) dropped_records: u64,
    pub(crate) dropped_bytes: u64,
    /// Collections not started (the spool full under `block`, or the disk full or failing).
    pub(crate) paused_collections: u64,
    /// How long collections were paused, in milliseconds.
    pub(crate) paused_ms: u64,
}

/// One run of `rackhand collect`, which names its records apart from the agent's.
///
/// The agent's ids are `<agent>:<seq>` from the sequence it persists in `state_dir`. A run by
/// hand cannot draw from that sequence: the agent may be running and handing out numbers at
/// that moment, and the state folder is usually not writable for the person at the keyboard.
/// So its ids have a form of their own, `<agent>:collect-<start>-<tag>-<n>`: `start` the
/// run's start in Unix milliseconds (readable, sortable), `tag` 32 random bits (two runs in
/// the same millisecond, or a clock that restarts from the same time at every boot on a Pi
/// without RTC, still differ), `n` the record's number in the run, 1, 2, … as printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdHocRun {
    start_ms: u64,
    tag: u32,
}

impl AdHocRun {
    /// A run starting now, with a fresh random tag.
    pub fn start() -> AdHocRun {
        use std::hash::{BuildHasher, RandomState};
        let start_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        // std seeds every RandomState from the OS's random source: a random number without a
        // dependency, and without blocking at boot.
        let tag = RandomState::new().hash_one((start_ms, std::process::id())) as u32;
        AdHocRun { start_ms, tag }
    }

    /// The id of the run's record number `n`.
    pub fn record_id(&self, agent: &str, n: u64) -> String {
        format!("{agent}:collect-{}-{:08x}-{n}", self.start_ms, self.tag)
    }
}

impl Outcome {
    /// Numbers the outcome as record `seq` of agent `agent`.
    pub fn into_record(self, agent: &str, seq: u64) -> Record {
        let (output, output_base64) = match String::from_utf8(self.output) {
            Ok(text) => (text, None),
            Err(e) => {
                let bytes = e.into_bytes();
                (
                    String::from_utf8_lossy(&bytes).into_owned(),
                    Some(base64(&bytes)),
                )
            }
        };
        Record {
            id: format!("{agent}:{seq}"),
            agent: agent.to_string(),
            seq,
            device: self.device,
            transport: self.transport,
            command: self.command,
            status: self.status,
            error: self.error,
            output,
            output_base64,
            started_at: rfc3339_millis(self.started_at),
            duration_ms: self.duration.as_millis() as u64,
            clock_synced: None,
            gap: None,
        }
    }

    /// Numbers the outcome as record `n` of a `rackhand collect` run: `seq` is `n`, the id
    /// the run's own (see [`AdHocRun`]).
    pub fn into_ad_hoc_record(self, agent: &str, run: &AdHocRun, n: u64) -> Record {
        let mut record = self.into_record(agent, n);
        record.id = run.record_id(agent, n);
        record
    }
}

impl Record {
    /// The agent's report of a loss or pause, as record `seq` of agent `agent`. `detail`
    /// says where it happened (a segment and offset, an error), when known.
    pub fn gap(agent: &str, seq: u64, gap: Gap, detail: Option<&str>, at: SystemTime) -> Record {
        let lost = if gap.dropped_records > 0 || gap.dropped_bytes > 0 {
            format!(
                "{} record{} ({} bytes) will never arrive",
                gap.dropped_records,
                if gap.dropped_records == 1 { "" } else { "s" },
                gap.dropped_bytes
            )
        } else {
            String::new()
        };
        let paused = if gap.paused_collections > 0 || gap.paused_ms > 0 {
            format!(
                "collections were paused for {:.1} s, {} not started",
                gap.paused_ms as f64 / 1000.0,
                gap.paused_collections
            )
        } else {
            String::new()
        };
        let what = [lost, paused]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        let why = match gap.cause {
            GapCause::SpoolFull if gap.policy == "drop_oldest" => {
                "spool full: the oldest unshipped records were dropped to make room (spool_full = \"drop_oldest\"); raise spool_max_bytes or fix the uplink"
            }
            GapCause::SpoolFull => {
                "spool full (spool_full = \"block\"); raise spool_max_bytes or fix the uplink"
            }
            GapCause::Corrupt => {
                "damaged records in the spool (bad checksum or torn frame): check the SD card (dmesg, fsck) and the power supply"
            }
            GapCause::Unreadable => {
                "a spool segment could not be read (I/O error): the SD card is failing, replace it"
            }
            GapCause::IoError => {
                "writing the spool failed (I/O error): the SD card is failing, replace it"
            }
            GapCause::DiskFull => {
                "the disk holding state_dir is full: free space there or lower spool_max_bytes below the free space"
            }
            GapCause::Rejected => {
                "upstream refused these records for good; they are in the dead-letter file"
            }
        };
        let error = match detail {
            Some(d) => format!("{why}: {what} ({d})"),
            None => format!("{why}: {what}"),
        };
        Record {
            id: format!("{agent}:{seq}"),
            agent: agent.to_string(),
            seq,
            device: agent.to_string(),
            transport: "agent".into(),
            command: "spool".into(),
            status: Status::Gap,
            error: Some(error),
            output: String::new(),
            output_base64: None,
            started_at: rfc3339_millis(at),
            duration_ms: 0,
            clock_synced: None,
            gap: Some(gap),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a record always serialises")
    }

    /// The exact bytes the device printed.
    pub fn output_bytes(&self) -> Vec<u8> {
        match &self.output_base64 {
            Some(b64) => base64_decode(b64).unwrap_or_else(|| self.output.clone().into_bytes()),
            None => self.output.clone().into_bytes(),
        }
    }
}

/// `2026-11-25T10:00:00.123Z`.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Decoding as lenient as the hand-written decoder it replaces was: padding may be there or
/// not (a record written by hand or by another tool may lack it), and stray low bits in the
/// last character are ignored rather than refused.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Standard base64 with padding, as `output_base64` carries it.
pub fn base64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// The bytes `text` (standard alphabet, padded or not) encodes; `None` if it is not base64.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    LENIENT_BASE64.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn outcome(output: &[u8]) -> Outcome {
        Outcome {
            device: "core1".into(),
            transport: "ssh".into(),
            command: "show version".into(),
            status: Status::Ok,
            error: None,
            output: output.to_vec(),
            started_at: UNIX_EPOCH + Duration::from_millis(1_795_600_800_123),
            duration: Duration::from_millis(412),
        }
    }

    #[test]
    fn a_record_has_the_contract_fields_in_json() {
        let json = outcome(b"Cisco IOS Software\n")
            .into_record("rack-a12", 42)
            .to_json();
        assert_eq!(
            json,
            r#"{"id":"rack-a12:42","agent":"rack-a12","seq":42,"device":"core1","transport":"ssh","command":"show version","status":"ok","error":null,"output":"Cisco IOS Software\n","started_at":"2026-11-25T10:00:00.123Z","duration_ms":412}"#
        );
    }

    #[test]
    fn ad_hoc_ids_have_their_own_form_and_differ_between_runs() {
        let (first, second) = (AdHocRun::start(), AdHocRun::start());
        let record = outcome(b"x\n").into_ad_hoc_record("rack-a12", &first, 3);
        assert_eq!(record.seq, 3);
        assert_eq!(record.agent, "rack-a12");
        let id = record
            .id
            .strip_prefix("rack-a12:collect-")
            .expect(&record.id);
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(parts.len(), 3, "{id}");
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let start: u64 = parts[0].parse().unwrap();
        assert!(start <= now_ms && now_ms - start < 60_000, "{id}");
        assert!(
            parts[1].len() == 8 && u32::from_str_radix(parts[1], 16).is_ok(),
            "{id}"
        );
        assert_eq!(parts[2], "3");
        // Two runs started together (same millisecond, most likely) still differ.
        assert_ne!(first.record_id("a", 1), second.record_id("a", 1));
    }

    #[test]
    fn output_that_is_not_utf8_is_kept_exactly_in_base64() {
        let bytes = b"ok \xff\xfe\x00 end\n";
        let record = outcome(bytes).into_record("a", 1);
        assert!(record.output.contains('\u{fffd}'));
        assert_eq!(record.output_bytes(), bytes);
        assert!(record.to_json().contains("\"output_base64\":"));
    }

    /// docs/reference.md is the users' list of record fields and values: a field, status or
    /// gap cause added here must be described there too.
    #[test]
    fn every_field_status_and_gap_cause_is_in_the_reference() {
        let reference = include_str!("../docs/reference.md");
        let mut record = outcome(b"\xff").into_record("a", 1);
        record.clock_synced = Some(true);
        let gap = Gap {
            cause: GapCause::Corrupt,
            policy: "block".into(),
            lost: vec![[1, 1]],
            lost_incomplete: true,
            dropped_records: 1,
            dropped_bytes: 1,
            paused_collections: 0,
            paused_ms: 0,
        };
        let gap_record = Record::gap("a", 2, gap, None, UNIX_EPOCH);
        let mut names = Vec::new();
        for json in [record.to_json(), gap_record.to_json()] {
            let value: serde_json::Value = serde_json::from_str(&json).unwrap();
            for (field, inner) in value.as_object().unwrap() {
                names.push(format!("`{field}`"));
                if let Some(inner) = inner.as_object() {
                    names.extend(inner.keys().map(|k| format!("`{field}.{k}`")));
                }
            }
        }
        // A new status fails to compile here, a reminder to list it below.
        let _every_status_listed = |s: Status| match s {
            Status::Ok
            | Status::Timeout
            | Status::ConnectFailed
            | Status::AuthFailed
            | Status::HostKeyMismatch
            | Status::CommandError
            | Status::OutputTooLarge
            | Status::DriverCrashed
            | Status::Disconnected
            | Status::PortBusy
            | Status::Gap => (),
        };
        let statuses = [
            Status::Ok,
            Status::Timeout,
            Status::ConnectFailed,
            Status::AuthFailed,
            Status::HostKeyMismatch,
            Status::CommandError,
            Status::OutputTooLarge,
            Status::DriverCrashed,
            Status::Disconnected,
            Status::PortBusy,
            Status::Gap,
        ];
        names.extend(statuses.iter().map(|s| format!("| `{}` |", s.as_str())));
        names.extend(
            GapCause::ALL
                .iter()
                .map(|c| format!("| `{}` |", c.as_str())),
        );
        let missing: Vec<&String> = names.iter().filter(|n| !reference.contains(*n)).collect();
        assert!(
            missing.is_empty(),
            "docs/reference.md does not describe {missing:?}"
        );
    }

    #[test]
    fn base64_round_trips_every_length() {
        for len in 0..20 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(base64_decode(&base64(&data)).unwrap(), data);
        }
        assert_eq!(base64(b"Man"), "TWFu");
        assert_eq!(base64(b"Ma"), "TWE=");
    }

    #[test]
    fn dates_before_and_after_leap_days() {
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339_millis(t), "2000-02-29T00:00:00.000Z");
    }
}
