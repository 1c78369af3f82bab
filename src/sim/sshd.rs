//! A simulated device behind a real OpenSSH `sshd`, for `rackhand demo`.
//!
//! We do not write an SSH server: the agent must meet the same sshd it meets in the field.
//! This starts `/usr/sbin/sshd` on 127.0.0.1 with throwaway host and client keys, whose
//! `ForceCommand` is this binary's `sim --stdio`. It needs root (sshd's privilege separation)
//! and openssh-server; `available()` says whether both are there. The server is stopped in
//! `Drop`. (The test suite has its own, independent launcher in tests/support.)

use std::io::{self, BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const SSHD: &str = "/usr/sbin/sshd";
const READY_WAIT: Duration = Duration::from_secs(10);
const PORT_ATTEMPTS: usize = 5;

/// One sshd serving one simulated device.
pub struct SshDevice {
    child: Child,
    pub(crate) addr: SocketAddr,
    pub(crate) user: String,
    pub(crate) client_key: PathBuf,
}

/// Whether an sshd can be started here (installed, and we are root).
pub fn available() -> Result<(), String> {
    if !Path::new(SSHD).exists() {
        return Err(format!("{SSHD} is not installed (package openssh-server)"));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("sshd needs root for its privilege separation".into());
    }
    Ok(())
}

fn keygen(path: &Path) -> io::Result<()> {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("pub"));
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "rackhand-demo", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ssh-keygen -f {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@,".contains(&b))
    {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

impl SshDevice {
    /// Starts sshd in `dir` whose sessions run `rackhand sim --stdio <sim_args>`.
    pub fn start(dir: &Path, sim_args: &[&str]) -> io::Result<SshDevice> {
        available().map_err(io::Error::other)?;
        std::fs::create_dir_all(dir)?;
        std::fs::create_dir_all("/run/sshd")?;
        let host_key = dir.join("host_ed25519");
        let client_key = dir.join("client_ed25519");
        keygen(&host_key)?;
        keygen(&client_key)?;
        std::fs::copy(
            client_key.with_extension("pub"),
            dir.join("authorized_keys"),
        )?;
        let exe = std::env::current_exe()?;
        let mut force = vec![
            quote(&exe.to_string_lossy()),
            "sim".into(),
            "--stdio".into(),
        ];
        force.extend(sim_args.iter().map(|a| quote(a)));
        // available() made sure we are root; sshd permits root with a key only.
        let user = "root".to_string();
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let addr = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?;
            let config = dir.join("sshd_config");
            std::fs::write(&config, config_text(dir, addr, &host_key, &force.join(" ")))?;
            match spawn(&config, addr)? {
                Spawned::Ready(child) => {
                    return Ok(SshDevice {
                        child,
                        addr,
                        user,
                        client_key,
                    });
                }
                Spawned::PortTaken(line) => last = line,
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("sshd found its port taken {PORT_ATTEMPTS} times: {last}"),
        ))
    }
}

impl Drop for SshDevice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How one start of sshd went, when it did not fail outright.
enum Spawned {
    Ready(Child),
    /// Another program took the port between our pick and sshd's bind: try another. The
    /// line is sshd's complaint.
    PortTaken(String),
}

/// Runs sshd in the foreground; waits for "Server listening", then for its banner.
fn spawn(config: &Path, addr: SocketAddr) -> io::Result<Spawned> {
    let mut child = Command::new(SSHD)
        .args(["-D", "-e", "-f"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                // Nobody listens any more: keep draining so sshd never blocks on stderr.
                continue;
            }
        }
    });
    let until = Instant::now() + READY_WAIT;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("Server listening on") => break,
            Ok(line) if line.contains("Address already in use") => {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(Spawned::PortTaken(line));
            }
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::other(format!(
                    "sshd on {addr} did not start within {READY_WAIT:?} ({e})"
                )));
            }
        }
    }
    let mut tcp = TcpStream::connect_timeout(&addr, READY_WAIT)?;
    tcp.set_read_timeout(Some(READY_WAIT))?;
    let mut banner = [0u8; 8];
    tcp.read_exact(&mut banner)?;
    if &banner != b"SSH-2.0-" {
        let _ = child.kill();
        let _ = child.wait();
        return Err(io::Error::other(format!("{addr} is not an SSH server")));
    }
    Ok(Spawned::Ready(child))
}

fn config_text(dir: &Path, addr: SocketAddr, host_key: &Path, force: &str) -> String {
    format!(
        "ListenAddress {addr}\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\n\
         UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n\
         PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
         AllowTcpForwarding no\nAllowAgentForwarding no\nX11Forwarding no\nPrintMotd no\n\
         PrintLastLog no\nLogLevel INFO\nForceCommand {force}\n",
        host_key.display(),
        dir.join("sshd.pid").display(),
        dir.join("authorized_keys").display(),
    )
}
