//! Issue 5's upstream acceptance, end to end: the real `rackhand run` collecting from
//! simulated Cisco IOS devices on loopback Telnet ports and shipping to a collector on
//! loopback (tests/support/collector.rs) that goes down, comes back, answers too slowly, or
//! stays away until the spool is full.
//!
//! The agent is observed from the outside only: what the collector received, its
//! `state_dir/status.json` (what `rackhand status --format json` prints), its spool on disk
//! (read with the library's `Spool`), its exit status and its log. Every wait ends at a
//! deadline; the agent, the collector and the devices are stopped in `Drop`.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rackhand::sim::{Profile, TelnetRack};
use serde_json::Value;

use support::accounting::{gap_records, received};
use support::agent::{
    Agent, Dev, Setup, copy_spool, http_upstream, read_status, rfc3339_ms, spool_contents,
};
use support::collector::{Collector, Mode, Post, batch_problems};
use support::{TempDir, deadline, loopback_any_port, poll_until};

const AGENT_ID: &str = "rack-up";
/// Upper bound for one thing the tests wait for that normally takes a few seconds (the
/// agent's backoff after an outage reaches 8–16 s before the collector is tried again).
const STEP: Duration = Duration::from_secs(40);

fn rack(devices: usize) -> TelnetRack {
    TelnetRack::start(
        loopback_any_port(),
        devices,
        Profile::for_platform("cisco_ios").unwrap(),
    )
    .expect("start the simulated rack")
}

fn setup(dir: &TempDir, rack: &TelnetRack, commands: &[&str], upstream: Vec<String>) -> Setup {
    Setup {
        agent_id: AGENT_ID.into(),
        workers: 8,
        state_dir: dir.join("state"),
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

fn brief(v: &Value) -> String {
    let mut v = v.clone();
    if let Some(out) = v.get_mut("output") {
        *out = Value::from(format!("({} chars)", out.as_str().map_or(0, str::len)));
    }
    v.to_string()
}

/// The batches as sent, judged whole: well-formed, and one stream in seq order — distinct
/// batches (by `Idempotency-Key`, in order of first arrival) cover disjoint, increasing seq
/// ranges; a key seen again is an exact resend (checked by `batch_problems`).
fn assert_batches(collector: &Collector) {
    assert_eq!(
        collector.overflowed(),
        0,
        "the collector's memory bound was hit"
    );
    collector.with_posts(|posts: &[Post]| {
        let problems = batch_problems(posts, AGENT_ID);
        assert!(
            problems.is_empty(),
            "problems in the batches received:\n{}",
            problems.join("\n")
        );
        let mut seen = BTreeSet::new();
        let mut last_end = 0u64;
        for post in posts {
            let key = post.key.clone().unwrap_or_default();
            if !seen.insert(key.clone()) {
                continue;
            }
            let seqs: Vec<u64> = post.seqs().into_iter().flatten().collect();
            let (first, last) = (seqs[0], *seqs.last().unwrap());
            assert!(
                first > last_end,
                "batch {key} ({first}-{last}) overlaps or precedes the batch before it (which ended at {last_end})"
            );
            last_end = last;
        }
    });
}

/// Seqs `1..=max` minus those received: what never arrived.
fn missing_seqs(got: &BTreeMap<u64, (Vec<u8>, Value)>) -> Vec<u64> {
    let max = got.keys().next_back().copied().unwrap_or(0);
    (1..=max).filter(|s| !got.contains_key(s)).collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The records still unacknowledged in a stopped agent's spool (read from a copy).
fn unshipped(spool: &Path, scratch: &Path) -> Vec<(u64, Vec<u8>)> {
    copy_spool(spool, scratch, true);
    spool_contents(scratch)
}

fn status_u64(status: &Value, path: &str) -> u64 {
    status
        .pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("status.json has no number at {path}: {status}"))
}

// ---------------------------------------------------------------------------------------
// Down, then back

#[test]
fn records_collected_while_the_collector_is_down_are_all_delivered_in_order_once_it_is_back() {
    let devices = rack(4);
    let collector = Collector::start();
    collector.set_mode(Mode::Down);
    let dir = TempDir::new("up-down").unwrap();
    let setup = setup(
        &dir,
        &devices,
        &["show version", "show clock"],
        http_upstream(
            &collector.url(),
            &[
                "timeout = \"2s\"",
                "batch_max_records = 20",
                "batch_max_age = \"200ms\"",
            ],
        ),
    );
    let config = setup.write(dir.path());
    let mut agent = Agent::start(&config, &setup.state_dir);

    // The outage lasts until the agent has failed three times (≈ 2–5 s with its 1 s, 2 s, 4 s
    // backoff) and has records waiting.
    let down = agent.wait_status("three failed attempts and 30 records waiting", STEP, |s| {
        s["upstream"]["consecutive_failures"].as_u64() >= Some(3)
            && s["spool"]["records"].as_u64() >= Some(30)
    });
    assert_eq!(down["upstream"]["state"], "retrying", "{down}");
    let error = down["upstream"]["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("refused"), "last_error says why: {error}");
    assert_eq!(collector.post_count(), 0, "nothing got through while down");
    let waiting = spool_contents_now(&setup.spool_dir(), &dir.join("copy-down"));
    assert!(waiting.len() >= 30, "{} records spooled", waiting.len());

    let back = Instant::now();
    collector.set_mode(Mode::Accept);
    let mut missing = Vec::new();
    let caught_up = poll_until(deadline(STEP), || {
        let got = received(&collector);
        missing = waiting
            .iter()
            .filter(|(s, _)| !got.contains_key(s))
            .map(|(s, _)| *s)
            .collect();
        missing.is_empty()
    });
    assert!(
        caught_up,
        "{} of {} records spooled during the outage never arrived within {STEP:?}: {:?}\nlog:\n{}",
        missing.len(),
        waiting.len(),
        &missing[..missing.len().min(20)],
        agent.stderr()
    );
    let catch_up = back.elapsed();
    // And it keeps up afterwards: a record collected now arrives within seconds.
    let last_before = received(&collector)
        .keys()
        .next_back()
        .copied()
        .unwrap_or(0);
    assert!(
        poll_until(deadline(STEP), || {
            received(&collector)
                .keys()
                .next_back()
                .copied()
                .unwrap_or(0)
                > last_before + 20
        }),
        "no new records after the catch-up"
    );
    let status = agent.stop();
    assert!(status.success(), "exit {status}; log:\n{}", agent.stderr());
    agent.assert_no_panic("down then up");

    assert_batches(&collector);
    let got = received(&collector);
    for (seq, payload) in &waiting {
        assert_eq!(
            got.get(seq).map(|(l, _)| l),
            Some(payload),
            "record {seq} differs at the collector from the spool"
        );
    }
    let missing = missing_seqs(&got);
    assert!(
        missing.is_empty(),
        "seqs missing at the collector (one run: seqs have no holes): {missing:?}"
    );
    // After the drain the spool is empty, on disk and in the final status.
    let left = unshipped(&setup.spool_dir(), &dir.join("copy-end"));
    assert!(
        left.is_empty(),
        "{} records left in the spool after a clean stop",
        left.len()
    );
    let last = read_status(&setup.state_dir).expect("status.json at shutdown");
    assert_eq!(status_u64(&last, "/spool/records"), 0, "{last}");
    assert!(
        status_u64(&last, "/upstream/shipped_records") >= got.len() as u64,
        "{last}"
    );
    println!(
        "down then up: {} records, {} waited through the outage, delivered {:.1} s after the collector was back, {} POSTs",
        got.len(),
        waiting.len(),
        catch_up.as_secs_f64(),
        collector.post_count()
    );
}

/// The records in a running agent's spool now, acknowledged or not (a copy of its files).
fn spool_contents_now(spool: &Path, scratch: &Path) -> Vec<(u64, Vec<u8>)> {
    copy_spool(spool, scratch, false);
    spool_contents(scratch)
}

// ---------------------------------------------------------------------------------------
// Slow

#[test]
fn a_collector_slower_than_the_timeout_gets_few_attempts_spaced_by_the_backoff() {
    let devices = rack(2);
    let collector = Collector::start();
    // Answers (200) only after 3 s; the agent gives up after 1 s each time.
    collector.set_mode(Mode::Slow(Duration::from_secs(3)));
    let dir = TempDir::new("up-slow").unwrap();
    let setup = setup(
        &dir,
        &devices,
        &["show clock"],
        http_upstream(
            &collector.url(),
            &["timeout = \"1s\"", "batch_max_age = \"200ms\""],
        ),
    );
    let config = setup.write(dir.path());
    let mut agent = Agent::start(&config, &setup.state_dir);

    assert!(
        poll_until(deadline(STEP), || collector.post_count() > 0),
        "no POST within {STEP:?}; log:\n{}",
        agent.stderr()
    );
    let first = collector.with_posts(|p| p[0].at);
    let window = Duration::from_secs(8);
    let status = agent.wait_status(
        "upstream retrying with a timeout as last error",
        STEP,
        |s| {
            s["upstream"]["state"] == "retrying"
                && s["upstream"]["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("did not answer"))
        },
    );
    let error = status["upstream"]["last_error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(error.contains("1.0s"), "names the timeout: {error}");
    // Watch the whole window (the wait is the test: attempts are counted over it).
    std::thread::sleep((first + window).saturating_duration_since(Instant::now()));
    let attempts: Vec<(Instant, Option<String>)> = collector.with_posts(|posts| {
        posts
            .iter()
            .filter(|p| p.at <= first + window)
            .map(|p| (p.at, p.key.clone()))
            .collect()
    });

    // Each attempt costs the 1 s timeout, then a full-jitter wait in [0.1 s, ceiling] with
    // ceilings 1, 2, 4, 8 s: a 7th attempt within 8 s of the first needs six waits summing
    // to under 2 s (probability about 5e-6, by simulation of that backoff); retrying without
    // backoff would make 9, with a fixed 0.1 s pause 8.
    let most = 6;
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1].0 - w[0].0).collect();
    assert!(
        (2..=most).contains(&attempts.len()),
        "{} attempts in {window:?} (at most {most}); gaps {gaps:?}",
        attempts.len()
    );
    for (i, gap) in gaps.iter().enumerate() {
        // The timeout plus the backoff's floor (a tenth of its 1 s base), less scheduling slack.
        assert!(
            *gap >= Duration::from_millis(1100 - 50),
            "attempt {} came {gap:?} after the one before: no backoff after a timeout",
            i + 2
        );
    }
    let keys: BTreeSet<_> = attempts.iter().map(|(_, k)| k.clone()).collect();
    assert_eq!(
        keys.len(),
        1,
        "one batch in flight, sent again with its key: {keys:?}"
    );

    // The collector recovers: everything arrives, the stale resends included only as exact
    // copies.
    collector.set_mode(Mode::Accept);
    let upto = received(&collector)
        .keys()
        .next_back()
        .copied()
        .unwrap_or(0)
        + 10;
    assert!(
        poll_until(deadline(STEP), || {
            let got = received(&collector);
            got.keys().next_back().copied().unwrap_or(0) > upto
        }),
        "nothing new arrived after the collector recovered; log:\n{}",
        agent.stderr()
    );
    let exit = agent.stop();
    assert!(exit.success(), "exit {exit}");
    agent.assert_no_panic("slow collector");
    assert_batches(&collector);
    let got = received(&collector);
    assert!(missing_seqs(&got).is_empty(), "{:?}", missing_seqs(&got));
    println!(
        "slow collector: {} attempts in {window:?}, gaps {gaps:?}; then {} records delivered",
        attempts.len(),
        got.len()
    );
}

#[test]
fn a_collector_answering_429_with_retry_after_is_not_asked_again_sooner() {
    let devices = rack(2);
    let collector = Collector::start();
    collector.set_mode(Mode::Throttle { retry_after: 2 });
    let dir = TempDir::new("up-429").unwrap();
    let setup = setup(
        &dir,
        &devices,
        &["show clock"],
        http_upstream(
            &collector.url(),
            &["timeout = \"2s\"", "batch_max_age = \"200ms\""],
        ),
    );
    let config = setup.write(dir.path());
    let mut agent = Agent::start(&config, &setup.state_dir);
    assert!(
        poll_until(deadline(STEP), || collector.post_count() >= 3),
        "fewer than 3 POSTs within {STEP:?}; log:\n{}",
        agent.stderr()
    );
    let status = agent.wait_status("retrying after a 429", STEP, |s| {
        s["upstream"]["state"] == "retrying"
            && s["upstream"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("429"))
    });
    let times: Vec<Instant> = collector.with_posts(|p| p.iter().map(|p| p.at).collect());
    for (i, pair) in times.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(2000 - 50),
            "attempt {} came {gap:?} after a 429 that said Retry-After: 2",
            i + 2
        );
    }
    collector.set_mode(Mode::Accept);
    let upto = received(&collector)
        .keys()
        .next_back()
        .copied()
        .unwrap_or(0)
        + 10;
    assert!(
        poll_until(deadline(STEP), || {
            received(&collector)
                .keys()
                .next_back()
                .copied()
                .unwrap_or(0)
                > upto
        }),
        "nothing new arrived once the collector took batches again; log:\n{}",
        agent.stderr()
    );
    let exit = agent.stop();
    assert!(exit.success(), "exit {exit}");
    agent.assert_no_panic("429");
    assert_batches(&collector);
    let got = received(&collector);
    assert!(missing_seqs(&got).is_empty(), "{:?}", missing_seqs(&got));
    println!(
        "429: {} throttled attempts, last error {}; then {} records delivered",
        times.len(),
        status["upstream"]["last_error"],
        got.len()
    );
}

// ---------------------------------------------------------------------------------------
// Spool full

/// Large outputs (`show interfaces` is 12 KB) from 6 devices fill 256 KiB in about a second.
const FILLING: &[&str] = &["show interfaces", "show version"];

/// What a drop_oldest run left at the collector.
struct DropRun {
    collector: Collector,
    /// First arrival per seq.
    got: BTreeMap<u64, (Vec<u8>, Value)>,
    gaps: Vec<Value>,
    /// The agent's log.
    log: String,
}

/// 6 devices filling a 256 KiB drop_oldest spool while the collector is down, until
/// `status.json` counts `dropped` records lost; then the collector comes back, and once a
/// record collected after that and a gap record have arrived, SIGTERM.
fn drop_oldest_run(tag: &str, dropped: u64) -> DropRun {
    let devices = rack(6);
    let collector = Collector::start();
    collector.set_mode(Mode::Down);
    let dir = TempDir::new(tag).unwrap();
    let setup = setup(
        &dir,
        &devices,
        FILLING,
        http_upstream(
            &collector.url(),
            &[
                "timeout = \"2s\"",
                "batch_max_age = \"200ms\"",
                "spool_max_bytes = \"256KiB\"",
                "spool_full = \"drop_oldest\"",
            ],
        ),
    );
    let config = setup.write(dir.path());
    let mut agent = Agent::start(&config, &setup.state_dir);

    let full = agent.wait_status(&format!("{dropped} dropped records"), STEP, |s| {
        s["spool"]["dropped_records"].as_u64() >= Some(dropped)
    });
    assert_eq!(full["spool"]["full_policy"], "drop_oldest", "{full}");
    assert!(
        status_u64(&full, "/spool/bytes") <= 256 * 1024,
        "the spool stays within its bound: {full}"
    );
    let up_at = now_ms();
    collector.set_mode(Mode::Accept);

    let mut seen = Vec::new();
    let arrived = poll_until(deadline(STEP), || {
        seen = gap_records(&collector);
        let newer = received(&collector)
            .values()
            .any(|(_, r)| r["status"] == "ok" && started_ms(r) >= up_at);
        newer && !seen.is_empty()
    });
    assert!(
        arrived,
        "no gap record, or no record collected after the collector came back, within {STEP:?}; gaps: {seen:?}\nlog:\n{}",
        agent.stderr()
    );
    let status = agent.stop();
    assert!(status.success(), "exit {status}; log:\n{}", agent.stderr());
    agent.assert_no_panic("drop_oldest");
    assert_batches(&collector);
    let got = received(&collector);
    let gaps = gap_records(&collector);
    let log = agent.stderr();
    DropRun {
        collector,
        got,
        gaps,
        log,
    }
}

#[test]
fn a_full_spool_with_drop_oldest_loses_the_oldest_keeps_the_newest_and_sends_a_gap_record() {
    let run = drop_oldest_run("up-drop", 1);
    for g in &run.gaps {
        assert_gap_fields(g, "drop_oldest");
        assert!(g["error"].as_str().unwrap().contains("dropped"), "{g}");
        assert!(g["gap"]["dropped_records"].as_u64() > Some(0), "{g}");
        assert!(g["gap"]["dropped_bytes"].as_u64() > Some(0), "{g}");
    }
    let missing = missing_seqs(&run.got);
    assert!(
        !missing.is_empty(),
        "nothing was lost: the spool never filled"
    );
    // The oldest went: everything lost is older than the last gap record, and the newest
    // records arrived (checked in `drop_oldest_run`).
    let last_gap = run.gaps.last().unwrap()["seq"].as_u64().unwrap();
    assert!(
        missing.iter().all(|s| *s < last_gap),
        "{missing:?}, last gap record {last_gap}"
    );
    println!(
        "drop_oldest: {} records delivered, {} lost, {} gap record(s)",
        run.got.len(),
        missing.len(),
        run.gaps.len()
    );
}

/// The receiver must be able to tell how much was lost from the gap records alone: the seqs
/// it never got are exactly as many as the gap records it got say were dropped. The outage
/// lasts until about 7 segments (60 records) went, so drops hit records the shipper holds
/// in its batch in flight, and earlier gap records themselves.
#[test]
fn the_gap_records_a_receiver_gets_count_exactly_the_records_drop_oldest_lost() {
    let run = drop_oldest_run("up-drop-count", 60);
    let reported: u64 = run
        .gaps
        .iter()
        .map(|g| g["gap"]["dropped_records"].as_u64().unwrap_or(0))
        .sum();
    let missing = missing_seqs(&run.got);
    assert_eq!(
        missing.len() as u64,
        reported,
        "{} seqs never arrived, the gap records received report {reported} dropped:\n{}\nmissing: {:?}\nbatches: {}\nlog:\n{}",
        missing.len(),
        run.gaps.iter().map(brief).collect::<Vec<_>>().join("\n"),
        missing,
        batch_keys(&run.collector),
        run.log
    );
}

#[test]
fn a_full_spool_with_block_pauses_collections_then_resumes_and_reports_the_pause() {
    let devices = rack(6);
    let collector = Collector::start();
    collector.set_mode(Mode::Down);
    let dir = TempDir::new("up-block").unwrap();
    let setup = setup(
        &dir,
        &devices,
        FILLING,
        http_upstream(
            &collector.url(),
            &[
                "timeout = \"2s\"",
                "batch_max_age = \"200ms\"",
                "spool_max_bytes = \"256KiB\"",
                "spool_full = \"block\"",
            ],
        ),
    );
    let config = setup.write(dir.path());
    let mut agent = Agent::start(&config, &setup.state_dir);

    let paused = agent.wait_status("paused collections", STEP, |s| {
        s["spool"]["paused"] == true && s["spool"]["paused_collections"].as_u64() > Some(0)
    });
    assert_eq!(paused["spool"]["full_policy"], "block", "{paused}");
    assert_eq!(paused["spool"]["dropped_records"], 0, "{paused}");
    // While paused the devices are left alone: the sessions the simulator sees stop growing.
    let stats = devices.stats();
    let sessions = stats.total();
    // Nothing to wait for: the test is that nothing happens for a while (5 intervals).
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        stats.total() <= sessions + devices.addrs().len() as u64,
        "collections went on while paused: {} sessions, then {}",
        sessions,
        stats.total()
    );

    let up_at = now_ms();
    collector.set_mode(Mode::Accept);
    let mut seen = Vec::new();
    let resumed = poll_until(deadline(STEP), || {
        seen = gap_records(&collector);
        let newer = received(&collector)
            .values()
            .any(|(_, r)| r["status"] == "ok" && started_ms(r) >= up_at);
        newer && !seen.is_empty()
    });
    assert!(
        resumed,
        "no gap record, or no collection after the collector came back, within {STEP:?}; gaps: {seen:?}\nlog:\n{}",
        agent.stderr()
    );
    let resumed_status = agent.wait_status("not paused", STEP, |s| s["spool"]["paused"] == false);
    let status = agent.stop();
    assert!(status.success(), "exit {status}; log:\n{}", agent.stderr());
    agent.assert_no_panic("block");
    assert_batches(&collector);

    let got = received(&collector);
    let gaps = gap_records(&collector);
    for g in &gaps {
        assert_gap_fields(g, "block");
        assert!(g["error"].as_str().unwrap().contains("paused"), "{g}");
    }
    let not_started: u64 = gaps
        .iter()
        .map(|g| g["gap"]["paused_collections"].as_u64().unwrap())
        .sum();
    assert!(not_started > 0, "{gaps:?}");
    // Block loses nothing that was collected.
    let missing = missing_seqs(&got);
    assert!(missing.is_empty(), "block lost records: {missing:?}");
    println!(
        "block: {} records delivered, none lost; {} collections not started while paused ({} gap record(s)); status after: {}",
        got.len(),
        not_started,
        gaps.len(),
        resumed_status["spool"]
    );
}

/// The distinct batches received, in order of first arrival: `first-last`.
fn batch_keys(collector: &Collector) -> String {
    collector.with_posts(|posts| {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for p in posts {
            let key = p.key.clone().unwrap_or_default();
            if seen.insert(key.clone()) {
                out.push(key.rsplit(':').next().unwrap_or("").to_string());
            }
        }
        out.join(" ")
    })
}

fn started_ms(r: &Value) -> u64 {
    r["started_at"].as_str().and_then(rfc3339_ms).unwrap_or(0)
}

/// A gap record as issue 5 describes it.
fn assert_gap_fields(g: &Value, policy: &str) {
    assert_eq!(g["status"], "gap", "{g}");
    assert_eq!(g["device"], AGENT_ID, "{g}");
    assert_eq!(g["transport"], "agent", "{g}");
    assert_eq!(g["command"], "spool", "{g}");
    assert!(
        g["error"].as_str().is_some_and(|e| !e.is_empty()),
        "says what happened in words: {g}"
    );
    assert_eq!(g["gap"]["policy"], policy, "{g}");
    for field in ["dropped_records", "dropped_bytes", "paused_collections"] {
        assert!(g["gap"][field].is_u64(), "gap.{field}: {g}");
    }
}

// ---------------------------------------------------------------------------------------
// No [upstream]: the file sink in state_dir/outbox, through the spool

#[test]
fn without_upstream_every_record_goes_through_the_spool_to_ndjson_in_state_dir_outbox() {
    let devices = rack(2);
    let dir = TempDir::new("up-default").unwrap();
    let setup = setup(&dir, &devices, &["show version", "show clock"], Vec::new());
    let config = setup.write(dir.path());
    let mut agent = Agent::start(&config, &setup.state_dir);
    let outbox = setup.state_dir.join("outbox");
    let mut lines = Vec::new();
    assert!(
        poll_until(deadline(STEP), || {
            lines = outbox_lines(&outbox);
            lines.len() >= 20
        }),
        "the outbox holds {} records after {STEP:?}; log:\n{}",
        lines.len(),
        agent.stderr()
    );
    let status = agent.stop();
    assert!(status.success(), "exit {status}; log:\n{}", agent.stderr());
    agent.assert_no_panic("default sink");

    let lines = outbox_lines(&outbox);
    let mut got = BTreeMap::new();
    for line in &lines {
        let r: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let seq = r["seq"].as_u64().unwrap();
        assert_eq!(r["id"], format!("{AGENT_ID}:{seq}"));
        assert_eq!(r["status"], "ok", "{line}");
        got.insert(seq, (line.as_bytes().to_vec(), r));
    }
    let missing = missing_seqs(&got);
    assert!(
        missing.is_empty(),
        "seqs missing in the outbox: {missing:?}"
    );
    let left = unshipped(&setup.spool_dir(), &dir.join("copy-end"));
    assert!(left.is_empty(), "{} records left in the spool", left.len());
    let last = read_status(&setup.state_dir).expect("status.json at shutdown");
    assert_eq!(last["upstream"]["sink"], "file", "{last}");
    assert_eq!(status_u64(&last, "/spool/records"), 0, "{last}");
}

/// Every complete line of every `.ndjson` file in the outbox.
fn outbox_lines(outbox: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(outbox) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("ndjson") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
        out.extend(complete.lines().map(String::from));
    }
    out
}
