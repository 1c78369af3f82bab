//! Change-only shipping (issue 13): what it saves and what it costs.
//!
//! 1. Bytes: 200 devices × 4 commands shipped `on_change` (a realistic IOS running-config
//!    whose volatile header lines move every run, `show version` whose uptime line moves,
//!    `show inventory` and `show ip interface brief` from the real captures), collected every
//!    15 minutes for a simulated day (96 runs) with no real change, `full_every = "24h"`.
//!    The records go through the real `Batcher` (default limits) and `ChangeFilter` (its
//!    baselines in a temp `state_dir`), every batch acknowledged. Reported: the NDJSON bytes
//!    as spooled (= what `always` ships) and as shaped, raw and gzipped (the http sink gzips
//!    each batch), and the ratio; plus the CPU time of shaping the whole day.
//! 2. CPU: normalising + digesting a 200 KB running-config, and diffing two 200 KB outputs
//!    with 5 changed lines (and two that differ everywhere, bounded by the diff deadline and
//!    the cap): the median of `BENCH_CHANGE_RUNS` (31) runs each.
//!
//! Run: `cargo bench --bench change`. Prints markdown; docs/change.md keeps the last figures.

use std::io::Write as _;
use std::time::{Duration, Instant, UNIX_EPOCH};

use flate2::Compression;
use flate2::write::GzEncoder;
use rackhand::batch::{Batch, BatchLimits, Batcher};
use rackhand::change::{
    ChangeFilter, ChangePolicy, MAX_DIFF_BYTES, Normaliser, digest, unified_diff,
};
use rackhand::inventory::{ShipMode, ShipRule};
use serde_json::json;

const DEVICES: usize = 200;
const RUNS: u64 = 96;
const T0: u64 = 1_795_600_800_000;
const RUN_EVERY_MS: u64 = 15 * 60 * 1000;

const IOS_VERSION: &str = include_str!("../src/sim/captures/cisco_ios/show_version.txt");
const IOS_INVENTORY: &str = include_str!("../src/sim/captures/cisco_ios/show_inventory.txt");
const IOS_BRIEF: &str = include_str!("../src/sim/captures/cisco_ios/show_ip_interface_brief.txt");

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// An IOS switch's running-config of about `interfaces` × 330 bytes plus the rest; the header
/// lines carry `run`'s time (they move every run, as on a device that is written to memory
/// or whose NTP drift is learnt).
fn running_config(device: usize, run: u64, interfaces: usize) -> String {
    let at = format!(
        "{:02}:{:02}:{:02}",
        (run / 4) % 24,
        (run % 4) * 15,
        device % 60
    );
    let mut c = String::with_capacity(interfaces * 340 + 4000);
    c.push_str(&format!(
        "Building configuration...\n\nCurrent configuration : {} bytes\n!\n\
         ! Last configuration change at {at} UTC Tue Mar 3 2026 by netops\n\
         ! NVRAM config last updated at {at} UTC Tue Mar 3 2026 by netops\n!\n\
         version 15.2\nservice timestamps debug datetime msec\nservice timestamps log datetime msec\n\
         service password-encryption\n!\nhostname fra-a12-sw{device:03}\n!\nboot-start-marker\nboot-end-marker\n!\n\
         logging buffered 64000\nenable secret 5 $1$abcd$0123456789abcdefghij\n!\nusername netops privilege 15 secret 5 $1$wxyz$abcdefghij0123456789\n\
         aaa new-model\n!\nclock timezone UTC 0 0\nip domain-name rack.example\n!\nspanning-tree mode rapid-pvst\nspanning-tree extend system-id\n!\n",
        30_000 + run * 7
    ));
    for vlan in [10, 20, 30, 40, 100, 200] {
        c.push_str(&format!("vlan {vlan}\n name rack-{vlan}\n!\n"));
    }
    for i in 1..=interfaces {
        c.push_str(&format!(
            "interface GigabitEthernet1/0/{i}\n description server-{device:03}-{i:02} eth0 (rack A12 U{i})\n \
             switchport access vlan {}\n switchport mode access\n switchport port-security maximum 2\n \
             switchport port-security\n spanning-tree portfast edge\n spanning-tree bpduguard enable\n \
             storm-control broadcast level 1.00\n no cdp enable\n!\n",
            [10, 20, 30, 40][i % 4]
        ));
    }
    c.push_str("interface Vlan100\n ip address 10.12.100.2 255.255.255.0\n no ip redirects\n!\n");
    for i in 0..40 {
        c.push_str(&format!(
            "access-list 110 permit tcp 10.12.{i}.0 0.0.0.255 any eq 22\n"
        ));
    }
    c.push_str(&format!(
        "!\nsnmp-server community ro-secret RO 99\nsnmp-server location Frankfurt A12\n!\n\
         ntp clock-period {}\nntp server 10.0.0.1\nntp server 10.0.0.2\n!\nline con 0\n exec-timeout 15 0\n\
         line vty 0 4\n transport input ssh\n!\nend\n",
        17_179_860 + (run * 13 + device as u64) % 40
    ));
    c
}

/// `show version` with its uptime line moved on by `run` quarters of an hour.
fn show_version(device: usize, run: u64) -> String {
    let minutes = 55 + run * 15 + device as u64;
    IOS_VERSION.replace(
        "router1 uptime is 2 years, 31 weeks, 6 days, 9 hours, 55 minutes",
        &format!(
            "fra-a12-sw{device:03} uptime is 2 years, 31 weeks, {} days, {} hours, {} minutes",
            minutes / 1440 % 7,
            minutes / 60 % 24,
            minutes % 60
        ),
    )
}

struct Day {
    always_raw: u64,
    always_gz: u64,
    shaped_raw: u64,
    shaped_gz: u64,
    records: u64,
    whole: u64,
    shape_time: Duration,
}

fn gz_len(body: &[u8]) -> u64 {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(body).unwrap();
    gz.finish().unwrap().len() as u64
}

fn ship_day() -> Day {
    let state = tempfile::tempdir().unwrap();
    let commands = [
        "show running-config",
        "show version",
        "show inventory",
        "show ip interface brief",
    ];
    let rule = ShipRule {
        mode: ShipMode::OnChange,
        ignore: vec![],
        full_every: Duration::from_secs(24 * 3600),
    };
    let mut policy = ChangePolicy::default();
    for d in 0..DEVICES {
        for c in commands {
            policy.add(&format!("fra-a12-sw{d:03}"), "cisco_ios", c, &rule);
        }
    }
    let mut filter = ChangeFilter::open(state.path(), policy);
    let limits = BatchLimits {
        max_records: 500,
        max_bytes: 1 << 20,
        max_age: Duration::from_secs(5),
        jitter: 0.0,
    };
    let mut batcher = Batcher::new("rack-a12", limits, 0);
    let mut day = Day {
        always_raw: 0,
        always_gz: 0,
        shaped_raw: 0,
        shaped_gz: 0,
        records: 0,
        whole: 0,
        shape_time: Duration::ZERO,
    };
    let mut seq = 0;
    let mut send = |batch: Batch, day: &mut Day| {
        day.always_raw += batch.body().len() as u64;
        day.always_gz += gz_len(batch.body());
        let start = Instant::now();
        let shaped = filter.shape(&batch);
        filter.delivered(&[]);
        day.shape_time += start.elapsed();
        day.shaped_raw += shaped.body().len() as u64;
        day.shaped_gz += gz_len(shaped.body());
        day.records += shaped.len() as u64;
    };
    for run in 0..RUNS {
        for d in 0..DEVICES {
            let started = T0 + run * RUN_EVERY_MS + d as u64 * 4000;
            let outputs = [
                running_config(d, run, 52),
                show_version(d, run),
                IOS_INVENTORY.to_string(),
                IOS_BRIEF.to_string(),
            ];
            for (c, output) in commands.iter().zip(outputs) {
                seq += 1;
                let record = json!({
                    "id": format!("rack-a12:{seq}"), "agent": "rack-a12", "seq": seq,
                    "device": format!("fra-a12-sw{d:03}"), "transport": "ssh", "command": c,
                    "status": "ok", "error": null, "output": output,
                    "started_at": rackhand::record::rfc3339_millis(UNIX_EPOCH + Duration::from_millis(started)),
                    "duration_ms": 412, "clock_synced": true
                });
                let line = serde_json::to_vec(&record).unwrap();
                for batch in batcher.push(seq, &line, Instant::now()).unwrap() {
                    send(batch, &mut day);
                }
            }
        }
        if let Some(batch) = batcher.flush() {
            send(batch, &mut day);
        }
    }
    let counts = filter.counts();
    day.whole = counts.shaped - counts.unchanged;
    day
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    median(
        (0..runs)
            .map(|_| {
                let start = Instant::now();
                std::hint::black_box(f());
                start.elapsed()
            })
            .collect(),
    )
}

fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1 << 20) as f64)
}

fn main() {
    let runs = env_or("BENCH_CHANGE_RUNS", 31);
    let day = ship_day();
    println!(
        "## Change-only shipping: {DEVICES} devices × 4 commands every 15 min, {RUNS} runs, no real change\n"
    );
    println!("| | always | on_change | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| NDJSON bytes | {} | {} | {:.1} × |",
        mib(day.always_raw),
        mib(day.shaped_raw),
        day.always_raw as f64 / day.shaped_raw as f64
    );
    println!(
        "| gzipped per batch | {} | {} | {:.1} × |",
        mib(day.always_gz),
        mib(day.shaped_gz),
        day.always_gz as f64 / day.shaped_gz as f64
    );
    println!(
        "\nrecords {}, shipped whole {} (one per output per day: {}); shaping the whole day took {:.2?} ({:.1?} per run of {} records)\n",
        day.records,
        day.whole,
        DEVICES * 4,
        day.shape_time,
        day.shape_time / RUNS as u32,
        DEVICES * 4
    );

    let big_a = running_config(1, 1, 600);
    let big_b = running_config(1, 2, 600);
    let mut changed = big_b.clone();
    for i in [3, 150, 300, 450, 598] {
        changed = changed.replace(
            &format!("server-001-{i:02} eth0"),
            &format!("server-001-{i:02} eth1"),
        );
    }
    let normaliser = Normaliser::for_platform("cisco_ios", &[]);
    let (na, nc) = (
        normaliser.normalise(big_a.as_bytes()),
        normaliser.normalise(changed.as_bytes()),
    );
    assert_eq!(digest(&na), digest(&normaliser.normalise(big_b.as_bytes())));
    let other: String = big_a.lines().map(|l| format!("{l} x\n")).collect();
    let nother = normaliser.normalise(other.as_bytes());
    println!("## CPU, median of {runs} runs\n");
    println!("| what | input | time |");
    println!("|---|---|---|");
    let t = time(runs, || digest(&normaliser.normalise(big_a.as_bytes())));
    println!(
        "| normalise + digest | {} KB running-config, {} lines | {t:.2?} |",
        big_a.len() / 1000,
        big_a.lines().count()
    );
    let t = time(runs, || digest(&big_a));
    println!("| digest alone | the same | {t:.2?} |");
    let t = time(runs, || unified_diff(&na, &nc, MAX_DIFF_BYTES));
    let d = unified_diff(&na, &nc, MAX_DIFF_BYTES);
    println!(
        "| diff, 5 lines changed | two {} KB outputs | {t:.2?} ({} bytes of diff) |",
        na.len() / 1000,
        d.len()
    );
    let t = time(runs.min(5), || unified_diff(&na, &nother, MAX_DIFF_BYTES));
    println!(
        "| diff, every line changed | two {} KB outputs | {t:.2?} (capped at {} KiB) |",
        na.len() / 1000,
        MAX_DIFF_BYTES >> 10
    );
}
