//! The simulator behind a real OpenSSH server: `sshd` on 127.0.0.1 runs
//! `rackhand sim --stdio` as its `ForceCommand`, the way a lab stands up an SSH device
//! without writing an SSH server. The client is libssh2 (the collector's SSH library) with a
//! pty, as against real gear. Every capture must come back byte for byte.

use crate::support;

use std::time::Duration;

use support::client::{ClientError, PromptClient, SshWire};
use support::deadline;
use support::device::{
    assert_not_paged, assert_paged, assert_same_output, paging_off_command, prompt_regex,
    run_every_capture,
};
use support::fixtures::{captures, platforms};
use support::sshd::Sshd;

const STEP: Duration = Duration::from_secs(10);

fn start(args: &[&str]) -> Sshd {
    Sshd::start(args).unwrap_or_else(|e| panic!("cannot start sshd for the simulator: {e}"))
}

/// Opens an SSH shell on `sshd` and waits for the device prompt (stdio starts logged in).
fn shell(sshd: &Sshd, platform: &str, hostname: &str) -> PromptClient<SshWire> {
    let wire = SshWire::connect(sshd.addr, &sshd.user, &sshd.client_key, STEP)
        .unwrap_or_else(|e| panic!("ssh to {}: {e}; sshd log:\n{}", sshd.addr, sshd.log()));
    let mut client = PromptClient::new(wire, &prompt_regex(platform, hostname, "admin"));
    client.wait_prompt(deadline(STEP)).unwrap_or_else(|e| {
        panic!(
            "{platform}: no prompt over ssh: {e}; sshd log:\n{}",
            sshd.log()
        )
    });
    client
}

#[test]
fn every_capture_of_every_platform_comes_back_byte_for_byte_over_ssh() {
    for platform in platforms() {
        let sshd = start(&["--platform", &platform]);
        let page_lines = rackhand::sim::Profile::for_platform(&platform)
            .unwrap()
            .page_lines;

        // One session through the pager...
        let mut paged = shell(&sshd, &platform, "sim");
        let pages = run_every_capture(&mut paged, &platform, "ssh", deadline(STEP * 3));
        assert_paged(&pages, page_lines, "ssh");
        assert!(
            pages.iter().any(|(_, n)| *n > 0),
            "{platform}: nothing paged over ssh"
        );
        drop(paged);

        // ...and one with paging off, as a collector runs it.
        let mut plain = shell(&sshd, &platform, "sim");
        plain
            .run(paging_off_command(&platform), deadline(STEP))
            .unwrap();
        let pages = run_every_capture(&mut plain, &platform, "ssh", deadline(STEP * 3));
        assert_not_paged(&pages, "ssh");
    }
}

#[test]
fn forced_command_options_reach_the_simulator() {
    let sshd = start(&[
        "--platform",
        "arista_eos",
        "--hostname",
        "spine1",
        "--page-lines",
        "0",
        "--fault",
        "show interfaces=drop",
    ]);
    let mut client = shell(&sshd, "arista_eos", "spine1");
    let capture = captures("arista_eos")
        .into_iter()
        .find(|c| c.command == "show version")
        .unwrap();
    let reply = client.run("show version", deadline(STEP)).unwrap();
    assert_eq!(reply.pages, 0, "--page-lines 0 did not reach the simulator");
    assert_same_output(&capture, &reply.output, "ssh");
    let err = client.run("show interfaces", deadline(STEP)).unwrap_err();
    assert!(
        matches!(err, ClientError::Eof { .. }),
        "the drop fault should end the SSH channel, got: {err}"
    );
}

#[test]
fn the_ssh_session_ends_when_the_user_logs_out() {
    let sshd = start(&["--platform", "juniper_junos"]);
    let mut client = shell(&sshd, "juniper_junos", "sim");
    client.send_line("exit").unwrap();
    let rest = client.drain(deadline(STEP), 4096).unwrap();
    assert_eq!(
        rest.end,
        support::client::DrainEnd::Eof,
        "the channel stayed open after `exit`: {:?}",
        String::from_utf8_lossy(&rest.bytes)
    );
}

#[test]
fn a_linux_box_with_its_own_outputs_directory_answers_like_a_shell() {
    // `--outputs DIR` as a lab would use it: one file per command, one with CRLF line ends
    // and one without a final newline (the device still ends the line before its prompt).
    let dir = support::TempDir::new("linux-outputs").unwrap();
    let files: [(&str, &[u8]); 2] = [
        (
            "uname_-a.txt",
            b"Linux edge1 6.1.0-rpi7-rpi-v8 #1 SMP PREEMPT Debian 1:6.1.63-1+rpt1 aarch64 GNU/Linux",
        ),
        ("ip_-br_link.txt", b"lo  UNKNOWN  00:00:00:00:00:00\r\neth0  UP  dc:a6:32:01:02:03\r\n"),
    ];
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let outputs = dir.path().to_string_lossy().into_owned();
    let sshd = start(&[
        "--platform",
        "linux",
        "--hostname",
        "edge1",
        "--outputs",
        &outputs,
    ]);
    let mut client = shell(&sshd, "linux", "edge1");
    for (name, bytes) in files {
        let capture = support::fixtures::Capture {
            platform: "linux".into(),
            command: name.trim_end_matches(".txt").replace('_', " "),
            path: dir.path().join(name),
            raw: bytes.to_vec(),
        };
        let reply = client.run(&capture.command, deadline(STEP)).unwrap();
        assert_same_output(&capture, &reply.output, "ssh");
    }
    let reply = client.run("whoami", deadline(STEP)).unwrap();
    assert_eq!(reply.output, b"admin\n");
    let reply = client.run("frobnicate", deadline(STEP)).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&reply.output),
        "bash: frobnicate: command not found\n"
    );
    client.send_line("exit").unwrap();
    let rest = client.drain(deadline(STEP), 4096).unwrap();
    assert_eq!(rest.end, support::client::DrainEnd::Eof);
    assert!(String::from_utf8_lossy(&rest.bytes).contains("logout"));
}
