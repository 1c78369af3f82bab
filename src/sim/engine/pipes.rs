//! Output modifiers after `|` (`include`, `match`, `no-more`, `count`, ...), pure functions
//! of the lines.

use crate::sim::profile::Style;

/// `show x | include y` → (`show x`, [`include y`]).
pub(super) fn split_pipes(line: &str) -> (String, Vec<String>) {
    let mut parts = line.split('|');
    let base = parts.next().unwrap_or("").to_string();
    let pipes = parts.map(|p| p.trim().to_string()).collect();
    (base, pipes)
}

/// Output modifiers after `|`. Returns the lines and whether paging applies, or the error
/// message for a modifier the device would reject.
pub(super) fn apply_pipes(
    style: Style,
    mut lines: Vec<Vec<u8>>,
    pipes: &[String],
) -> Result<(Vec<Vec<u8>>, bool), String> {
    let mut paging = true;
    let modifiers: &[&str] = match style {
        Style::Junos => &["no-more", "match", "except", "count"],
        Style::Ios => &["include", "exclude", "begin", "count"],
        Style::Linux => &[],
    };
    for pipe in pipes {
        let (word, arg) = pipe.split_once(' ').unwrap_or((pipe.as_str(), ""));
        let word = word.to_ascii_lowercase();
        let found: Vec<&&str> = modifiers
            .iter()
            .filter(|m| !word.is_empty() && m.starts_with(&word))
            .collect();
        let [modifier] = found[..] else {
            return Err(match style {
                Style::Junos => "syntax error.".to_string(),
                _ => "% Invalid input detected at '^' marker.".to_string(),
            });
        };
        let arg = arg.trim();
        let regex = if matches!(*modifier, "no-more") || (*modifier == "count" && arg.is_empty()) {
            None
        } else {
            Some(
                regex_lite::Regex::new(arg)
                    .map_err(|e| format!("% Invalid regular expression: {e}"))?,
            )
        };
        let is_match = |l: &Vec<u8>| {
            regex
                .as_ref()
                .is_some_and(|r| r.is_match(&String::from_utf8_lossy(l)))
        };
        match *modifier {
            "no-more" => paging = false,
            "match" | "include" => lines.retain(is_match),
            "except" | "exclude" => lines.retain(|l| !is_match(l)),
            "begin" => {
                let start = lines.iter().position(is_match).unwrap_or(lines.len());
                lines.drain(..start);
            }
            _ => {
                let n = if regex.is_some() {
                    lines.iter().filter(|l| is_match(l)).count()
                } else {
                    lines.len()
                };
                let text = match style {
                    Style::Junos => format!("Count: {n} lines"),
                    _ => format!("Number of lines which match regexp = {n}"),
                };
                lines = vec![text.into_bytes()];
            }
        }
    }
    Ok((lines, paging))
}
