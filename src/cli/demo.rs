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
pub(crate) struct DemoArgs {
    /// How long the agent runs (e.g. "15s", "1m").
    #[arg(long, default_value = "15s", value_parser = super::run::parse_duration)]
    pub(crate) duration: Duration,
    /// Where the config, state and records go (default: a new folder under /tmp).
    #[arg(long)]
    pub(crate) dir: Option<PathBuf>,
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

/// What the simulator does differently for one Telnet device.
#[derive(Clone, Copy)]
enum Quirk {
    None,
    /// [`SLOW_LATENCY`] before every answer.
    Slow,
    /// Never answers this command.
    HangsOn(&'static str),
}

/// One Telnet device of the demo rack.
struct TelnetDevice {
    name: &'static str,
    platform: &'static str,
    password: &'static str,
    commands: &'static [&'static str],
    quirk: Quirk,
    note: &'static str,
}

const TELNET_DEVICES: &[TelnetDevice] = &[
    TelnetDevice {
        name: "core-1",
        platform: "cisco_ios",
        password: "admin",
        commands: IOS,
        quirk: Quirk::None,
        note: "",
    },
    TelnetDevice {
        name: "core-2",
        platform: "cisco_ios",
        password: "admin",
        commands: IOS,
        quirk: Quirk::None,
        note: "",
    },
    TelnetDevice {
        name: "dist-1",
        platform: "cisco_nxos",
        password: "admin",
        commands: &[
            "show version",
            "show clock",
            "show ip interface brief",
            "show environment",
        ],
        quirk: Quirk::None,
        note: "",
    },
    TelnetDevice {
        name: "leaf-1",
        platform: "arista_eos",
        password: "admin",
        commands: &[
            "show version",
            "show clock",
            "show lldp neighbors",
            "show vlan",
        ],
        quirk: Quirk::None,
        note: "",
    },
    TelnetDevice {
        name: "old-sw",
        platform: "cisco_ios",
        password: "admin",
        commands: IOS,
        quirk: Quirk::Slow,
        note: "slow: 1 s per command",
    },
    TelnetDevice {
        name: "flaky-sw",
        platform: "cisco_ios",
        password: "admin",
        commands: IOS,
        quirk: Quirk::HangsOn("show inventory"),
        note: "hangs on `show inventory`",
    },
    TelnetDevice {
        name: "locked-sw",
        platform: "cisco_ios",
        password: "wrong-password",
        commands: IOS,
        quirk: Quirk::None,
        note: "wrong password in the config",
    },
    TelnetDevice {
        name: "edge-1",
        platform: "juniper_junos",
        password: "admin",
        commands: &["show version", "show system uptime", "show interfaces"],
        quirk: Quirk::None,
        note: "",
    },
];

/// Consoles on pseudo-terminals, as a USB-serial cable would show them: name, platform,
/// commands.
const CONSOLES: &[(&str, &str, &[&str])] = &[
    ("con-core-1", "cisco_ios", IOS),
    (
        "con-edge-1",
        "juniper_junos",
        &[
            "show version",
            "show system uptime",
            "show chassis hardware",
        ],
    ),
];

/// Devices behind a real OpenSSH sshd: name, platform, commands.
const SSH_DEVICES: &[(&str, &str, &[&str])] = &[
    ("core-3", "cisco_ios", IOS),
    (
        "spine-1",
        "arista_eos",
        &["show version", "show interfaces status", "show ip route"],
    ),
];

fn profile(platform: &str, hostname: &str) -> anyhow::Result<Profile> {
    let mut p = Profile::for_platform(platform)?;
    p.hostname = hostname.to_string();
    Ok(p)
}

/// The simulated rack: its servers, stopped at the end, and how the config reaches each
/// device.
struct Rack {
    members: Vec<Member>,
    telnet: Vec<TelnetRack>,
    consoles: Vec<PtyConsole>,
    ssh: Vec<crate::sim::sshd::SshDevice>,
}

impl Rack {
    /// Every device on 127.0.0.1 (consoles as links in `dir`).
    fn start(dir: &Path) -> anyhow::Result<Rack> {
        let mut rack = Rack {
            members: Vec::new(),
            telnet: Vec::new(),
            consoles: Vec::new(),
            ssh: Vec::new(),
        };
        for device in TELNET_DEVICES {
            rack.start_telnet(device)?;
        }
        for (name, platform, commands) in CONSOLES {
            rack.start_console(dir, name, platform, commands)?;
        }
        // Behind a real OpenSSH sshd where one can run here (installed, and we are root).
        match crate::sim::sshd::available() {
            Ok(()) => {
                for (name, platform, commands) in SSH_DEVICES {
                    rack.start_ssh(dir, name, platform, commands)?;
                }
            }
            Err(why) => eprintln!("rackhand demo: no SSH devices: {why}"),
        }
        Ok(rack)
    }

    fn start_telnet(&mut self, device: &TelnetDevice) -> anyhow::Result<()> {
        let mut p = profile(device.platform, device.name)?;
        match device.quirk {
            Quirk::None => {}
            Quirk::Slow => p.latency = SLOW_LATENCY,
            Quirk::HangsOn(command) => p = p.with_fault(command, Fault::Hang),
        }
        let server = TelnetRack::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), 1, p)
            .context("start a simulated Telnet device on 127.0.0.1")?;
        let addr = server.addrs()[0].1;
        self.members.push(Member {
            name: device.name.to_string(),
            platform: device.platform,
            endpoint: format!(
                "transport = \"telnet\"\nhost = \"127.0.0.1\"\nport = {}\n",
                addr.port()
            ),
            password: device.password,
            commands: device.commands,
            note: device.note,
        });
        self.telnet.push(server);
        Ok(())
    }

    fn start_console(
        &mut self,
        dir: &Path,
        name: &str,
        platform: &'static str,
        commands: &'static [&'static str],
    ) -> anyhow::Result<()> {
        let link = dir.join(format!("{name}.tty"));
        let console = PtyConsole::start(&link, Some(115_200), profile(platform, name)?)
            .with_context(|| format!("start a simulated console at {}", link.display()))?;
        self.members.push(Member {
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
        self.consoles.push(console);
        Ok(())
    }

    fn start_ssh(
        &mut self,
        dir: &Path,
        name: &str,
        platform: &'static str,
        commands: &'static [&'static str],
    ) -> anyhow::Result<()> {
        let server = crate::sim::sshd::SshDevice::start(
            &dir.join(format!("sshd-{name}")),
            &["--platform", platform, "--hostname", name],
        )
        .with_context(|| format!("start sshd for the simulated {name}"))?;
        self.members.push(Member {
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
        self.ssh.push(server);
        Ok(())
    }

    /// Stops every server; the members stay for the summary.
    fn stop(self) -> Vec<Member> {
        for server in self.telnet {
            server.stop();
        }
        for console in self.consoles {
            console.stop();
        }
        drop(self.ssh);
        self.members
    }
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
    let rack = Rack::start(&dir)?;
    let config = write_config(&dir, &rack.members)?;
    eprintln!(
        "rackhand demo: {} devices ({} telnet, {} ssh, {} consoles), config {}",
        rack.members.len(),
        rack.telnet.len(),
        rack.ssh.len(),
        rack.consoles.len(),
        config.display()
    );

    let live = std::io::stderr().is_terminal();
    let summary = agent::run(
        &config,
        Options {
            drain: DRAIN,
            run_for: Some(args.duration),
            on_record: Some(Box::new(progress(live, args.duration))),
            signals: true,
        },
    )?;
    if live {
        eprint!("\r\x1b[K");
    }
    let members = rack.stop();
    println!("{}", render_summary(&members, &summary));
    println!(
        "{} records in {} (NDJSON, one record per line); config and state in {}",
        summary.records,
        summary.outbox.display(),
        dir.display()
    );
    println!(
        "{} of them went up unchanged (ship = \"on_change\": \"output\": null, {} not sent)",
        summary.unchanged,
        crate::config::units::approx_size(summary.bytes_saved)
    );
    Ok(0)
}

/// The progress line on a terminal: records so far, how many not ok, the last one.
fn progress(live: bool, duration: Duration) -> impl FnMut(&Record) + Send + 'static {
    let start = Instant::now();
    let mut seen = 0u64;
    let mut failed = 0u64;
    move |r: &Record| {
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
    }
}

/// The passwords in files readable by us alone, as in the field, and the config naming them.
fn write_config(dir: &Path, members: &[Member]) -> anyhow::Result<PathBuf> {
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets)?;
    for m in members {
        write_secret(&secrets.join(m.password), m.password)?;
    }
    let config = dir.join("rackhand.toml");
    std::fs::write(&config, config_text(dir, members))
        .with_context(|| format!("write {}", config.display()))?;
    Ok(config)
}

fn config_text(dir: &Path, members: &[Member]) -> String {
    let mut text = format!(
        "# Written by `rackhand demo`: the simulated rack on loopback.\n\
         [agent]\nid = \"demo\"\nworkers = 4\nstate_dir = \"{}\"\n\n\
         [defaults]\nusername = \"admin\"\ninterval = \"5s\"\nconnect_timeout = \"5s\"\n\
         command_timeout = \"3s\"\n\
         # An output goes up whole when it changed; otherwise its record says so, output null.\n\
         ship = \"on_change\"\n\n\
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
