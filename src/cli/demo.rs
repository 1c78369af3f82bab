//! `rackhand demo`: the embedded default. A simulated rack on loopback, the agent run against
//! it for a bounded time, records written to a local file sink, a summary at the end.
//!
//! It needs no setup and shows what the agent does in the field, including what goes wrong
//! there: a slow device, one that hangs mid-command, one whose password is wrong.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::agent::{self, Options};
use crate::record::{Record, Status};
use crate::sim::{Fault, Profile, PtyConsole, TelnetRack};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// How long the agent runs (e.g. "15s", "1m").
    #[arg(long, default_value = "15s", value_parser = super::run::parse_duration)]
    pub duration: Duration,
    /// Where the config, state and records go (default: a new folder under /tmp).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// One simulated device of the demo rack and how the config reaches it.
struct Member {
    name: String,
    platform: &'static str,
    endpoint: String,
    password: &'static str,
    commands: &'static [&'static str],
    note: &'static str,
}

/// The slow device's delay before every answer; with its two setup commands and four
/// commands a session takes about 6 s.
const SLOW_LATENCY: Duration = Duration::from_secs(1);
/// Long enough for the slowest session (the slow device's 6 s, or the hanging one's 3 s
/// timeout after its other commands) started just before the end: the demo loses no records.
const DRAIN: Duration = Duration::from_secs(10);

const IOS: &[&str] = &[
    "show version",
    "show clock",
    "show ip interface brief",
    "show inventory",
];

fn telnet(profile: Profile) -> anyhow::Result<TelnetRack> {
    TelnetRack::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), 1, profile)
        .context("start a simulated Telnet device on 127.0.0.1")
}

fn profile(platform: &str, hostname: &str) -> anyhow::Result<Profile> {
    let mut p = Profile::for_platform(platform)?;
    p.hostname = hostname.to_string();
    Ok(p)
}

pub fn run(args: &DemoArgs) -> anyhow::Result<i32> {
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("rackhand-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    // The demo's own chatter would drown its story; RUST_LOG=info shows everything.
    if std::env::var_os("RUST_LOG").is_none() {
        log::set_max_level(log::LevelFilter::Warn);
    }
    eprintln!(
        "rackhand demo: a simulated rack on 127.0.0.1, the agent for {:?}",
        args.duration
    );

    let mut racks = Vec::new();
    let mut members = Vec::new();
    let mut add_telnet = |name: &str,
                          p: Profile,
                          platform: &'static str,
                          password: &'static str,
                          commands: &'static [&'static str],
                          note: &'static str|
     -> anyhow::Result<()> {
        let rack = telnet(p)?;
        let addr = rack.addrs()[0].1;
        members.push(Member {
            name: name.to_string(),
            platform,
            endpoint: format!(
                "transport = \"telnet\"\nhost = \"127.0.0.1\"\nport = {}\n",
                addr.port()
            ),
            password,
            commands,
            note,
        });
        racks.push(rack);
        Ok(())
    };
    add_telnet(
        "core-1",
        profile("cisco_ios", "core-1")?,
        "cisco_ios",
        "admin",
        IOS,
        "",
    )?;
    add_telnet(
        "core-2",
        profile("cisco_ios", "core-2")?,
        "cisco_ios",
        "admin",
        IOS,
        "",
    )?;
    add_telnet(
        "dist-1",
        profile("cisco_nxos", "dist-1")?,
        "cisco_nxos",
        "admin",
        &[
            "show version",
            "show clock",
            "show ip interface brief",
            "show environment",
        ],
        "",
    )?;
    add_telnet(
        "leaf-1",
        profile("arista_eos", "leaf-1")?,
        "arista_eos",
        "admin",
        &[
            "show version",
            "show clock",
            "show lldp neighbors",
            "show vlan",
        ],
        "",
    )?;
    let mut slow = profile("cisco_ios", "old-sw")?;
    slow.latency = SLOW_LATENCY;
    add_telnet(
        "old-sw",
        slow,
        "cisco_ios",
        "admin",
        IOS,
        "slow: 1 s per command",
    )?;
    let hang = profile("cisco_ios", "flaky-sw")?.with_fault("show inventory", Fault::Hang);
    add_telnet(
        "flaky-sw",
        hang,
        "cisco_ios",
        "admin",
        IOS,
        "hangs on `show inventory`",
    )?;
    add_telnet(
        "locked-sw",
        profile("cisco_ios", "locked-sw")?,
        "cisco_ios",
        "wrong-password",
        IOS,
        "wrong password in the config",
    )?;

    let edge = profile("juniper_junos", "edge-1")?;
    add_telnet(
        "edge-1",
        edge,
        "juniper_junos",
        "admin",
        &["show version", "show system uptime", "show interfaces"],
        "",
    )?;

    // Consoles on pseudo-terminals, as a USB-serial cable would show them.
    let mut consoles = Vec::new();
    for (name, platform, commands) in [
        ("con-core-1", "cisco_ios", IOS),
        (
            "con-edge-1",
            "juniper_junos",
            &[
                "show version",
                "show system uptime",
                "show chassis hardware",
            ][..],
        ),
    ] {
        let link = dir.join(format!("{name}.tty"));
        let console = PtyConsole::start(&link, Some(115_200), profile(platform, name)?)
            .with_context(|| format!("start a simulated console at {}", link.display()))?;
        members.push(Member {
            name: name.to_string(),
            platform,
            endpoint: format!(
                "transport = \"serial\"\nserial_port = \"{}\"\nbaud = 115200\n",
                link.display()
            ),
            password: "admin",
            commands,
            note: "console at 115200 baud",
        });
        consoles.push(console);
    }
    // Behind a real OpenSSH sshd where one can run here (installed, and we are root).
    let mut ssh_servers = Vec::new();
    match crate::sim::sshd::available() {
        Ok(()) => {
            for (name, platform, commands) in [
                ("core-3", "cisco_ios", IOS),
                (
                    "spine-1",
                    "arista_eos",
                    &["show version", "show interfaces status", "show ip route"][..],
                ),
            ] {
                let server = crate::sim::sshd::SshDevice::start(
                    &dir.join(format!("sshd-{name}")),
                    &["--platform", platform, "--hostname", name],
                )
                .with_context(|| format!("start sshd for the simulated {name}"))?;
                members.push(Member {
                    name: name.to_string(),
                    platform,
                    endpoint: format!(
                        "transport = \"ssh\"\nhost = \"127.0.0.1\"\nport = {}\nusername = \"{}\"\nkey_file = \"{}\"\nhost_key_check = \"accept-new\"\n",
                        server.addr.port(),
                        server.user,
                        server.client_key.display()
                    ),
                    password: "admin",
                    commands,
                    note: "ssh, via OpenSSH sshd",
                });
                ssh_servers.push(server);
            }
        }
        Err(why) => eprintln!("rackhand demo: no SSH devices: {why}"),
    }

    // Passwords in files readable by us alone, as in the field.
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets)?;
    for m in &members {
        write_secret(&secrets.join(m.password), m.password)?;
    }
    let config = dir.join("rackhand.toml");
    std::fs::write(&config, config_text(&dir, &members))
        .with_context(|| format!("write {}", config.display()))?;
    eprintln!(
        "rackhand demo: {} devices ({} telnet, {} ssh, {} consoles), config {}",
        members.len(),
        racks.len(),
        ssh_servers.len(),
        consoles.len(),
        config.display()
    );

    let live = std::io::stderr().is_terminal();
    let start = Instant::now();
    let duration = args.duration;
    let mut seen = 0u64;
    let mut failed = 0u64;
    let on_record = move |r: &Record| {
        seen += 1;
        if r.status != Status::Ok {
            failed += 1;
        }
        if live {
            eprint!(
                "\r\x1b[K[{:>4.1}s/{:.0}s] {seen} records, {failed} not ok; last: {} `{}` {}",
                start.elapsed().as_secs_f64(),
                duration.as_secs_f64(),
                r.device,
                r.command,
                r.status.as_str()
            );
        }
    };
    let summary = agent::run(
        &config,
        Options {
            drain: DRAIN,
            run_for: Some(args.duration),
            on_record: Some(Box::new(on_record)),
            signals: true,
        },
    )?;
    if live {
        eprint!("\r\x1b[K");
    }
    for rack in racks {
        rack.stop();
    }
    for console in consoles {
        console.stop();
    }
    drop(ssh_servers);

    println!("{}", render_summary(&members, &summary));
    println!(
        "{} records in {} (NDJSON, one record per line); config and state in {}",
        summary.records,
        summary.outbox.display(),
        dir.display()
    );
    Ok(0)
}

fn config_text(dir: &Path, members: &[Member]) -> String {
    let mut text = format!(
        "# Written by `rackhand demo`: the simulated rack on loopback.\n\
         [agent]\nid = \"demo\"\nworkers = 4\nstate_dir = \"{}\"\n\n\
         [defaults]\nusername = \"admin\"\ninterval = \"5s\"\nconnect_timeout = \"5s\"\n\
         command_timeout = \"3s\"\n\n\
         [upstream]\nsink = \"file\"\npath = \"{}\"\n",
        dir.join("state").display(),
        dir.join("outbox").display()
    );
    for m in members {
        let commands: Vec<String> = m.commands.iter().map(|c| format!("{c:?}")).collect();
        let _ = write!(
            text,
            "\n[[device]]\nname = \"{}\"\nplatform = \"{}\"\n{}password_file = \"secrets/{}\"\ncommands = [{}]\n",
            m.name,
            m.platform,
            m.endpoint,
            m.password,
            commands.join(", ")
        );
        if !m.note.is_empty() {
            let _ = writeln!(text, "# {}", m.note);
        }
    }
    text
}

fn write_secret(path: &Path, value: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    writeln!(f, "{value}")?;
    Ok(())
}

fn render_summary(members: &[Member], summary: &agent::Summary) -> String {
    let mut out = String::from(
        "\nDEVICE      PLATFORM       LAST STATUS        OK/RECORDS  RUNS  BUSY    NOTE\n",
    );
    for m in members {
        let t = summary.devices.get(&m.name).cloned().unwrap_or_default();
        let status = t.last_status.map_or("not run", |s| s.as_str());
        let _ = writeln!(
            out,
            "{:<11} {:<14} {:<18} {:>4}/{:<6} {:>4}  {:>5.1}s  {}",
            m.name,
            m.platform,
            status,
            t.ok,
            t.records,
            t.runs,
            t.busy.as_secs_f64(),
            m.note
        );
    }
    out
}
