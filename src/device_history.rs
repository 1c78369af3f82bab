//! Each device's recent collections: the last [`HISTORY_LEN`] outcomes, oldest to newest.
//!
//! `last_status` and `consecutive_failures` say how a device is now; they cannot tell a device
//! that fails one collection in three from one that failed once last week. The status LED
//! ("some device failing its recent collections"), the metrics and `rackhand status` (a run like
//! `..x.....`) all want that, so the agent keeps it, in memory and in `status.json`.
//!
//! One entry per finished collection (a device's run, all its commands), not per command: a
//! collection is what the scheduler starts and backs off, what `last_good_at` counts, and what an
//! engineer means by "it failed three times"; per command, a device with ten commands would fill
//! the window in three runs while one with a single command would show a month. A run is `ok`
//! when every command was, else it carries the status of its first failure (what
//! `last_status` shows).
//!
//! The window is a `heapless::HistoryBuf` of one-byte [`Mark`]s: fixed memory per device
//! whatever the uptime (about 48 bytes), nothing allocated when a collection is noted. In
//! `status.json` it is a string of one character per collection ([`Mark::symbol`]), so 500
//! devices add about 25 KB to the file, not an array of status names.

use std::fmt;

use heapless::HistoryBuf;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::outcome::Status;

/// How many collections a device's history keeps.
pub(crate) const HISTORY_LEN: usize = 32;

/// How one collection went, in one byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mark {
    Ok,
    Timeout,
    ConnectFailed,
    AuthFailed,
    HostKeyMismatch,
    CommandError,
    OutputTooLarge,
    DriverCrashed,
    Disconnected,
    PortBusy,
    /// Any other failure (a status this version does not know, or a run without commands).
    Failed,
}

/// Every mark, its symbol and what the legend says of it, in legend order.
const MARKS: [(Mark, char, &str); 11] = [
    (Mark::Ok, '.', "ok"),
    (Mark::Failed, 'x', "failed"),
    (Mark::Timeout, 't', "timeout"),
    (Mark::ConnectFailed, 'c', "connect_failed"),
    (Mark::AuthFailed, 'a', "auth_failed"),
    (Mark::HostKeyMismatch, 'k', "host_key_mismatch"),
    (Mark::CommandError, 'e', "command_error"),
    (Mark::OutputTooLarge, 'o', "output_too_large"),
    (Mark::DriverCrashed, '!', "driver_crashed"),
    (Mark::Disconnected, 'd', "disconnected"),
    (Mark::PortBusy, 'b', "port_busy"),
];

impl Mark {
    /// The mark for a collection whose status (`ok`, or its first failure's) is `status`.
    pub(crate) fn of_status(status: &str) -> Mark {
        MARKS
            .iter()
            .find(|(_, _, name)| *name == status)
            .map_or(Mark::Failed, |(mark, _, _)| *mark)
    }

    /// Its character in `status.json` and `rackhand status`.
    pub(crate) fn symbol(self) -> char {
        MARKS
            .iter()
            .find(|(mark, _, _)| *mark == self)
            .map_or('x', |(_, symbol, _)| *symbol)
    }

    /// The mark a character stands for; an unknown one (a newer version's) is a failure.
    fn from_symbol(symbol: char) -> Mark {
        MARKS
            .iter()
            .find(|(_, s, _)| *s == symbol)
            .map_or(Mark::Failed, |(mark, _, _)| *mark)
    }

    pub(crate) fn is_ok(self) -> bool {
        self == Mark::Ok
    }
}

impl From<Status> for Mark {
    fn from(status: Status) -> Mark {
        Mark::of_status(status.as_str())
    }
}

/// `. ok  x failed  t timeout`: what the symbols in `symbols` mean, each once, in legend order.
pub(crate) fn legend<'a>(symbols: impl IntoIterator<Item = &'a str>) -> String {
    let seen: std::collections::BTreeSet<char> = symbols.into_iter().flat_map(str::chars).collect();
    MARKS
        .iter()
        .filter(|(mark, symbol, _)| seen.contains(symbol) || mark.is_ok())
        .map(|(_, symbol, name)| format!("{symbol} {name}"))
        .collect::<Vec<_>>()
        .join("  ")
}

/// A device's last [`HISTORY_LEN`] collections.
#[derive(Clone, Default, PartialEq)]
pub(crate) struct DeviceHistory(HistoryBuf<Mark, HISTORY_LEN>);

impl DeviceHistory {
    /// Notes a finished collection (the oldest one goes once the window is full).
    pub(crate) fn push(&mut self, mark: Mark) {
        self.0.write(mark);
    }

    /// Oldest to newest.
    pub(crate) fn marks(&self) -> impl DoubleEndedIterator<Item = Mark> + '_ {
        self.0.oldest_ordered().copied()
    }

    /// How many collections it holds (at most [`HISTORY_LEN`]).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many of the last `n` collections failed.
    pub(crate) fn recent_failures(&self, n: usize) -> usize {
        self.marks().rev().take(n).filter(|m| !m.is_ok()).count()
    }

    /// Whether the last collection was ok; `None` before the first one.
    #[cfg(test)]
    pub(crate) fn last_ok(&self) -> Option<bool> {
        self.0.recent().map(|m| m.is_ok())
    }

    /// The last collection's mark.
    #[cfg(test)]
    pub(crate) fn last(&self) -> Option<Mark> {
        self.0.recent().copied()
    }
}

/// `..x.....`, oldest first.
impl fmt::Display for DeviceHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.marks().try_for_each(|m| write!(f, "{}", m.symbol()))
    }
}

impl fmt::Debug for DeviceHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceHistory({self})")
    }
}

impl Serialize for DeviceHistory {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Reads the string back; a longer one (a version keeping more) keeps its newest
/// [`HISTORY_LEN`]. Never fails: a history is not worth refusing a status file for.
impl<'de> Deserialize<'de> for DeviceHistory {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Any JSON value is taken whole (so a wrong type leaves the rest of the file readable).
        let value = serde_json::Value::deserialize(deserializer)?;
        let mut history = DeviceHistory::default();
        for symbol in value.as_str().unwrap_or_default().chars() {
            history.push(Mark::from_symbol(symbol));
        }
        Ok(history)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(symbols: &str) -> DeviceHistory {
        serde_json::from_value(serde_json::Value::String(symbols.into())).unwrap()
    }

    #[test]
    fn the_history_keeps_the_last_32_collections_oldest_first() {
        let mut h = DeviceHistory::default();
        assert_eq!(h.last_ok(), None);
        assert_eq!(h.to_string(), "");
        for n in 0..40 {
            h.push(if n % 8 == 7 { Mark::Timeout } else { Mark::Ok });
        }
        assert_eq!(h.len(), HISTORY_LEN);
        // Collections 8..40: the first 8 are gone.
        assert_eq!(h.to_string(), ".......t".repeat(4));
        assert_eq!(h.last_ok(), Some(false));
        assert_eq!(h.last(), Some(Mark::Timeout));
        assert_eq!(h.recent_failures(1), 1);
        assert_eq!(h.recent_failures(8), 1);
        assert_eq!(h.recent_failures(9), 2);
        assert_eq!(h.recent_failures(100), 4);
        h.push(Mark::Ok);
        assert_eq!(h.last_ok(), Some(true));
        assert_eq!(h.recent_failures(1), 0);
    }

    #[test]
    fn every_status_has_its_own_symbol_and_reads_back() {
        let statuses = [
            Status::Ok,
            Status::Timeout,
            Status::ConnectFailed,
            Status::AuthFailed,
            Status::HostKeyMismatch,
            Status::CommandError,
            Status::OutputTooLarge,
            Status::DriverCrashed,
            Status::Disconnected,
            Status::PortBusy,
        ];
        let mut h = DeviceHistory::default();
        for status in statuses {
            let mark = Mark::from(status);
            assert_ne!(mark, Mark::Failed, "{status:?}");
            h.push(mark);
        }
        h.push(Mark::of_status("failed"));
        let text = h.to_string();
        let distinct: std::collections::BTreeSet<char> = text.chars().collect();
        assert_eq!(distinct.len(), statuses.len() + 1, "{text}");
        assert_eq!(history(&text), h);
    }

    #[test]
    fn status_json_holds_the_history_as_one_string() {
        let h = history("..x.t");
        assert_eq!(serde_json::to_string(&h).unwrap(), r#""..x.t""#);
        assert_eq!(h.recent_failures(5), 2);
        // A newer version's symbol is a failure; a longer history keeps its newest 32; null
        // or a wrong type is an empty history rather than an unreadable status file.
        assert_eq!(history("?").last(), Some(Mark::Failed));
        let long = format!("{}{}", "x".repeat(10), ".".repeat(HISTORY_LEN));
        assert_eq!(history(&long).recent_failures(HISTORY_LEN), 0);
        for odd in ["null", "3", "[1]"] {
            let h: DeviceHistory = serde_json::from_str(odd).unwrap();
            assert!(h.is_empty(), "{odd}");
        }
    }

    #[test]
    fn the_legend_names_the_symbols_shown() {
        assert_eq!(legend(["....", "..t."]), ". ok  t timeout");
        assert_eq!(
            legend(["x", "a!"]),
            ". ok  x failed  a auth_failed  ! driver_crashed"
        );
    }

    #[test]
    fn a_history_takes_fixed_memory() {
        // 32 one-byte marks, the write position and the full flag: 500 devices hold ~24 KB.
        assert!(std::mem::size_of::<DeviceHistory>() <= 48);
        assert_eq!(std::mem::size_of::<Mark>(), 1);
    }
}
