//! The Debian package's own files, checked without building a package (scripts/package-check
//! installs a real one): the armhf preinst refuses ARMv6 boards and only those, judged from
//! fake /proc/cpuinfo files as real boards print them; the starter config the package puts in
//! /etc/rackhand checks clean, and so do its commented examples once uncommented.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{TempDir, rackhand_bin};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

// ---------------------------------------------------------------------------------------
// preinst: ARMv6 boards

/// A Raspberry Pi Zero W (BCM2835, ARM1176): note "CPU architecture: 7", the revised CPUID
/// scheme of the ARM1176, although the core is ARMv6.
const PI_ZERO_W: &str = "processor\t: 0\nmodel name\t: ARMv6-compatible processor rev 7 (v6l)\n\
BogoMIPS\t: 997.08\nFeatures\t: half thumb fastmult vfp edsp java tls \nCPU implementer\t: 0x41\n\
CPU architecture: 7\nCPU variant\t: 0x0\nCPU part\t: 0xb76\nCPU revision\t: 7\n\n\
Hardware\t: BCM2835\nRevision\t: 9000c1\nModel\t\t: Raspberry Pi Zero W Rev 1.1\n";

/// A Raspberry Pi 3 B on 32-bit Raspberry Pi OS with a 32-bit kernel (Cortex-A53, ARMv7 mode).
const PI_3_ARMV7: &str = "processor\t: 0\nmodel name\t: ARMv7 Processor rev 4 (v7l)\n\
BogoMIPS\t: 38.40\nFeatures\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt \
vfpd32 lpae evtstrm crc32 \nCPU implementer\t: 0x41\nCPU architecture: 7\nCPU variant\t: 0x0\n\
CPU part\t: 0xd03\nCPU revision\t: 4\n\nHardware\t: BCM2835\nRevision\t: a02082\n\
Model\t\t: Raspberry Pi 3 Model B Rev 1.2\n";

/// A Raspberry Pi 4 on 32-bit Raspberry Pi OS with its default 64-bit kernel: a 32-bit
/// process reads the compat view.
const PI_4_ARM64_KERNEL: &str = "processor\t: 0\nmodel name\t: ARMv8 Processor rev 3 (v8l)\n\
BogoMIPS\t: 108.00\nFeatures\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt \
vfpd32 lpae evtstrm crc32 \nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\n\
CPU part\t: 0xd08\nCPU revision\t: 3\n\nRevision\t: c03111\nModel\t\t: Raspberry Pi 4 Model B Rev 1.1\n";

/// An ARM11 under an older kernel, which prints the architecture as 6TEJ and a model name
/// without "v6".
const OLD_KERNEL_ARM11: &str = "Processor\t: ARM1176 rev 7\nmodel name\t: ARM1176\n\
CPU architecture: 6TEJ\nHardware\t: BCM2708\n";

struct Board<'a> {
    cpuinfo: Option<&'a str>,
    machine: &'a str,
}

/// Runs the preinst as dpkg would for `arch`'s package with `action`, on `board`.
fn preinst(arch: &str, action: &str, board: Board) -> Output {
    let dir = TempDir::new("preinst").unwrap();
    let cpuinfo = dir.join("cpuinfo");
    if let Some(text) = board.cpuinfo {
        std::fs::write(&cpuinfo, text).unwrap();
    }
    Command::new("sh")
        .arg(repo("packaging/debian/preinst"))
        .arg(action)
        .env("DPKG_MAINTSCRIPT_ARCH", arch)
        .env("RACKHAND_PREINST_CPUINFO", &cpuinfo)
        .env("RACKHAND_PREINST_MACHINE", board.machine)
        .output()
        .expect("sh")
}

fn refused(out: &Output) -> bool {
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => {
            assert!(stderr.is_empty(), "accepted, yet said: {stderr}");
            false
        }
        Some(1) => {
            // The message says what the board is, why not, and what to do instead.
            for words in [
                "ARMv6",
                "Illegal instruction",
                "arm64",
                "64-bit",
                "from source",
            ] {
                assert!(stderr.contains(words), "refusal lacks `{words}`:\n{stderr}");
            }
            true
        }
        other => panic!("preinst exited {other:?}: {stderr}"),
    }
}

#[test]
fn the_armhf_preinst_refuses_a_pi_zero_by_its_cpuinfo_even_though_it_says_architecture_7() {
    let out = preinst(
        "armhf",
        "install",
        Board {
            cpuinfo: Some(PI_ZERO_W),
            machine: "armv7l", // as if uname lied: the model name alone must be enough
        },
    );
    assert!(refused(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("(v6l)"));
}

#[test]
fn the_armhf_preinst_refuses_an_armv6l_machine_and_an_old_kernels_arm11() {
    let by_uname = Board {
        cpuinfo: Some(PI_3_ARMV7),
        machine: "armv6l",
    };
    assert!(refused(&preinst("armhf", "install", by_uname)));
    let old = Board {
        cpuinfo: Some(OLD_KERNEL_ARM11),
        machine: "armv7l",
    };
    let out = preinst("armhf", "upgrade", old);
    assert!(refused(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CPU architecture: 6"));
}

#[test]
fn the_armhf_preinst_accepts_armv7_and_armv8_boards() {
    for (cpuinfo, machine) in [
        (PI_3_ARMV7, "armv7l"),
        (PI_4_ARM64_KERNEL, "aarch64"),
        (PI_4_ARM64_KERNEL, "armv8l"),
    ] {
        let board = Board {
            cpuinfo: Some(cpuinfo),
            machine,
        };
        assert!(!refused(&preinst("armhf", "install", board)), "{machine}");
    }
    // No cpuinfo to read (a container without /proc): only uname can tell, and says v7.
    let bare = Board {
        cpuinfo: None,
        machine: "armv7l",
    };
    assert!(!refused(&preinst("armhf", "install", bare)));
}

#[test]
fn only_the_armhf_package_and_only_install_or_upgrade_look_at_the_cpu() {
    for arch in ["arm64", "amd64"] {
        let zero = Board {
            cpuinfo: Some(PI_ZERO_W),
            machine: "armv6l",
        };
        assert!(!refused(&preinst(arch, "install", zero)), "{arch}");
    }
    // Rolling back a failed upgrade must not be refused halfway.
    let zero = Board {
        cpuinfo: Some(PI_ZERO_W),
        machine: "armv6l",
    };
    assert!(!refused(&preinst("armhf", "abort-upgrade", zero)));
}

// ---------------------------------------------------------------------------------------
// The starter config in /etc/rackhand

fn check(config: &Path) -> Output {
    Command::new(rackhand_bin())
        .arg("check")
        .arg("-c")
        .arg(config)
        .env_remove("RACKHAND_CONFIG")
        .output()
        .expect("rackhand check")
}

#[test]
fn the_starter_config_checks_clean_and_has_no_devices() {
    let out = check(&repo("packaging/rackhand.toml"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        !stderr.contains("warning"),
        "the packaged config warns:\n{stderr}"
    );
    assert!(stdout.contains("no devices yet"), "{stdout}");
}

/// Lines that start with `#` and a non-space are settings to uncomment (the config says so);
/// `# ` starts prose, which stays a comment.
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| !c.is_whitespace()) => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_starter_configs_commented_examples_check_clean_once_uncommented() {
    let text = std::fs::read_to_string(repo("packaging/rackhand.toml")).unwrap();
    let examples = uncommented(&text);
    assert_ne!(
        examples, text,
        "the starter config has no examples to uncomment"
    );
    let dir = TempDir::new("starter").unwrap();
    let config = dir.join("rackhand.toml");
    std::fs::write(&config, examples).unwrap();
    let out = check(&config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    // One of each transport, and an upstream.
    assert!(
        stdout.contains("3 devices: 1 ssh, 1 telnet, 1 serial"),
        "{stdout}"
    );
    assert!(stdout.contains("collector.example.net"), "{stdout}");
}
