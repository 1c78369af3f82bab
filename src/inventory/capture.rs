//! `capture` and `alert` (issue 14, `crate::console`): which devices' consoles the agent
//! reads between jobs, and what in them is an alert.

use super::{Capture, DeviceLayers, Isolation, TransportKind};
use crate::config::Report;
use crate::config::schema::Value;

impl DeviceLayers<'_> {
    /// `capture` and `alert`: capture needs a serial port the agent itself holds (a thread,
    /// not a driver process), and every `alert` entry must compile. `alert` without capture
    /// does nothing: warned.
    pub(super) fn capture(
        &self,
        transport: TransportKind,
        isolation: Isolation,
        external_driver: bool,
        report: &mut Report,
    ) -> Option<Capture> {
        let name = self.name;
        let alert = match super::lookup(&self.layers, "alert").map(|s| &s.value) {
            Some(Value::List(items)) => items.clone(),
            _ => Vec::new(),
        };
        for (pattern, span) in &alert {
            if let Err(e) = regex_lite::Regex::new(pattern) {
                let detail = e.to_string();
                let detail = detail.lines().last().unwrap_or("").trim().to_string();
                report.error(
                    span.clone(),
                    format!("device `{name}`: alert `{pattern}` is not a valid regular expression: {detail}"),
                );
            }
        }
        let setting = super::lookup(&self.layers, "capture");
        let on = matches!(setting.map(|s| &s.value), Some(Value::Bool(true)));
        let span = setting.map_or(self.here.clone(), |s| s.span.clone());
        if !on {
            if let Some(first) = alert.first() {
                report.warning(
                    first.1.clone(),
                    format!("device `{name}` has `alert` patterns but no capture = true, so they match nothing; add capture = true (serial devices)"),
                );
            }
            return None;
        }
        if transport != TransportKind::Serial {
            report.error(
                span,
                format!(
                    "device `{name}`: capture reads a serial console between jobs, but the device uses {}; remove capture = true or set transport = \"serial\"",
                    transport.as_str()
                ),
            );
            return None;
        }
        if external_driver || isolation == Isolation::Process {
            report.error(
                span,
                format!("device `{name}`: a captured console is held open by the agent itself, so its jobs cannot run in a driver process; set isolation = \"thread\" and remove driver_exec, or remove capture = true"),
            );
            return None;
        }
        Some(Capture {
            alert: alert.into_iter().map(|(p, _)| p).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::resolve_text;

    const SERIAL: &str = "[[device]]\nname = \"sw1\"\nplatform = \"cisco_ios\"\ncommands = [\"show clock\"]\ntransport = \"serial\"\nserial_port = \"/dev/ttyUSB0\"\n";

    #[test]
    fn a_captured_serial_device_keeps_its_alert_patterns() {
        let (inv, report) = resolve_text(&format!(
            "{SERIAL}capture = true\nalert = ['%OSPF-5-ADJCHG', '^BOOT']\n"
        ));
        assert!(!report.has_errors(), "{report}");
        let capture = inv.devices[0].capture.as_ref().unwrap();
        assert_eq!(capture.alert, ["%OSPF-5-ADJCHG", "^BOOT"]);
    }

    #[test]
    fn capture_is_refused_on_ssh_and_with_a_driver_process_each_at_its_key() {
        let ssh = "[[device]]\nname = \"r1\"\nplatform = \"cisco_ios\"\ncommands = [\"show clock\"]\nhost = \"192.0.2.1\"\ncapture = true\n";
        let (_, report) = resolve_text(ssh);
        let text = report.to_string();
        assert!(text.contains("capture") && text.contains("ssh"), "{text}");
        let (_, report) = resolve_text(&format!(
            "{SERIAL}capture = true\nisolation = \"process\"\n"
        ));
        let text = report.to_string();
        assert!(
            report.has_errors() && text.contains("isolation = \"thread\""),
            "{text}"
        );
    }

    #[test]
    fn each_bad_alert_pattern_is_reported_and_alert_without_capture_is_warned() {
        let (_, report) = resolve_text(&format!(
            "{SERIAL}capture = true\nalert = ['ok', '(unclosed', '[bad']\n"
        ));
        assert_eq!(report.errors().count(), 2, "{report}");
        let (_, report) = resolve_text(&format!("{SERIAL}alert = ['x']\n"));
        assert!(!report.has_errors(), "{report}");
        assert_eq!(report.warnings().count(), 1, "{report}");
    }
}
