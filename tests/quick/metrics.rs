//! Metrics for Prometheus without a running agent: the text as `promtool check metrics` (the
//! Prometheus project's own linter) judges it, the `/metrics` listener on loopback with its
//! limits (paths, methods, request size, connections at once, stop with a slow client), and
//! `rackhand check` on a `[metrics]` table with mistakes.
//!
//! The registry is filled as a busy agent would fill it (`rackhand::metrics::testing`); the
//! running agent scraped by a real Prometheus server and node_exporter is in
//! tests/e2e/metrics_e2e.rs.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rackhand::metrics::testing::Filled;

use crate::support::TempDir;
use crate::support::config::{Config, Dev, list};
use crate::support::http_get::{get, raw};

const WITHIN: Duration = Duration::from_secs(10);

/// A config with `n` Telnet devices (one with a name that needs escaping in a label).
fn config(n: usize) -> Config {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 2323));
    let mut config = Config::new()
        .agent("workers", "8")
        .defaults("platform", "\"cisco_ios\"")
        .defaults("commands", &list(&["show version"]));
    for i in 0..n {
        config = config.device(Dev::telnet(&format!("fra-a12-sw{i:03}"), addr));
    }
    // TOML-escaped: the device is named `lab "b"\old`.
    config.device(Dev::telnet("lab \\\"b\\\"\\\\old", addr))
}

fn filled(n: usize, rounds: u64) -> Filled {
    let dir = TempDir::new("metrics-inv").unwrap();
    let inventory = config(n).inventory(&dir.join("rackhand.toml"));
    Filled::new(&inventory, rounds)
}

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// `promtool check metrics` on `text`; `None` when promtool is not installed.
fn promtool_check(text: &str) -> Option<(bool, String)> {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success() && said.trim().is_empty(), said))
}

#[test]
fn promtool_finds_nothing_wrong_with_the_metrics_of_a_busy_agent() {
    let text = filled(40, 6).render();
    let Some((clean, said)) = promtool_check(&text) else {
        eprintln!(
            "SKIPPED: promtool is not installed (Debian package `prometheus`; scripts/install-deps installs it)"
        );
        return;
    };
    assert!(
        clean,
        "promtool check metrics:\n{said}\n--- the text:\n{text}"
    );
    for name in [
        "rackhand_build_info{version=",
        "rackhand_collections_total{device=\"fra-a12-sw003\",status=\"connect_failed\"} 6",
        "rackhand_collections_total{device=\"lab \\\"b\\\"\\\\old\",status=\"ok\"}",
        "rackhand_device_last_success_timestamp_seconds{device=\"fra-a12-sw000\"}",
        "rackhand_device_up{device=\"fra-a12-sw003\"} 0",
        "rackhand_spool_records 4000",
        "rackhand_spool_bytes ",
        "rackhand_spool_max_bytes 536870912",
        "rackhand_spool_oldest_record_age_seconds ",
        "rackhand_upstream_acked_records_total 250000",
        "rackhand_upstream_errors_total 17",
        "rackhand_lost_records_total{cause=\"spool_full\"} 12",
        "rackhand_workers 8",
        "rackhand_workers_busy 3",
        "rackhand_session_duration_seconds_bucket{transport=\"telnet\",le=\"0.1\"}",
        "rackhand_session_duration_seconds_count{transport=\"telnet\"} 246",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
}

#[test]
fn metrics_and_healthz_are_served_and_everything_else_is_refused() {
    let filled = filled(5, 2);
    let server = filled.serve(loopback()).unwrap();
    let addr = server.addr();

    let metrics = get(addr, "/metrics", WITHIN).unwrap();
    assert_eq!(metrics.code, 200, "{metrics:?}");
    assert_eq!(
        metrics.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert_eq!(
        metrics.header("Content-Length"),
        Some(metrics.body.len().to_string().as_str())
    );
    assert!(
        metrics
            .body
            .contains("# TYPE rackhand_collections_total counter\n")
    );
    assert!(metrics.body.ends_with('\n'));

    let head = raw(addr, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n", WITHIN).unwrap();
    assert_eq!(head.code, 200);
    assert!(head.body.is_empty(), "HEAD has no body: {head:?}");
    let with_query = get(addr, "/metrics?name[]=x", WITHIN).unwrap();
    assert_eq!(with_query.code, 200);

    let health = get(addr, "/healthz", WITHIN).unwrap();
    assert_eq!((health.code, health.body.as_str()), (200, "ok\n"));
    // Scrapes one after the other are all served: a handler going back to wait is never
    // mistaken for all handlers being busy.
    for i in 0..200 {
        let answer = get(addr, "/healthz", WITHIN).unwrap();
        assert_eq!(answer.code, 200, "request {i}: {answer:?}");
    }

    let other = get(addr, "/", WITHIN).unwrap();
    assert_eq!(other.code, 404);
    assert!(other.body.contains("/metrics"), "{other:?}");
    let post = raw(
        addr,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        WITHIN,
    )
    .unwrap();
    assert_eq!(post.code, 405);
    assert_eq!(post.header("Allow"), Some("GET, HEAD"));
    let garbage = raw(addr, b"hello\r\n\r\n", WITHIN).unwrap();
    assert_eq!(garbage.code, 400);
    let mut huge = b"GET /metrics HTTP/1.1\r\n".to_vec();
    while huge.len() < 9 * 1024 {
        huge.extend_from_slice(
            b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        );
    }
    huge.extend_from_slice(b"\r\n");
    let too_large = raw(addr, &huge, WITHIN).unwrap();
    assert_eq!(too_large.code, 431);
}

#[test]
fn healthz_says_why_when_the_loop_stalls_or_the_spool_takes_nothing() {
    let filled = filled(3, 1);
    let server = filled.serve(loopback()).unwrap();
    let addr = server.addr();

    filled.spool_accepts(false);
    let full = get(addr, "/healthz", WITHIN).unwrap();
    assert_eq!(full.code, 503, "{full:?}");
    assert!(full.body.contains("the spool is full"), "{full:?}");
    assert_eq!(full.body.lines().count(), 1, "one line: {full:?}");

    filled.spool_accepts(true);
    filled.loop_turned(Duration::from_secs(45));
    let stalled = get(addr, "/healthz", WITHIN).unwrap();
    assert_eq!(stalled.code, 503, "{stalled:?}");
    assert!(
        stalled.body.contains("has not gone round for 45 s"),
        "{stalled:?}"
    );

    filled.loop_turned(Duration::ZERO);
    assert_eq!(get(addr, "/healthz", WITHIN).unwrap().code, 200);
}

#[test]
fn connections_beyond_the_handlers_are_refused_and_served_again_once_they_free_up() {
    let filled = filled(3, 1);
    let server = filled.serve(loopback()).unwrap();
    let addr = server.addr();
    // Four clients that connect and say nothing hold every handler (each until its 5 s
    // read deadline, or until it goes away).
    let mut idle: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect_timeout(&addr, WITHIN).unwrap())
        .collect();
    // The accepting thread hands each to a handler; the fifth finds none idle. Retried
    // (bounded) because the handover of the fourth may not have happened yet.
    let until = Instant::now() + WITHIN;
    let refused = loop {
        let answer = get(addr, "/metrics", WITHIN).unwrap();
        if answer.code == 503 || Instant::now() > until {
            break answer;
        }
    };
    assert_eq!(refused.code, 503, "{refused:?}");
    assert!(refused.body.contains("too many connections"), "{refused:?}");

    idle.clear();
    let until = Instant::now() + WITHIN;
    let served = loop {
        let answer = get(addr, "/metrics", WITHIN).unwrap();
        if answer.code == 200 || Instant::now() > until {
            break answer;
        }
    };
    assert_eq!(served.code, 200, "served again once the idle clients left");
}

#[test]
fn a_client_that_never_finishes_its_request_is_dropped_at_the_deadline_and_does_not_hold_up_a_stop()
{
    let filled = filled(3, 1);
    let server = filled.serve(loopback()).unwrap();
    let addr = server.addr();
    let mut slow = TcpStream::connect_timeout(&addr, WITHIN).unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    slow.set_read_timeout(Some(WITHIN)).unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(8),
        "closed after {waited:?}, the read deadline is 5 s"
    );
    assert!(rest.is_empty(), "no answer to half a request: {rest:?}");

    // Another slow client, then a stop: it does not wait for the deadline.
    let mut slow = TcpStream::connect_timeout(&addr, WITHIN).unwrap();
    slow.write_all(b"GET /met").unwrap();
    // The handler has it once the server reads; a request after it shows it is served.
    assert_eq!(get(addr, "/healthz", WITHIN).unwrap().code, 200);
    let started = Instant::now();
    drop(server);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the stop took {:?}",
        started.elapsed()
    );
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "nothing listens after the stop"
    );
}

fn rackhand_check(config: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rackhand"))
        .args(["check", "-c"])
        .arg(config)
        .env_remove("RACKHAND_CONFIG")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap(), text)
}

#[test]
fn check_points_at_a_bad_listen_address_and_a_textfile_folder_that_does_not_exist() {
    let dir = TempDir::new("metrics-check").unwrap();
    let missing = dir.join("no-such-folder/rackhand.prom");
    let text = format!(
        "[agent]\nstate_dir = \"{}\"\n\n[metrics]\nlisten = \"localhost:9464\"\ntextfile = \"{}\"\n",
        dir.join("state").display(),
        missing.display()
    );
    let path = dir.write("rackhand.toml", &text);
    let (code, out) = rackhand_check(&path);
    assert_eq!(code, 2, "{out}");
    let at = path.display();
    assert!(
        out.contains(&format!(
            "{at}:5:10: `listen` = \"localhost:9464\" is not an IP address"
        )),
        "{out}"
    );
    assert!(out.contains(&format!("{at}:6:12: the folder ")), "{out}");

    let good = format!(
        "[agent]\nstate_dir = \"{}\"\n\n[metrics]\nlisten = \"0.0.0.0:9464\"\ntextfile = \"{}\"\n",
        dir.join("state").display(),
        dir.join("rackhand.prom").display()
    );
    let path = dir.write("rackhand.toml", &good);
    let (code, out) = rackhand_check(&path);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("{}:5:10: warning: `listen`", path.display())),
        "{out}"
    );
    // The summary says where the metrics will be.
    assert!(
        out.contains(&format!(
            "metrics http://0.0.0.0:9464/metrics, textfile {}\n",
            dir.join("rackhand.prom").display()
        )),
        "{out}"
    );
}
