//! Issue 12's metrics with real parts: `rackhand run` collecting from simulated Cisco IOS
//! devices on loopback Telnet, scraped every second by a real Prometheus server (Debian's
//! `prometheus`, its own config and TSDB in a temp folder), and writing its textfile for a
//! real node_exporter (`prometheus-node-exporter`, only the textfile collector) to serve.
//!
//! Observed from the outside only: Prometheus' query API, node_exporter's `/metrics`, the
//! agent's own `/metrics` and `/healthz`. Every wait is bounded; the agent, both servers and
//! the devices are stopped in `Drop`.

use crate::support;

use std::time::Duration;

use rackhand::sim::{Profile, TelnetRack};

use support::TempDir;
use support::agent::{Agent, Dev, Setup};
use support::http_get::get;
use support::prometheus::{NodeExporter, Prometheus};
use support::{deadline, loopback_any_port, poll_until, released_loopback_port};

/// How long the servers may take to show what the agent did (a scrape a second, a
/// collection every 300 ms, a textfile looked at every 10 s).
const SHOW_WITHIN: Duration = Duration::from_secs(60);

fn rack() -> TelnetRack {
    TelnetRack::start(
        loopback_any_port(),
        3,
        Profile::for_platform("cisco_ios").unwrap(),
    )
    .expect("start the simulated rack")
}

fn setup(dir: &TempDir, rack: &TelnetRack) -> Setup {
    Setup {
        agent_id: "rack-metrics".into(),
        workers: 4,
        state_dir: dir.join("state"),
        interval: "300ms".into(),
        commands: vec!["show clock".into()],
        upstream: Vec::new(),
        devices: rack
            .addrs()
            .iter()
            .map(|(name, addr)| Dev::telnet(name, *addr))
            .collect(),
    }
}

/// Whether Prometheus has a sample for `expr` now.
fn has(prometheus: &Prometheus, expr: &str) -> bool {
    prometheus.query(expr).is_ok_and(|r| !r.is_empty())
}

#[test]
fn a_real_prometheus_scrapes_the_agent_and_sees_its_collections() {
    require("prometheus");
    let dir = TempDir::new("metrics-prom").unwrap();
    let rack = rack();
    let listen = released_loopback_port().unwrap();
    let config = setup(&dir, &rack)
        .config()
        .metrics("listen", &format!("\"{listen}\""))
        .write(&dir.join("rackhand.toml"));
    let mut agent = Agent::start(&config, &dir.join("state"));
    let serving = poll_until(deadline(SHOW_WITHIN), || {
        get(listen, "/healthz", Duration::from_secs(2)).is_ok_and(|r| r.code == 200)
    });
    assert!(
        serving,
        "no /healthz 200 on {listen}; agent log:\n{}",
        agent.stderr()
    );
    assert!(
        agent
            .stderr()
            .contains(&format!("metrics: serving http://{listen}/metrics")),
        "{}",
        agent.stderr()
    );

    let prom_dir = TempDir::new("metrics-prom-server").unwrap();
    let prometheus = Prometheus::start(prom_dir.path(), listen).unwrap();
    let wanted = [
        "rackhand_build_info",
        "rackhand_collections_total{status=\"ok\"} > 0",
        "rackhand_device_up == 1",
        "rackhand_session_duration_seconds_count{transport=\"telnet\"} > 0",
        "up{job=\"rackhand\"} == 1",
    ];
    let seen = poll_until(deadline(SHOW_WITHIN), || {
        wanted.iter().all(|expr| has(&prometheus, expr))
    });
    assert!(
        seen,
        "Prometheus never showed all of {wanted:?}; missing: {:?}\ntargets: {}\nprometheus log:\n{}\nagent log:\n{}",
        wanted
            .iter()
            .filter(|e| !has(&prometheus, e))
            .collect::<Vec<_>>(),
        prometheus.targets(),
        prometheus.stderr(),
        agent.stderr()
    );
    // One series per device for ok collections, each named by the device only.
    let ok = prometheus
        .query("rackhand_collections_total{status=\"ok\"}")
        .unwrap();
    let mut devices: Vec<String> = ok
        .iter()
        .map(|s| s["metric"]["device"].as_str().unwrap().to_string())
        .collect();
    devices.sort();
    let mut expected: Vec<String> = rack.addrs().into_iter().map(|(n, _)| n).collect();
    expected.sort();
    assert_eq!(devices, expected);

    let status = agent.stop();
    assert!(status.success(), "{status:?}\n{}", agent.stderr());
    agent.assert_no_panic("metrics scrape");
    assert!(
        get(listen, "/metrics", Duration::from_secs(2)).is_err(),
        "the listener stops with the agent"
    );
}

#[test]
fn node_exporter_serves_the_agents_textfile() {
    require("prometheus-node-exporter");
    let dir = TempDir::new("metrics-textfile").unwrap();
    let textfile_dir = dir.join("textfile");
    std::fs::create_dir(&textfile_dir).unwrap();
    let textfile = textfile_dir.join("rackhand.prom");
    let rack = rack();
    let config = setup(&dir, &rack)
        .config()
        .metrics("textfile", &format!("\"{}\"", textfile.display()))
        .write(&dir.join("rackhand.toml"));
    let node_exporter = NodeExporter::start(&textfile_dir).unwrap();
    let mut agent = Agent::start(&config, &dir.join("state"));

    // The first text is written at the agent's first status tick; collections show at the
    // next look (10 s later) once they have happened.
    let mut served = String::new();
    let seen = poll_until(deadline(SHOW_WITHIN), || {
        served = node_exporter.metrics().unwrap_or_default();
        served.contains("rackhand_build_info{version=")
            && served
                .lines()
                .any(|l| l.starts_with("rackhand_collections_total{") && !l.ends_with(" 0"))
    });
    assert!(
        seen,
        "node_exporter never served the agent's collections; it served:\n{served}\nagent log:\n{}",
        agent.stderr()
    );
    assert!(
        served.contains("node_textfile_scrape_error 0"),
        "node_exporter read the file without error:\n{served}"
    );
    let names: Vec<_> = std::fs::read_dir(&textfile_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["rackhand.prom"], "no temp file left beside it");

    let status = agent.stop();
    assert!(status.success(), "{status:?}\n{}", agent.stderr());
    agent.assert_no_panic("metrics textfile");
    assert!(textfile.exists(), "the last numbers stay for node_exporter");
}

/// A clear failure (not a skip) when `program` is not on `PATH`.
fn require(program: &str) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|d| d.join(program).is_file());
    assert!(
        found,
        "the metrics tests need {program}, which is not installed: run scripts/install-deps (it installs Debian's prometheus and prometheus-node-exporter)"
    );
}
