//! `[upstream]` resolved and checked: where records go, and how they are batched and
//! spooled on the way.
//!
//! Apart from devices because its checks are its own: the target must fit the sink (a URL's
//! scheme, a broker), no credentials in a URL (they would show in logs and status), header
//! secrets that cannot be found here are warned about before the agent refuses to start,
//! and an MQTT packet limit within what MQTT allows. A config without `[upstream]` gets the
//! file sink in `state_dir/outbox` from [`default_upstream`], the one place that default is
//! made.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::schema::{SECRET_FAMILIES, Value};
use crate::config::secret::{SecretRef, substitute};
use crate::config::{Layer, Report, url};

use super::{
    Agent, MQTT_PACKET_SIZE_MAX, MQTT_PACKET_SIZE_MIN, SinkKind, Upstream, defaults, duration_of,
    int_of, lookup_secret,
};

/// The file sink in `state_dir/outbox`, for a config without `[upstream]`.
pub(super) fn default_upstream(agent: &Agent) -> Upstream {
    Upstream {
        sink: SinkKind::File,
        target: agent.state_dir.join(defaults::OUTBOX).display().to_string(),
        topic: defaults::MQTT_TOPIC.to_string(),
        client_id: None,
        headers: Vec::new(),
        ca_file: None,
        username: None,
        password: None,
        timeout: defaults::UPSTREAM_TIMEOUT,
        batch_max_records: defaults::BATCH_MAX_RECORDS,
        batch_max_bytes: defaults::BATCH_MAX_BYTES,
        // Files are local: no reason to hold records back for long.
        batch_max_age: Duration::from_secs(1),
        spool_max_bytes: defaults::SPOOL_MAX_BYTES,
        drop_oldest_when_full: false,
        fsync_always: false,
        file_max_bytes: defaults::FILE_MAX_BYTES,
        max_packet_size: defaults::MQTT_MAX_PACKET_SIZE,
        keep_alive: defaults::MQTT_KEEP_ALIVE,
    }
}

/// What is wrong here with the `{env:NAME}` / `{file:PATH}` placeholders of a header value
/// (the agent resolves them at start; `check` warns ahead).
fn header_secret_problems(value: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let _ = substitute(value, |named| {
        match named {
            SecretRef::Env(var) if std::env::var_os(var).is_none() => problems.push(format!(
                "environment variable {var} is not set here (the service's environment must set it)"
            )),
            SecretRef::File(path) => {
                if let Err(e) = std::fs::File::open(path) {
                    problems.push(format!("cannot read {path}: {e}"));
                }
            }
            SecretRef::Env(_) => {}
        }
        Ok::<_, std::convert::Infallible>(String::new())
    });
    problems
}

/// The error for a user name or password written into the `url` or `broker`: where they
/// go instead, for each sink.
fn credentials_in_url(kind: SinkKind, key: &str, target: &str) -> String {
    let fix = match kind {
        SinkKind::Mqtt => {
            "remove them and set them in [upstream] instead: username = \"...\" and \
             password_env = \"MQTT_PASSWORD\" (or password_file = \"...\")"
        }
        _ => {
            "remove them and send a header instead, with the secret from the service's \
             environment: headers = { Authorization = \"Basic {env:COLLECTOR_AUTH}\" } \
             (COLLECTOR_AUTH holding base64 of user:password; `{file:PATH}` works too)"
        }
    };
    format!(
        "`{key}` = \"{}\" holds a user name or password, which would show in logs, \
         `rackhand check` and status.json; {fix}",
        url::redact(target)
    )
}

pub(super) fn resolve_upstream(layer: &Layer, report: &mut Report) -> Option<Upstream> {
    let layers = [layer];
    let Some(sink) = layer.str("sink") else {
        report.error(
            layer.header.clone(),
            "[upstream] has no `sink`; add sink = \"file\", \"http\" or \"mqtt\"",
        );
        return None;
    };
    let (kind, target_key, example) = match sink {
        "http" => (
            SinkKind::Http,
            "url",
            "url = \"https://collector.example.net/ingest\"",
        ),
        "mqtt" => (
            SinkKind::Mqtt,
            "broker",
            "broker = \"mqtt://127.0.0.1:1883\"",
        ),
        _ => (
            SinkKind::File,
            "path",
            "path = \"/var/lib/rackhand/outbox\"",
        ),
    };
    let Some(target) = layer.get(target_key) else {
        report.error(
            layer.header.clone(),
            format!("[upstream] sink `{sink}` needs `{target_key}`; add {example}"),
        );
        return None;
    };
    let target_str = target.as_str().unwrap_or_default().to_string();
    let scheme_ok = match kind {
        SinkKind::Http => target_str.starts_with("http://") || target_str.starts_with("https://"),
        SinkKind::Mqtt => target_str.starts_with("mqtt://") || target_str.starts_with("mqtts://"),
        SinkKind::File => true,
    };
    if !scheme_ok {
        report.error(
            target.span.clone(),
            format!(
                "`{target_key}` = \"{}\" does not fit sink `{sink}`; {example}",
                url::redact(&target_str)
            ),
        );
        return None;
    }
    if kind != SinkKind::File && url::userinfo(&target_str).is_some() {
        report.error(
            target.span.clone(),
            credentials_in_url(kind, target_key, &target_str),
        );
        return None;
    }
    if let Some(headers) = layer.get("headers")
        && let Value::Map(map) = &headers.value
    {
        for (name, value) in map {
            for problem in header_secret_problems(value) {
                report.warning(
                    headers.span.clone(),
                    format!("[upstream] header `{name}`: {problem}; the agent will refuse to start until it is"),
                );
            }
        }
    }
    let size = |key: &str, default: u64| match layer.get(key).map(|s| &s.value) {
        Some(Value::Size(n)) => *n,
        _ => default,
    };
    Some(Upstream {
        sink: kind,
        target: target_str,
        topic: layer
            .str("topic")
            .unwrap_or(defaults::MQTT_TOPIC)
            .to_string(),
        client_id: layer.str("client_id").map(str::to_string),
        headers: match layer.get("headers").map(|s| &s.value) {
            Some(Value::Map(m)) => m.clone(),
            _ => Vec::new(),
        },
        ca_file: layer.str("ca_file").map(PathBuf::from),
        username: layer.str("username").map(str::to_string),
        password: lookup_secret(&layers, &SECRET_FAMILIES[0]),
        timeout: duration_of(&layers, "timeout", defaults::UPSTREAM_TIMEOUT),
        batch_max_records: int_of(&layers, "batch_max_records")
            .map_or(defaults::BATCH_MAX_RECORDS, |n| n as usize),
        batch_max_bytes: size("batch_max_bytes", defaults::BATCH_MAX_BYTES),
        batch_max_age: duration_of(&layers, "batch_max_age", defaults::BATCH_MAX_AGE),
        spool_max_bytes: size("spool_max_bytes", defaults::SPOOL_MAX_BYTES),
        drop_oldest_when_full: layer.str("spool_full") == Some("drop_oldest"),
        fsync_always: layer.str("fsync") == Some("always"),
        file_max_bytes: size("file_max_bytes", defaults::FILE_MAX_BYTES),
        max_packet_size: max_packet_size(layer, kind, report),
        keep_alive: keep_alive(layer, report),
    })
}

/// `keep_alive`: whole seconds within what MQTT's 16-bit field holds (a broker notices a
/// silent agent, and publishes its presence will, after 1.5 times this).
fn keep_alive(layer: &Layer, report: &mut Report) -> Duration {
    let Some(setting) = layer.get("keep_alive") else {
        return defaults::MQTT_KEEP_ALIVE;
    };
    let Value::Duration(d) = setting.value else {
        return defaults::MQTT_KEEP_ALIVE;
    };
    if d < Duration::from_secs(1) || d > Duration::from_secs(65535) || d.subsec_nanos() != 0 {
        report.error(
            setting.span.clone(),
            format!(
                "`keep_alive` is {d:?}; MQTT counts it in whole seconds from \"1s\" to \"65535s\": write e.g. \"30s\""
            ),
        );
        return defaults::MQTT_KEEP_ALIVE;
    }
    d
}

/// `max_packet_size`: only for mqtt, and within what an MQTT packet can be.
fn max_packet_size(layer: &Layer, sink: SinkKind, report: &mut Report) -> usize {
    let Some(setting) = layer.get("max_packet_size") else {
        return defaults::MQTT_MAX_PACKET_SIZE;
    };
    let Value::Size(size) = setting.value else {
        return defaults::MQTT_MAX_PACKET_SIZE;
    };
    if sink != SinkKind::Mqtt {
        report.warning(
            setting.key_span.clone(),
            format!(
                "`max_packet_size` applies only to sink = \"mqtt\", not `{}`; remove it",
                sink.as_str()
            ),
        );
    }
    match usize::try_from(size) {
        Ok(n) if (MQTT_PACKET_SIZE_MIN..=MQTT_PACKET_SIZE_MAX).contains(&n) => n,
        _ => {
            report.error(
                setting.span.clone(),
                format!(
                    "`max_packet_size` is {size} bytes; it must be from {MQTT_PACKET_SIZE_MIN} bytes (\"1KiB\") to {MQTT_PACKET_SIZE_MAX} bytes (MQTT's largest packet): set it to the broker's limit (mosquitto: max_packet_size)"
                ),
            );
            defaults::MQTT_MAX_PACKET_SIZE
        }
    }
}
