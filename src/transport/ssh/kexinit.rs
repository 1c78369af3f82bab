//! The server's own word on what it speaks: its banner and SSH_MSG_KEXINIT, read on a fresh
//! connection after libssh2's handshake failed.
//!
//! Why it exists: libssh2 says only "unable to exchange encryption keys", which tells a field
//! engineer nothing. Both the banner and the KEXINIT go in the clear before any key exchange,
//! so reading them needs no cryptography and shows what the server really offers, whatever
//! libssh2 made of it; `algorithms` then names the kinds with nothing in common and the fix.
//! The parser is I/O-free (bytes in, `ServerOffer` out) so it is tested on hand-built packets.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The SSH spec caps a packet at 35000 bytes; a KEXINIT is well below that.
const MAX_PROBE_PACKET: usize = 35_000;
/// Lines a server may send before its `SSH-` banner (RFC 4253 4.2) that the probe reads.
const MAX_PROBE_PREAMBLE: usize = 8 * 1024;
/// SSH_MSG_KEXINIT's message number (RFC 4253 12).
const MSG_KEXINIT: u8 = 20;

/// Pseudo-algorithms in KEXINIT name-lists (RFC 8308, OpenSSH strict kex). libssh2 adds the
/// client ones itself; they never make a key exchange possible.
pub(super) fn is_kex_marker(name: &str) -> bool {
    name.starts_with("ext-info-") || name.starts_with("kex-strict-")
}

/// What a server offers in its KEXINIT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct ServerOffer {
    pub(super) banner: String,
    pub(super) kex: Vec<String>,
    pub(super) host_key: Vec<String>,
    pub(super) ciphers_cs: Vec<String>,
    pub(super) ciphers_sc: Vec<String>,
    pub(super) macs_cs: Vec<String>,
    pub(super) macs_sc: Vec<String>,
}

/// Why the server's offer could not be read. Shown to people inside the handshake failure.
#[derive(Debug, thiserror::Error)]
pub(super) enum ProbeError {
    #[error("connect_timeout used up before {what}")]
    DeadlineSpent { what: &'static str },
    #[error("reconnect to {addr}: {source}")]
    Reconnect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("{source}")]
    Socket {
        #[source]
        source: io::Error,
    },
    #[error("the server closed the connection before {what}")]
    ClosedBefore { what: &'static str },
    #[error("reading {what}: {source}")]
    Read {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("no SSH banner in the first {MAX_PROBE_PREAMBLE} bytes")]
    NoBanner,
    #[error("sending our banner: {source}")]
    SendBanner {
        #[source]
        source: io::Error,
    },
    #[error("the server sent a packet of {len} bytes, not a KEXINIT")]
    PacketSize { len: usize },
    #[error("the server's first packet is malformed")]
    MalformedPacket,
    #[error("the server's first packet is type {message:?}, not KEXINIT")]
    NotKexinit { message: Option<u8> },
    #[error("the server's KEXINIT is cut short")]
    CutShort,
}

/// One connection that reads what the server sends in the clear, within one deadline.
struct Probe {
    tcp: TcpStream,
    deadline: Instant,
    buf: Vec<u8>,
}

/// What is left until `deadline`, or why nothing is.
fn time_left(deadline: Instant, what: &'static str) -> Result<Duration, ProbeError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(ProbeError::DeadlineSpent { what })
    } else {
        Ok(left)
    }
}

impl Probe {
    /// Appends what the server sends next to `buf`.
    fn read_more(&mut self, what: &'static str) -> Result<(), ProbeError> {
        let mut chunk = [0u8; 4096];
        self.tcp
            .set_read_timeout(Some(time_left(self.deadline, what)?))
            .map_err(|source| ProbeError::Socket { source })?;
        match self.tcp.read(&mut chunk) {
            Ok(0) => Err(ProbeError::ClosedBefore { what }),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(source) => Err(ProbeError::Read { what, source }),
        }
    }
}

/// Reads the server's banner and KEXINIT on a fresh connection. Both are sent in the clear
/// before any key exchange, so this needs no cryptography and is what the server really
/// offers, whatever libssh2 made of it.
pub(super) fn probe_server_offer(
    addr: SocketAddr,
    deadline: Instant,
) -> Result<ServerOffer, ProbeError> {
    let tcp = TcpStream::connect_timeout(&addr, time_left(deadline, "reconnecting")?)
        .map_err(|source| ProbeError::Reconnect { addr, source })?;
    let mut probe = Probe {
        tcp,
        deadline,
        buf: Vec::with_capacity(4096),
    };

    // Banner: lines until one starts with "SSH-" (servers may send text first).
    let (banner, rest) = loop {
        if let Some(found) = find_banner(&probe.buf) {
            break found;
        }
        if probe.buf.len() > MAX_PROBE_PREAMBLE {
            return Err(ProbeError::NoBanner);
        }
        probe.read_more("the SSH banner")?;
    };
    probe
        .tcp
        .set_write_timeout(Some(time_left(deadline, "sending our banner")?))
        .map_err(|source| ProbeError::Socket { source })?;
    probe
        .tcp
        .write_all(b"SSH-2.0-rackhand_probe\r\n")
        .map_err(|source| ProbeError::SendBanner { source })?;
    probe.buf = rest;
    let payload = loop {
        if let Some(payload) = parse_packet(&probe.buf)? {
            break payload;
        }
        probe.read_more("the server's KEXINIT")?;
    };
    parse_kexinit(&payload, banner)
}

/// Splits off the `SSH-` line; returns it and the bytes after it.
fn find_banner(buf: &[u8]) -> Option<(String, Vec<u8>)> {
    let mut start = 0;
    while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
        let line = &buf[start..start + nl];
        if line.starts_with(b"SSH-") {
            let text = String::from_utf8_lossy(line).trim_end().to_string();
            return Some((text, buf[start + nl + 1..].to_vec()));
        }
        start += nl + 1;
    }
    None
}

/// One unencrypted binary packet (RFC 4253 6): `Ok(None)` until it is complete.
fn parse_packet(buf: &[u8]) -> Result<Option<Vec<u8>>, ProbeError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(5..=MAX_PROBE_PACKET).contains(&len) {
        return Err(ProbeError::PacketSize { len });
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let padding = buf[4] as usize;
    if padding + 1 > len {
        return Err(ProbeError::MalformedPacket);
    }
    Ok(Some(buf[5..4 + len - padding].to_vec()))
}

/// SSH_MSG_KEXINIT (RFC 4253 7.1): type 20, 16-byte cookie, then ten name-lists.
fn parse_kexinit(payload: &[u8], banner: String) -> Result<ServerOffer, ProbeError> {
    if payload.first() != Some(&MSG_KEXINIT) || payload.len() < 17 {
        return Err(ProbeError::NotKexinit {
            message: payload.first().copied(),
        });
    }
    let mut at = 17;
    let mut lists = Vec::with_capacity(6);
    for _ in 0..6 {
        let Some(len_bytes) = payload.get(at..at + 4) else {
            return Err(ProbeError::CutShort);
        };
        let len =
            u32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]) as usize;
        at += 4;
        let Some(names) = payload.get(at..at + len) else {
            return Err(ProbeError::CutShort);
        };
        at += len;
        let names = String::from_utf8_lossy(names);
        lists.push(
            names
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>(),
        );
    }
    let mut lists = lists.into_iter();
    let mut next = || lists.next().unwrap_or_default();
    Ok(ServerOffer {
        banner,
        kex: next(),
        host_key: next(),
        ciphers_cs: next(),
        ciphers_sc: next(),
        macs_cs: next(),
        macs_sc: next(),
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A KEXINIT as OpenSSH sends it, built by hand.
    fn kexinit(lists: [&str; 10]) -> Vec<u8> {
        let mut payload = vec![20u8];
        payload.extend_from_slice(&[7u8; 16]);
        for list in lists {
            payload.extend_from_slice(&(list.len() as u32).to_be_bytes());
            payload.extend_from_slice(list.as_bytes());
        }
        payload.extend_from_slice(&[0, 0, 0, 0, 0]);
        let padding = 8 - (payload.len() + 5) % 8 + 4;
        let mut packet = ((payload.len() + padding + 1) as u32)
            .to_be_bytes()
            .to_vec();
        packet.push(padding as u8);
        packet.extend_from_slice(&payload);
        packet.extend(std::iter::repeat_n(0u8, padding));
        packet
    }

    /// An old switch's banner and KEXINIT, parsed as the probe would (cut at every byte on
    /// the way: the parser must wait for the whole packet, never misread a part).
    pub(in crate::transport::ssh) fn old_switch() -> ServerOffer {
        let wire = kexinit([
            "diffie-hellman-group14-sha1,kex-strict-s-v00@openssh.com",
            "ssh-rsa",
            "aes128-cbc",
            "aes128-cbc",
            "hmac-sha1",
            "hmac-sha1",
            "none",
            "none",
            "",
            "",
        ]);
        let mut buf = b"Welcome\r\nSSH-2.0-Cisco-1.25\r\n".to_vec();
        buf.extend_from_slice(&wire);
        let (banner, rest) = find_banner(&buf).expect("banner");
        assert_eq!(banner, "SSH-2.0-Cisco-1.25");
        // Byte by byte: the parser must wait for the whole packet, never misread a part.
        for cut in 0..rest.len() {
            assert_eq!(parse_packet(&rest[..cut]).unwrap(), None, "cut at {cut}");
        }
        let payload = parse_packet(&rest).unwrap().expect("complete packet");
        parse_kexinit(&payload, banner).unwrap()
    }

    #[test]
    fn an_old_switch_kexinit_after_a_preamble_names_its_sha1_family() {
        let server = old_switch();
        assert_eq!(server.host_key, vec!["ssh-rsa".to_string()]);
        assert!(server.kex.iter().any(|a| is_kex_marker(a)));
    }

    #[test]
    fn a_packet_that_is_no_kexinit_is_named_by_its_variant() {
        assert!(matches!(
            parse_packet(&[0, 0, 0, 1, 0]),
            Err(ProbeError::PacketSize { len: 1 })
        ));
        assert!(matches!(
            parse_kexinit(&[21; 20], String::new()),
            Err(ProbeError::NotKexinit { message: Some(21) })
        ));
        assert!(matches!(
            parse_kexinit(&[20; 17], String::new()),
            Err(ProbeError::CutShort)
        ));
    }
}
