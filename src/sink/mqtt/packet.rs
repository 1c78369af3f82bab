//! Topics and packet sizes: what a record's PUBLISH looks like before it is sent.
//!
//! A value put in place of a placeholder never changes the topic's shape, and a record whose
//! PUBLISH would pass the broker's `max_packet_size` is known before it is sent (a broker drops
//! the connection on such a packet, so publishing it again would fail forever).

use super::MqttSinkError;

/// The longest text put in place of `{agent}` or `{device}` (MQTT topics end at 64 KiB).
pub(crate) const TOPIC_VALUE_MAX: usize = 1024;

/// The bytes of a QoS 1 PUBLISH of `payload_len` bytes on a topic of `topic_len` bytes: fixed
/// header (type byte and 1 to 4 bytes of remaining length), topic with its length, packet id,
/// payload. The size rumqttc and brokers compare with their limit.
pub fn publish_packet_size(topic_len: usize, payload_len: usize) -> usize {
    let remaining = 2 + topic_len + 2 + payload_len;
    let length_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + length_bytes + remaining
}

/// The template must make a valid topic name whatever the placeholders become.
pub(super) fn check_topic(template: &str, url: &str) -> Result<(), MqttSinkError> {
    let bad = |detail: &str| MqttSinkError::BadTopic {
        topic: template.to_string(),
        url: url.to_string(),
        detail: detail.to_string(),
    };
    let fixed = template.replace("{agent}", "").replace("{device}", "");
    if template.is_empty() {
        return Err(bad("it is empty; the default is rackhand/{agent}/{device}"));
    }
    if fixed.contains(['+', '#']) {
        return Err(bad(
            "`+` and `#` are subscription wildcards, not allowed in a topic one publishes to",
        ));
    }
    if fixed.contains('\0') {
        return Err(bad("it holds a NUL character"));
    }
    if template.starts_with('$') {
        return Err(bad("topics starting with `$` belong to the broker ($SYS)"));
    }
    if template.len() > 32 * 1024 {
        return Err(bad("it is longer than 32 KiB"));
    }
    Ok(())
}

/// The template with `{agent}` and `{device}` replaced, each value made one safe topic level.
pub(crate) fn render_topic(template: &str, agent: &str, device: &str) -> String {
    let mut topic = String::with_capacity(template.len() + agent.len() + device.len());
    let mut rest = template;
    while let Some(at) = rest.find('{') {
        topic.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("{agent}") {
            push_level(&mut topic, agent);
            rest = after;
        } else if let Some(after) = tail.strip_prefix("{device}") {
            push_level(&mut topic, device);
            rest = after;
        } else {
            topic.push('{');
            rest = &tail[1..];
        }
    }
    topic.push_str(rest);
    topic
}

/// `value` as one topic level: `/`, `+`, `#` and NUL become `_`, empty becomes `_`, cut at
/// [`TOPIC_VALUE_MAX`] bytes.
fn push_level(topic: &mut String, value: &str) {
    if value.is_empty() {
        topic.push('_');
        return;
    }
    let mut len = 0;
    for c in value.chars() {
        len += c.len_utf8();
        if len > TOPIC_VALUE_MAX {
            break;
        }
        topic.push(if matches!(c, '/' | '+' | '#' | '\0') {
            '_'
        } else {
            c
        });
    }
}
