//! The quick tier of the integration tests: one test binary for everything that needs no
//! `sshd`, no mosquitto, no long-running agent and no kill loop, and finishes in seconds —
//! the library from the outside, in memory (the spool on `MemFs`, proptest models), on
//! loopback (the http sink's receiver, the Telnet simulator in-process), on ptys, and the
//! short-lived commands of the binary (`check`, `status`, `--version`).
//!
//! One crate, after ripgrep's `tests/tests.rs`: each file below was a test binary of its
//! own, and each compiled and linked the library and `tests/support` again. `scripts/test
//! --fast` runs this binary (with fmt, clippy and the unit tests); the slow real parts are in
//! `tests/e2e/`, and `tests/isolation/` is a process of its own.

#[path = "../support/mod.rs"]
mod support;

mod architecture;
mod boards;
mod channel_props;
mod check;
mod console_capture;
mod http_sink;
mod legacy_ssh_build;
mod metrics;
mod package_scripts;
mod pool;
mod scheduler;
mod serial_transport;
mod sim_console;
mod sim_telnet;
mod spool_faults;
mod spool_model;
mod spool_recovery;
mod status_cli;
mod status_led;
mod systemd_unit;
mod telnet_transport;
