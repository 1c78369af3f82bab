//! Session benchmark (issue 3): connect+login time and per-command overhead on an open
//! session over SSH (real sshd), Telnet and a pty console; serial throughput as a share of line
//! rate at 115200 baud; the collector's peak memory against endless output for several caps.
//!
//! Run: `cargo bench --bench sessions` (needs root and openssh-server, like the tests).
//! Prints a markdown table; docs/benchmarks.md keeps the figures of the last run.

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rackhand::config::parse_str;
use rackhand::inventory::{self, Device};
use rackhand::session::Session;
use rackhand::sim::{Fault, Profile, PtyConsole, TelnetRack};

const LOGINS: usize = 20;
const COMMANDS: usize = 2000;

fn device(toml: &str) -> Device {
    let (raw, mut report) = parse_str(Path::new("bench.toml"), toml);
    let inv = inventory::resolve(&raw, &mut report);
    assert!(!report.has_errors(), "{report}");
    inv.devices.into_iter().next().expect("one device")
}

fn base(extra: &str) -> String {
    format!(
        "[defaults]\nplatform = \"cisco_ios\"\nusername = \"admin\"\npassword = \"admin\"\n\
         commands = [\"show clock\"]\nconnect_timeout = \"10s\"\ncommand_timeout = \"10s\"\n\
         max_output = \"64MiB\"\n[[device]]\nname = \"bench\"\n{extra}"
    )
}

struct Stats {
    median: Duration,
    p99: Duration,
    mean: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    Stats {
        median: samples[samples.len() / 2],
        p99: samples[(samples.len() * 99 / 100).min(samples.len() - 1)],
        mean,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Logs in `LOGINS` times, then runs `COMMANDS` small commands on one session.
fn measure(name: &str, dev: &Device, rows: &mut Vec<String>) {
    let mut logins = Vec::new();
    for _ in 0..LOGINS {
        let t = Instant::now();
        let s = Session::open(dev).unwrap_or_else(|e| panic!("{name}: {e}"));
        logins.push(t.elapsed());
        s.close();
    }
    let mut session = Session::open(dev).expect("open");
    let mut per_command = Vec::with_capacity(COMMANDS);
    for _ in 0..COMMANDS {
        let t = Instant::now();
        let outcome = session.run("show clock");
        per_command.push(t.elapsed());
        assert_eq!(outcome.status, rackhand::record::Status::Ok, "{outcome:?}");
    }
    session.close();
    let l = stats(logins);
    let c = stats(per_command);
    rows.push(format!(
        "| {name} | {} | {} | {} | {} | {} |",
        ms(l.median),
        ms(l.p99),
        ms(c.mean),
        ms(c.median),
        ms(c.p99)
    ));
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let tmp = support::TempDir::new("bench").expect("temp dir");
    let mut rows = vec![
        "| transport | login p50 | login p99 | command mean | command p50 | command p99 |"
            .to_string(),
        "|---|---|---|---|---|---|".to_string(),
    ];

    // Telnet: the simulator in-process on loopback.
    let profile = Profile::for_platform("cisco_ios").unwrap();
    let rack = TelnetRack::start(support::loopback_any_port(), 1, profile.clone()).unwrap();
    let addr = rack.addrs()[0].1;
    let telnet = device(&base(&format!(
        "transport = \"telnet\"\nhost = \"127.0.0.1\"\nport = {}\n",
        addr.port()
    )));
    measure("telnet", &telnet, &mut rows);

    // SSH: a real OpenSSH sshd whose ForceCommand is the simulator.
    match support::sshd::Sshd::start(&["--platform", "cisco_ios"]) {
        Ok(sshd) => {
            let ssh = device(&base(&format!(
                "transport = \"ssh\"\nhost = \"127.0.0.1\"\nport = {}\nusername = \"{}\"\nkey_file = \"{}\"\nhost_key_check = \"off\"\n",
                sshd.addr.port(),
                sshd.user,
                sshd.client_key.display()
            )));
            measure("ssh (OpenSSH sshd)", &ssh, &mut rows);
        }
        Err(e) => rows.push(format!("| ssh | skipped: {e} | | | | |")),
    }

    // pty console, unthrottled: the channel's own overhead.
    let link = tmp.join("console-fast");
    let console = PtyConsole::start(&link, None, profile.clone()).unwrap();
    let serial = device(&base(&format!(
        "transport = \"serial\"\nserial_port = \"{}\"\nbaud = 115200\n",
        link.display()
    )));
    measure("pty console (unthrottled)", &serial, &mut rows);
    drop(console);

    // Serial throughput at 115200 baud: a large output through a paced console.
    let link = tmp.join("console-115200");
    let _paced = PtyConsole::start(&link, Some(115_200), profile.clone()).unwrap();
    let paced = device(&base(&format!(
        "transport = \"serial\"\nserial_port = \"{}\"\nbaud = 115200\ncommand_timeout = \"60s\"\n",
        link.display()
    )));
    let mut session = Session::open(&paced).expect("open paced console");
    let t = Instant::now();
    let outcome = session.run("show interfaces");
    let elapsed = t.elapsed();
    session.close();
    // On the wire each line end is two bytes; the record has one.
    let wire_bytes = outcome.output.len() + outcome.output.iter().filter(|&&b| b == b'\n').count();
    let line_rate = 115_200.0 / 10.0;
    let share = wire_bytes as f64 / elapsed.as_secs_f64() / line_rate;

    // Peak memory of the collector against endless output, per cap.
    let mut memory = Vec::new();
    let endless_profile = Profile::for_platform("cisco_ios")
        .unwrap()
        .with_fault("show tech-support", Fault::Endless);
    let endless = TelnetRack::start(support::loopback_any_port(), 1, endless_profile).unwrap();
    for cap in ["1MiB", "4MiB", "16MiB"] {
        let cfg = tmp.join(&format!("endless-{cap}.toml"));
        std::fs::write(
            &cfg,
            base(&format!(
                "transport = \"telnet\"\nhost = \"127.0.0.1\"\nport = {}\nmax_output = \"{cap}\"\ncommands = [\"show tech-support\"]\n",
                endless.addrs()[0].1.port()
            ))
            .replace("max_output = \"64MiB\"\n", ""),
        )
        .unwrap();
        let t = Instant::now();
        let out = Command::new(support::rackhand_bin())
            .args(["collect", "--format", "json", "-c"])
            .arg(&cfg)
            .output()
            .unwrap();
        let took = t.elapsed();
        let rss = peak_rss_of_children_kib();
        let line = String::from_utf8_lossy(&out.stdout);
        let status = line
            .split("\"status\":\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or("?")
            .to_string();
        memory.push(format!(
            "| {cap} | {status} | {:.1} MiB | {:.2} s |",
            rss as f64 / 1024.0,
            took.as_secs_f64()
        ));
    }

    println!("\n## Sessions on loopback ({LOGINS} logins, {COMMANDS} commands each)\n");
    for r in &rows {
        println!("{r}");
    }
    println!("\n## Serial throughput at 115200 baud (pty console paced by the simulator)\n");
    println!("| output | time | throughput | share of line rate |");
    println!("|---|---|---|---|");
    println!(
        "| show interfaces, {wire_bytes} bytes on the wire | {:.2} s | {:.0} B/s | {:.1} % |",
        elapsed.as_secs_f64(),
        wire_bytes as f64 / elapsed.as_secs_f64(),
        share * 100.0
    );
    println!("\n## Collector peak RSS against endless output (rackhand collect, whole process)\n");
    println!("| max_output | status | peak RSS | time |");
    println!("|---|---|---|---|");
    for m in &memory {
        println!("{m}");
    }
}

/// The largest peak RSS among waited-for children so far (the kernel keeps the maximum).
fn peak_rss_of_children_kib() -> i64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    usage.ru_maxrss
}
