//! What "the same output" means: the output with its volatile lines left out, and the
//! digest of that.
//!
//! A device prints clocks, uptimes and counters that move on every run (`! Last
//! configuration change at ...`, `router1 uptime is ...`). Comparing outputs byte for byte
//! would call every run a change, which is what makes Oxidized users fight diff noise. So a
//! comparison first drops every line that one of the platform's `volatile` patterns
//! (`platforms.toml`) or the command's own `ignore` patterns match. Only the comparison sees
//! the normalised text: what goes upstream is always the device's exact output.

use regex_lite::Regex;
use sha2::{Digest as _, Sha256};

/// The lines to leave out for one platform and command, compiled once per policy.
#[derive(Debug, Clone)]
pub struct Normaliser {
    /// Every pattern as one alternation: one pass per line instead of one per pattern
    /// (regex-lite's cost is mostly per call). `None` when there is nothing to leave out.
    any: Option<Regex>,
}

impl Normaliser {
    /// The platform's volatile lines (none for a platform the table does not know) and the
    /// command's `ignore` patterns. The inventory checked `ignore` already; a pattern that
    /// does not compile anyway is left out with a warning rather than stopping the shipper.
    pub fn for_platform(platform: &str, ignore: &[String]) -> Normaliser {
        let mut sources: Vec<String> = crate::platform::table()
            .get(platform)
            .map(|p| p.volatile.iter().map(|r| r.as_str().to_string()).collect())
            .unwrap_or_default();
        for source in ignore {
            match Regex::new(source) {
                Ok(_) => sources.push(source.clone()),
                Err(e) => log::warn!(
                    "ignore pattern {source:?} does not compile ({e}); it is left out of the comparison"
                ),
            }
        }
        if sources.is_empty() {
            return Normaliser { any: None };
        }
        let alternation = sources
            .iter()
            .map(|s| format!("(?:{s})"))
            .collect::<Vec<_>>()
            .join("|");
        // Each part compiles alone, so the whole does (unless it is too big: then a warning,
        // and nothing is left out, which costs whole outputs, never a wrong "unchanged").
        let any = Regex::new(&alternation)
            .map_err(|e| log::warn!("the ignore patterns of platform {platform} together do not compile ({e}); nothing is left out of the comparison"))
            .ok();
        Normaliser { any }
    }

    /// `output` without the lines any pattern matches. Lines are split on `\n`; each is
    /// matched without its `\n` and a `\r` before it, and kept with both. Bytes that are not
    /// UTF-8 are compared as U+FFFD (two outputs that differ only there compare equal; the
    /// shipped output keeps them exactly in `output_base64`).
    pub fn normalise(&self, output: &[u8]) -> String {
        let text = String::from_utf8_lossy(output);
        let Some(any) = &self.any else {
            return text.into_owned();
        };
        let mut kept = String::with_capacity(text.len());
        for line in text.split_inclusive('\n') {
            let bare = line.strip_suffix('\n').unwrap_or(line);
            let bare = bare.strip_suffix('\r').unwrap_or(bare);
            if !any.is_match(bare) {
                kept.push_str(line);
            }
        }
        kept
    }
}

/// The SHA-256 of a normalised output, raw.
pub(crate) fn sha256(normalised: &str) -> [u8; 32] {
    Sha256::digest(normalised.as_bytes()).into()
}

/// `"sha256:<64 lowercase hex digits>"`, as records carry it.
pub(crate) fn digest_text(digest: &[u8; 32]) -> String {
    let mut text = String::with_capacity(7 + 64);
    text.push_str("sha256:");
    for b in digest {
        text.push_str(&format!("{b:02x}"));
    }
    text
}

/// The digest of a normalised output as records carry it: `"sha256:<hex>"`.
pub fn digest(normalised: &str) -> String {
    digest_text(&sha256(normalised))
}

#[cfg(test)]
mod tests {
    use super::*;

    const IOS_VERSION: &str = include_str!("../sim/captures/cisco_ios/show_version.txt");
    const NXOS_VERSION: &str = include_str!("../sim/captures/cisco_nxos/show_version.txt");
    const EOS_VERSION: &str = include_str!("../sim/captures/arista_eos/show_version.txt");
    const JUNOS_UPTIME: &str = include_str!("../sim/captures/juniper_junos/show_system_uptime.txt");
    const JUNOS_VERSION: &str = include_str!("../sim/captures/juniper_junos/show_version.txt");

    /// The lines `normalise` left out of `output`.
    fn dropped(n: &Normaliser, output: &str) -> Vec<String> {
        let kept = n.normalise(output.as_bytes());
        let kept: Vec<&str> = kept.lines().collect();
        let mut dropped = Vec::new();
        let mut k = kept.iter().peekable();
        for line in output.lines() {
            if k.peek() == Some(&&line) {
                k.next();
            } else {
                dropped.push(line.to_string());
            }
        }
        dropped
    }

    #[test]
    fn the_uptime_lines_of_real_show_version_captures_are_left_out_and_nothing_else() {
        let cases = [
            (
                "cisco_ios",
                IOS_VERSION,
                vec!["router1 uptime is 2 years, 31 weeks, 6 days, 9 hours, 55 minutes"],
            ),
            (
                "cisco_nxos",
                NXOS_VERSION,
                vec!["Kernel uptime is 123 day(s), 5 hour(s), 15 minute(s), 19 second(s)"],
            ),
            (
                "arista_eos",
                EOS_VERSION,
                vec![
                    "Uptime:                 1 hour and 5 minutes",
                    "Free memory:            301240 kB",
                ],
            ),
            ("juniper_junos", JUNOS_VERSION, vec![]),
        ];
        for (platform, capture, expected) in cases {
            let n = Normaliser::for_platform(platform, &[]);
            assert_eq!(dropped(&n, capture), expected, "{platform}");
        }
    }

    #[test]
    fn the_clock_and_time_since_lines_of_junos_show_system_uptime_are_left_out() {
        let n = Normaliser::for_platform("juniper_junos", &[]);
        let kept = n.normalise(JUNOS_UPTIME.as_bytes());
        assert_eq!(kept, "Time Source:  NTP CLOCK\n");
    }

    #[test]
    fn a_running_config_that_moved_only_in_volatile_lines_normalises_the_same() {
        let config = |at: &str, size: u32, period: u32| {
            format!(
                "Building configuration...\n\nCurrent configuration : {size} bytes\n!\n\
                 ! Last configuration change at {at} UTC Tue Mar 3 2026 by admin\n\
                 ! NVRAM config last updated at {at} UTC Tue Mar 3 2026 by admin\n!\n\
                 version 15.2\nhostname router1\n!\nntp clock-period {period}\nntp server 10.0.0.1\nend\n"
            )
        };
        let n = Normaliser::for_platform("cisco_ios", &[]);
        let a = n.normalise(config("10:15:32", 4125, 17179868).as_bytes());
        let b = n.normalise(config("11:02:07", 4131, 17179870).as_bytes());
        assert_eq!(a, b);
        assert_eq!(digest(&a), digest(&b));
        assert!(a.contains("hostname router1\n") && a.contains("ntp server 10.0.0.1\n"));
        let changed = config("11:02:07", 4131, 17179870).replace("router1", "router2");
        assert_ne!(digest(&n.normalise(changed.as_bytes())), digest(&a));
    }

    #[test]
    fn ignore_patterns_add_to_the_platform_and_crlf_lines_keep_their_ends() {
        let n = Normaliser::for_platform("generic", &["^Temp: ".to_string(), "(".to_string()]);
        let out = "Fan: ok\r\nTemp: 41C\r\nPSU: ok";
        assert_eq!(n.normalise(out.as_bytes()), "Fan: ok\r\nPSU: ok");
        let none = Normaliser::for_platform("no_such_platform", &[]);
        assert_eq!(none.normalise(out.as_bytes()), out);
    }

    #[test]
    fn bytes_that_are_not_utf8_are_compared_as_replacement_characters() {
        let n = Normaliser::for_platform("generic", &[]);
        assert_eq!(n.normalise(b"a\xffb\n"), "a\u{fffd}b\n");
    }

    #[test]
    fn digests_are_sha256_in_lowercase_hex_and_stable() {
        // The SHA-256 of the empty string and of "abc" (FIPS 180-2 test vectors).
        assert_eq!(
            digest(""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            digest("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
