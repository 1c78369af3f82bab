//! The board profiles in `boards/` are what an installer reads to pick an artefact and a
//! `workers` value. They are data nobody compiles, so they rot quietly: a typo in a key, a
//! target that `scripts/build-arm` does not build, a board missing from `boards/README.md`.
//! These tests read every profile the way a tool would and hold them to the build script.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

/// One `boards/*.toml`; unknown keys are errors, as in rackhand's own config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Board {
    name: String,
    target: String,
    os: String,
    console_uart: String,
    ram_mib: u32,
    workers: u32,
    /// The board's LEDs under /sys/class/leds (`[board] status_led`).
    leds: Vec<String>,
    #[serde(default)]
    led_notes: Option<String>,
    notes: String,
}

/// Estimated resident memory of one busy worker (see boards/README.md).
const PER_WORKER_MIB: u32 = 4;

fn boards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("boards")
}

fn profiles() -> Vec<(String, Board)> {
    let dir = boards_dir();
    let mut out = Vec::new();
    let entries =
        fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let text = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let board: Board = toml::from_str(&text).unwrap_or_else(|e| {
            panic!("{} does not parse as a board profile: {e}", path.display())
        });
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        out.push((file, board));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The targets `scripts/build-arm` knows, asked from the script itself so the two cannot drift.
fn build_arm_targets() -> BTreeSet<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-arm");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--list-targets")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} --list-targets: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} --list-targets failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("target list is UTF-8")
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_supported_board_has_a_profile() {
    let names: Vec<String> = profiles().into_iter().map(|(_, b)| b.name).collect();
    for board in ["Zero 2 W", "Pi 3", "Pi 4", "Pi 5", "Pi 2"] {
        assert!(
            names.iter().any(|n| n.contains(board)),
            "no profile in boards/ names the {board}; have {names:?}"
        );
    }
}

#[test]
fn every_profile_names_a_target_build_arm_builds() {
    let known = build_arm_targets();
    assert!(
        !known.is_empty(),
        "scripts/build-arm --list-targets printed nothing"
    );
    for (file, board) in profiles() {
        assert!(
            known.contains(&board.target),
            "boards/{file}: target {:?} is not one scripts/build-arm builds ({known:?})",
            board.target
        );
    }
}

#[test]
fn profiles_are_plausible() {
    for (file, board) in profiles() {
        assert!(
            board.console_uart.starts_with("/dev/"),
            "boards/{file}: console_uart {:?} is not a device path",
            board.console_uart
        );
        assert!(
            board.workers >= 1,
            "boards/{file}: workers must be at least 1"
        );
        // Budget: a busy SSH worker (thread stack, libssh2 + OpenSSL state, bounded output)
        // is estimated at PER_WORKER_MIB; rackhand should stay within an eighth of the board's
        // memory, leaving the rest to the OS, the page cache and the spool.
        assert!(
            board.workers * PER_WORKER_MIB <= board.ram_mib / 8,
            "boards/{file}: {} workers at ~{PER_WORKER_MIB} MiB each is too many for {} MiB",
            board.workers,
            board.ram_mib
        );
        assert!(
            !board.os.is_empty() && !board.notes.is_empty(),
            "boards/{file}: os and notes must say something"
        );
    }
}

#[test]
fn every_profile_names_its_leds_as_status_led_takes_them() {
    for (file, board) in profiles() {
        assert!(!board.leds.is_empty(), "boards/{file}: no leds");
        for led in &board.leds {
            // A bare LED class name: the form `status_led = "ACT"` resolves under /sys/class/leds.
            assert!(
                !led.is_empty() && !led.contains('/') && !led.contains(char::is_whitespace),
                "boards/{file}: {led:?} is not an LED class name"
            );
        }
        assert_eq!(board.leds[0], "ACT", "boards/{file}: every Pi has ACT");
        let single = board.name.contains("Zero");
        assert_eq!(
            board.leds.len() == 1,
            single,
            "boards/{file}: {:?}",
            board.leds
        );
        if board.name.contains("Pi 5") {
            let notes = board.led_notes.as_deref().unwrap_or_default();
            assert!(
                notes.contains("inverted"),
                "boards/{file}: say ACT reads inverted"
            );
        }
    }
}

#[test]
fn readme_lists_every_profile() {
    let readme_path = boards_dir().join("README.md");
    let readme = fs::read_to_string(&readme_path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", readme_path.display()));
    for (file, board) in profiles() {
        assert!(
            readme.contains(&file),
            "boards/README.md does not mention {file} ({})",
            board.name
        );
    }
}
