//! The simulated rack: network devices that tests, benchmarks and `rackhand demo` talk to.
//!
//! Real switches are not available in CI or on a developer's desk, yet the agent must be
//! proven against their quirks: login dialogues, pagers, abbreviations, slow or broken
//! sessions. This module plays the device side convincingly over the same transports the
//! agent uses: Telnet ([`TelnetRack`]), a pseudo-terminal standing in for a console cable
//! ([`PtyConsole`]) and stdio behind a real `sshd` (`serve_stdio`).
//!
//! Code map: `profile` says what a device is; `outputs` what its commands print;
//! `commands` matches abbreviations; `engine` is the I/O-free CLI session every transport
//! drives through `session`; `stats` counts sessions; `telnet_server`, `console` and
//! `stdio` are the transports.

pub(crate) mod commands;
pub(crate) mod console;
pub(crate) mod engine;
pub(crate) mod outputs;
pub(crate) mod profile;
pub(crate) mod session;
pub(crate) mod sshd;
pub(crate) mod stats;
pub(crate) mod stdio;
pub(crate) mod telnet_server;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use console::PtyConsole;
pub use engine::{Action, Engine};
pub use outputs::Outputs;
pub use profile::{Fault, PLATFORMS, Profile, Style, parse_fault_spec};
pub use stats::{Stats, StatsSnapshot};
pub(crate) use stdio::serve_stdio;
pub use telnet_server::TelnetRack;

/// Everything that can stop a simulated device from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(
        "unknown platform {platform:?}; use one of cisco_ios, cisco_nxos, arista_eos, juniper_junos, linux"
    )]
    UnknownPlatform { platform: String },
    #[error(
        "bad fault {spec:?}; write COMMAND=FAULT with FAULT one of hang, drop, endless, garbage, slow"
    )]
    BadFault { spec: String },
    #[error("cannot read outputs directory {path}: {source}; check the --outputs path")]
    OutputsDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read output file {path}: {source}; check its permissions")]
    OutputFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("output file {path} is {size} bytes, more than the {max} the simulator holds; trim it")]
    OutputTooLarge { path: PathBuf, size: u64, max: u64 },
    #[error(
        "outputs directory {path} holds no .txt files; add one per command (show_version.txt for \"show version\")"
    )]
    NoOutputs { path: PathBuf },
    #[error("cannot listen on {addr}: {source}; pick another port or stop what uses it")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "found no {count} free consecutive ports on {ip} after {attempts} attempts; give an explicit --telnet port"
    )]
    NoConsecutivePorts {
        ip: std::net::IpAddr,
        count: usize,
        attempts: usize,
    },
    #[error("a rack needs at least one device (count was 0)")]
    NoDevices,
    #[error("cannot create a pseudo-terminal for console {link}: {source}; check /dev/ptmx")]
    Pty {
        link: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot put the console link at {link}: {source}; the path must be free or a symlink, in a writable directory"
    )]
    Link {
        link: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl SimError {
    pub(crate) fn io(what: impl Into<String>, source: impl Into<std::io::Error>) -> SimError {
        SimError::Io {
            what: what.into(),
            source: source.into(),
        }
    }
}

/// Hostname of device `index` (0-based) of `count`: `sim` alone, `sim-1`, `sim-2`, ... in a
/// rack.
pub fn device_hostname(base: &str, index: usize, count: usize) -> String {
    if count > 1 {
        format!("{base}-{}", index + 1)
    } else {
        base.to_string()
    }
}
