//! The end-to-end tier: one test binary for the tests against real parts that take their
//! time — OpenSSH's `sshd`, mosquitto, `rackhand run` as a long-running agent (signals,
//! `NOTIFY_SOCKET`, SIGKILL loops), storage on a real tmpfs — each observed from the outside.
//!
//! One crate, after ripgrep's `tests/tests.rs`: each file below was a test binary of its
//! own, and each compiled and linked the library and `tests/support` again. `scripts/test`
//! runs it; `scripts/test --fast` skips it (the quick tier is `tests/quick/`).

#[path = "../support/mod.rs"]
mod support;

mod agent_mqtt;
mod agent_run;
mod change_e2e;
mod collect_e2e;
mod console_e2e;
mod crash_kill9;
mod demo;
mod metrics_e2e;
mod mqtt_presence;
mod mqtt_sink;
mod sim_ssh;
mod ssh_transport;
mod status_led;
mod status_runtime;
mod storage_e2e;
mod upstream_e2e;
