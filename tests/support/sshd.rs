//! A real OpenSSH server for the SSH end-to-end tests: `/usr/sbin/sshd` on 127.0.0.1 with
//! throwaway host and client keys, whose `ForceCommand` is `rackhand sim --stdio ...`. This is
//! how the simulator stands in for a device behind SSH without us writing an SSH server, and
//! it makes the client side meet the same sshd it will meet in the field.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use super::process::ChildGuard;
use super::{TempDir, deadline, rackhand_bin, released_loopback_port, remaining};

pub const SSHD: &str = "/usr/sbin/sshd";
const KEYGEN: &str = "ssh-keygen";
/// sshd only parses its config and binds: a second is plenty, ten covers a loaded machine.
const READY_WAIT: Duration = Duration::from_secs(10);
/// Tries with a fresh port when another process took ours between release and bind.
const PORT_ATTEMPTS: usize = 5;

pub struct Sshd {
    // Field order matters: the server dies before its directory is removed.
    guard: ChildGuard,
    pub addr: SocketAddr,
    pub user: String,
    pub client_key: PathBuf,
    dir: TempDir,
}

/// Quotes a word for the user's login shell, which runs `ForceCommand` with `-c`.
fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@,".contains(&b))
    {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

fn keygen(path: &Path) -> io::Result<()> {
    let out = Command::new(KEYGEN)
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "rackhand-test", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot run {KEYGEN}: {e}; run scripts/install-deps (installs openssh-client)"
                ),
            )
        })?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{KEYGEN} -f {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

fn current_user() -> io::Result<String> {
    let out = Command::new("id").arg("-un").output()?;
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || name.is_empty() {
        return Err(io::Error::other("`id -un` did not name the current user"));
    }
    Ok(name)
}

impl Sshd {
    /// Starts sshd whose every session runs `rackhand sim --stdio <sim_args>`.
    pub fn start(sim_args: &[&str]) -> io::Result<Sshd> {
        if !Path::new(SSHD).exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{SSHD} is not installed: run scripts/install-deps (it installs openssh-server)"
                ),
            ));
        }
        let dir = TempDir::new("sshd")?;
        let host_key = dir.join("host_ed25519");
        let client_key = dir.join("client_ed25519");
        keygen(&host_key)?;
        keygen(&client_key)?;
        std::fs::copy(dir.join("client_ed25519.pub"), dir.join("authorized_keys"))?;
        let user = current_user()?;
        // sshd running as root insists on its privilege-separation directory.
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            std::fs::create_dir_all("/run/sshd").map_err(|e| {
                io::Error::new(e.kind(), format!("cannot create /run/sshd for sshd: {e}"))
            })?;
        }
        let mut force = vec![
            shell_quote(&rackhand_bin().to_string_lossy()),
            "sim".into(),
            "--stdio".into(),
        ];
        force.extend(sim_args.iter().map(|a| shell_quote(a)));
        let force = force.join(" ");

        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            let addr = released_loopback_port()?;
            let config = dir.join("sshd_config");
            std::fs::write(&config, sshd_config(&dir, addr, &host_key, &force))?;
            match Self::spawn(&config, addr)? {
                Ok(guard) => {
                    return Ok(Sshd {
                        guard,
                        addr,
                        user,
                        client_key,
                        dir,
                    });
                }
                Err(PortTaken(msg)) => last = Some(msg),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "sshd found its port taken {PORT_ATTEMPTS} times; last: {}",
                last.unwrap_or_default()
            ),
        ))
    }

    /// Runs sshd in the foreground and waits for "Server listening", then for its banner.
    fn spawn(config: &Path, addr: SocketAddr) -> io::Result<Result<ChildGuard, PortTaken>> {
        let mut cmd = Command::new(SSHD);
        cmd.arg("-D").arg("-e").arg("-f").arg(config);
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        let (tx, rx) = mpsc::channel();
        let mut guard = ChildGuard::spawn(cmd, &format!("sshd on {addr}"), Some(tx))?;
        let until = deadline(READY_WAIT);
        loop {
            let left = remaining(until).unwrap_or_default();
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("Server listening on") => break,
                Ok(line) if line.contains("Address already in use") => {
                    return Ok(Err(PortTaken(line)));
                }
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "sshd on {addr} did not report listening within {READY_WAIT:?}; stderr:\n{}",
                            guard.stderr_text()
                        ),
                    ));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = guard.wait_until(deadline(Duration::from_secs(2)))?;
                    let text = guard.stderr_text();
                    if text.contains("Address already in use") {
                        return Ok(Err(PortTaken(text)));
                    }
                    return Err(io::Error::other(format!(
                        "sshd on {addr} exited ({status:?}) before listening; stderr:\n{text}"
                    )));
                }
            }
        }
        // Listening is logged just before accept(); confirm with the real banner.
        let mut tcp = TcpStream::connect_timeout(&addr, READY_WAIT)?;
        tcp.set_read_timeout(Some(READY_WAIT))?;
        let mut banner = [0u8; 8];
        tcp.read_exact(&mut banner)
            .map_err(|e| io::Error::new(e.kind(), format!("sshd on {addr} sent no banner: {e}")))?;
        if &banner != b"SSH-2.0-" {
            return Err(io::Error::other(format!(
                "{addr} answered {banner:?}, not an SSH banner"
            )));
        }
        Ok(Ok(guard))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// sshd's log so far (connections, auth failures): quote it in failure messages.
    pub fn log(&self) -> String {
        self.guard.stderr_text()
    }
}

struct PortTaken(String);

fn sshd_config(dir: &TempDir, addr: SocketAddr, host_key: &Path, force: &str) -> String {
    format!(
        "ListenAddress {addr}\n\
         HostKey {host_key}\n\
         PidFile {pid}\n\
         AuthorizedKeysFile {keys}\n\
         UsePAM no\n\
         StrictModes no\n\
         PermitRootLogin prohibit-password\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         AllowTcpForwarding no\n\
         AllowAgentForwarding no\n\
         X11Forwarding no\n\
         PrintMotd no\n\
         PrintLastLog no\n\
         PermitUserEnvironment no\n\
         LogLevel INFO\n\
         ForceCommand {force}\n",
        pid = dir.join("sshd.pid").display(),
        keys = dir.join("authorized_keys").display(),
        host_key = host_key.display(),
    )
}

#[test]
fn force_command_words_are_quoted_for_the_shell() {
    assert_eq!(shell_quote("--platform"), "--platform");
    assert_eq!(shell_quote("show version=hang"), "'show version=hang'");
    assert_eq!(shell_quote("it's"), r"'it'\''s'");
    assert_eq!(shell_quote(""), "''");
}
