//! The `diff` of a changed record: a unified diff of the previous and the current normalised
//! output, so a receiver (or a person reading the records) sees what changed without keeping
//! outputs itself.
//!
//! Bounded twice: the diff algorithm gets a deadline (`similar` then falls back to a coarser
//! diff, still correct), so two large outputs that differ everywhere cannot stall the
//! shipper; and the text is capped at a size, cut at a line end, with a last line saying
//! how much was left out (the record carries the whole output anyway).

use std::time::Duration;

use similar::TextDiff;

/// How long the diff algorithm may search for a minimal diff.
const DEADLINE: Duration = Duration::from_millis(500);
/// Lines of context around each change.
const CONTEXT: usize = 3;
/// The largest `diff` a record carries, in bytes.
pub const MAX_DIFF_BYTES: usize = 64 << 10;

/// The unified diff from `previous` to `current` (normalised texts), at most `cap` bytes
/// plus the line saying what was left out. Headers name them `previous` and `current`.
pub fn unified(previous: &str, current: &str, cap: usize) -> String {
    let diff = TextDiff::configure()
        .timeout(DEADLINE)
        .diff_lines(previous, current);
    let text = diff
        .unified_diff()
        .context_radius(CONTEXT)
        .header("previous", "current")
        .to_string();
    capped(text, cap)
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
