//! The `diff` of a changed record: a unified diff of the previous and the current normalised
//! output, so a receiver (or a person reading the records) sees what changed without keeping
//! outputs itself.
//!
//! Bounded twice: the diff algorithm gets a deadline (`similar`'s Myers then falls back to a
//! coarser diff, still correct), so two large outputs that differ everywhere cannot stall the
//! shipper; and the text is capped at a size, cut at a line end, with a last line saying
//! how much was left out (the record carries the whole output anyway).

use std::ops::Range;
use std::time::{Duration, Instant};

use similar::algorithms::{Capture, Replace, myers};
use similar::{DiffOp, DiffTag, group_diff_ops};

/// How long the diff algorithm may search for a minimal diff.
const DEADLINE: Duration = Duration::from_millis(500);
/// Lines of context around each change.
const CONTEXT: usize = 3;
/// The largest `diff` a record carries, in bytes.
pub const MAX_DIFF_BYTES: usize = 64 << 10;

/// The unified diff from `previous` to `current` (normalised texts), at most `cap` bytes
/// plus the line saying what was left out. Headers name them `previous` and `current`.
///
/// Built from `similar`'s Myers algorithm and hunk grouping directly rather than its
/// `TextDiff`: that one compiles three algorithms and its text layer into the binary (about
/// 300 KiB more on a stripped release build) for the same output.
pub fn unified(previous: &str, current: &str, cap: usize) -> String {
    let old: Vec<&str> = previous.split_inclusive('\n').collect();
    let new: Vec<&str> = current.split_inclusive('\n').collect();
    let mut capture = Replace::new(Capture::new());
    let deadline = Instant::now() + DEADLINE;
    let Ok(()) = myers::diff_deadline(
        &mut capture,
        &old,
        0..old.len(),
        &new,
        0..new.len(),
        Some(deadline),
    );
    let mut text = String::from("--- previous\n+++ current\n");
    for hunk in group_diff_ops(capture.into_inner().into_ops(), CONTEXT) {
        write_hunk(&mut text, &hunk, &old, &new);
    }
    capped(text, cap)
}

/// One hunk: its `@@ -a,b +c,d @@` header and its lines (`' '`, `-`, `+`).
fn write_hunk(out: &mut String, hunk: &[DiffOp], old: &[&str], new: &[&str]) {
    let (Some(first), Some(last)) = (hunk.first(), hunk.last()) else {
        return;
    };
    let olds = first.old_range().start..last.old_range().end;
    let news = first.new_range().start..last.new_range().end;
    out.push_str(&format!("@@ -{} +{} @@\n", range(&olds), range(&news)));
    for op in hunk {
        let (tag, o, n) = op.as_tag_tuple();
        let (kept, removed, added) = match tag {
            DiffTag::Equal => (&old[o], &[][..], &[][..]),
            DiffTag::Delete => (&[][..], &old[o], &[][..]),
            DiffTag::Insert => (&[][..], &[][..], &new[n]),
            DiffTag::Replace => (&[][..], &old[o], &new[n]),
        };
        for (sign, lines) in [(' ', kept), ('-', removed), ('+', added)] {
            for line in lines {
                out.push(sign);
                out.push_str(line);
                if !line.ends_with('\n') {
                    out.push_str("\n\\ No newline at end of file\n");
                }
            }
        }
    }
}

/// A hunk's range as unified diffs write it: `start,len` (1-based), `start` alone for one
/// line, and the line before for none.
fn range(r: &Range<usize>) -> String {
    match r.len() {
        1 => format!("{}", r.start + 1),
        0 => format!("{},0", r.start),
        n => format!("{},{n}", r.start + 1),
    }
}

/// `text` cut at the last line end within `cap` bytes, with a line saying what was cut.
fn capped(mut text: String, cap: usize) -> String {
    if text.len() <= cap {
        return text;
    }
    let end = floor_char_boundary(&text, cap);
    let cut = text[..end].rfind('\n').map_or(0, |i| i + 1);
    let left_out = &text[cut..];
    let note = format!(
        "... {} more bytes ({} lines) of the diff left out (cap {cap} bytes); the record carries the whole output\n",
        left_out.len(),
        left_out.lines().count()
    );
    text.truncate(cut);
    text.push_str(&note);
    text
}

/// The largest index ≤ `i` on a char boundary of `text`.
fn floor_char_boundary(text: &str, i: usize) -> usize {
    let mut i = i.min(text.len());
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_line_gives_a_unified_diff_with_three_lines_of_context() {
        let previous: String = (1..=20).map(|i| format!("line {i}\n")).collect();
        let current = previous.replace("line 10\n", "line ten\n");
        let diff = unified(&previous, &current, MAX_DIFF_BYTES);
        assert_eq!(
            diff,
            "--- previous\n+++ current\n@@ -7,7 +7,7 @@\n line 7\n line 8\n line 9\n-line 10\n+line ten\n line 11\n line 12\n line 13\n"
        );
    }

    #[test]
    fn hunks_at_the_ends_added_lines_and_a_missing_last_newline_are_written_as_diff_does() {
        let previous = "a\nb\nc\nd\ne\nf\ng\nh\ni\nj";
        let current = "A\nb\nc\nd\ne\nf\ng\nh\ni\nj\nk\n";
        assert_eq!(
            unified(previous, current, MAX_DIFF_BYTES),
            "--- previous\n+++ current\n@@ -1,4 +1,4 @@\n-a\n+A\n b\n c\n d\n\
             @@ -7,4 +7,5 @@\n g\n h\n i\n-j\n\\ No newline at end of file\n+j\n+k\n"
        );
        assert_eq!(
            unified("", "x\n", MAX_DIFF_BYTES),
            "--- previous\n+++ current\n@@ -0,0 +1 @@\n+x\n"
        );
        assert_eq!(
            unified("x\n", "", MAX_DIFF_BYTES),
            "--- previous\n+++ current\n@@ -1 +0,0 @@\n-x\n"
        );
    }

    #[test]
    fn a_diff_over_the_cap_is_cut_at_a_line_end_and_says_how_much_was_left_out() {
        let previous: String = (0..5000).map(|i| format!("a{i}\n")).collect();
        let current: String = (0..5000).map(|i| format!("b{i}\n")).collect();
        let full = unified(&previous, &current, usize::MAX);
        let diff = unified(&previous, &current, 1000);
        assert!(diff.len() < 1000 + 200, "{}", diff.len());
        let (kept, note) = diff.rsplit_once("...").unwrap();
        assert!(kept.ends_with('\n') && full.starts_with(kept));
        let left_out = full.len() - kept.len();
        assert!(note.contains(&format!(" {left_out} more bytes")), "{note}");
        assert!(diff.ends_with("the record carries the whole output\n"));
    }

    #[test]
    fn a_cap_inside_a_multibyte_character_does_not_panic() {
        let text = "ééééé\nééééé\n".to_string();
        let cut = capped(text, 13);
        assert!(cut.starts_with("ééééé\n..."), "{cut}");
    }

    #[test]
    fn two_large_outputs_that_differ_everywhere_are_diffed_within_bounds() {
        let previous: String = (0..20_000).map(|i| format!("x {i} {}\n", i * 7)).collect();
        let current: String = (0..20_000).map(|i| format!("y {i} {}\n", i * 3)).collect();
        let start = std::time::Instant::now();
        let diff = unified(&previous, &current, MAX_DIFF_BYTES);
        assert!(diff.len() <= MAX_DIFF_BYTES + 200);
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{:?}",
            start.elapsed()
        );
    }
}
