//! Issue 9's storage acceptance, end to end ("nothing lost, nothing stuck"): the real
//! `rackhand run` collecting from simulated Cisco IOS devices on loopback Telnet ports and
//! shipping to a loopback collector, while its card fills up, flips bits at rest or under
//! it, or is reopened under a smaller config.
//!
//! One promise is checked in every test, from the receiving end only: every record the
//! agent numbered (seqs of each run, `tests/support/accounting.rs`) either arrived at the
//! collector or is named in the `gap.lost` ranges of a gap record that arrived, nothing
//! else; and where the test holds a copy of the spool, what arrived is byte for byte what
//! was spooled. The full disk is a real one: a 6 MiB tmpfs as `state_dir` (needs root).
//!
//! The soak phases (`scripts/soak --phase disk-full|bit-flip`) are the last two tests: their
//! cycle counts come from `RACKHAND_DISK_FULL_CYCLES` and `RACKHAND_BIT_FLIP_CYCLES` (small
//! by default, for CI), their random moments from `RACKHAND_SOAK_SEED`, printed at the start.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rackhand::sim::{Profile, TelnetRack};
use serde_json::Value;

use support::accounting::{Delivery, ranges_text, received};
use support::agent::{
    Agent, Dev, Rng, Setup, copy_spool, http_upstream, rfc3339_ms, spool_contents, status_cli,
};
use support::collector::{Collector, Mode, batch_problems_after_damage};
use support::fixtures::generated_output;
use support::spool_files::{FlipAt, SegmentFile, flip_byte_if_there, flip_frame, segments};
use support::tmpfs::Tmpfs;
use support::{TempDir, deadline, loopback_any_port, poll_until};

const AGENT_ID: &str = "rack-st";
/// Upper bound for one thing a test waits for that normally takes seconds: after an outage
/// the agent's backoffs (upstream up to 16 s, the disk up to 30 s) come first.
const STEP: Duration = Duration::from_secs(60);
/// A command whose output the tests make up (`fixtures::generated_output`), as large as
/// each test needs.
const BIG: &str = "show tech-support";
/// What a full-disk test writes: 256 KiB and 12 KiB per collection and device.
const FILLING: &[&str] = &[BIG, "show interfaces"];
const FILLING_BYTES: usize = 256 * 1024;
/// Small, many records: several sealed segments of a 1 MiB spool (128 KiB segments).
const SMALL: &[&str] = &["show interfaces", "show version"];

/// `devices` simulated switches; with `big`, their `show tech-support` prints that many bytes.
fn rack(devices: usize, big: Option<usize>) -> TelnetRack {
    let mut profile = Profile::for_platform("cisco_ios").unwrap();
    if let Some(bytes) = big {
        profile.outputs.insert(BIG, &generated_output(bytes, 9));
    }
    TelnetRack::start(loopback_any_port(), devices, profile).expect("start the simulated rack")
}

fn setup(state_dir: &Path, rack: &TelnetRack, commands: &[&str], upstream: Vec<String>) -> Setup {
    Setup {
        agent_id: AGENT_ID.into(),
        workers: 8,
        state_dir: state_dir.to_path_buf(),
        interval: "300ms".into(),
        commands: commands.iter().map(|c| c.to_string()).collect(),
        upstream,
        devices: rack
            .addrs()
            .iter()
            .map(|(name, addr)| Dev::telnet(name, *addr))
            .collect(),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn started_ms(r: &Value) -> u64 {
    r["started_at"].as_str().and_then(rfc3339_ms).unwrap_or(0)
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// A record of a device (not a gap record) collected at or after `since_ms` has arrived.
fn collected_since(collector: &Collector, since_ms: u64) -> bool {
    received(collector)
        .values()
        .any(|(_, r)| r["status"] != "gap" && started_ms(r) >= since_ms)
}

/// A gap record of `cause` has arrived.
fn gap_arrived(collector: &Collector, cause: &str) -> bool {
    received(collector)
        .values()
        .any(|(_, r)| r["status"] == "gap" && r["gap"]["cause"] == cause)
}

/// The batches received are well-formed, keyed and resent only whole (but for records
/// reported `corrupt`: damaged between two sends, see `batch_problems_after_damage`), and
/// nothing was dropped by the collector's memory bound.
fn assert_batches(collector: &Collector) {
    assert_eq!(
        collector.overflowed(),
        0,
        "the collector's memory bound was hit"
    );
    let got = Delivery::of(collector);
    let damaged = |seq| got.lost_cause(seq) == Some("corrupt");
    let problems =
        collector.with_posts(|posts| batch_problems_after_damage(posts, AGENT_ID, &damaged));
    assert!(
        problems.is_empty(),
        "problems in the batches received:\n{}",
        problems.join("\n")
    );
}

/// The records of a copy of a spool folder taken now (read with the library's `Spool`).
fn snapshot(spool: &Path, scratch: &Path) -> Vec<(u64, Vec<u8>)> {
    copy_spool(spool, scratch, true);
    let records = spool_contents(scratch);
    let _ = std::fs::remove_dir_all(scratch);
    records
}

/// Every record of `spooled` but those in `except` arrived byte for byte as spooled.
fn assert_as_spooled(got: &Delivery, spooled: &[(u64, Vec<u8>)], except: &BTreeSet<u64>) {
    for (seq, payload) in spooled.iter().filter(|(s, _)| !except.contains(s)) {
        let line = got.by_seq.get(seq).map(|(l, _)| l);
        assert!(
            line == Some(payload),
            "record {seq} ({} bytes in the spool) {} at the collector",
            payload.len(),
            match line {
                None => "did not arrive".to_string(),
                Some(l) => format!("arrived different ({} bytes)", l.len()),
            }
        );
    }
}

fn status_u64(s: &Value, pointer: &str) -> u64 {
    s.pointer(pointer).and_then(Value::as_u64).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// A full disk

/// The agent on a 6 MiB tmpfs, the collector down, 4 devices printing 268 KiB each per
/// collection: the disk fills in seconds, long before `spool_max_bytes` (16 MiB) would.
struct FullDisk {
    dir: TempDir,
    _devices: TelnetRack,
    collector: Collector,
    setup: Setup,
    config: PathBuf,
    // Fields drop in order: the tmpfs is unmounted last.
    disk: Tmpfs,
}

impl FullDisk {
    fn new(tag: &str, policy: &str) -> FullDisk {
        let disk = Tmpfs::mount(tag, "6m");
        let dir = TempDir::new(tag).unwrap();
        let devices = rack(4, Some(FILLING_BYTES));
        let collector = Collector::start();
        collector.set_mode(Mode::Down);
        let setup = setup(
            disk.path(),
            &devices,
            FILLING,
            http_upstream(&collector.url(), &[]),
        );
        let mut full = FullDisk {
            dir,
            _devices: devices,
            collector,
            setup,
            config: PathBuf::new(),
            disk,
        };
        full.write_config(policy);
        full
    }

    fn write_config(&mut self, policy: &str) {
        let policy = format!("spool_full = \"{policy}\"");
        self.setup.upstream = http_upstream(
            &self.collector.url(),
            &[
                "timeout = \"2s\"",
                "batch_max_age = \"200ms\"",
                "spool_max_bytes = \"16MiB\"",
                &policy,
            ],
        );
        self.config = self.setup.write(self.dir.path());
    }

    fn start(&self) -> Agent {
        Agent::start(&self.config, &self.setup.state_dir)
    }
}

#[test]
fn a_full_disk_pauses_collections_without_stopping_the_agent_and_drains_once_upstream_is_back() {
    let run = FullDisk::new("st-full-block", "block");
    let mut agent = run.start();

    let full = agent.wait_status("the disk full, collections paused", STEP, |s| {
        s["spool"]["storage_error_cause"] == "disk_full" && s["spool"]["paused"] == true
    });
    assert!(
        run.disk.free_bytes() < 512 * 1024,
        "the tmpfs is not full: {} bytes free",
        run.disk.free_bytes()
    );
    assert!(
        status_u64(&full, "/spool/waiting_in_memory") > 0,
        "the record the disk refused waits in memory: {}",
        full["spool"]
    );
    if let Err(status) = agent.check_running() {
        panic!(
            "the agent ended on a full disk ({status}); log:\n{}",
            agent.stderr()
        );
    }
    let text = status_cli(&run.config, false);
    assert_eq!(
        text.code,
        Some(0),
        "rackhand status: {}{}",
        text.stdout,
        text.stderr
    );
    assert!(
        text.stdout
            .contains("ERROR: the disk refuses writes (disk_full)")
            && text.stdout.contains("No space left on device"),
        "rackhand status does not show the full disk:\n{}",
        text.stdout
    );
    let json: Value = serde_json::from_str(status_cli(&run.config, true).stdout.trim())
        .expect("rackhand status --format json prints JSON");
    assert_eq!(json["running"], true, "{json}");
    assert_eq!(json["spool"]["storage_error_cause"], "disk_full", "{json}");
    // What made it onto the disk, to compare with what arrives.
    let spooled = snapshot(&run.setup.spool_dir(), &run.dir.join("copy"));
    assert!(
        !spooled.is_empty(),
        "nothing was spooled before the disk filled"
    );

    run.collector.set_mode(Mode::Accept);
    let resumed = agent.wait_status("the disk taking writes again", STEP, |s| {
        s["spool"]["storage_error"].is_null() && s["spool"]["paused"] == false
    });
    let resumed_ms = now_ms();
    assert!(
        poll_until(deadline(STEP), || collected_since(
            &run.collector,
            resumed_ms
        ) && gap_arrived(
            &run.collector,
            "disk_full"
        )),
        "no record collected after the resume, or no disk_full gap record, within {STEP:?}; log:\n{}",
        agent.stderr()
    );
    let status = agent.stop();
    assert!(status.success(), "exit {status}; log:\n{}", agent.stderr());
    agent.assert_no_panic("full disk, block");

    assert_batches(&run.collector);
    let got = Delivery::of(&run.collector);
    let runs = [agent.handed_out()];
    got.assert_accounted(&runs, "full disk, block", &agent.stderr());
    assert!(
        got.missing(&runs).is_empty() && got.lost.is_empty(),
        "block loses nothing on a full disk: missing {}, lost {:?}",
        ranges_text(&got.missing(&runs)),
        got.lost
    );
    assert_as_spooled(&got, &spooled, &BTreeSet::new());
    let (paused, paused_ms) = (
        got.gap_sum("disk_full", "paused_collections"),
        got.gap_sum("disk_full", "paused_ms"),
    );
    assert!(
        paused > 0 && paused_ms > 0,
        "the disk_full gap records report no pause: {:?}",
        got.gaps_of("disk_full")
    );
    println!(
        "full disk, block: {} records delivered, {} spooled before the disk filled; paused {paused} collections for {:.1} s; status after: {}",
        got.by_seq.len(),
        spooled.len(),
        paused_ms as f64 / 1000.0,
        resumed["spool"]
    );
}

#[test]
fn a_full_disk_under_drop_oldest_drops_the_oldest_segments_and_names_every_lost_seq() {
    let run = FullDisk::new("st-full-drop", "drop_oldest");
    let mut agent = run.start();

    let full = agent.wait_status("records dropped for a full disk", STEP, |s| {
        status_u64(s, "/spool/lost/disk_full") > 0
    });
    assert_eq!(
        status_u64(&full, "/spool/lost/spool_full"),
        0,
        "the disk filled, not the spool: {}",
        full["spool"]
    );
    if let Err(status) = agent.check_running() {
        panic!(
            "the agent ended on a full disk ({status}); log:\n{}",
            agent.stderr()
        );
    }
    let text = status_cli(&run.config, false);
    assert!(
        text.stdout.contains("lost since start") && text.stdout.contains("disk_full"),
        "rackhand status does not show the loss:\n{}",
        text.stdout
    );
    let spooled = snapshot(&run.setup.spool_dir(), &run.dir.join("copy"));

    let up_ms = now_ms();
    run.collector.set_mode(Mode::Accept);
    assert!(
        poll_until(deadline(STEP), || collected_since(&run.collector, up_ms)
            && gap_arrived(&run.collector, "disk_full")),
        "no record collected after the collector came back, or no disk_full gap record, within {STEP:?}; log:\n{}",
        agent.stderr()
    );
    let status = agent.stop();
    assert!(status.success(), "exit {status}; log:\n{}", agent.stderr());
    agent.assert_no_panic("full disk, drop_oldest");

    assert_batches(&run.collector);
    let got = Delivery::of(&run.collector);
    let runs = [agent.handed_out()];
    got.assert_accounted(&runs, "full disk, drop_oldest", &agent.stderr());
    let missing = got.missing(&runs);
    assert!(
        !missing.is_empty(),
        "nothing was dropped: the disk never filled"
    );
    for seq in &missing {
        assert_eq!(
            got.lost_cause(*seq),
            Some("disk_full"),
            "seq {seq} is lost for another cause than the full disk"
        );
    }
    let reported = got.gap_sum("disk_full", "dropped_records");
    assert_eq!(
        reported,
        missing.len() as u64,
        "the disk_full gap records count {reported} dropped, {} seqs never arrived ({})",
        missing.len(),
        ranges_text(&missing)
    );
    let lost: BTreeSet<u64> = missing.iter().copied().collect();
    assert_as_spooled(&got, &spooled, &lost);
    println!(
        "full disk, drop_oldest: {} records delivered, {} dropped ({}), {} gap record(s)",
        got.by_seq.len(),
        missing.len(),
        ranges_text(&missing),
        got.gaps_of("disk_full").len()
    );
}

// ---------------------------------------------------------------------------------------
// Bits flipped in the spool

/// A spool of 128 KiB segments (`spool_max_bytes = 1MiB`) filled by 4 devices while the
/// collector is down; batches of at most 5 records, so the shipper has read no further than
/// the first few records while it waits for the collector.
struct Flipping {
    dir: TempDir,
    _devices: TelnetRack,
    collector: Collector,
    setup: Setup,
    config: PathBuf,
}

impl Flipping {
    fn new(tag: &str) -> Flipping {
        let dir = TempDir::new(tag).unwrap();
        let devices = rack(4, None);
        let collector = Collector::start();
        collector.set_mode(Mode::Down);
        let setup = setup(
            &dir.join("state"),
            &devices,
            SMALL,
            http_upstream(
                &collector.url(),
                &[
                    "timeout = \"2s\"",
                    "batch_max_records = 5",
                    "batch_max_age = \"200ms\"",
                    "spool_max_bytes = \"1MiB\"",
                ],
            ),
        );
        let config = setup.write(dir.path());
        Flipping {
            dir,
            _devices: devices,
            collector,
            setup,
            config,
        }
    }

    /// Starts the agent and waits until the spool has `sealed` sealed segments.
    fn spool_segments(&self, sealed: usize) -> Agent {
        let agent = Agent::start(&self.config, &self.setup.state_dir);
        agent.wait_status(&format!("{sealed} sealed segments"), STEP, |s| {
            status_u64(s, "/spool/segments") > sealed as u64
        });
        agent
    }
}

/// The frame in the middle of a segment (never its first or last when it has 3 or more).
fn middle(seg: &SegmentFile) -> usize {
    assert!(
        !seg.frames.is_empty(),
        "{} has no whole frame to damage",
        seg.path.display()
    );
    seg.frames.len() / 2
}

/// Damages one record in each of `segs` (payloads; in the second one its length field);
/// returns the seqs hit.
fn flip_sealed(segs: &[&SegmentFile]) -> BTreeSet<u64> {
    let mut hit = BTreeSet::new();
    for (i, seg) in segs.iter().enumerate() {
        let frame = seg.frames[middle(seg)];
        let at = if i == 1 {
            FlipAt::Length
        } else {
            FlipAt::Payload
        };
        flip_frame(seg, &frame, at);
        hit.insert(frame.seq);
    }
    hit
}

/// What a run with damaged records must show: the damaged ones reported `corrupt` (exactly
/// as many as were hit) and never received, every other spooled record received whole.
fn assert_damage_reported(
    got: &Delivery,
    runs: &[RangeInclusive<u64>],
    spooled: &[(u64, Vec<u8>)],
    hit: &BTreeSet<u64>,
    what: &str,
    log: &str,
) {
    got.assert_accounted(runs, what, log);
    for seq in hit {
        assert!(
            !got.by_seq.contains_key(seq),
            "{what}: the damaged record {seq} arrived"
        );
        assert_eq!(
            got.lost_cause(*seq),
            Some("corrupt"),
            "{what}: the damaged record {seq} is not reported corrupt; gaps: {:?}",
            got.lost
        );
    }
    let missing = got.missing(runs);
    assert_eq!(
        missing.iter().copied().collect::<BTreeSet<u64>>(),
        *hit,
        "{what}: only the damaged records may be missing"
    );
    assert_eq!(
        got.gap_sum("corrupt", "dropped_records"),
        hit.len() as u64,
        "{what}: the corrupt gap records count the damaged records exactly: {:?}",
        got.gaps_of("corrupt")
    );
    assert_as_spooled(got, spooled, hit);
}

#[test]
fn bytes_flipped_in_a_spool_at_rest_cost_only_the_damaged_records_which_are_reported_corrupt() {
    let t = Flipping::new("st-flip-rest");
    let mut agent = t.spool_segments(5);
    let status = agent.stop();
    assert!(status.success(), "exit {status}; log:\n{}", agent.stderr());
    let first_run = agent.handed_out();
    let spooled = snapshot(&t.setup.spool_dir(), &t.dir.join("copy"));

    let segs = segments(&t.setup.spool_dir());
    let sealed: Vec<&SegmentFile> = segs.iter().filter(|s| s.sealed).collect();
    let tail = segs.last().expect("segments");
    assert!(
        sealed.len() >= 5 && !tail.sealed,
        "want 5 sealed segments and an open tail: {:?}",
        segs.iter().map(|s| (&s.path, s.sealed)).collect::<Vec<_>>()
    );
    // Payloads in the 1st, 3rd and 5th sealed segments, a length field in the 2nd (which
    // also has a payload flipped further up), and a payload in the tail.
    assert!(middle(sealed[1]) >= 2, "{:?}", sealed[1]);
    let mut hit = flip_sealed(&[sealed[0], sealed[1], sealed[2], sealed[4]]);
    let other = sealed[1].frames[1];
    flip_frame(sealed[1], &other, FlipAt::Payload);
    hit.insert(other.seq);
    let frame = tail.frames[middle(tail)];
    flip_frame(tail, &frame, FlipAt::Payload);
    hit.insert(frame.seq);

    t.collector.set_mode(Mode::Accept);
    let mut agent = Agent::start(&t.config, &t.setup.state_dir);
    intact_arrive_and_damage_is_counted(&t.collector, &agent, &spooled, &hit);
    let status = agent.stop();
    assert!(status.success(), "exit {status}; log:\n{}", agent.stderr());
    agent.assert_no_panic("flipped at rest");

    assert_batches(&t.collector);
    let got = Delivery::of(&t.collector);
    let runs = [first_run, agent.handed_out()];
    assert_damage_reported(
        &got,
        &runs,
        &spooled,
        &hit,
        "flipped at rest",
        &agent.stderr(),
    );
    println!(
        "flipped at rest: {} records spooled, {} damaged ({:?}), {} delivered, {} corrupt gap record(s)",
        spooled.len(),
        hit.len(),
        hit,
        got.by_seq.len(),
        got.gaps_of("corrupt").len()
    );
}

/// Waits (bounded) until every spooled record not in `hit` has reached the collector and
/// the agent's status counts at least `hit` records lost as `corrupt`.
fn intact_arrive_and_damage_is_counted(
    collector: &Collector,
    agent: &Agent,
    spooled: &[(u64, Vec<u8>)],
    hit: &BTreeSet<u64>,
) {
    let good: Vec<u64> = spooled
        .iter()
        .map(|(s, _)| *s)
        .filter(|s| !hit.contains(s))
        .collect();
    let mut waiting = Vec::new();
    let delivered = poll_until(deadline(STEP), || {
        let got = received(collector);
        waiting = good
            .iter()
            .filter(|s| !got.contains_key(s))
            .copied()
            .collect();
        waiting.is_empty()
    });
    assert!(
        delivered,
        "{} intact records never arrived: {}; log:\n{}",
        waiting.len(),
        ranges_text(&waiting),
        agent.stderr()
    );
    agent.wait_status("every damaged record counted", STEP, |s| {
        status_u64(s, "/spool/lost/corrupt") >= hit.len() as u64
    });
}

#[test]
fn bytes_flipped_under_a_running_agent_cost_only_the_damaged_records_which_are_reported_corrupt() {
    let t = Flipping::new("st-flip-live");
    let mut agent = t.spool_segments(6);
    let spooled = snapshot(&t.setup.spool_dir(), &t.dir.join("copy"));
    let segs = segments(&t.setup.spool_dir());
    // The shipper has read at most a batch in flight and the next one (5 records each) from
    // the first segment: the others are still to be read, and it must meet the damage.
    let sealed: Vec<&SegmentFile> = segs.iter().filter(|s| s.sealed).skip(1).collect();
    assert!(sealed.len() >= 4, "{} sealed segments", sealed.len());
    let hit = flip_sealed(&sealed[..4]);

    t.collector.set_mode(Mode::Accept);
    intact_arrive_and_damage_is_counted(&t.collector, &agent, &spooled, &hit);
    if let Err(status) = agent.check_running() {
        panic!("the agent ended ({status}); log:\n{}", agent.stderr());
    }
    let status = agent.stop();
    assert!(status.success(), "exit {status}; log:\n{}", agent.stderr());
    agent.assert_no_panic("flipped under a running agent");

    assert_batches(&t.collector);
    let got = Delivery::of(&t.collector);
    let runs = [agent.handed_out()];
    assert_damage_reported(
        &got,
        &runs,
        &spooled,
        &hit,
        "flipped under a running agent",
        &agent.stderr(),
    );
    println!(
        "flipped under a running agent: {} records spooled, {} damaged ({:?}), {} delivered",
        spooled.len(),
        hit.len(),
        hit,
        got.by_seq.len()
    );
}

// ---------------------------------------------------------------------------------------
// A smaller config after a restart

/// Issue 9: "Lowering `spool_max_bytes` or `max_output` and restarting destroys spooled
/// records ... With 2.5 MB `show tech-support` outputs spooled and `spool_max_bytes =
/// "8MiB"` set: 19 of 43 lost".
#[test]
fn records_spooled_under_a_larger_config_arrive_whole_after_a_restart_with_a_smaller_one() {
    const RECORDS: usize = 24;
    let dir = TempDir::new("st-shrink").unwrap();
    let devices = rack(4, Some(2_500_000));
    let collector = Collector::start();
    collector.set_mode(Mode::Down);
    let upstream = |max: &str| {
        http_upstream(
            &collector.url(),
            &[
                "timeout = \"5s\"",
                "batch_max_age = \"200ms\"",
                &format!("spool_max_bytes = \"{max}\""),
            ],
        )
    };
    let mut setup = setup(&dir.join("state"), &devices, &[BIG], upstream("256MiB"));
    let config = setup.write(dir.path());
    let mut agent = Agent::start(&config, &setup.state_dir);
    agent.wait_status(&format!("{RECORDS} records spooled"), STEP, |s| {
        status_u64(s, "/spool/records") >= RECORDS as u64
    });
    let status = agent.stop();
    assert!(status.success(), "exit {status}; log:\n{}", agent.stderr());
    let first_run = agent.handed_out();
    let spooled = snapshot(&setup.spool_dir(), &dir.join("copy"));
    assert!(
        spooled.len() >= RECORDS && spooled.iter().all(|(_, p)| p.len() > 2_000_000),
        "want {RECORDS} records over 2 MB each: {:?}",
        spooled
            .iter()
            .map(|(s, p)| (*s, p.len()))
            .collect::<Vec<_>>()
    );

    // The same rack, a spool bound below what is spooled, and outputs cut at 1 MiB.
    setup.upstream = upstream("8MiB");
    for d in &mut setup.devices {
        d.lines.push("max_output = \"1MiB\"".into());
    }
    let config = setup.write(dir.path());
    collector.set_mode(Mode::Accept);
    let mut agent = Agent::start(&config, &setup.state_dir);
    let mut waiting = Vec::new();
    let delivered = poll_until(deadline(STEP), || {
        let got = received(&collector);
        waiting = spooled
            .iter()
            .map(|(s, _)| *s)
            .filter(|s| !got.contains_key(s))
            .collect();
        waiting.is_empty()
    });
    assert!(
        delivered,
        "{} of {} spooled records never arrived: {}; log:\n{}",
        waiting.len(),
        spooled.len(),
        ranges_text(&waiting),
        agent.stderr()
    );
    // The new limits are in force: a collection of the second run is cut at 1 MiB.
    let second_run_from = agent.first_seq;
    let mut cut = None;
    assert!(
        poll_until(deadline(STEP), || {
            cut = received(&collector)
                .range(second_run_from..)
                .find(|(_, (_, r))| r["status"] != "gap")
                .map(|(_, (_, r))| r["status"].clone());
            cut.is_some()
        }),
        "no collection of the second run arrived; log:\n{}",
        agent.stderr()
    );
    assert_eq!(cut, Some(Value::from("output_too_large")));
    // The devices go away, so the spool drains below its bound and the agent stops unpaused
    // (paused at stop, it would spool a last gap record about the pause for the next start).
    drop(devices);
    let gone_ms = now_ms();
    agent.wait_status("the spool drained, collections not paused", STEP, |s| {
        s["spool"]["paused"] == false
            && status_u64(s, "/spool/bytes") < 4 << 20
            && s["updated_at"].as_str().and_then(rfc3339_ms) > Some(gone_ms + 500)
    });
    let status = agent.stop();
    assert!(status.success(), "exit {status}; log:\n{}", agent.stderr());
    agent.assert_no_panic("smaller config");

    assert_batches(&collector);
    let got = Delivery::of(&collector);
    let runs = [first_run, agent.handed_out()];
    got.assert_accounted(&runs, "smaller config", &agent.stderr());
    assert!(
        got.lost.is_empty() && got.missing(&runs).is_empty(),
        "records lost after the restart with a smaller config: {:?}",
        got.gaps
    );
    assert_as_spooled(&got, &spooled, &BTreeSet::new());
    println!(
        "smaller config: {} records of {:.1}-{:.1} MB spooled under 256 MiB, all delivered whole under 8 MiB",
        spooled.len(),
        spooled.iter().map(|(_, p)| p.len()).min().unwrap_or(0) as f64 / 1e6,
        spooled.iter().map(|(_, p)| p.len()).max().unwrap_or(0) as f64 / 1e6,
    );
}

// ---------------------------------------------------------------------------------------
// Soak phases (scripts/soak --phase disk-full|bit-flip)

fn soak_seed() -> u64 {
    env_u64("RACKHAND_SOAK_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    })
}

/// While the disk fills, the collector is never up: down, failing or too slow, changing at
/// random moments.
fn flap(rng: &mut Rng) -> Mode {
    match rng.range(0, 4) {
        0 | 1 => Mode::Down,
        2 => Mode::Status(503),
        _ => Mode::Slow(Duration::from_secs(3)),
    }
}

#[test]
fn disk_full_soak_fills_and_drains_the_state_dir_again_and_again_while_the_collector_flaps() {
    let started = Instant::now();
    let cycles = env_u64("RACKHAND_DISK_FULL_CYCLES").unwrap_or(2);
    let seed = soak_seed();
    println!(
        "disk-full soak: {cycles} cycles, seed {seed} (RACKHAND_SOAK_SEED={seed} replays the moments)"
    );
    let mut rng = Rng::new(seed);
    let mut run = FullDisk::new("st-soak-full", "block");
    let mut runs = Vec::new();
    let mut agent: Option<(Agent, &str)> = None;
    // Restarts on a full disk that gave up records waiting in memory.
    let mut lost_at_stop = 0;
    for cycle in 0..cycles {
        // Block and drop_oldest by turns; the agent restarts (on a full disk or not) when
        // the policy changes.
        let policy = if cycle % 2 == 0 {
            "block"
        } else {
            "drop_oldest"
        };
        if agent.as_ref().is_none_or(|(_, p)| *p != policy) {
            if let Some((mut old, _)) = agent.take() {
                let status = old.stop();
                assert!(
                    status.success(),
                    "cycle {cycle}: exit {status}; log:\n{}",
                    old.stderr()
                );
                runs.push(old.handed_out());
            }
            run.write_config(policy);
            agent = Some((run.start(), policy));
        }
        let a = &mut agent.as_mut().expect("started above").0;
        let before = a
            .status()
            .map_or(0, |s| status_u64(&s, "/spool/lost/disk_full"));
        // Fill, the collector flapping at random moments (that is the point: no event).
        let until = deadline(STEP);
        let full = loop {
            run.collector.set_mode(flap(&mut rng));
            std::thread::sleep(Duration::from_millis(rng.range(200, 1500)));
            let s = a.status();
            let full = s.as_ref().is_some_and(|s| {
                s["spool"]["storage_error_cause"] == "disk_full"
                    || status_u64(s, "/spool/lost/disk_full") > before
            });
            if full {
                break s.expect("checked");
            }
            assert!(
                Instant::now() < until,
                "cycle {cycle} (seed {seed}, {policy}): the disk never filled; status {s:?}\nlog:\n{}",
                a.stderr()
            );
        };
        if let Err(status) = a.check_running() {
            panic!(
                "cycle {cycle} (seed {seed}, {policy}): the agent ended on a full disk ({status}); log:\n{}",
                a.stderr()
            );
        }
        // Now and then a restart while the disk is still full: what waited in memory is
        // lost, and the next run must report it.
        let restart = if cycle < 2 {
            cycle == 0
        } else {
            rng.range(0, 2) == 0
        };
        if restart {
            let status = a.stop();
            assert!(
                status.success(),
                "cycle {cycle} (seed {seed}): stopping on a full disk: exit {status}; log:\n{}",
                a.stderr()
            );
            a.assert_no_panic(&format!("cycle {cycle} (seed {seed})"));
            runs.push(a.handed_out());
            if a.stderr()
                .contains("stopping while the disk refuses writes")
            {
                lost_at_stop += 1;
            }
            *a = run.start();
        }
        // Drain: the collector back until the disk takes writes and collections go on.
        run.collector.set_mode(Mode::Accept);
        a.wait_status("the disk taking writes again", STEP, |s| {
            s["spool"]["storage_error"].is_null() && s["spool"]["paused"] == false
        });
        let resumed = now_ms();
        assert!(
            poll_until(deadline(STEP), || collected_since(&run.collector, resumed)),
            "cycle {cycle} (seed {seed}, {policy}): no collection after the disk drained; log:\n{}",
            a.stderr()
        );
        a.assert_no_panic(&format!("cycle {cycle} (seed {seed})"));
        println!(
            "  cycle {cycle} ({policy}{}): full at {} bytes spooled, {} waiting in memory; drained; {:.0} s",
            if restart {
                ", restarted while full"
            } else {
                ""
            },
            status_u64(&full, "/spool/bytes"),
            status_u64(&full, "/spool/waiting_in_memory"),
            started.elapsed().as_secs_f64()
        );
    }
    run.collector.set_mode(Mode::Accept);
    let (mut last, _) = agent.take().expect("at least one cycle");
    let status = last.stop();
    assert!(status.success(), "exit {status}; log:\n{}", last.stderr());
    runs.push(last.handed_out());

    assert_batches(&run.collector);
    let got = Delivery::of(&run.collector);
    got.assert_accounted(
        &runs,
        &format!("disk-full soak (seed {seed})"),
        &last.stderr(),
    );
    let causes: BTreeSet<&str> = got.lost.iter().map(|l| l.cause.as_str()).collect();
    assert!(
        causes.iter().all(|c| *c == "disk_full"),
        "seed {seed}: losses for other causes than the full disk: {:?}",
        got.lost
    );
    let missing = got.missing(&runs);
    println!(
        "disk-full soak: {cycles} cycles (seed {seed}); {} records delivered, {} lost on the full disk (dropped by drop_oldest, or waiting in memory at {lost_at_stop} stop(s)); {:.1} s",
        got.by_seq.len(),
        missing.len(),
        started.elapsed().as_secs_f64()
    );
}

/// Flips one to three random bits anywhere in random sealed segments of `spool` (records,
/// headers, footers); returns how many landed (a segment may be deleted meanwhile).
fn flip_random_sealed(spool: &Path, rng: &mut Rng) -> u32 {
    let sealed: Vec<SegmentFile> = segments(spool).into_iter().filter(|s| s.sealed).collect();
    let mut landed = 0;
    for _ in 0..rng.range(1, 4) {
        if sealed.is_empty() {
            break;
        }
        let seg = &sealed[rng.range(0, sealed.len() as u64) as usize];
        let offset = rng.range(0, seg.bytes);
        if flip_byte_if_there(&seg.path, offset, 1 << rng.range(0, 8)) {
            landed += 1;
        }
    }
    landed
}

/// The collector's mode for one bit-flip cycle: often down (segments pile up to flip),
/// sometimes up, failing or slow.
fn flip_mode(rng: &mut Rng) -> Mode {
    match rng.range(0, 100) {
        0..50 => Mode::Down,
        50..75 => Mode::Accept,
        75..90 => Mode::Status(503),
        _ => Mode::Slow(Duration::from_millis(2500)),
    }
}

#[test]
fn bit_flip_soak_flips_random_bytes_in_sealed_segments_at_random_moments() {
    let started = Instant::now();
    let cycles = env_u64("RACKHAND_BIT_FLIP_CYCLES").unwrap_or(4);
    let seed = soak_seed();
    println!(
        "bit-flip soak: {cycles} cycles, seed {seed} (RACKHAND_SOAK_SEED={seed} replays the moments)"
    );
    let mut rng = Rng::new(seed);
    let t = Flipping::new("st-soak-flip");
    let mut agent = Agent::start(&t.config, &t.setup.state_dir);
    let mut runs = Vec::new();
    // Bytes flipped under the running agent, and at rest between two runs.
    let (mut live, mut at_rest) = (0, 0);
    let mut modes: BTreeMap<String, u32> = BTreeMap::new();
    for cycle in 0..cycles {
        let mode = flip_mode(&mut rng);
        *modes.entry(format!("{mode:?}")).or_default() += 1;
        t.collector.set_mode(mode);
        // The random moment: there is no event to wait for, that is the point.
        std::thread::sleep(Duration::from_millis(rng.range(300, 2000)));
        live += flip_random_sealed(&t.setup.spool_dir(), &mut rng);
        // Every third cycle the agent stops, more bits flip at rest, and it starts again.
        if cycle % 3 == 2 {
            let status = agent.stop();
            assert!(
                status.success(),
                "cycle {cycle} (seed {seed}): exit {status}; log:\n{}",
                agent.stderr()
            );
            agent.assert_no_panic(&format!("cycle {cycle} (seed {seed})"));
            runs.push(agent.handed_out());
            at_rest += flip_random_sealed(&t.setup.spool_dir(), &mut rng);
            agent = Agent::start(&t.config, &t.setup.state_dir);
        }
        if let Err(status) = agent.check_running() {
            panic!(
                "cycle {cycle} (seed {seed}): the agent ended ({status}); log:\n{}",
                agent.stderr()
            );
        }
        agent.assert_no_panic(&format!("cycle {cycle} (seed {seed})"));
    }
    // Upstream back for good: everything spooled until now must go out (or be counted). `now`
    // comes from a status saved after the last flip, so every damaged record is at or below
    // it; once upstream has acknowledged past it, the reader has met all the damage.
    let flipped_ms = now_ms();
    t.collector.set_mode(Mode::Accept);
    let now = agent
        .wait_status("a status saved after the last flip", STEP, |s| {
            s["updated_at"]
                .as_str()
                .and_then(rfc3339_ms)
                .is_some_and(|at| at > flipped_ms)
        })
        .pointer("/spool/last_seq")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    // Every loss met is then in a gap record (at most one per cause per 10 s), and that gap
    // record is acknowledged too before the stop: losses found while the agent stops go
    // upstream only at its next start, and this run is the last.
    let reported = agent.wait_status(
        &format!("everything up to seq {now} acknowledged and every loss reported"),
        STEP,
        |s| {
            status_u64(s, "/spool/acked_seq") >= now && status_u64(s, "/spool/unreported_lost") == 0
        },
    );
    let then = status_u64(&reported, "/spool/last_seq");
    agent.wait_status(
        &format!("everything up to seq {then} (the gap records) acknowledged"),
        STEP,
        |s| status_u64(s, "/spool/acked_seq") >= then,
    );
    let status = agent.stop();
    assert!(status.success(), "exit {status}; log:\n{}", agent.stderr());
    agent.assert_no_panic("the bit-flip soak");

    assert_batches(&t.collector);
    let got = Delivery::of(&t.collector);
    runs.push(agent.handed_out());
    got.assert_accounted(
        &runs,
        &format!("bit-flip soak (seed {seed})"),
        &agent.stderr(),
    );
    let causes: BTreeSet<&str> = got.lost.iter().map(|l| l.cause.as_str()).collect();
    assert!(
        causes.iter().all(|c| *c == "corrupt"),
        "seed {seed}: losses for other causes than damage: {:?}",
        got.lost
    );
    let missing = got.missing(&runs);
    println!(
        "bit-flip soak: {cycles} cycles (seed {seed}), collector modes {modes:?}; {live} bits flipped under the agent, {at_rest} at rest; {} records delivered, {} lost as corrupt ({}); {:.1} s",
        got.by_seq.len(),
        missing.len(),
        ranges_text(&missing),
        started.elapsed().as_secs_f64()
    );
}
