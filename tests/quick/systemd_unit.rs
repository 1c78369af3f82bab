//! The systemd unit we ship passes `systemd-analyze verify` and keeps the settings the
//! service relies on (notify, watchdog, hardening, serial devices only).

use std::path::Path;
use std::process::Command;

use crate::support::TempDir;

fn unit_text() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/rackhand.service"))
        .expect("systemd/rackhand.service")
}

#[test]
fn the_unit_verifies_with_systemd_analyze() {
    // verify insists that ExecStart exists: point it at the binary cargo built. The man page
    // is checked where the package installs it (scripts/package-check), hence --man=no here.
    let dir = TempDir::new("unit").unwrap();
    let unit = dir.join("rackhand.service");
    let text = unit_text().replace("/usr/bin/rackhand", env!("CARGO_BIN_EXE_rackhand"));
    assert_ne!(text, unit_text(), "the unit does not run /usr/bin/rackhand");
    std::fs::write(&unit, text).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (package systemd; scripts/install-deps installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Messages about *other* units on this machine are not ours to judge.
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("rackhand")).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
}

#[test]
fn the_unit_keeps_what_the_agent_relies_on() {
    let text = unit_text();
    for line in [
        // Where the Debian package puts the binary; the config is the default one, which
        // the package installs as /etc/rackhand/rackhand.toml.
        "ExecStart=/usr/bin/rackhand run",
        "EnvironmentFile=-/etc/rackhand/env",
        "Documentation=man:rackhand(1)",
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "Wants=network-online.target",
        "StateDirectory=rackhand",
        // The live status.json on tmpfs (issue 12: no wear on the SD card).
        "RuntimeDirectory=rackhand",
        "ConfigurationDirectory=rackhand",
        "User=rackhand",
        "SupplementaryGroups=dialout",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "DevicePolicy=closed",
        "DeviceAllow=char-ttyUSB rw",
        "DeviceAllow=char-ttyACM rw",
        "DeviceAllow=char-ttyAMA rw",
        "MemoryMax=",
        "ExecReload=/bin/kill -HUP $MAINPID",
        // The status LED: /sys stays read-only but for the LEDs; GPIO chips for an LED on a line.
        "ReadWritePaths=-/sys/class/leds -/sys/devices/platform/leds",
        "DeviceAllow=char-gpiochip rw",
        "SupplementaryGroups=dialout gpio",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(line)),
            "unit lacks `{line}`"
        );
    }
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("Requires=network-online")),
        "the agent must start while the uplink is down"
    );
}

/// The status LED without root: the udev rule gives the service's group the two files the
/// agent writes, the package installs it, and the user is in the group the unit names for
/// GPIO chips (created if missing, so the unit never names a group that does not exist).
#[test]
fn the_package_lets_the_service_drive_the_leds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rule = std::fs::read_to_string(root.join("packaging/60-rackhand-leds.rules")).unwrap();
    let rule_line = rule
        .lines()
        .find(|l| !l.starts_with('#') && !l.trim().is_empty())
        .expect("a rule");
    for part in [
        "SUBSYSTEM==\"leds\"",
        "chgrp rackhand /sys%p/trigger /sys%p/brightness",
        "chmod g+w /sys%p/trigger /sys%p/brightness",
    ] {
        assert!(
            rule_line.contains(part),
            "the rule lacks {part}: {rule_line}"
        );
    }
    let cargo = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(
        cargo.contains(r#"["packaging/60-rackhand-leds.rules", "usr/lib/udev/rules.d/", "644"]"#),
        "Cargo.toml's deb assets do not install the LED rule"
    );
    let sysusers = std::fs::read_to_string(root.join("systemd/rackhand.sysusers")).unwrap();
    assert!(sysusers.lines().any(|l| l == "m rackhand gpio"));
    let postinst = std::fs::read_to_string(root.join("packaging/debian/postinst")).unwrap();
    assert!(postinst.contains("udevadm trigger --subsystem-match=leds"));
}
