//! Issue 5's crash acceptance: `rackhand run` is killed with SIGKILL at random moments under
//! sustained load, again and again, while the collector it ships to is up, down, failing or
//! slow; each time it is simply started again. At the end the collector must hold every
//! record whose collection had completed, each `id` always with the same content.
//!
//! "Completed" is what the spool holds: just before each kill the test copies the files of
//! `state_dir/spool`. A SIGKILL takes the process, not the kernel, so everything the agent
//! had written is still there for the next start, and every record in such a copy (read back
//! with the library's own `Spool`, which repairs a torn tail as the agent does) must reach
//! the collector, byte for byte. Records the agent still held in memory at the kill were not
//! collected yet as far as the contract goes.
//!
//! Everything is real: the `rackhand` binary, simulated Cisco IOS devices on loopback Telnet
//! ports, an HTTP collector on loopback. The random moments and collector modes come from a
//! seed printed at the start; `RACKHAND_KILL_SEED=<seed>` replays a run.
//! `RACKHAND_KILL_CYCLES` sets the number of kills (50 by default, for CI).
//!
//! The long soak (500 kills): `scripts/soak`.

use crate::support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use rackhand::sim::{Profile, TelnetRack};

use support::agent::{Agent, Dev, Rng, Setup, copy_spool, http_upstream, spool_contents};
use support::collector::{Collector, Mode, batch_problems};
use support::{TempDir, deadline, loopback_any_port, poll_until};

const AGENT_ID: &str = "rack-k9";
const DEVICES: usize = 12;
/// How long the restarted agent may take to deliver the backlog of all the kills.
const CATCH_UP: Duration = Duration::from_secs(90);

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// The collector's mode for one cycle: mostly up, often down or failing, sometimes slower
/// than the agent's 1 s timeout (it keeps the batch but the agent never hears the 200).
fn pick_mode(rng: &mut Rng) -> Mode {
    match rng.range(0, 100) {
        0..50 => Mode::Accept,
        50..70 => Mode::Down,
        70..80 => Mode::Status(503),
        80..85 => Mode::Throttle { retry_after: 1 },
        _ => Mode::Slow(Duration::from_millis(1500)),
    }
}

#[test]
fn kill_9_at_random_moments_under_load_loses_no_completed_record() {
    let started = Instant::now();
    let cycles = env_u64("RACKHAND_KILL_CYCLES").unwrap_or(50);
    let seed = env_u64("RACKHAND_KILL_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    println!("kill -9 test: {cycles} cycles, seed {seed} (RACKHAND_KILL_SEED={seed} replays)");
    let mut rng = Rng::new(seed);

    let rack = TelnetRack::start(
        loopback_any_port(),
        DEVICES,
        Profile::for_platform("cisco_ios").unwrap(),
    )
    .expect("start the simulated rack");
    let collector = Collector::start();
    let dir = TempDir::new("kill9").unwrap();
    let setup = Setup {
        agent_id: AGENT_ID.into(),
        workers: DEVICES,
        state_dir: dir.join("state"),
        interval: "300ms".into(),
        commands: vec![
            "show version".into(),
            "show clock".into(),
            "show ip interface brief".into(),
        ],
        upstream: http_upstream(
            &collector.url(),
            &[
                "timeout = \"1s\"",
                "batch_max_records = 100",
                "batch_max_age = \"200ms\"",
            ],
        ),
        devices: rack
            .addrs()
            .iter()
            .map(|(name, addr)| Dev::telnet(name, *addr))
            .collect(),
    };
    let config = setup.write(dir.path());
    let spool_dir = setup.spool_dir();

    // seq → the record's bytes in the spool, from every copy taken before a kill.
    let mut needed: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut modes: BTreeMap<String, u32> = BTreeMap::new();
    let mut killed_before_any_post = 0;
    // Records in a copy that had not reached the collector when the agent was killed: the
    // ones only the next start could deliver.
    let mut caught_in_flight = BTreeSet::new();
    for cycle in 0..cycles {
        let mode = pick_mode(&mut rng);
        *modes.entry(format!("{mode:?}")).or_default() += 1;
        collector.set_mode(mode);
        let posts_before = collector.post_count();
        let mut agent = Agent::start(&config, &setup.state_dir);
        // The random moment of the kill: there is no event to wait for, that is the point.
        let life = Duration::from_millis(rng.range(100, 1500));
        std::thread::sleep(life);

        let copy = dir.join(&format!("spool-copy-{cycle}"));
        copy_spool(&spool_dir, &copy, false);
        if let Err(status) = agent.check_running() {
            panic!(
                "cycle {cycle} (seed {seed}, collector {mode:?}, {life:?}): the agent exited by itself ({status}) before the kill; log:\n{}",
                agent.stderr()
            );
        }
        let status = agent.kill9();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "cycle {cycle}: {status}"
        );
        agent.assert_no_panic(&format!("cycle {cycle} (seed {seed})"));
        if collector.post_count() == posts_before {
            killed_before_any_post += 1;
        }
        let at_collector = received_seqs(&collector);
        let copied = spool_contents(&copy);
        caught_in_flight.extend(
            copied
                .iter()
                .map(|(seq, _)| *seq)
                .filter(|seq| !at_collector.contains_key(seq)),
        );
        for (seq, payload) in copied {
            if let Some(earlier) = needed.get(&seq) {
                assert_eq!(
                    earlier, &payload,
                    "cycle {cycle} (seed {seed}): record {seq} changed in the spool between two kills"
                );
            } else {
                needed.insert(seq, payload);
            }
        }
        let _ = std::fs::remove_dir_all(&copy);
        if (cycle + 1) % 50 == 0 {
            println!(
                "  {} kills, {} records spooled so far, {:.0} s",
                cycle + 1,
                needed.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }

    // The uplink is fine again: one more start delivers the backlog of every kill.
    collector.set_mode(Mode::Accept);
    let mut agent = Agent::start(&config, &setup.state_dir);
    let mut missing = Vec::new();
    let delivered = poll_until(deadline(CATCH_UP), || {
        let got = received_seqs(&collector);
        missing = needed
            .keys()
            .filter(|s| !got.contains_key(s))
            .copied()
            .collect();
        missing.is_empty()
    });
    let status = agent.stop();
    agent.assert_no_panic("the final run");
    assert!(
        delivered,
        "seed {seed}: {} of {} spooled records never reached the collector within {CATCH_UP:?} (first: {:?}); agent log:\n{}",
        missing.len(),
        needed.len(),
        &missing[..missing.len().min(20)],
        agent.stderr()
    );
    assert!(status.success(), "the final run ended with {status}");

    // What the collector holds, judged whole.
    assert_eq!(
        collector.overflowed(),
        0,
        "the collector's memory bound was hit"
    );
    let problems = collector.with_posts(|posts| batch_problems(posts, AGENT_ID));
    assert!(
        problems.is_empty(),
        "seed {seed}: {} problems in the batches received:\n{}",
        problems.len(),
        problems[..problems.len().min(30)].join("\n")
    );
    let (lines, by_seq, conflicts) = collector.with_posts(|posts| {
        let mut first: HashMap<u64, &[u8]> = HashMap::new();
        let mut conflicts = Vec::new();
        let mut lines = 0usize;
        for post in posts {
            for (line, record) in post.lines.iter().zip(&post.records) {
                lines += 1;
                let Some(seq) = record["seq"].as_u64() else {
                    continue;
                };
                match first.get(&seq) {
                    Some(seen) if *seen != line.as_slice() => conflicts.push(format!(
                        "{AGENT_ID}:{seq} arrived as\n  {}\nand as\n  {}",
                        String::from_utf8_lossy(seen),
                        String::from_utf8_lossy(line)
                    )),
                    Some(_) => {}
                    None => {
                        first.insert(seq, line);
                    }
                }
            }
        }
        let by_seq: HashMap<u64, Vec<u8>> =
            first.into_iter().map(|(s, l)| (s, l.to_vec())).collect();
        (lines, by_seq, conflicts)
    });
    assert!(
        conflicts.is_empty(),
        "seed {seed}: an id arrived with different contents:\n{}",
        conflicts[..conflicts.len().min(5)].join("\n")
    );
    for (seq, payload) in &needed {
        assert_eq!(
            by_seq.get(seq).map(Vec::as_slice),
            Some(payload.as_slice()),
            "seed {seed}: record {seq} differs at the collector from the spool"
        );
    }
    println!(
        "kill -9 test: {cycles} kills (seed {seed}), collector modes {modes:?}; {} killed before any POST; \
         {} records spooled before a kill, {} of them not yet delivered when killed; \
         {} distinct records at the collector, {} duplicates; {:.1} s",
        killed_before_any_post,
        needed.len(),
        caught_in_flight.len(),
        by_seq.len(),
        lines - by_seq.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        needed.len() as u64 >= cycles && !caught_in_flight.is_empty(),
        "the test proved nothing: {} records in {cycles} cycles, {} of them undelivered at a kill",
        needed.len(),
        caught_in_flight.len()
    );
}

/// seq → how often it arrived.
fn received_seqs(collector: &Collector) -> HashMap<u64, usize> {
    collector.with_posts(|posts| {
        let mut out = HashMap::new();
        for post in posts {
            for r in &post.records {
                if let Some(seq) = r["seq"].as_u64() {
                    *out.entry(seq).or_default() += 1;
                }
            }
        }
        out
    })
}
