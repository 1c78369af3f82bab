//! The last console lines of a captured device, for `rackhand status --device NAME`: what an
//! engineer asks first ("what did the console say?") without searching upstream.
//!
//! A `heapless::HistoryBuf` of [`TAIL_LINES`] lines, each cut to [`LINE_MAX`] characters:
//! fixed memory per device whatever the console prints. In `status.json` it is a list of
//! strings, oldest first (`devices.NAME.console_tail`).

use std::fmt;

use heapless::HistoryBuf;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How many lines a device's tail keeps.
pub const TAIL_LINES: usize = 20;
/// The longest line kept, in characters (the rest is cut, marked `…`).
pub const LINE_MAX: usize = 200;

/// See the module doc.
#[derive(Clone, Default, PartialEq)]
pub struct ConsoleTail(HistoryBuf<String, TAIL_LINES>);

impl ConsoleTail {
    /// Adds the lines of console text (empty ones skipped; a last line without its line end
    /// counts: a `rommon 1 >` prompt is one).
    pub fn push_text(&mut self, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        for line in text.split('\n') {
            let line = line.trim_start_matches('\r').trim_end();
            if !line.trim().is_empty() {
                self.push_line(line);
            }
        }
    }

    /// Adds one line (cut to [`LINE_MAX`] characters).
    pub fn push_line(&mut self, line: &str) {
        let line = if line.chars().count() > LINE_MAX {
            let kept: String = line.chars().take(LINE_MAX - 1).collect();
            format!("{kept}…")
        } else {
            line.to_string()
        };
        self.0.write(line);
    }

    /// Oldest first.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.0.oldest_ordered().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for ConsoleTail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.lines()).finish()
    }
}

impl Serialize for ConsoleTail {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.lines())
    }
}

/// Reads the list back, keeping its newest [`TAIL_LINES`]. Never fails: anything but a list
/// of strings reads as empty (a tail is not worth refusing a status file for).
impl<'de> Deserialize<'de> for ConsoleTail {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        let mut tail = ConsoleTail::default();
        for line in value.as_array().into_iter().flatten() {
            if let Some(line) = line.as_str() {
                tail.push_line(line);
            }
        }
        Ok(tail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_keeps_the_last_lines_of_console_text_oldest_first() {
        let mut tail = ConsoleTail::default();
        let text: String = (1..=25).map(|n| format!("\r\nline {n}\r\n")).collect();
        tail.push_text(text.as_bytes());
        tail.push_text(b"rommon 1 > ");
        let lines: Vec<&str> = tail.lines().collect();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines[0], "line 7");
        assert_eq!(lines[TAIL_LINES - 2], "line 25");
        assert_eq!(lines[TAIL_LINES - 1], "rommon 1 >");
    }

    #[test]
    fn long_lines_are_cut_and_the_json_round_trips() {
        let mut tail = ConsoleTail::default();
        tail.push_line(&"x".repeat(1000));
        tail.push_text(b"a\xffb\n");
        let json = serde_json::to_string(&tail).unwrap();
        let back: ConsoleTail = serde_json::from_str(&json).unwrap();
        assert_eq!(back, tail);
        let lines: Vec<&str> = back.lines().collect();
        assert_eq!(lines[0].chars().count(), LINE_MAX);
        assert_eq!(lines[1], "a\u{fffd}b");
        let odd: ConsoleTail = serde_json::from_str("42").unwrap();
        assert!(odd.is_empty());
    }
}
