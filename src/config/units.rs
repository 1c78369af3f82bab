//! Durations and sizes as humans write them in the config: `"500ms"`, `"1m30s"`, `"64KiB"`.
//!
//! Plain integers are refused on purpose: `timeout = 30` could mean seconds or milliseconds,
//! and the engineer reading the file at 3 a.m. should not have to guess.

use std::time::Duration;

/// Why a duration or a size as written is refused; each message says how to write it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UnitError {
    #[error("empty duration; write e.g. \"30s\", \"500ms\" or \"5m\"")]
    EmptyDuration,
    #[error(
        "`{text}` is not a duration; write a number and a unit, e.g. \"30s\", \"500ms\", \"5m\""
    )]
    NotADuration { text: String },
    #[error("`{text}` is not a size; write a number and a unit, e.g. \"64KiB\", \"512MiB\"")]
    NotASize { text: String },
    #[error("`{number}` in `{text}` is not a number")]
    NotANumber { number: String, text: String },
    #[error("`{text}` has no unit; write e.g. \"{number}s\" or \"{number}ms\"")]
    DurationWithoutUnit { text: String, number: String },
    #[error("`{text}` has no unit; write e.g. \"{number}B\", \"{number}KiB\" or \"{number}MiB\"")]
    SizeWithoutUnit { text: String, number: String },
    #[error("unknown unit `{unit}` in `{text}`; use ms, s, m, h or d")]
    UnknownDurationUnit { unit: String, text: String },
    #[error("unknown unit `{unit}` in `{text}`; use B, KiB, MiB, GiB (or kB, MB, GB)")]
    UnknownSizeUnit { unit: String, text: String },
    #[error("`{text}` is out of range")]
    OutOfRange { text: String },
}

/// Parses `"500ms"`, `"30s"`, `"5m"`, `"2h"`, `"1d"` and sums like `"1m30s"`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(UnitError::EmptyDuration);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(UnitError::NotADuration { text: text.into() });
        }
        let number: f64 = rest[..digits].parse().map_err(|_| UnitError::NotANumber {
            number: rest[..digits].into(),
            text: text.into(),
        })?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = rest[..unit_len].trim();
        rest = &rest[unit_len..];
        let seconds = match unit {
            "ms" => number / 1000.0,
            "s" | "sec" => number,
            "m" | "min" => number * 60.0,
            "h" => number * 3600.0,
            "d" => number * 86400.0,
            "" => {
                return Err(UnitError::DurationWithoutUnit {
                    text: text.into(),
                    number: number.to_string(),
                });
            }
            other => {
                return Err(UnitError::UnknownDurationUnit {
                    unit: other.into(),
                    text: text.into(),
                });
            }
        };
        total += Duration::try_from_secs_f64(seconds)
            .map_err(|_| UnitError::OutOfRange { text: text.into() })?;
    }
    Ok(total)
}

/// Parses `"64KiB"`, `"512MiB"`, `"1GiB"`, `"100MB"`, `"4096B"`.
pub(crate) fn parse_size(text: &str) -> Result<u64, UnitError> {
    let s = text.trim();
    let digits = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    if digits == 0 {
        return Err(UnitError::NotASize { text: text.into() });
    }
    let number: f64 = s[..digits].parse().map_err(|_| UnitError::NotANumber {
        number: s[..digits].into(),
        text: text.into(),
    })?;
    let multiplier: u64 = match s[digits..].trim() {
        "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "" => {
            return Err(UnitError::SizeWithoutUnit {
                text: text.into(),
                number: number.to_string(),
            });
        }
        other => {
            return Err(UnitError::UnknownSizeUnit {
                unit: other.into(),
                text: text.into(),
            });
        }
    };
    let bytes = number * multiplier as f64;
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(UnitError::OutOfRange { text: text.into() });
    }
    Ok(bytes.round() as u64)
}

/// The short human form used in tables: `15m`, `1m30s`, `500ms`.
pub(crate) fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut secs = d.as_secs();
    let mut out = String::new();
    for (unit, size) in [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

/// The short human form of a size: `16MiB`, `1500B`.
pub(crate) fn format_size(bytes: u64) -> String {
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes}B")
}

/// Like `format_size`, but a size that is not a whole number of units is shown with one
/// decimal (`3.2MiB`) instead of in bytes.
pub(crate) fn approx_size(bytes: u64) -> String {
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= size {
            if bytes.is_multiple_of(size) {
                return format_size(bytes);
            }
            return format!("{:.1}{unit}", bytes as f64 / size as f64);
        }
    }
    format_size(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_written_in_configs() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
    }

    #[test]
    fn durations_without_unit_or_with_unknown_unit_are_refused_with_a_hint() {
        assert!(
            parse_duration("30")
                .unwrap_err()
                .to_string()
                .contains("no unit")
        );
        assert!(
            parse_duration("5 fortnights")
                .unwrap_err()
                .to_string()
                .contains("fortnights")
        );
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn sizes_binary_and_decimal() {
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("100MB"), Ok(100_000_000));
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert!(
            parse_size("12")
                .unwrap_err()
                .to_string()
                .contains("no unit")
        );
        assert!(parse_size("12 parsecs").is_err());
    }

    #[test]
    fn formatting_round_trips_the_common_forms() {
        for s in ["15m", "1m30s", "500ms", "2h", "1d"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
        for s in ["16MiB", "64KiB", "1500B", "1GiB"] {
            assert_eq!(format_size(parse_size(s).unwrap()), s);
        }
    }
}
