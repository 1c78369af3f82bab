//! `commands`: each entry a command (a string) or a table that says how its records ship,
//! `{ run = "show running-config", ship = "on_change", ignore = ["^! Last change"],
//! full_every = "24h" }` (issue 13).
//!
//! Every problem in an entry is reported at the entry's own span, so a bad `ignore` regex on
//! the third command of a device shows at its FILE:LINE:COL, and one bad entry does not hide
//! the others (the rest of the list is still taken).

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::super::schema::{self, CommandEntry, SHIP_MODES, Value};
use super::{Walker, type_name};

/// The keys a command's table may have.
const ENTRY_KEYS: &[&str] = &["run", "ship", "ignore", "full_every"];

impl Walker<'_> {
    /// The whole list; entries that were refused are reported and left out.
    pub(super) fn commands_value(&mut self, name: &str, items: &[Spanned<DeValue<'_>>]) -> Value {
        let mut list = Vec::new();
        for item in items {
            let span = item.span();
            match item.get_ref() {
                DeValue::String(s) if !s.trim().is_empty() => {
                    list.push(CommandEntry::plain(s, span));
                }
                DeValue::String(_) => self
                    .report
                    .error(span, format!("`{name}` has an empty entry")),
                DeValue::Table(t) => {
                    if let Some(entry) = self.command_table(name, t, span) {
                        list.push(entry);
                    }
                }
                other => self.report.error(
                    span,
                    format!(
                        "each entry of `{name}` must be a command (a string) or a table like {{ run = \"show running-config\", ship = \"on_change\" }}, found {}",
                        type_name(other)
                    ),
                ),
            }
        }
        Value::Commands(list)
    }

    /// One `{ run = ..., ship = ..., ignore = [...], full_every = ... }`.
    fn command_table(
        &mut self,
        name: &str,
        table: &DeTable<'_>,
        span: Range<usize>,
    ) -> Option<CommandEntry> {
        let mut entry = CommandEntry::plain("", span.clone());
        let mut ok = true;
        for (k, v) in table.iter() {
            let key = k.get_ref().as_ref();
            let vspan = v.span();
            let field = format!("{name}.{key}");
            match (key, v.get_ref()) {
                ("run", DeValue::String(s)) if !s.trim().is_empty() => entry.run = s.to_string(),
                ("ship", DeValue::String(s)) => {
                    match self.choice_value(&field, SHIP_MODES, s, vspan) {
                        Some(_) => entry.ship = Some(s.to_string()),
                        None => ok = false,
                    }
                }
                ("full_every", DeValue::String(s)) => match self.duration_value(&field, s, vspan) {
                    Some(Value::Duration(d)) => entry.full_every = Some(d),
                    _ => ok = false,
                },
                ("ignore", DeValue::Array(patterns)) => {
                    for p in patterns {
                        match p.get_ref() {
                            DeValue::String(s) if !s.is_empty() => {
                                match self.regex_value(&field, s, p.span()) {
                                    Some(_) => {
                                        self.warn_if_matches_every_line(&field, s, p.span());
                                        entry.ignore.push(s.to_string());
                                    }
                                    None => ok = false,
                                }
                            }
                            other => {
                                self.report.error(
                                    p.span(),
                                    format!(
                                        "each entry of `{field}` must be a regular expression in a non-empty string, found {}",
                                        if matches!(other, DeValue::String(_)) { "an empty string" } else { type_name(other) }
                                    ),
                                );
                                ok = false;
                            }
                        }
                    }
                }
                ("run" | "ship" | "full_every" | "ignore", other) => {
                    let expected = match key {
                        "run" => "the command to run, a non-empty string",
                        "ship" => "\"always\" or \"on_change\"",
                        "full_every" => "a duration string like \"24h\"",
                        _ => {
                            "a list of regular expressions, e.g. [\"^! Last configuration change\"]"
                        }
                    };
                    self.report.error(
                        vspan,
                        format!("`{field}` must be {expected}, found {}", type_name(other)),
                    );
                    ok = false;
                }
                _ => {
                    let hint = schema::suggest(key, ENTRY_KEYS.iter().copied())
                        .map(|c| format!(" (did you mean `{c}`?)"))
                        .unwrap_or_default();
                    self.report.error(
                        k.span(),
                        format!(
                            "unknown key `{key}` in an entry of `{name}`{hint}; an entry may have: {}",
                            ENTRY_KEYS.join(", ")
                        ),
                    );
                    ok = false;
                }
            }
        }
        if entry.run.is_empty() {
            if !table.iter().any(|(k, _)| k.get_ref() == "run") {
                self.report.error(
                    span,
                    format!("an entry of `{name}` has no `run`; write the command to run, e.g. {{ run = \"show running-config\", ship = \"on_change\" }}"),
                );
            }
            return None;
        }
        ok.then_some(entry)
    }

    /// A pattern that matches an empty line matches every line (`^`, `.*`, `x?`): every output
    /// of the command would then compare equal and a real change would never go up. Allowed
    /// (a user may mean it for a while), but said.
    fn warn_if_matches_every_line(&mut self, field: &str, pattern: &str, span: Range<usize>) {
        if regex_lite::Regex::new(pattern).is_ok_and(|re| re.is_match("")) {
            self.report.warning(
                span,
                format!(
                    "`{field}` pattern `{pattern}` matches every line, so every output compares equal and no change would ever ship; match the lines you mean, e.g. \"^! Last configuration change\""
                ),
            );
        }
    }
}
