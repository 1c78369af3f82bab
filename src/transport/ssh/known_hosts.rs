//! Host keys checked against an OpenSSH `known_hosts` file right after the handshake, so a
//! replaced or spoofed device never sees a password.
//!
//! Why it lives apart from the transport (as scrapli keeps its `ssh_config` apart): the file
//! has rules of its own. Host names may be hashed (`|1|salt|hash`, matched by libssh2), a
//! non-default port files a host as `[host]:port`, `@revoked` keys are refused for every
//! host, `@cert-authority` lines are skipped (we pin keys), and one line libssh2 cannot read
//! must not make the whole file unusable. `host_key_check` decides what an unknown host
//! means: `strict` refuses it, `accept-new` records it (one `O_APPEND` write, so workers
//! recording different hosts do not interleave), `off` skips the check.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ssh2::{HashType, KnownHostFileKind, Session};

use crate::inventory::HostKeyCheck;
use crate::transport::TransportError;

/// Why the file could not be used at all (a line libssh2 cannot read is only skipped).
#[derive(Debug, thiserror::Error)]
pub(super) enum KnownHostsError {
    #[error(
        "cannot read known_hosts {}: {source}; fix its permissions or point known_hosts elsewhere",
        .path.display()
    )]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot set up host key checking: {source}")]
    Setup {
        #[source]
        source: ssh2::Error,
    },
}

/// The name OpenSSH files a host under: `host` for port 22, `[host]:port` otherwise (and
/// only that: a key known for port 22 says nothing about another sshd on port 2222).
pub(super) fn known_hosts_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// One usable line of a `known_hosts` file.
struct Entry {
    line: usize,
    key_type: String,
    key_b64: String,
    /// libssh2 holding this line alone: it does the host matching, hashed names included.
    /// `None` for `@revoked` lines, which apply to every host: a revoked key is refused
    /// wherever it shows up (libssh2 cannot match the usual `*` pattern anyway).
    db: Option<ssh2::KnownHosts>,
}

/// A `known_hosts` file, parsed line by line so that one line libssh2 cannot read (a key
/// type it does not know, a certificate authority) does not make the whole file unusable.
pub(super) struct KnownHosts {
    path: PathBuf,
    entries: Vec<Entry>,
}

/// The key the server presented, in the forms the file and the messages use.
struct Presented {
    key_type: String,
    key_b64: String,
    /// `ssh-ed25519 SHA256:...`, as `ssh-keygen -l` shows it.
    shown: String,
}

impl KnownHosts {
    /// A missing file is an empty one (accept-new creates it on first use).
    pub(super) fn load(session: &Session, path: &Path) -> Result<KnownHosts, KnownHostsError> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(KnownHostsError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let mut entries = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            if let Some(entry) = parse_line(session, path, index + 1, raw)? {
                entries.push(entry);
            }
        }
        Ok(KnownHosts {
            path: path.to_path_buf(),
            entries,
        })
    }

    /// Entries whose host pattern (plain or hashed) matches `name`.
    fn for_host<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        // A one-byte key never equals a real one: libssh2 answers Mismatch exactly when the
        // host matches and NotFound when it does not.
        self.entries.iter().filter(move |e| {
            e.db.as_ref()
                .is_some_and(|db| !matches!(db.check(name, b"\0"), ssh2::CheckResult::NotFound))
        })
    }

    /// The key types the file holds for `name`, in file order, each once.
    pub(super) fn key_types_for(&self, name: &str) -> Vec<String> {
        let mut types: Vec<String> = Vec::new();
        for e in self.for_host(name) {
            if !types.contains(&e.key_type) {
                types.push(e.key_type.clone());
            }
        }
        types
    }

    /// Checks the server's key; with accept-new, records a host seen for the first time.
    pub(super) fn verify(
        &self,
        session: &Session,
        name: &str,
        mode: HostKeyCheck,
        peer: &str,
    ) -> Result<(), TransportError> {
        let file = self.path.display().to_string();
        let Some((key, _)) = session.host_key() else {
            return Err(TransportError::Connect {
                peer: peer.to_string(),
                detail: "the server sent no host key".into(),
            });
        };
        let key_type = blob_key_type(key).unwrap_or("unknown").to_string();
        let fingerprint = session
            .host_key_hash(HashType::Sha256)
            .map(|h| format!("SHA256:{}", BASE64.encode(h).trim_end_matches('=')))
            .unwrap_or_else(|| "?".into());
        let presented = Presented {
            shown: format!("{key_type} {fingerprint}"),
            key_type,
            key_b64: BASE64.encode(key),
        };
        let mismatch = |detail: String| TransportError::HostKeyMismatch {
            peer: peer.into(),
            known_hosts: file.clone(),
            detail,
        };
        let (shown, key_type) = (&presented.shown, &presented.key_type);

        let same_key = |e: &Entry| e.key_type == *key_type && e.key_b64 == presented.key_b64;
        if let Some(e) = self.entries.iter().find(|e| e.db.is_none() && same_key(e)) {
            return Err(mismatch(format!(
                "the server's key ({shown}) is marked @revoked on line {}; the device must get a new key",
                e.line
            )));
        }
        let mut same_type_differs = None;
        let mut other_types = Vec::new();
        for e in self.for_host(name) {
            if same_key(e) {
                return Ok(());
            }
            if e.key_type == *key_type {
                same_type_differs.get_or_insert(e.line);
            } else {
                other_types.push(format!("{} (line {})", e.key_type, e.line));
            }
        }
        if let Some(line) = same_type_differs {
            return Err(mismatch(format!(
                "the server presented {shown}, line {line} holds a different {key_type} key for {name}; nothing was sent"
            )));
        }
        if !other_types.is_empty() {
            return Err(mismatch(format!(
                "the server presented {shown} but {name} is known by {}; it no longer offers that key type",
                other_types.join(", ")
            )));
        }
        self.first_contact(&presented, name, mode, peer)
    }

    /// A host the file does not know: what `host_key_check` says to do with it.
    fn first_contact(
        &self,
        presented: &Presented,
        name: &str,
        mode: HostKeyCheck,
        peer: &str,
    ) -> Result<(), TransportError> {
        let file = self.path.display().to_string();
        let connect = |detail: String| TransportError::Connect {
            peer: peer.to_string(),
            detail,
        };
        let Presented {
            key_type,
            key_b64,
            shown,
        } = presented;
        match mode {
            HostKeyCheck::Strict => Err(connect(format!(
                "host key {shown} of {name} is not in {file} and host_key_check = \"strict\"; verify it and add it (ssh-keyscan -p PORT HOST >> {file}) or use host_key_check = \"accept-new\""
            ))),
            HostKeyCheck::AcceptNew => {
                append_known_host(&self.path, &format!("{name} {key_type} {key_b64}")).map_err(
                    |e| {
                        connect(format!(
                            "cannot record the new host key of {name} in {file}: {e}; make the file and its folder writable for rackhand"
                        ))
                    },
                )?;
                log::info!("{peer}: first contact, recorded host key {shown} in {file}");
                Ok(())
            }
            HostKeyCheck::Off => Ok(()),
        }
    }
}

/// One line of the file (`number` counts from 1): `None` for comments, blank lines,
/// `@cert-authority` and lines that are not `hosts keytype key` or that libssh2 cannot use.
fn parse_line(
    session: &Session,
    path: &Path,
    number: usize,
    raw: &str,
) -> Result<Option<Entry>, KnownHostsError> {
    let line = raw.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let mut fields: Vec<&str> = line.split_whitespace().collect();
    let revoked = fields.first() == Some(&"@revoked");
    if fields.first().is_some_and(|f| f.starts_with('@')) {
        if !revoked {
            // @cert-authority: we pin keys, we do not trust CAs.
            return Ok(None);
        }
        fields.remove(0);
    }
    if fields.len() < 3 {
        log::warn!(
            "{}:{number}: not a known_hosts line (want: hosts keytype key); ignored",
            path.display(),
        );
        return Ok(None);
    }
    let db = if revoked {
        None
    } else {
        let mut db = session
            .known_hosts()
            .map_err(|source| KnownHostsError::Setup { source })?;
        let plain = fields[..3].join(" ");
        if let Err(e) = db.read_str(&plain, KnownHostFileKind::OpenSSH) {
            log::debug!(
                "{}:{number}: libssh2 cannot use this line ({}); ignored",
                path.display(),
                e.message()
            );
            return Ok(None);
        }
        Some(db)
    };
    Ok(Some(Entry {
        line: number,
        key_type: fields[1].to_string(),
        key_b64: fields[2].to_string(),
        db,
    }))
}

/// Appends one line; creates the folder (0700) and the file (0600) if needed. One `write`
/// on an `O_APPEND` file, so workers recording different hosts at once do not interleave.
fn append_known_host(path: &Path, line: &str) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    // A file edited by hand may lack its final newline.
    let needs_newline = fs::metadata(path)?.len() > 0 && !ends_with_newline(path)?;
    let mut text = String::with_capacity(line.len() + 2);
    if needs_newline {
        text.push('\n');
    }
    text.push_str(line);
    text.push('\n');
    file.write_all(text.as_bytes())
}

fn ends_with_newline(path: &Path) -> io::Result<bool> {
    use std::io::{Seek, SeekFrom};
    let mut f = fs::File::open(path)?;
    f.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    f.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

/// The key type at the start of an SSH public key blob (`string` type name).
fn blob_key_type(blob: &[u8]) -> Option<&str> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    std::str::from_utf8(blob.get(4..4 + len)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys are written, and fingerprints shown, in standard base64 with padding, as
    /// OpenSSH does.
    #[test]
    fn base64_matches_the_rfc_4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(BASE64.encode(plain.as_bytes()), encoded, "{plain:?}");
        }
    }

    #[test]
    fn a_non_default_port_is_filed_in_brackets_like_openssh_does() {
        assert_eq!(known_hosts_name("10.0.0.1", 22), "10.0.0.1");
        assert_eq!(known_hosts_name("10.0.0.1", 2222), "[10.0.0.1]:2222");
        assert_eq!(known_hosts_name("::1", 2222), "[::1]:2222");
    }
}
