//! Spool benchmark (issue 5): append rate with group commit (and with an fsync per record for
//! contrast), bytes sent to storage per payload byte, and the replay of a 1 GiB spool in a
//! fresh process whose peak RSS must stay under 64 MB.
//!
//! 1. Append: 1 KB JSON-like records (no two alike in a row, not zeros) into a spool with the
//!    default options except `max_bytes` (raised to hold 1 GiB), committing whenever
//!    `commit_due(Instant::now())` says so after every append as the agent does, then a final
//!    `commit()`; until `BENCH_SPOOL_RECORDS` records (1,048,576 = 1 GiB of payload) or
//!    `BENCH_SPOOL_SECONDS` (10), whichever comes first. `Durability::Always` appends 2,000
//!    records (or 10 s) for contrast.
//! 2. Bytes: `/proc/self/io` before and after the group-commit run. `write_bytes` counts what
//!    the process sent towards storage (pages dirtied in the page cache, counted once per
//!    dirtying; the final fsync makes it all go out); `wchar` what went through write(2);
//!    `rchar` what was read. Beside them, the sectors written to the whole block device
//!    (`/sys/block/*/stat`; journal and other processes included: an upper bound). The data
//!    dir must be on a disk: on tmpfs `write_bytes` is 0, so the run refuses tmpfs.
//! 3. Replay: the spool is filled up to 1 GiB of payload if the timed run stopped short, then
//!    this binary re-executes itself (`RACKHAND_SPOOL_BENCH_CHILD=replay`) so that no earlier
//!    allocation counts in the high-water mark: the child opens the spool (footers of the
//!    sealed segments, a scan of the tail: the time to READY), streams every record through
//!    the reader (which checks every frame), checks count and seq order, and reports VmHWM
//!    from `/proc/self/status`. Three children: page cache warm; page cache
//!    dropped for the segment files first (`posix_fadvise(DONTNEED)`, no root needed); and
//!    after a simulated crash (a torn frame and a zero-filled block at the end of the last
//!    segment).
//!
//! The data dir is `BENCH_SPOOL_DIR`, else the system temp dir if it is not tmpfs, else
//! cargo's target tmp dir; a guard deletes it (about 1.1 GB) when the run ends or panics, and
//! a dir left by a killed run is deleted at the next start.
//!
//! Run: `cargo bench --bench spool`. Prints a markdown table; docs/benchmarks.md keeps the
//! figures of the last run.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rackhand::spool::{Durability, Spool, SpoolOptions, SpoolWriter};

const PAYLOAD: usize = 1024;
const GIB: u64 = 1 << 30;
const CHILD_ENV: &str = "RACKHAND_SPOOL_BENCH_CHILD";
const DIR_ENV: &str = "RACKHAND_SPOOL_BENCH_DIR";
const EXPECT_ENV: &str = "RACKHAND_SPOOL_BENCH_EXPECT";
/// The replay target: peak RSS of the whole replaying process below 64 MB (10^6 bytes).
const RSS_LIMIT_KB: u64 = 64_000_000 / 1024;
/// Issue 9: the append rate must not drop below 300k records/s (320k before the rewrite).
const APPEND_TARGET: f64 = 300_000.0;
/// Issue 9: READY within 1 s for a full 1 GiB spool, cold cache.
const OPEN_TARGET: Duration = Duration::from_secs(1);
const AMPLIFICATION_TARGET: f64 = 1.5;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Options for every spool here: the defaults (4 MiB segments, 1 s group commit) with room
/// for the whole 1 GiB (the default bound is 512 MiB).
fn options(durability: Durability) -> SpoolOptions {
    SpoolOptions {
        max_bytes: 4 * GIB,
        durability,
        ..SpoolOptions::default()
    }
}

/// Deletes the bench data dir however the run ends (it holds over a GB).
struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("could not remove {}: {e}", self.0.display());
        }
    }
}

/// Removes the data dirs of earlier runs that were killed (a guard does not run on SIGKILL
/// or Ctrl-C): those whose process is gone.
fn remove_stale(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("rackhand-spool-bench-")
            && pid.parse::<u32>().is_ok()
            && !Path::new("/proc").join(pid).exists()
        {
            eprintln!("removing {} left by a killed run", entry.path().display());
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// A small xorshift: payloads differ without pulling in a crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `count` distinct 1 KB records shaped like the agent's JSON (a device, a command, its
/// output with interface counters), padded with more output lines to exactly `PAYLOAD`.
fn payloads(count: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    (0..count)
        .map(|i| {
            let mut s = format!(
                "{{\"agent\":\"pi-rack-07\",\"device\":\"sw-{:03}\",\"platform\":\"cisco_ios\",\
                 \"command\":\"show interfaces\",\"started\":\"2026-11-26T09:{:02}:{:02}.{:03}Z\",\
                 \"duration_ms\":{},\"status\":\"ok\",\"output\":\"",
                i % 97,
                rng.next() % 60,
                rng.next() % 60,
                rng.next() % 1000,
                rng.next() % 900 + 40
            );
            let mut port = 0;
            while s.len() < PAYLOAD - 2 {
                port += 1;
                let _ = write!(
                    s,
                    "GigabitEthernet0/{port} is up, line protocol is up\\n  5 minute input rate {} bits/sec, {} packets/sec\\n  {} packets input, {} bytes, {} CRC\\n",
                    rng.next() % 1_000_000_000,
                    rng.next() % 100_000,
                    rng.next() % 10_000_000_000,
                    rng.next() % 1_000_000_000_000,
                    rng.next() % 10
                );
            }
            s.truncate(PAYLOAD - 2);
            s.push_str("\"}");
            assert_eq!(s.len(), PAYLOAD);
            s.into_bytes()
        })
        .collect()
}

/// The counters of `/proc/self/io` this bench looks at.
#[derive(Debug, Clone, Copy, Default)]
struct Io {
    rchar: u64,
    wchar: u64,
    read_bytes: u64,
    write_bytes: u64,
    cancelled_write_bytes: u64,
}

fn proc_io() -> Io {
    let text = fs::read_to_string("/proc/self/io").expect("/proc/self/io");
    let mut io = Io::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value: u64 = value.trim().parse().unwrap_or(0);
        match key {
            "rchar" => io.rchar = value,
            "wchar" => io.wchar = value,
            "read_bytes" => io.read_bytes = value,
            "write_bytes" => io.write_bytes = value,
            "cancelled_write_bytes" => io.cancelled_write_bytes = value,
            _ => {}
        }
    }
    io
}

fn status_kb(field: &str) -> u64 {
    let text = fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

/// The mount `path` lives on, from `/proc/self/mounts`: (fs type, device, mount point).
fn filesystem(path: &Path) -> (String, String, String) {
    let path = fs::canonicalize(path).expect("canonical data dir");
    let mounts = fs::read_to_string("/proc/self/mounts").expect("/proc/self/mounts");
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && path.starts_with(f[1]))
                .then(|| (f[2].to_string(), f[0].to_string(), f[1].to_string()))
        })
        .max_by_key(|(_, _, mount)| mount.len())
        .unwrap_or_else(|| ("unknown".into(), "?".into(), "?".into()))
}

/// Sectors written to the whole block device under `device` (`/dev/vda` → vda), from
/// `/sys/block/*/stat`: every process and the filesystem's journal included.
fn device_sectors_written(device: &str) -> Option<u64> {
    let name = device.strip_prefix("/dev/")?;
    let stat = fs::read_to_string(format!("/sys/block/{name}/stat")).ok()?;
    stat.split_whitespace().nth(6)?.parse().ok()
}

fn free_bytes(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: statvfs fills the zeroed struct; the path is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    assert_eq!(rc, 0, "statvfs {}", path.display());
    st.f_bavail as u64 * st.f_frsize as u64
}

/// Where the data goes: never tmpfs (write_bytes would read 0 and replay would be RAM).
fn base_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("BENCH_SPOOL_DIR") {
        return PathBuf::from(dir);
    }
    let tmp = std::env::temp_dir();
    if filesystem(&tmp).0 != "tmpfs" {
        return tmp;
    }
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

struct AppendRun {
    records: u64,
    elapsed: Duration,
    commits: u64,
    io: Io,
}

/// Appends 1 KB records from seq `first` on, as the agent would, until `max` records or
/// `limit`, then commits; the I/O counters cover exactly this.
fn append_run(
    spool: &mut SpoolWriter,
    pool: &[Vec<u8>],
    first: u64,
    max: u64,
    limit: Duration,
) -> AppendRun {
    let before = proc_io();
    let start = Instant::now();
    let mut commits = 0u64;
    let mut n = 0u64;
    while n < max {
        let seq = first + n;
        spool
            .append(seq, &pool[(seq as usize) % pool.len()])
            .expect("append");
        n += 1;
        if spool.commit_due(Instant::now()) {
            spool.commit();
            commits += 1;
        }
        if n.is_multiple_of(1024) && start.elapsed() >= limit {
            break;
        }
    }
    spool.commit();
    assert!(
        spool.stats().storage_trouble.is_none(),
        "the bench disk refused writes: {:?}",
        spool.stats().storage_trouble
    );
    commits += 1;
    let elapsed = start.elapsed();
    let after = proc_io();
    AppendRun {
        records: n,
        elapsed,
        commits,
        io: Io {
            rchar: after.rchar - before.rchar,
            wchar: after.wchar - before.wchar,
            read_bytes: after.read_bytes - before.read_bytes,
            write_bytes: after.write_bytes - before.write_bytes,
            cancelled_write_bytes: after.cancelled_write_bytes - before.cancelled_write_bytes,
        },
    }
}

/// What a replay child reports on its last line of stdout.
#[derive(Debug, Default)]
struct Replay {
    open: Duration,
    replay: Duration,
    records: u64,
    payload_bytes: u64,
    segments: u64,
    tail_cut: u64,
    rss_start_kb: u64,
    hwm_kb: u64,
    /// The child's `read_bytes` (from storage, not the page cache) during open and stream.
    open_read_bytes: u64,
    stream_read_bytes: u64,
}

/// The child: open, stream everything, check, report. Exits non-zero on any mismatch.
fn replay_child() {
    let dir = PathBuf::from(std::env::var(DIR_ENV).expect(DIR_ENV));
    let expect: u64 = std::env::var(EXPECT_ENV)
        .expect(EXPECT_ENV)
        .parse()
        .expect("count");
    let rss_start_kb = status_kb("VmRSS:");
    let io0 = proc_io();
    let t = Instant::now();
    let (_writer, mut reader, report) =
        Spool::open(&dir, options(Durability::Interval(Duration::from_secs(1)))).expect("open");
    let open = t.elapsed();
    let io1 = proc_io();
    let t = Instant::now();
    let mut records = 0u64;
    let mut payload_bytes = 0u64;
    let mut last = 0u64;
    while let Some((seq, payload)) = reader.next_record() {
        assert_eq!(seq, last + 1, "seqs out of order or missing after {last}");
        assert_eq!(payload.len(), PAYLOAD, "payload of seq {seq}");
        last = seq;
        records += 1;
        payload_bytes += payload.len() as u64;
    }
    let replay = t.elapsed();
    let io2 = proc_io();
    assert_eq!(records, expect, "records replayed");
    let hwm_kb = status_kb("VmHWM:");
    println!(
        "REPLAY open_ns={} replay_ns={} records={records} payload_bytes={payload_bytes} segments={} tail_cut={} rss_start_kb={rss_start_kb} hwm_kb={hwm_kb} open_read_bytes={} stream_read_bytes={}",
        open.as_nanos(),
        replay.as_nanos(),
        report.segments,
        report.tail_bytes_cut,
        io1.read_bytes - io0.read_bytes,
        io2.read_bytes - io1.read_bytes
    );
}

fn run_child(dir: &Path, expect: u64) -> Replay {
    let out = Command::new(std::env::current_exe().expect("current exe"))
        .env(CHILD_ENV, "replay")
        .env(DIR_ENV, dir)
        .env(EXPECT_ENV, expect.to_string())
        .output()
        .expect("spawn replay child");
    assert!(
        out.status.success(),
        "replay child failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("REPLAY "))
        .unwrap_or_else(|| panic!("no REPLAY line in: {stdout}"));
    let mut r = Replay::default();
    for kv in line.split_whitespace() {
        let (k, v) = kv.split_once('=').expect("key=value");
        let v: u64 = v.parse().expect("number");
        match k {
            "open_ns" => r.open = Duration::from_nanos(v),
            "replay_ns" => r.replay = Duration::from_nanos(v),
            "records" => r.records = v,
            "payload_bytes" => r.payload_bytes = v,
            "segments" => r.segments = v,
            "tail_cut" => r.tail_cut = v,
            "rss_start_kb" => r.rss_start_kb = v,
            "hwm_kb" => r.hwm_kb = v,
            "open_read_bytes" => r.open_read_bytes = v,
            "stream_read_bytes" => r.stream_read_bytes = v,
            _ => {}
        }
    }
    r
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read spool dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

/// Asks the kernel to drop the (clean, fsynced) cached pages of every segment.
fn drop_cache(dir: &Path) {
    for path in segment_files(dir) {
        let f = File::open(&path).expect("open segment");
        // SAFETY: a plain advisory call on an open descriptor.
        let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0, "posix_fadvise {}", path.display());
    }
}

/// A crash in the middle of a write: half a frame (a valid header and part of its payload)
/// and then a 4 KiB block that never made it to the card (zeros), at the end of the last
/// segment. Returns the bytes added, all of which recovery must cut.
fn tear_tail(dir: &Path, next_seq: u64) -> u64 {
    let last = segment_files(dir).pop().expect("a segment");
    let mut f = OpenOptions::new()
        .append(true)
        .open(&last)
        .expect("open last segment");
    let payload = payloads(1).remove(0);
    let mut frame = Vec::new();
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&0x1234_5678u32.to_le_bytes());
    frame.extend_from_slice(&next_seq.to_le_bytes());
    frame.extend_from_slice(&payload[..payload.len() / 2]);
    frame.extend_from_slice(&[0u8; 4096]);
    f.write_all(&frame).expect("tear tail");
    f.sync_all().expect("sync torn tail");
    frame.len() as u64
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn mb_s(bytes: u64, d: Duration) -> String {
    format!("{:.0} MB/s", bytes as f64 / 1e6 / d.as_secs_f64())
}

fn mb(bytes: u64) -> String {
    format!("{:.0} MB", bytes as f64 / 1e6)
}

fn mib_kb(kb: u64) -> String {
    format!("{:.1} MiB ({kb} kB)", kb as f64 / 1024.0)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "pass" } else { "**FAIL**" }
}

fn replay_row(rows: &mut Vec<String>, what: &str, r: &Replay) {
    rows.push(format!(
        "| replay {what}: open ({} segments: footers read, the tail scanned{}) | {}; {} from storage | ≤ {} | {} |",
        r.segments,
        if r.tail_cut > 0 {
            format!(", {} bytes of torn tail cut", r.tail_cut)
        } else {
            String::new()
        },
        secs(r.open),
        mb(r.open_read_bytes),
        secs(OPEN_TARGET),
        verdict(r.open <= OPEN_TARGET)
    ));
    rows.push(format!(
        "| replay {what}: stream {} records (each frame checked as it is read) | {}, {}; {} from storage | — | — |",
        r.records,
        secs(r.replay),
        mb_s(r.payload_bytes, r.replay),
        mb(r.stream_read_bytes)
    ));
    rows.push(format!(
        "| replay {what}: peak RSS of the process (VmHWM; {} at start) | {} | < 64 MB | {} |",
        mib_kb(r.rss_start_kb),
        mib_kb(r.hwm_kb),
        verdict(r.hwm_kb < RSS_LIMIT_KB)
    ));
}

fn main() {
    if std::env::var(CHILD_ENV).as_deref() == Ok("replay") {
        replay_child();
        return;
    }
    let total_start = Instant::now();
    let max_records = env_or("BENCH_SPOOL_RECORDS", GIB / PAYLOAD as u64);
    let limit = Duration::from_secs(env_or("BENCH_SPOOL_SECONDS", 10));
    let always_records = env_or("BENCH_SPOOL_ALWAYS_RECORDS", 2000);

    let base = base_dir();
    fs::create_dir_all(&base).expect("create base dir");
    let (fstype, device, mount) = filesystem(&base);
    assert!(
        fstype != "tmpfs" && fstype != "ramfs",
        "{} is on {fstype}: write_bytes would be 0; set BENCH_SPOOL_DIR to a dir on a disk",
        base.display()
    );
    let need = GIB * 3 / 2;
    let free = free_bytes(&base);
    assert!(
        free > need,
        "{} has {free} bytes free, the bench needs about {need}",
        base.display()
    );
    remove_stale(&base);
    let guard = DirGuard(base.join(format!("rackhand-spool-bench-{}", std::process::id())));
    let root = &guard.0;
    let _ = fs::remove_dir_all(root);
    fs::create_dir_all(root).expect("create bench dir");
    eprintln!(
        "spool bench in {} ({fstype}, {device} on {mount})",
        root.display()
    );

    let pool = payloads(256);
    let mut rows = vec![
        "| measure | figure | target | verdict |".to_string(),
        "|---|---|---|---|".to_string(),
    ];
    rows.push(format!(
        "| filesystem of the data dir | {fstype} ({device} on {mount}) | not tmpfs | {} |",
        verdict(true)
    ));

    // Durability::Always first, small: an fsync per record.
    let always_dir = root.join("always");
    let (mut spool, _, _) = Spool::open(&always_dir, options(Durability::Always)).expect("open");
    let always = append_run(&mut spool, &pool, 1, always_records, limit);
    drop(spool);
    fs::remove_dir_all(&always_dir).expect("remove always dir");
    eprintln!("always: {} records in {:?}", always.records, always.elapsed);

    // Group commit: the default cadence, as the agent calls it.
    let dir = root.join("spool");
    let (mut spool, _, _) =
        Spool::open(&dir, options(Durability::Interval(Duration::from_secs(1)))).expect("open");
    let sectors_before = device_sectors_written(&device);
    let run = append_run(&mut spool, &pool, 1, max_records, limit);
    let sectors_after = device_sectors_written(&device);
    eprintln!("group commit: {} records in {:?}", run.records, run.elapsed);
    let rate = run.records as f64 / run.elapsed.as_secs_f64();
    let payload_bytes = run.records * PAYLOAD as u64;
    let amplification = run.io.write_bytes as f64 / payload_bytes as f64;
    rows.push(format!(
        "| append 1 KB, group commit (Interval 1 s): {} records, {} commits | {:.0} records/s ({}, {}) | ≥ 300,000/s | {} |",
        run.records,
        run.commits,
        rate,
        mb_s(payload_bytes, run.elapsed),
        secs(run.elapsed),
        verdict(rate >= APPEND_TARGET)
    ));
    rows.push(format!(
        "| append 1 KB, `Durability::Always`: {} records | {:.0} records/s ({}) | — (contrast) | — |",
        always.records,
        always.records as f64 / always.elapsed.as_secs_f64(),
        secs(always.elapsed)
    ));
    rows.push(format!(
        "| bytes to storage per payload byte (`write_bytes` {} / payload {}) | {:.3} | ≤ 1.5 | {} |",
        run.io.write_bytes,
        payload_bytes,
        amplification,
        verdict(run.io.write_bytes > 0 && amplification <= AMPLIFICATION_TARGET)
    ));
    rows.push(format!(
        "| bytes through write(2) per payload byte (`wchar`); `rchar` | {:.3}; rchar {} B | — | — |",
        run.io.wchar as f64 / payload_bytes as f64,
        run.io.rchar
    ));
    if let (Some(a), Some(b)) = (sectors_before, sectors_after) {
        rows.push(format!(
            "| written to {device} meanwhile, whole device (journal and other processes included) | {:.3} per payload byte ({}) | — | — |",
            (b - a) as f64 * 512.0 / payload_bytes as f64,
            mb((b - a) * 512)
        ));
    }
    if run.io.cancelled_write_bytes > 0 || run.io.read_bytes > 0 {
        rows.push(format!(
            "| during the append run: `read_bytes`; `cancelled_write_bytes` | {}; {} | — | — |",
            run.io.read_bytes, run.io.cancelled_write_bytes
        ));
    }

    // Fill up to 1 GiB of payload if the timed run stopped short (not timed).
    let mut total = run.records;
    let target = GIB / PAYLOAD as u64;
    if total < target {
        let fill = append_run(&mut spool, &pool, total + 1, target - total, Duration::MAX);
        total += fill.records;
        eprintln!("filled {} more records in {:?}", fill.records, fill.elapsed);
    }
    let spool_bytes = spool.stats().bytes;
    drop(spool);
    rows.push(format!(
        "| spool replayed | {total} records, {:.2} GiB on disk | 1 GiB | — |",
        spool_bytes as f64 / GIB as f64
    ));

    let warm = run_child(&dir, total);
    replay_row(&mut rows, "(page cache warm)", &warm);
    drop_cache(&dir);
    let cold = run_child(&dir, total);
    replay_row(&mut rows, "(segments dropped from page cache)", &cold);
    let torn = tear_tail(&dir, total + 1);
    let crashed = run_child(&dir, total);
    assert_eq!(crashed.tail_cut, torn, "recovery cut the whole torn tail");
    replay_row(&mut rows, "after a torn tail (warm)", &crashed);

    drop(guard);
    println!("{}", rows.join("\n"));
    println!(
        "\nWhole run (data dir removed): {}.",
        secs(total_start.elapsed())
    );
}
