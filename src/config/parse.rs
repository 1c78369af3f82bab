//! Walks the TOML document and turns each table into a [`Layer`] of type-checked settings.
//!
//! serde's `deny_unknown_fields` stops at the first problem; an engineer fixing a config on a
//! console wants all of them at once. So the document is parsed with spans
//! (`toml::de::DeTable`) and walked against the key tables in `schema.rs`, collecting every
//! syntax error, unknown key, wrong type and bad value into the [`Report`].

use std::collections::BTreeMap;
use std::ops::Range;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::diag::Report;
use super::schema::{
    self, AGENT_KEYS, BOARD_KEYS, DEVICE_ONLY, DEVICE_SETTINGS, GROUP_ONLY, Key, Kind,
    METRICS_KEYS, SECTIONS, Setting, UPSTREAM_KEYS, Value,
};
use super::secret::Secret;
use super::units::{parse_duration, parse_size};

mod commands;

/// The settings written in one table (`[defaults]`, one `[[group]]`, one `[[device]]`, ...).
#[derive(Debug, Clone, Default)]
pub struct Layer {
    /// Span of the table's header (or the whole table), for "missing key" messages.
    pub(crate) header: Range<usize>,
    pub(crate) settings: BTreeMap<&'static str, Setting>,
    /// Keys written here whose values were refused (already reported). They count as
    /// written, so a bad `host` is not reported a second time as a missing one.
    pub(crate) rejected: Vec<&'static str>,
}

impl Layer {
    /// Whether the key is written in this table, valid or not.
    pub fn written(&self, name: &str) -> bool {
        self.settings.contains_key(name) || self.rejected.contains(&name)
    }

    pub fn get(&self, name: &str) -> Option<&Setting> {
        self.settings.get(name)
    }

    pub fn str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(Setting::as_str)
    }
}

/// The file, section by section, before inheritance is applied.
#[derive(Debug, Clone, Default)]
pub struct RawConfig {
    pub(crate) agent: Layer,
    pub(crate) defaults: Layer,
    pub(crate) groups: Vec<Layer>,
    pub(crate) devices: Vec<Layer>,
    pub(crate) upstream: Option<Layer>,
    pub(crate) board: Option<Layer>,
    pub(crate) metrics: Option<Layer>,
}

/// Parses `text`; relative paths in it are taken relative to `base_dir` (the config's folder).
pub fn parse(text: &str, base_dir: &Path, report: &mut Report) -> RawConfig {
    let (doc, errors) = DeTable::parse_recoverable(text);
    for e in errors {
        let span = e.span().unwrap_or(0..0);
        report.error(span, format!("TOML syntax: {}", e.message().trim()));
    }
    let walker = Walker { base_dir, report };
    walker.document(doc.get_ref())
}

struct Walker<'r> {
    base_dir: &'r Path,
    report: &'r mut Report,
}

impl Walker<'_> {
    fn document(mut self, doc: &DeTable<'_>) -> RawConfig {
        let mut raw = RawConfig::default();
        for (key, value) in doc.iter() {
            let name: &str = key.get_ref();
            match name {
                "agent" => {
                    if let Some(t) = self.table(key, value) {
                        raw.agent = self.layer(t, value.span(), &[AGENT_KEYS], "[agent]");
                    }
                }
                "defaults" => {
                    if let Some(t) = self.table(key, value) {
                        raw.defaults =
                            self.layer(t, value.span(), &[DEVICE_SETTINGS], "[defaults]");
                    }
                }
                "upstream" => {
                    if let Some(t) = self.table(key, value) {
                        raw.upstream =
                            Some(self.layer(t, value.span(), &[UPSTREAM_KEYS], "[upstream]"));
                    }
                }
                "board" => {
                    if let Some(t) = self.table(key, value) {
                        raw.board = Some(self.layer(t, value.span(), &[BOARD_KEYS], "[board]"));
                    }
                }
                "metrics" => {
                    if let Some(t) = self.table(key, value) {
                        raw.metrics =
                            Some(self.layer(t, value.span(), &[METRICS_KEYS], "[metrics]"));
                    }
                }
                "group" => {
                    for (t, span) in self.array_of_tables(key, value) {
                        raw.groups.push(self.layer(
                            t,
                            span,
                            &[GROUP_ONLY, DEVICE_SETTINGS],
                            "[[group]]",
                        ));
                    }
                }
                "device" => {
                    for (t, span) in self.array_of_tables(key, value) {
                        raw.devices.push(self.layer(
                            t,
                            span,
                            &[DEVICE_ONLY, DEVICE_SETTINGS],
                            "[[device]]",
                        ));
                    }
                }
                other => {
                    let hint = schema::suggest(other, SECTIONS.iter().copied())
                        .map(|s| format!(" (did you mean `{s}`?)"))
                        .unwrap_or_default();
                    self.report.error(
                        key.span(),
                        format!(
                            "unknown section `{other}`{hint}; a config has [agent], [defaults], [[group]], [[device]], [upstream], [board] and [metrics]"
                        ),
                    );
                }
            }
        }
        raw
    }

    fn table<'a, 'i>(
        &mut self,
        key: &Spanned<std::borrow::Cow<'i, str>>,
        value: &'a Spanned<DeValue<'i>>,
    ) -> Option<&'a DeTable<'i>> {
        match value.get_ref() {
            DeValue::Table(t) => Some(t),
            DeValue::Array(_) => {
                self.report.error(
                    key.span(),
                    format!(
                        "`{0}` must be a single table: write [{0}], not [[{0}]]",
                        key.get_ref()
                    ),
                );
                None
            }
            other => {
                self.report.error(
                    value.span(),
                    format!(
                        "`{}` must be a table, found {}",
                        key.get_ref(),
                        type_name(other)
                    ),
                );
                None
            }
        }
    }

    fn array_of_tables<'a, 'i>(
        &mut self,
        key: &Spanned<std::borrow::Cow<'i, str>>,
        value: &'a Spanned<DeValue<'i>>,
    ) -> Vec<(&'a DeTable<'i>, Range<usize>)> {
        let name: &str = key.get_ref();
        match value.get_ref() {
            DeValue::Array(items) => {
                let mut tables = Vec::new();
                for item in items {
                    match item.get_ref() {
                        DeValue::Table(t) => tables.push((t, item.span())),
                        other => self.report.error(
                            item.span(),
                            format!("each `{name}` must be a table, found {}", type_name(other)),
                        ),
                    }
                }
                tables
            }
            DeValue::Table(t) => {
                self.report.error(
                    key.span(),
                    format!(
                        "write [[{name}]] (one per {name}), not [{name}]; the entries below are read as one {name}"
                    ),
                );
                vec![(t, value.span())]
            }
            other => {
                self.report.error(
                    value.span(),
                    format!(
                        "`{name}` must be written as [[{name}]] tables, found {}",
                        type_name(other)
                    ),
                );
                Vec::new()
            }
        }
    }

    fn layer(
        &mut self,
        table: &DeTable<'_>,
        header: Range<usize>,
        allowed: &[&[Key]],
        section: &str,
    ) -> Layer {
        let mut layer = Layer {
            header,
            ..Layer::default()
        };
        for (k, v) in table.iter() {
            let name: &str = k.get_ref();
            let Some(def) = allowed
                .iter()
                .flat_map(|keys| keys.iter())
                .find(|d| d.name == name)
            else {
                self.unknown_key(name, k.span(), allowed, section);
                continue;
            };
            match self.value(name, def.kind, v) {
                Some(value) => {
                    layer.settings.insert(
                        def.name,
                        Setting {
                            value,
                            span: v.span(),
                            key_span: k.span(),
                        },
                    );
                }
                None => layer.rejected.push(def.name),
            }
        }
        self.check_secret_families(&layer, section);
        layer
    }

    fn unknown_key(&mut self, name: &str, span: Range<usize>, allowed: &[&[Key]], section: &str) {
        let known = allowed.iter().flat_map(|keys| keys.iter()).map(|k| k.name);
        let mut msg = format!("unknown key `{name}` in {section}");
        if let Some(s) = schema::suggest(name, known) {
            msg.push_str(&format!("; did you mean `{s}`?"));
        } else if section == "[defaults]" && matches!(name, "name" | "groups") {
            msg.push_str("; `name` and `groups` belong in a [[device]]");
        } else if DEVICE_SETTINGS.iter().any(|k| k.name == name) {
            msg.push_str(&format!(
                "; `{name}` is a device setting: put it in [defaults], a [[group]] or a [[device]]"
            ));
        }
        self.report.error(span, msg);
    }

    /// Exactly one of `password`, `password_env`, `password_file` per table.
    fn check_secret_families(&mut self, layer: &Layer, section: &str) {
        for family in schema::SECRET_FAMILIES {
            let set: Vec<&Setting> = family.iter().filter_map(|k| layer.get(k)).collect();
            if set.len() > 1 {
                let names: Vec<&str> = family
                    .iter()
                    .copied()
                    .filter(|k| layer.get(k).is_some())
                    .collect();
                self.report.error(
                    set[1].key_span.clone(),
                    format!(
                        "{section} sets {}: keep only one source for this secret",
                        names.join(" and ")
                    ),
                );
            }
        }
    }

    fn path(&self, text: &str) -> PathBuf {
        let p = Path::new(text);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    fn value(&mut self, name: &str, kind: Kind, v: &Spanned<DeValue<'_>>) -> Option<Value> {
        let span = v.span();
        let expected = expected_type(kind);
        let wrong = |found: &DeValue<'_>| {
            let mut msg = format!("`{name}` must be {expected}, found {}", type_name(found));
            if matches!(kind, Kind::Duration) && matches!(found, DeValue::Integer(_)) {
                msg.push_str("; write durations with a unit, e.g. \"30s\" or \"500ms\"");
            }
            if matches!(kind, Kind::Size) && matches!(found, DeValue::Integer(_)) {
                msg.push_str("; write sizes with a unit, e.g. \"64KiB\" or \"16MiB\"");
            }
            if matches!(kind, Kind::StrList | Kind::Commands) && matches!(found, DeValue::String(_))
            {
                msg.push_str("; write a list, e.g. [\"show version\"]");
            }
            msg
        };
        match (kind, v.get_ref()) {
            (Kind::Int { min, max }, DeValue::Integer(i)) => {
                let digits: String = i.as_str().chars().filter(|c| *c != '_').collect();
                match i64::from_str_radix(&digits, i.radix()) {
                    Ok(n) if (min..=max).contains(&n) => Some(Value::Int(n)),
                    _ => {
                        self.report.error(
                            span,
                            format!("`{name}` must be between {min} and {max}, found {i}"),
                        );
                        None
                    }
                }
            }
            (Kind::Bool, DeValue::Boolean(b)) => Some(Value::Bool(*b)),
            (Kind::StrList, DeValue::Array(items)) => {
                let mut list = Vec::new();
                for item in items {
                    match item.get_ref() {
                        DeValue::String(s) if !s.trim().is_empty() => {
                            list.push((s.to_string(), item.span()))
                        }
                        DeValue::String(_) => self
                            .report
                            .error(item.span(), format!("`{name}` has an empty entry")),
                        other => self.report.error(
                            item.span(),
                            format!(
                                "each entry of `{name}` must be a string, found {}",
                                type_name(other)
                            ),
                        ),
                    }
                }
                Some(Value::List(list))
            }
            (Kind::Commands, DeValue::Array(items)) => Some(self.commands_value(name, items)),
            (Kind::StrMap, DeValue::Table(t)) => {
                let mut map = Vec::new();
                for (k, item) in t.iter() {
                    match item.get_ref() {
                        DeValue::String(s) => map.push((k.get_ref().to_string(), s.to_string())),
                        other => self.report.error(
                            item.span(),
                            format!(
                                "`{name}.{}` must be a string, found {}",
                                k.get_ref(),
                                type_name(other)
                            ),
                        ),
                    }
                }
                Some(Value::Map(map))
            }
            (_, DeValue::String(s)) if kind_takes_string(kind) => {
                self.string_value(name, kind, s, span)
            }
            (_, other) => {
                self.report.error(span, wrong(other));
                None
            }
        }
    }

    /// A string for a key of `kind`: checked and converted, or reported (`None`).
    fn string_value(
        &mut self,
        name: &str,
        kind: Kind,
        s: &str,
        span: Range<usize>,
    ) -> Option<Value> {
        if s.trim().is_empty() && !matches!(kind, Kind::InlineSecret) {
            self.report
                .error(span, format!("`{name}` must not be empty"));
            return None;
        }
        match kind {
            Kind::Str | Kind::Path => Some(Value::Str(s.to_string())),
            Kind::Duration => self.duration_value(name, s, span),
            Kind::Size => self.size_value(name, s, span),
            Kind::Enum(choices) => self.choice_value(name, choices, s, span),
            Kind::Regex => self.regex_value(name, s, span),
            Kind::InlineSecret => self.inline_secret(name, s, span),
            Kind::SecretEnv => self.secret_env(name, s, span),
            Kind::SecretFile => self.secret_file(name, s, span),
            Kind::ReadableFile => self.readable_file(name, s, span),
            Kind::Executable => self.executable(name, s, span),
            Kind::Int { .. } | Kind::Bool | Kind::StrList | Kind::Commands | Kind::StrMap => {
                unreachable!("not a string kind")
            }
        }
    }

    /// `"30s"`: longer than zero.
    fn duration_value(&mut self, name: &str, s: &str, span: Range<usize>) -> Option<Value> {
        match parse_duration(s) {
            Ok(d) if d.is_zero() => {
                self.report
                    .error(span, format!("`{name}` must be longer than zero"));
                None
            }
            Ok(d) => Some(Value::Duration(d)),
            Err(e) => {
                self.report
                    .error(span, format!("bad duration for `{name}`: {e}"));
                None
            }
        }
    }

    /// `"16MiB"`: larger than zero.
    fn size_value(&mut self, name: &str, s: &str, span: Range<usize>) -> Option<Value> {
        match parse_size(s) {
            Ok(0) => {
                self.report
                    .error(span, format!("`{name}` must be larger than zero"));
                None
            }
            Ok(n) => Some(Value::Size(n)),
            Err(e) => {
                self.report
                    .error(span, format!("bad size for `{name}`: {e}"));
                None
            }
        }
    }

    /// One of the key's choices, with a suggestion when it is close to one.
    fn choice_value(
        &mut self,
        name: &str,
        choices: &[&str],
        s: &str,
        span: Range<usize>,
    ) -> Option<Value> {
        if choices.contains(&s) {
            return Some(Value::Str(s.to_string()));
        }
        let hint = schema::suggest(s, choices.iter().copied())
            .map(|c| format!(" (did you mean `{c}`?)"))
            .unwrap_or_default();
        self.report.error(
            span,
            format!(
                "unknown {name} `{s}`{hint}; expected one of: {}",
                choices.join(", ")
            ),
        );
        None
    }

    /// A regular expression that compiles.
    fn regex_value(&mut self, name: &str, s: &str, span: Range<usize>) -> Option<Value> {
        match regex_lite::Regex::new(s) {
            Ok(_) => Some(Value::Str(s.to_string())),
            Err(e) => {
                let detail = e.to_string();
                let detail = detail.lines().last().unwrap_or("").trim().to_string();
                self.report.error(
                    span,
                    format!("`{name}` is not a valid regular expression: {detail}"),
                );
                None
            }
        }
    }

    /// A secret written in the config itself: taken, with a warning.
    fn inline_secret(&mut self, name: &str, s: &str, span: Range<usize>) -> Option<Value> {
        self.report.warning(
            span.clone(),
            format!(
                "`{name}` is written in the config itself; prefer `{name}_file` (mode 600) or `{name}_env`"
            ),
        );
        Some(Value::Secret(Secret::inline(s)))
    }

    /// A secret named by an environment variable (warned when it is not set here).
    fn secret_env(&mut self, name: &str, s: &str, span: Range<usize>) -> Option<Value> {
        let valid = s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !s.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            self.report.error(
                span,
                format!("`{name}` = \"{s}\" is not an environment variable name"),
            );
            return None;
        }
        let secret = Secret::from_env(s);
        if secret.expose().is_none() {
            self.report.warning(
                span,
                format!(
                    "environment variable {s} (from `{name}`) is not set here; devices using it cannot log in unless the service's environment sets it"
                ),
            );
        }
        Some(Value::Secret(secret))
    }

    /// A secret read from a file (warned when others may read it).
    fn secret_file(&mut self, name: &str, s: &str, span: Range<usize>) -> Option<Value> {
        let path = self.path(s);
        match Secret::from_file(&path) {
            Ok(secret) => {
                self.warn_if_shared(&path, name, span);
                Some(Value::Secret(secret))
            }
            Err(e) => {
                self.report.error(
                    span,
                    format!(
                        "cannot read `{name}` {}: {e}; check the path and that the rackhand user may read it",
                        path.display()
                    ),
                );
                None
            }
        }
    }

    /// A file the agent reads (a CA, a key): it must be readable now.
    fn readable_file(&mut self, name: &str, s: &str, span: Range<usize>) -> Option<Value> {
        let path = self.path(s);
        match std::fs::File::open(&path).and_then(|f| f.metadata()) {
            Ok(meta) if meta.is_file() => {
                if name.starts_with("key") {
                    self.warn_if_shared(&path, name, span.clone());
                }
                Some(Value::Str(path.display().to_string()))
            }
            Ok(_) => {
                self.report.error(
                    span,
                    format!("`{name}` {} is not a regular file", path.display()),
                );
                None
            }
            Err(e) => {
                self.report.error(
                    span,
                    format!(
                        "cannot read `{name}` {}: {e}; check the path and that the rackhand user may read it",
                        path.display()
                    ),
                );
                None
            }
        }
    }

    /// A program the agent runs (`driver_exec`).
    fn executable(&mut self, name: &str, s: &str, span: Range<usize>) -> Option<Value> {
        let path = self.path(s);
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => {
                Some(Value::Str(path.display().to_string()))
            }
            Ok(_) => {
                self.report.error(
                    span,
                    format!(
                        "`{name}` {} is not an executable file; chmod +x it",
                        path.display()
                    ),
                );
                None
            }
            Err(e) => {
                self.report
                    .error(span, format!("cannot use `{name}` {}: {e}", path.display()));
                None
            }
        }
    }

    fn warn_if_shared(&mut self, path: &Path, name: &str, span: Range<usize>) {
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                self.report.warning(
                    span,
                    format!(
                        "`{name}` {} is readable by group or others (mode {:03o}); run chmod 600 on it",
                        path.display(),
                        mode & 0o777
                    ),
                );
            }
        }
    }
}

fn kind_takes_string(kind: Kind) -> bool {
    !matches!(
        kind,
        Kind::Int { .. } | Kind::Bool | Kind::StrList | Kind::Commands | Kind::StrMap
    )
}

fn expected_type(kind: Kind) -> &'static str {
    match kind {
        Kind::Str | Kind::Path | Kind::ReadableFile | Kind::Executable => "a string",
        Kind::Int { .. } => "an integer",
        Kind::Bool => "true or false",
        Kind::StrList => "a list of strings",
        Kind::Commands => "a list of commands",
        Kind::Duration => "a duration string like \"30s\"",
        Kind::Size => "a size string like \"16MiB\"",
        Kind::Enum(_) => "a string",
        Kind::Regex => "a regular expression in a string",
        Kind::InlineSecret | Kind::SecretEnv | Kind::SecretFile => "a string",
        Kind::StrMap => "a table of strings",
    }
}

fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}
