//! The spool after each known kind of crash damage on a real filesystem: it opens without a
//! manual step, reports what it did, keeps every intact record, counts every lost one in its
//! ledger, and goes on appending and reading. (Faults a real disk cannot be made to produce on
//! cue are in tests/quick/spool_faults.rs, on the in-memory filesystem.)

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use std::time::Instant;

use rackhand::record::GapCause;
use rackhand::spool::{
    FullPolicy, Loss, RecoveryReport, Spool, SpoolError, SpoolOptions, SpoolReader, SpoolWriter,
};

use crate::support::TempDir;

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

fn open(dir: &Path, options: SpoolOptions) -> (SpoolWriter, SpoolReader, RecoveryReport) {
    Spool::open(dir, options).unwrap()
}

fn fill(dir: &Path, options: SpoolOptions, seqs: impl IntoIterator<Item = u64>) {
    let (mut writer, _, report) = open(dir, options);
    assert!(!report.found_damage(), "{report:?}");
    for seq in seqs {
        writer.append(seq, &payload(seq)).unwrap();
    }
    writer.commit();
}

/// Every record the reader gives, checked against what was written.
fn seqs(reader: &mut SpoolReader) -> Vec<u64> {
    std::iter::from_fn(|| reader.next_record())
        .map(|(seq, bytes)| {
            assert_eq!(bytes, payload(seq), "payload of {seq}");
            seq
        })
        .collect()
}

/// The losses the ledger holds for gap records, all of them.
fn losses(writer: &mut SpoolWriter) -> Vec<(GapCause, Loss)> {
    writer.take_losses(Instant::now(), true)
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
    let (mut writer, mut reader, _) = open(dir, options.clone());
    assert_eq!(seqs(&mut reader), expect);
    let next = writer.stats().last_seq + 1;
    writer.append(next, &payload(next)).unwrap();
    writer.commit();
    drop((writer, reader));
    let (_, mut reader, report) = open(dir, options);
    assert!(
        !report.found_damage(),
        "a repaired spool reopens clean: {report:?}"
    );
    let mut with_next = expect.to_vec();
    with_next.push(next);
    assert_eq!(seqs(&mut reader), with_next);
}

#[test]
fn a_clean_spool_reopens_with_every_record() {
    let dir = TempDir::new("clean").unwrap();
    fill(dir.path(), small_segments(), 1..=30);
    assert!(
        segment_files(dir.path()).len() > 1,
        "the test needs several segments"
    );
    let (writer, mut reader, report) = open(dir.path(), small_segments());
    assert!(!report.found_damage(), "{report:?}");
    assert_eq!(report.records, 30);
    assert_eq!(
        report.segments_scanned, 0,
        "sealed segments open by their footer"
    );
    assert_eq!(seqs(&mut reader), (1..=30).collect::<Vec<_>>());
    let stats = writer.stats();
    assert_eq!(
        (stats.records, stats.oldest_unshipped, stats.last_seq),
        (30, Some(1), 30)
    );
    reader.seek(17);
    assert_eq!(seqs(&mut reader), (17..=30).collect::<Vec<_>>());
}

#[test]
fn a_torn_tail_is_cut_to_the_last_whole_record_and_its_record_counted() {
    let dir = TempDir::new("torn").unwrap();
    fill(dir.path(), SpoolOptions::default(), 1..=10);
    let seg = last_segment(dir.path());
    let len = fs::metadata(&seg).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let (mut writer, reader, report) = open(dir.path(), SpoolOptions::default());
    let last_frame = 16 + payload(10).len() as u64;
    assert_eq!(report.tail_bytes_cut, last_frame - 5, "{report:?}");
    assert_eq!(fs::metadata(&seg).unwrap().len(), len - last_frame);
    let lost = losses(&mut writer);
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0].0, GapCause::Corrupt);
    assert_eq!(
        lost[0].1.lost,
        vec![(10, 10)],
        "the torn frame names its record"
    );
    drop((writer, reader));
    goes_on(
        dir.path(),
        SpoolOptions::default(),
        &(1..=9).collect::<Vec<_>>(),
    );
}

#[test]
fn a_garbage_tail_is_cut() {
    let dir = TempDir::new("garbage").unwrap();
    fill(dir.path(), SpoolOptions::default(), 1..=10);
    let garbage: Vec<u8> = (0..3000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    OpenOptions::new()
        .append(true)
        .open(last_segment(dir.path()))
        .unwrap()
        .write_all(&garbage)
        .unwrap();
    let (writer, reader, report) = open(dir.path(), SpoolOptions::default());
    assert_eq!(report.tail_bytes_cut, garbage.len() as u64, "{report:?}");
    assert_eq!(report.corrupt_spans, 0);
    drop((writer, reader));
    goes_on(
        dir.path(),
        SpoolOptions::default(),
        &(1..=10).collect::<Vec<_>>(),
    );
}

#[test]
fn a_zero_filled_tail_is_cut() {
    let dir = TempDir::new("zeros").unwrap();
    fill(dir.path(), SpoolOptions::default(), 1..=10);
    OpenOptions::new()
        .append(true)
        .open(last_segment(dir.path()))
        .unwrap()
        .write_all(&[0u8; 4096])
        .unwrap();
    let (mut writer, reader, report) = open(dir.path(), SpoolOptions::default());
    assert_eq!(report.tail_bytes_cut, 4096, "{report:?}");
    assert!(
        report.actions.iter().any(|a| a.contains(".seg")),
        "{report:?}"
    );
    // Zeros name no record: reported by size only.
    let lost = losses(&mut writer);
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!((lost[0].1.records, lost[0].1.bytes), (0, 4096));
    drop((writer, reader));
    goes_on(
        dir.path(),
        SpoolOptions::default(),
        &(1..=10).collect::<Vec<_>>(),
    );
}

#[test]
fn a_flipped_bit_in_the_tail_found_at_open_loses_that_record_only_and_counts_it() {
    let dir = TempDir::new("bitflip").unwrap();
    fill(dir.path(), SpoolOptions::default(), 1..=10);
    let seg = last_segment(dir.path());
    let mut bytes = fs::read(&seg).unwrap();
    let fifth: usize = (1..5).map(|s| 16 + payload(s).len()).sum();
    bytes[fifth + 16 + 3] ^= 0x04;
    fs::write(&seg, &bytes).unwrap();
    let (mut writer, mut reader, report) = open(dir.path(), SpoolOptions::default());
    assert_eq!(report.corrupt_spans, 1, "{report:?}");
    assert_eq!(report.corrupt_bytes_skipped, (16 + payload(5).len()) as u64);
    assert_eq!(report.tail_bytes_cut, 0);
    assert_eq!(report.records_lost, 1);
    assert!(report.found_damage());
    let expect: Vec<u64> = (1..=10).filter(|&s| s != 5).collect();
    assert_eq!(seqs(&mut reader), expect, "the reader passes it by, once");
    let lost = losses(&mut writer);
    assert_eq!(
        lost.len(),
        1,
        "counted once, at open, not again by the reader: {lost:?}"
    );
    assert_eq!((lost[0].0, lost[0].1.records), (GapCause::Corrupt, 1));
    assert_eq!(lost[0].1.lost, vec![(5, 5)]);
    drop((writer, reader));
    // The damage stays in the file until its segment goes: a restart does not count it
    // again (and the loss, taken above but never written as a gap record, is still due once).
    let (mut writer, mut reader, _) = open(dir.path(), SpoolOptions::default());
    assert_eq!(seqs(&mut reader), expect);
    let lost = losses(&mut writer);
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0].1.records, 1, "counted once: {lost:?}");
}

#[test]
fn a_flipped_bit_in_a_length_field_is_resynchronised() {
    let dir = TempDir::new("badlen").unwrap();
    fill(dir.path(), SpoolOptions::default(), 1..=10);
    let seg = last_segment(dir.path());
    let mut bytes = fs::read(&seg).unwrap();
    let third: usize = (1..3).map(|s| 16 + payload(s).len()).sum();
    bytes[third + 3] ^= 0x80; // the length's top byte: an impossible length
    fs::write(&seg, &bytes).unwrap();
    let (mut writer, mut reader, report) = open(dir.path(), SpoolOptions::default());
    assert_eq!(report.corrupt_spans, 1, "{report:?}");
    let expect: Vec<u64> = (1..=10).filter(|&s| s != 3).collect();
    assert_eq!(seqs(&mut reader), expect);
    let lost = losses(&mut writer);
    assert_eq!(
        lost[0].1.lost,
        vec![(3, 3)],
        "bounded by its good neighbours"
    );
}

#[test]
fn damage_in_a_sealed_segment_found_while_shipping_loses_only_that_record_and_is_counted() {
    let dir = TempDir::new("rot").unwrap();
    fill(dir.path(), small_segments(), 1..=30);
    let first = &segment_files(dir.path())[0];
    let mut bytes = fs::read(first).unwrap();
    // Inside the payload of the second record of the first (sealed) segment.
    let second = 16 + payload(1).len();
    bytes[second + 16 + 2] ^= 0x01;
    fs::write(first, &bytes).unwrap();
    let (mut writer, mut reader, report) = open(dir.path(), small_segments());
    assert!(
        !report.found_damage(),
        "opening reads no sealed segment: {report:?}"
    );
    let got = seqs(&mut reader);
    let expect: Vec<u64> = (1..=30).filter(|&s| s != 2).collect();
    assert_eq!(got, expect, "the rest of the damaged segment is still read");
    let lost = losses(&mut writer);
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0].0, GapCause::Corrupt);
    assert_eq!(
        (lost[0].1.records, lost[0].1.lost.clone()),
        (1, vec![(2, 2)])
    );
    assert!(
        lost[0].1.detail.as_deref().unwrap().contains(".seg"),
        "{lost:?}"
    );
    // Acknowledging past it deletes the segment: the loss is already counted.
    reader.ack(30).unwrap();
    assert_eq!(writer.stats().records, 0);
}

#[test]
fn records_spooled_under_a_larger_config_are_read_whole_after_a_restart_with_a_smaller_one() {
    let dir = TempDir::new("shrink").unwrap();
    let big = SpoolOptions {
        segment_bytes: 8 << 20,
        max_bytes: 64 << 20,
        max_record_bytes: 4 << 20,
        ..SpoolOptions::default()
    };
    let large: Vec<u8> = (0..(3 << 20)).map(|i| b'a' + (i % 26) as u8).collect();
    {
        let (mut writer, _, _) = open(dir.path(), big);
        for seq in 1..=5 {
            writer.append(seq, &large).unwrap();
        }
        writer.commit();
    }
    let small = SpoolOptions {
        segment_bytes: 64 << 10,
        max_bytes: 1 << 20,
        max_record_bytes: 64 << 10,
        ..SpoolOptions::default()
    };
    let (mut writer, mut reader, report) = open(dir.path(), small);
    assert!(!report.found_damage(), "{report:?}");
    let got: Vec<(u64, Vec<u8>)> = std::iter::from_fn(|| reader.next_record()).collect();
    assert_eq!(got.len(), 5);
    assert!(got.iter().all(|(_, p)| *p == large), "delivered whole");
    assert!(losses(&mut writer).is_empty());
}

#[test]
fn a_missing_middle_segment_leaves_the_others_readable() {
    let dir = TempDir::new("missing").unwrap();
    fill(dir.path(), small_segments(), 1..=40);
    let files = segment_files(dir.path());
    assert!(
        files.len() >= 3,
        "the test needs three segments, has {files:?}"
    );
    let (_, mut reader, _) = open(dir.path(), small_segments());
    let all = seqs(&mut reader);
    drop(reader);
    fs::remove_file(&files[1]).unwrap();
    let (_, mut reader, report) = open(dir.path(), small_segments());
    assert_eq!(report.segments, files.len() - 1);
    let left = seqs(&mut reader);
    assert!(
        left.len() < all.len() && left.windows(2).all(|w| w[0] < w[1]),
        "{left:?}"
    );
    assert_eq!(left.first(), all.first());
    assert_eq!(left.last(), all.last());
    drop(reader);
    goes_on(dir.path(), small_segments(), &left);
}

#[test]
fn a_segment_with_nothing_intact_is_removed() {
    let dir = TempDir::new("allbad").unwrap();
    fill(dir.path(), SpoolOptions::default(), 1..=3);
    fs::write(dir.path().join(format!("{:020}.seg", 100)), [0u8; 700]).unwrap();
    let (writer, reader, report) = open(dir.path(), SpoolOptions::default());
    assert_eq!(report.segments_removed, 1, "{report:?}");
    assert_eq!(report.tail_bytes_cut, 700);
    drop((writer, reader));
    goes_on(dir.path(), SpoolOptions::default(), &[1, 2, 3]);
}

#[test]
fn a_flipped_bit_in_a_footer_loses_nothing_even_where_the_seqs_skip_after_it() {
    // A restart skips seqs (the rest of the block the seq file reserved), so the segment
    // sealed just before one can be followed by a segment that starts far above it. Damage
    // to its footer alone must not count the seqs in between, which never existed, as lost.
    let dir = TempDir::new("footer").unwrap();
    fill(dir.path(), small_segments(), 1..=20);
    let big = vec![b'x'; 480];
    {
        let (mut writer, _, _) = open(dir.path(), small_segments());
        // Too large for what is left of the tail: the tail is sealed, 1025 opens a segment.
        writer.append(1025, &big).unwrap();
        for seq in 1026..=1030 {
            writer.append(seq, &payload(seq)).unwrap();
        }
        writer.commit();
    }
    let files = segment_files(dir.path());
    let at = files
        .iter()
        .position(|f| f.ends_with("00000000000000001025.seg"))
        .expect("1025 opened a segment");
    let flip = |file: &Path, from_end: usize| {
        let mut bytes = fs::read(file).unwrap();
        let n = bytes.len();
        bytes[n - from_end] ^= 0x08;
        fs::write(file, &bytes).unwrap();
    };
    flip(&files[at - 1], 5); // the record count in the footer before the skip
    flip(&files[0], 48 - 5); // the checksum of the first segment's footer
    let (mut writer, mut reader, report) = open(dir.path(), small_segments());
    assert_eq!(report.segments_scanned, 2, "{report:?}");
    assert_eq!(report.records_lost, 0, "{report:?}");
    let got: Vec<u64> = std::iter::from_fn(|| reader.next_record())
        .map(|(seq, bytes)| {
            let want = if seq == 1025 {
                big.clone()
            } else {
                payload(seq)
            };
            assert_eq!(bytes, want, "payload of {seq}");
            seq
        })
        .collect();
    let expect: Vec<u64> = (1..=20).chain(1025..=1030).collect();
    assert_eq!(got, expect);
    assert!(losses(&mut writer).is_empty(), "nothing was lost");
    drop((writer, reader));
    let (_, _, report) = open(dir.path(), small_segments());
    assert_eq!(report.segments_scanned, 0, "footers rewritten: {report:?}");
}

#[test]
fn a_segment_sealed_by_an_older_rackhand_is_scanned_once_and_given_a_footer() {
    let dir = TempDir::new("legacy").unwrap();
    fill(dir.path(), small_segments(), 1..=30);
    let files = segment_files(dir.path());
    // Strip the footer of the first segment, as rackhand 0.1 wrote them.
    let len = fs::metadata(&files[0]).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&files[0])
        .unwrap()
        .set_len(len - 48)
        .unwrap();
    let (_, mut reader, report) = open(dir.path(), small_segments());
    assert_eq!(report.segments_scanned, 1, "{report:?}");
    assert!(!report.found_damage(), "{report:?}");
    assert_eq!(seqs(&mut reader), (1..=30).collect::<Vec<_>>());
    drop(reader);
    assert_eq!(fs::metadata(&files[0]).unwrap().len(), len, "footer added");
    let (_, _, report) = open(dir.path(), small_segments());
    assert_eq!(report.segments_scanned, 0);
}

#[test]
fn orphan_temp_files_are_removed_and_other_files_left_alone() {
    let dir = TempDir::new("orphans").unwrap();
    fill(dir.path(), SpoolOptions::default(), 1..=5);
    fs::write(dir.join("checkpoint.tmp"), "4").unwrap();
    fs::write(dir.path().join(format!("{:020}.tmp", 1)), b"half a rewrite").unwrap();
    fs::write(dir.join("README"), "kept").unwrap();
    let (writer, reader, report) = open(dir.path(), SpoolOptions::default());
    assert_eq!(report.temp_files_removed, 2, "{report:?}");
    assert!(!dir.join("checkpoint.tmp").exists());
    assert!(dir.join("README").exists());
    drop((writer, reader));
    goes_on(dir.path(), SpoolOptions::default(), &[1, 2, 3, 4, 5]);
}

#[test]
fn a_checkpoint_ahead_of_the_data_acknowledges_it_and_keeps_seqs_above_it() {
    let dir = TempDir::new("ahead").unwrap();
    fill(dir.path(), small_segments(), 1..=20);
    fs::write(dir.join("checkpoint"), "1000\n").unwrap();
    let (mut writer, mut reader, report) = open(dir.path(), small_segments());
    assert!(report.checkpoint_ahead, "{report:?}");
    assert!(report.acked_segments_removed >= 1);
    assert!(segment_files(dir.path()).is_empty());
    assert_eq!(seqs(&mut reader), Vec::<u64>::new());
    let err = writer.append(21, &payload(21)).unwrap_err();
    assert!(
        matches!(err, SpoolError::NotIncreasing { last: 1000, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
    drop((writer, reader));
    goes_on(dir.path(), small_segments(), &[]);
}

#[test]
fn an_unreadable_checkpoint_replays_everything() {
    let dir = TempDir::new("badcheckpoint").unwrap();
    fill(dir.path(), SpoolOptions::default(), 1..=5);
    fs::write(dir.join("checkpoint"), "\0\0\0").unwrap();
    let (writer, reader, report) = open(dir.path(), SpoolOptions::default());
    assert!(
        report.checkpoint_reset && report.found_damage(),
        "{report:?}"
    );
    drop((writer, reader));
    goes_on(dir.path(), SpoolOptions::default(), &[1, 2, 3, 4, 5]);
}

#[test]
fn acked_records_never_come_back_and_their_segments_go() {
    let dir = TempDir::new("ack").unwrap();
    fill(dir.path(), small_segments(), 1..=40);
    let before = segment_files(dir.path()).len();
    let (writer, mut reader, _) = open(dir.path(), small_segments());
    reader.ack(25).unwrap();
    assert!(segment_files(dir.path()).len() < before);
    let stats = writer.stats();
    assert_eq!(
        (stats.records, stats.oldest_unshipped, stats.acked),
        (15, Some(26), 25)
    );
    assert_eq!(seqs(&mut reader), (26..=40).collect::<Vec<_>>());
    let err = reader.ack(41).unwrap_err();
    assert!(matches!(err, SpoolError::AckBeyondData { .. }), "{err}");
    drop((writer, reader));
    let (mut writer, mut reader, report) = open(dir.path(), small_segments());
    assert!(!report.found_damage());
    assert_eq!(writer.stats().records, 15);
    assert_eq!(seqs(&mut reader), (26..=40).collect::<Vec<_>>());
    reader.ack(40).unwrap();
    // The last segment is the writer's until it rolls: it goes at the next roll.
    writer.append(41, &payload(41)).unwrap();
    writer.commit();
    assert_eq!(writer.stats().oldest_unshipped, Some(41));
    drop((writer, reader));
    goes_on(dir.path(), small_segments(), &[41]);
}

#[test]
fn block_pauses_admission_near_the_bound_never_refuses_and_resumes_well_below_it() {
    let dir = TempDir::new("block").unwrap();
    let options = SpoolOptions {
        segment_bytes: 512,
        max_bytes: 2048,
        full: FullPolicy::Block,
        ..SpoolOptions::default()
    };
    let (mut writer, mut reader, _) = open(dir.path(), options.clone());
    let now = Instant::now();
    let mut seq = 0;
    // Bounded: the spool nears its bound within a few dozen small records.
    while writer.admission(now).is_none() {
        seq += 1;
        assert!(seq < 1000, "a 2 KiB spool never filled");
        writer.append(seq, &payload(seq)).unwrap();
    }
    assert_eq!(writer.admission(now), Some(GapCause::SpoolFull));
    // Records of sessions already running still go in, past the bound if need be.
    for extra in seq + 1..=seq + 20 {
        writer.append(extra, &payload(extra)).unwrap();
    }
    writer.commit();
    let last = seq + 20;
    assert!(writer.stats().bytes > 2048);
    assert_eq!(
        seqs(&mut reader),
        (1..=last).collect::<Vec<_>>(),
        "nothing lost"
    );
    writer.passed_over(3);
    reader.ack(last / 2).unwrap();
    assert_eq!(
        writer.admission(now),
        Some(GapCause::SpoolFull),
        "still above 3/4: {:?}",
        writer.stats()
    );
    reader.ack(last).unwrap();
    writer.append(last + 1, &payload(last + 1)).unwrap();
    assert_eq!(writer.admission(now), None, "{:?}", writer.stats());
    let lost = losses(&mut writer);
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0].0, GapCause::SpoolFull);
    assert_eq!((lost[0].1.records, lost[0].1.paused_collections), (0, 3));
}

#[test]
fn drop_oldest_makes_room_and_counts_the_loss() {
    let dir = TempDir::new("dropoldest").unwrap();
    let options = SpoolOptions {
        segment_bytes: 512,
        max_bytes: 1536,
        full: FullPolicy::DropOldest,
        ..SpoolOptions::default()
    };
    let (mut writer, mut reader, _) = open(dir.path(), options.clone());
    for seq in 1..=100 {
        writer.append(seq, &payload(seq)).unwrap();
    }
    writer.commit();
    let stats = writer.stats();
    assert!(stats.bytes <= 1536, "{stats:?}");
    assert!(
        stats.dropped_records > 0 && stats.dropped_bytes > 0,
        "{stats:?}"
    );
    let left = seqs(&mut reader);
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
    let lost = losses(&mut writer);
    assert_eq!(lost[0].0, GapCause::SpoolFull);
    assert_eq!(lost[0].1.records, stats.dropped_records);
    assert_eq!(lost[0].1.lost, vec![(1, left[0] - 1)]);
}

#[test]
fn drop_oldest_counts_as_lost_only_what_the_shipper_had_not_read() {
    let dir = TempDir::new("dropread").unwrap();
    let options = SpoolOptions {
        segment_bytes: 512,
        max_bytes: 1536,
        full: FullPolicy::DropOldest,
        ..SpoolOptions::default()
    };
    let (mut writer, mut reader, _) = open(dir.path(), options);
    for seq in 1..=10 {
        writer.append(seq, &payload(seq)).unwrap();
    }
    writer.commit();
    // The shipper has 1..=5 in memory (a batch on its way) and upstream acked 1..=2.
    for _ in 1..=5 {
        reader.next_record().unwrap();
    }
    reader.ack(2).unwrap();
    for seq in 11..=100 {
        writer.append(seq, &payload(seq)).unwrap();
    }
    writer.commit();
    let stats = writer.stats();
    // 3, 4, 5 were deleted but are in the shipper's hands: at risk, not lost.
    assert_eq!(stats.held_dropped, 3);
    let left = seqs(&mut reader);
    assert_eq!(
        2 + 3 + stats.dropped_records + left.len() as u64,
        100,
        "acked + held + lost + left is everything: {stats:?}"
    );
    let lost = losses(&mut writer);
    assert_eq!(lost[0].1.records, stats.dropped_records);
    assert_eq!(lost[0].1.lost, vec![(6, left[0] - 1)]);
    // Upstream takes the batch: nothing is at risk any more, and nothing is lost at stop.
    reader.ack(5).unwrap();
    assert_eq!(writer.stats().held_dropped, 0);
    writer.shipper_stopped();
    assert!(losses(&mut writer).is_empty());
}

#[test]
fn held_records_are_lost_if_the_shipper_stops_before_upstream_takes_them_even_across_a_crash() {
    let dir = TempDir::new("heldcrash").unwrap();
    let options = SpoolOptions {
        segment_bytes: 512,
        max_bytes: 1536,
        full: FullPolicy::DropOldest,
        ..SpoolOptions::default()
    };
    {
        let (mut writer, mut reader, _) = open(dir.path(), options.clone());
        for seq in 1..=10 {
            writer.append(seq, &payload(seq)).unwrap();
        }
        writer.commit();
        for _ in 1..=4 {
            reader.next_record().unwrap();
        }
        for seq in 11..=100 {
            writer.append(seq, &payload(seq)).unwrap();
        }
        // What was dropped unread is reported in a gap record (seq 101).
        let (cause, loss) = losses(&mut writer).remove(0);
        assert_eq!(loss.lost[0].0, 5);
        writer.append_gap(101, b"{\"gap\":1}", cause, loss).unwrap();
        writer.commit();
        // kill -9 here: the shipper's batch 1..=4 never reached upstream.
    }
    let (mut writer, _, report) = open(dir.path(), options);
    assert_eq!(report.records_lost, 4, "{report:?}");
    let lost = losses(&mut writer);
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0].1.lost, vec![(1, 4)]);
}

#[test]
fn oversized_and_out_of_order_records_are_refused_with_a_reason() {
    let dir = TempDir::new("refuse").unwrap();
    let options = SpoolOptions {
        max_record_bytes: 100,
        ..SpoolOptions::default()
    };
    let (mut writer, _, _) = open(dir.path(), options);
    let err = writer.append(1, &[b'x'; 101]).unwrap_err();
    assert!(err.to_string().contains("max_output"), "{err}");
    writer.append(5, b"{}").unwrap();
    let err = writer.append(5, b"{}").unwrap_err();
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
    let dir = TempDir::new("noise").unwrap();
    fill(dir.path(), SpoolOptions::default(), 1..=3);
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
    fs::write(dir.path().join(format!("{:020}.seg", 50)), &noise).unwrap();
    let started = std::time::Instant::now();
    let (writer, reader, report) = open(dir.path(), SpoolOptions::default());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(report.segments_removed, 1, "{report:?}");
    drop((writer, reader));
    goes_on(dir.path(), SpoolOptions::default(), &[1, 2, 3]);
}

#[test]
fn an_unreadable_segment_is_set_aside_not_a_crash_loop() {
    let dir = TempDir::new("unreadable").unwrap();
    fill(dir.path(), SpoolOptions::default(), 1..=3);
    // A folder with a segment's name: opening works, reading fails (EISDIR), like a bad sector.
    let bad = dir.path().join(format!("{:020}.seg", 9));
    fs::create_dir(&bad).unwrap();
    let (mut writer, reader, report) = open(dir.path(), SpoolOptions::default());
    assert_eq!(report.segments_set_aside, 1, "{report:?}");
    assert!(report.found_damage());
    assert!(!bad.exists() && bad.with_extension("unreadable").exists());
    let lost = losses(&mut writer);
    assert_eq!(lost[0].0, GapCause::Unreadable, "{lost:?}");
    drop((writer, reader));
    goes_on(dir.path(), SpoolOptions::default(), &[1, 2, 3]);
}
