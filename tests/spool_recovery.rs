//! The spool after each known kind of crash damage: it opens without a manual step, reports
//! what it did, keeps every intact record, and goes on appending and reading.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use rackhand::spool::{FullPolicy, Spool, SpoolError, SpoolOptions};

/// A fresh folder per test, removed in `Drop` (also when the test fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("rackhand-spool-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn payload(seq: u64) -> Vec<u8> {
    format!(
        "{{\"seq\":{seq},\"output\":\"{}\"}}",
        "x".repeat((seq % 40) as usize)
    )
    .into_bytes()
}

fn small_segments() -> SpoolOptions {
    SpoolOptions {
        segment_bytes: 512,
        ..SpoolOptions::default()
    }
}

fn fill(dir: &Path, options: SpoolOptions, seqs: impl IntoIterator<Item = u64>) {
    let (mut spool, report) = Spool::open(dir, options).unwrap();
    assert!(!report.found_damage(), "{report:?}");
    for seq in seqs {
        spool.append(seq, &payload(seq)).unwrap();
    }
    spool.commit().unwrap();
}

fn seqs(spool: &mut Spool) -> Vec<u64> {
    spool
        .read_from(0)
        .unwrap()
        .map(|r| {
            let (seq, bytes) = r.unwrap();
            assert_eq!(bytes, payload(seq), "payload of {seq}");
            seq
        })
        .collect()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    out.sort();
    out
}

fn last_segment(dir: &Path) -> PathBuf {
    segment_files(dir).pop().expect("a segment")
}

/// Reopens after damage, and shows the spool still takes and gives records.
fn goes_on(dir: &Path, options: SpoolOptions, expect: &[u64]) {
    let (mut spool, _) = Spool::open(dir, options.clone()).unwrap();
    assert_eq!(seqs(&mut spool), expect);
    let next = spool.stats().last_seq + 1;
    spool.append(next, &payload(next)).unwrap();
    spool.commit().unwrap();
    drop(spool);
    let (mut spool, report) = Spool::open(dir, options).unwrap();
    assert!(
        !report.found_damage(),
        "a repaired spool reopens clean: {report:?}"
    );
    let mut with_next = expect.to_vec();
    with_next.push(next);
    assert_eq!(seqs(&mut spool), with_next);
}

#[test]
fn a_clean_spool_reopens_with_every_record() {
    let dir = TempDir::new("clean");
    fill(&dir.0, small_segments(), 1..=30);
    assert!(
        segment_files(&dir.0).len() > 1,
        "the test needs several segments"
    );
    let (mut spool, report) = Spool::open(&dir.0, small_segments()).unwrap();
    assert!(!report.found_damage(), "{report:?}");
    assert_eq!(report.records, 30);
    assert_eq!(seqs(&mut spool), (1..=30).collect::<Vec<_>>());
    let stats = spool.stats();
    assert_eq!(
        (stats.records, stats.oldest_unshipped, stats.last_seq),
        (30, Some(1), 30)
    );
    assert_eq!(
        spool
            .read_from(17)
            .unwrap()
            .map(|r| r.unwrap().0)
            .collect::<Vec<_>>(),
        (17..=30).collect::<Vec<_>>()
    );
}

#[test]
fn a_torn_tail_is_cut_to_the_last_whole_record() {
    let dir = TempDir::new("torn");
    fill(&dir.0, SpoolOptions::default(), 1..=10);
    let seg = last_segment(&dir.0);
    let len = fs::metadata(&seg).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let (spool, report) = Spool::open(&dir.0, SpoolOptions::default()).unwrap();
    let last_frame = 16 + payload(10).len() as u64;
    assert_eq!(report.tail_bytes_cut, last_frame - 5, "{report:?}");
    assert_eq!(fs::metadata(&seg).unwrap().len(), len - last_frame);
    drop(spool);
    goes_on(
        &dir.0,
        SpoolOptions::default(),
        &(1..=9).collect::<Vec<_>>(),
    );
}

#[test]
fn a_garbage_tail_is_cut() {
    let dir = TempDir::new("garbage");
    fill(&dir.0, SpoolOptions::default(), 1..=10);
    let garbage: Vec<u8> = (0..3000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    OpenOptions::new()
        .append(true)
        .open(last_segment(&dir.0))
        .unwrap()
        .write_all(&garbage)
        .unwrap();
    let (spool, report) = Spool::open(&dir.0, SpoolOptions::default()).unwrap();
    assert_eq!(report.tail_bytes_cut, garbage.len() as u64, "{report:?}");
    assert_eq!(report.corrupt_spans, 0);
    drop(spool);
    goes_on(
        &dir.0,
        SpoolOptions::default(),
        &(1..=10).collect::<Vec<_>>(),
    );
}

#[test]
fn a_zero_filled_tail_is_cut() {
    let dir = TempDir::new("zeros");
    fill(&dir.0, SpoolOptions::default(), 1..=10);
    OpenOptions::new()
        .append(true)
        .open(last_segment(&dir.0))
        .unwrap()
        .write_all(&[0u8; 4096])
        .unwrap();
    let (spool, report) = Spool::open(&dir.0, SpoolOptions::default()).unwrap();
    assert_eq!(report.tail_bytes_cut, 4096, "{report:?}");
    assert!(
        report.actions.iter().any(|a| a.contains(".seg")),
        "{report:?}"
    );
    drop(spool);
    goes_on(
        &dir.0,
        SpoolOptions::default(),
        &(1..=10).collect::<Vec<_>>(),
    );
}

#[test]
fn a_flipped_bit_mid_segment_skips_that_record_only() {
    let dir = TempDir::new("bitflip");
    fill(&dir.0, SpoolOptions::default(), 1..=10);
    let seg = last_segment(&dir.0);
    let mut bytes = fs::read(&seg).unwrap();
    let fifth: usize = (1..5).map(|s| 16 + payload(s).len()).sum();
    bytes[fifth + 16 + 3] ^= 0x04;
    fs::write(&seg, &bytes).unwrap();
    let (spool, report) = Spool::open(&dir.0, SpoolOptions::default()).unwrap();
    assert_eq!(report.corrupt_spans, 1, "{report:?}");
    assert_eq!(report.corrupt_bytes_skipped, (16 + payload(5).len()) as u64);
    assert_eq!(report.tail_bytes_cut, 0);
    assert!(report.found_damage());
    drop(spool);
    let expect: Vec<u64> = (1..=10).filter(|&s| s != 5).collect();
    goes_on(&dir.0, SpoolOptions::default(), &expect);
}

#[test]
fn a_flipped_bit_in_a_length_field_is_resynchronised() {
    let dir = TempDir::new("badlen");
    fill(&dir.0, SpoolOptions::default(), 1..=10);
    let seg = last_segment(&dir.0);
    let mut bytes = fs::read(&seg).unwrap();
    let third: usize = (1..3).map(|s| 16 + payload(s).len()).sum();
    bytes[third + 3] ^= 0x80; // the length's top byte: an impossible length
    fs::write(&seg, &bytes).unwrap();
    let (spool, report) = Spool::open(&dir.0, SpoolOptions::default()).unwrap();
    assert_eq!(report.corrupt_spans, 1, "{report:?}");
    drop(spool);
    let expect: Vec<u64> = (1..=10).filter(|&s| s != 3).collect();
    goes_on(&dir.0, SpoolOptions::default(), &expect);
}

#[test]
fn a_missing_middle_segment_leaves_the_others_readable() {
    let dir = TempDir::new("missing");
    fill(&dir.0, small_segments(), 1..=40);
    let files = segment_files(&dir.0);
    assert!(
        files.len() >= 3,
        "the test needs three segments, has {files:?}"
    );
    let (mut spool, _) = Spool::open(&dir.0, small_segments()).unwrap();
    let all = seqs(&mut spool);
    drop(spool);
    fs::remove_file(&files[1]).unwrap();
    let (mut spool, report) = Spool::open(&dir.0, small_segments()).unwrap();
    assert_eq!(report.segments, files.len() - 1);
    let left = seqs(&mut spool);
    assert!(
        left.len() < all.len() && left.windows(2).all(|w| w[0] < w[1]),
        "{left:?}"
    );
    assert_eq!(left.first(), all.first());
    assert_eq!(left.last(), all.last());
    drop(spool);
    goes_on(&dir.0, small_segments(), &left);
}

#[test]
fn a_segment_with_nothing_intact_is_removed() {
    let dir = TempDir::new("allbad");
    fill(&dir.0, SpoolOptions::default(), 1..=3);
    fs::write(dir.0.join(format!("{:020}.seg", 100)), [0u8; 700]).unwrap();
    let (spool, report) = Spool::open(&dir.0, SpoolOptions::default()).unwrap();
    assert_eq!(report.segments_removed, 1, "{report:?}");
    assert_eq!(report.tail_bytes_cut, 700);
    drop(spool);
    goes_on(&dir.0, SpoolOptions::default(), &[1, 2, 3]);
}

#[test]
fn orphan_temp_files_are_removed_and_other_files_left_alone() {
    let dir = TempDir::new("orphans");
    fill(&dir.0, SpoolOptions::default(), 1..=5);
    fs::write(dir.0.join("checkpoint.tmp"), "4").unwrap();
    fs::write(dir.0.join(format!("{:020}.tmp", 1)), b"half a rewrite").unwrap();
    fs::write(dir.0.join("README"), "kept").unwrap();
    let (spool, report) = Spool::open(&dir.0, SpoolOptions::default()).unwrap();
    assert_eq!(report.temp_files_removed, 2, "{report:?}");
    assert!(!dir.0.join("checkpoint.tmp").exists());
    assert!(dir.0.join("README").exists());
    drop(spool);
    goes_on(&dir.0, SpoolOptions::default(), &[1, 2, 3, 4, 5]);
}

#[test]
fn a_checkpoint_ahead_of_the_data_acknowledges_it_and_keeps_seqs_above_it() {
    let dir = TempDir::new("ahead");
    fill(&dir.0, small_segments(), 1..=20);
    fs::write(dir.0.join("checkpoint"), "1000\n").unwrap();
    let (mut spool, report) = Spool::open(&dir.0, small_segments()).unwrap();
    assert!(report.checkpoint_ahead, "{report:?}");
    assert!(report.acked_segments_removed >= 1);
    assert!(segment_files(&dir.0).is_empty());
    assert_eq!(seqs(&mut spool), Vec::<u64>::new());
    let err = spool.append(21, &payload(21)).unwrap_err();
    assert!(
        matches!(err, SpoolError::NotIncreasing { last: 1000, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains(&dir.0.display().to_string()),
        "{err}"
    );
    drop(spool);
    goes_on(&dir.0, small_segments(), &[]);
}

#[test]
fn an_unreadable_checkpoint_replays_everything() {
    let dir = TempDir::new("badcheckpoint");
    fill(&dir.0, SpoolOptions::default(), 1..=5);
    fs::write(dir.0.join("checkpoint"), "\0\0\0").unwrap();
    let (spool, report) = Spool::open(&dir.0, SpoolOptions::default()).unwrap();
    assert!(
        report.checkpoint_reset && report.found_damage(),
        "{report:?}"
    );
    drop(spool);
    goes_on(&dir.0, SpoolOptions::default(), &[1, 2, 3, 4, 5]);
}

#[test]
fn acked_records_never_come_back_and_their_segments_go() {
    let dir = TempDir::new("ack");
    fill(&dir.0, small_segments(), 1..=40);
    let before = segment_files(&dir.0).len();
    let (mut spool, _) = Spool::open(&dir.0, small_segments()).unwrap();
    spool.ack(25).unwrap();
    assert!(segment_files(&dir.0).len() < before);
    let stats = spool.stats();
    assert_eq!(
        (stats.records, stats.oldest_unshipped, stats.acked),
        (15, Some(26), 25)
    );
    assert_eq!(seqs(&mut spool), (26..=40).collect::<Vec<_>>());
    let err = spool.ack(41).unwrap_err();
    assert!(matches!(err, SpoolError::AckBeyondData { .. }), "{err}");
    drop(spool);
    let (mut spool, report) = Spool::open(&dir.0, small_segments()).unwrap();
    assert!(!report.found_damage());
    assert_eq!(spool.stats().records, 15);
    assert_eq!(seqs(&mut spool), (26..=40).collect::<Vec<_>>());
    spool.ack(40).unwrap();
    assert!(segment_files(&dir.0).is_empty());
    assert_eq!(spool.stats().oldest_unshipped, None);
    goes_on(&dir.0, small_segments(), &[]);
}

#[test]
fn block_refuses_records_when_full_and_counts_them() {
    let dir = TempDir::new("block");
    let options = SpoolOptions {
        segment_bytes: 512,
        max_bytes: 1024,
        full: FullPolicy::Block,
        ..SpoolOptions::default()
    };
    let (mut spool, _) = Spool::open(&dir.0, options.clone()).unwrap();
    let mut taken = Vec::new();
    let mut seq = 1;
    // Bounded: the spool fills within a few dozen small records.
    let err = loop {
        assert!(seq < 1000, "a 1 KiB spool never filled");
        match spool.append(seq, &payload(seq)) {
            Ok(()) => taken.push(seq),
            Err(e) => break e,
        }
        seq += 1;
    };
    assert!(matches!(err, SpoolError::Full { .. }), "{err}");
    assert!(err.to_string().contains("spool_full"), "{err}");
    let stats = spool.stats();
    assert_eq!(stats.blocked_records, 1);
    assert!(stats.bytes <= 1024);
    assert_eq!(seqs(&mut spool), taken);
    spool.commit().unwrap();
    spool.ack(*taken.last().unwrap()).unwrap();
    spool.append(seq, &payload(seq)).unwrap();
    assert_eq!(seqs(&mut spool), vec![seq]);
}

#[test]
fn drop_oldest_makes_room_and_counts_the_loss() {
    let dir = TempDir::new("dropoldest");
    let options = SpoolOptions {
        segment_bytes: 512,
        max_bytes: 1536,
        full: FullPolicy::DropOldest,
        ..SpoolOptions::default()
    };
    let (mut spool, _) = Spool::open(&dir.0, options.clone()).unwrap();
    for seq in 1..=100 {
        spool.append(seq, &payload(seq)).unwrap();
    }
    spool.commit().unwrap();
    let stats = spool.stats();
    assert!(stats.bytes <= 1536, "{stats:?}");
    assert!(
        stats.dropped_records > 0 && stats.dropped_bytes > 0,
        "{stats:?}"
    );
    let left = seqs(&mut spool);
    assert_eq!(
        left.len() as u64 + stats.dropped_records,
        100,
        "every record is kept or counted"
    );
    assert_eq!(left.last(), Some(&100));
    assert_eq!(
        left,
        (101 - left.len() as u64..=100).collect::<Vec<_>>(),
        "the newest are kept"
    );
    assert_eq!(stats.oldest_unshipped, left.first().copied());
}

#[test]
fn drop_oldest_counts_as_lost_only_what_the_shipper_had_not_read() {
    let dir = TempDir::new("dropread");
    let options = SpoolOptions {
        segment_bytes: 512,
        max_bytes: 1536,
        full: FullPolicy::DropOldest,
        ..SpoolOptions::default()
    };
    let (mut spool, _) = Spool::open(&dir.0, options).unwrap();
    for seq in 1..=10 {
        spool.append(seq, &payload(seq)).unwrap();
    }
    // The shipper has 1..=5 in memory (a batch on its way) and upstream acked 1..=2.
    spool.commit().unwrap();
    spool.note_read(5);
    spool.ack(2).unwrap();
    let generation = spool.generation();
    for seq in 11..=100 {
        spool.append(seq, &payload(seq)).unwrap();
    }
    let stats = spool.stats();
    assert!(
        spool.generation() > generation,
        "a reader must know it went stale"
    );
    // 3, 4, 5 were deleted but are in the shipper's hands: at risk, not lost.
    assert_eq!(spool.held_dropped_seqs(), vec![3, 4, 5]);
    assert_eq!(stats.held_dropped, 3);
    let left = seqs(&mut spool);
    assert_eq!(
        2 + 3 + stats.dropped_records + left.len() as u64,
        100,
        "acked + held + lost + left is everything: {stats:?}"
    );
    // The lost ranges name exactly the lost seqs: 6 up to just before what is left.
    let ranges = spool.take_lost_ranges();
    let lost: u64 = ranges.iter().map(|(a, b)| b - a + 1).sum();
    assert_eq!(lost, stats.dropped_records);
    assert_eq!(ranges.first().map(|r| r.0), Some(6));
    assert_eq!(ranges.last().map(|r| r.1), left.first().map(|s| s - 1));
    assert!(spool.take_lost_ranges().is_empty(), "taken once");
    // Upstream takes the batch: nothing is at risk any more.
    spool.ack(5).unwrap();
    assert!(spool.held_dropped_seqs().is_empty());
}

#[test]
fn oversized_and_out_of_order_records_are_refused_with_a_reason() {
    let dir = TempDir::new("refuse");
    let options = SpoolOptions {
        max_record_bytes: 100,
        ..SpoolOptions::default()
    };
    let (mut spool, _) = Spool::open(&dir.0, options).unwrap();
    let err = spool.append(1, &[b'x'; 101]).unwrap_err();
    assert!(err.to_string().contains("max_output"), "{err}");
    spool.append(5, b"{}").unwrap();
    let err = spool.append(5, b"{}").unwrap_err();
    assert!(
        matches!(
            err,
            SpoolError::NotIncreasing {
                seq: 5,
                last: 5,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_segment_of_random_garbage_is_removed_in_bounded_time() {
    let dir = TempDir::new("noise");
    fill(&dir.0, SpoolOptions::default(), 1..=3);
    // xorshift noise: no frame in it verifies, so recovery scans all of it.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let noise: Vec<u8> = (0..(1 << 20))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    fs::write(dir.0.join(format!("{:020}.seg", 50)), &noise).unwrap();
    let started = std::time::Instant::now();
    let (spool, report) = Spool::open(&dir.0, SpoolOptions::default()).unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(report.segments_removed, 1, "{report:?}");
    drop(spool);
    goes_on(&dir.0, SpoolOptions::default(), &[1, 2, 3]);
}

#[test]
fn damage_after_open_is_an_error_naming_the_segment_and_the_read_goes_on() {
    let dir = TempDir::new("rot");
    fill(&dir.0, small_segments(), 1..=30);
    let (mut spool, _) = Spool::open(&dir.0, small_segments()).unwrap();
    let first = &segment_files(&dir.0)[0];
    let mut bytes = fs::read(first).unwrap();
    bytes[16 + 2] ^= 0x01; // inside the first record's payload
    fs::write(first, &bytes).unwrap();
    let results: Vec<_> = spool.read_from(0).unwrap().collect();
    let err = results[0].as_ref().unwrap_err();
    assert!(
        matches!(err, SpoolError::Corrupt { offset: 0, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains(&first.display().to_string()),
        "{err}"
    );
    let later: Vec<u64> = results[1..].iter().map(|r| r.as_ref().unwrap().0).collect();
    assert_eq!(
        later.last(),
        Some(&30),
        "the segments after the damaged one are still read"
    );
    drop(spool);
    let (mut spool, report) = Spool::open(&dir.0, small_segments()).unwrap();
    assert_eq!(report.corrupt_spans, 1, "{report:?}");
    assert_eq!(seqs(&mut spool), (2..=30).collect::<Vec<_>>());
}

#[test]
fn an_unreadable_segment_is_set_aside_not_a_crash_loop() {
    let dir = TempDir::new("unreadable");
    fill(&dir.0, SpoolOptions::default(), 1..=3);
    // A folder with a segment's name: opening works, reading fails (EISDIR), like a bad sector.
    let bad = dir.0.join(format!("{:020}.seg", 9));
    fs::create_dir(&bad).unwrap();
    let (spool, report) = Spool::open(&dir.0, SpoolOptions::default()).unwrap();
    assert_eq!(report.segments_set_aside, 1, "{report:?}");
    assert!(report.found_damage());
    assert!(!bad.exists() && bad.with_extension("unreadable").exists());
    drop(spool);
    goes_on(&dir.0, SpoolOptions::default(), &[1, 2, 3]);
}
