//! The algorithms we offer a server, and why a handshake found none in common.
//!
//! Why it exists: old gear speaks only the SHA-1 family; libssh2 is built with it (see
//! `.cargo/config.toml`) but we offer it only to `legacy_ssh` devices, after the modern
//! algorithms, so a device that can do better never negotiates down. A device may also name
//! its own lists, which are checked against this libssh2 before any connection. When a
//! handshake fails we compare our offer with what the server's KEXINIT says (`kexinit`) and
//! name every kind with nothing in common and the one setting that fixes it.

use std::net::SocketAddr;
use std::time::Instant;

use ssh2::{MethodType, Session};

use super::is_timeout;
use super::kexinit::{ServerOffer, is_kex_marker, probe_server_offer};
use crate::inventory::{Device, SshSettings};

/// The SHA-1 family old switches and routers need, offered after the modern algorithms when
/// a device sets `legacy_ssh = true`, strongest first within each kind.
const LEGACY_KEX: &[&str] = &[
    "diffie-hellman-group14-sha1",
    "diffie-hellman-group-exchange-sha1",
    "diffie-hellman-group1-sha1",
];
const LEGACY_HOST_KEY: &[&str] = &["ssh-rsa", "ssh-dss"];
const LEGACY_CIPHERS: &[&str] = &["aes128-cbc", "aes256-cbc", "3des-cbc"];
const LEGACY_MACS: &[&str] = &["hmac-sha1"];

/// Never offered by default: the legacy family above plus what even old gear rarely needs
/// and that is broken or pointless (MD5, RC4, `none`), and certificates (we pin keys).
const NOT_BY_DEFAULT: &[&str] = &[
    "hmac-sha1-96",
    "hmac-sha1-etm@openssh.com",
    "hmac-md5",
    "hmac-md5-96",
    "hmac-ripemd160",
    "hmac-ripemd160@openssh.com",
    "aes192-cbc",
    "rijndael-cbc@lysator.liu.se",
    "blowfish-cbc",
    "cast128-cbc",
    "arcfour",
    "arcfour128",
    "none",
];

/// Why no offer could be made: a device's list this libssh2 cannot honour, or libssh2 itself.
#[derive(Debug, thiserror::Error)]
pub(super) enum OfferError {
    #[error("libssh2 cannot list its {key}: {source}")]
    CannotList {
        key: &'static str,
        #[source]
        source: ssh2::Error,
    },
    /// A device's explicit list names algorithms this build does not have.
    #[error(
        "`{key}` names {} that this rackhand's libssh2 does not support; it supports: {}",
        .unknown.join(", "),
        .supported.join(", ")
    )]
    Unsupported {
        key: &'static str,
        unknown: Vec<String>,
        supported: Vec<String>,
    },
    #[error("libssh2 refused our {key} list {list:?}: {source}")]
    Refused {
        key: &'static str,
        list: Vec<String>,
        #[source]
        source: ssh2::Error,
    },
}

/// What we offer, per kind, in order of preference.
#[derive(Debug, Clone)]
pub(super) struct Offer {
    kex: Vec<String>,
    host_key: Vec<String>,
    ciphers: Vec<String>,
    macs: Vec<String>,
}

/// The kinds we set preferences for: (libssh2 kind, config key, legacy additions).
fn kinds() -> [(MethodType, &'static str, &'static [&'static str]); 4] {
    [
        (MethodType::Kex, "kex", LEGACY_KEX),
        (MethodType::HostKey, "host_key_algorithms", LEGACY_HOST_KEY),
        (MethodType::CryptCs, "ciphers", LEGACY_CIPHERS),
        (MethodType::MacCs, "macs", LEGACY_MACS),
    ]
}

/// Whether `alg` is in the modern default offer.
fn is_default(alg: &str) -> bool {
    !is_kex_marker(alg)
        && !alg.ends_with("-cert-v01@openssh.com")
        && !NOT_BY_DEFAULT.contains(&alg)
        && !LEGACY_KEX.contains(&alg)
        && !LEGACY_HOST_KEY.contains(&alg)
        && !LEGACY_CIPHERS.contains(&alg)
        && !LEGACY_MACS.contains(&alg)
}

/// One kind's list: the defaults (+ `legacy` when asked), or the device's `explicit` list
/// when every name in it is `supported`.
fn list_for(
    key: &'static str,
    supported: &[&str],
    explicit: &[String],
    legacy: Option<&[&str]>,
) -> Result<Vec<String>, OfferError> {
    if explicit.is_empty() {
        let mut list: Vec<String> = supported
            .iter()
            .filter(|a| is_default(a))
            .map(|a| a.to_string())
            .collect();
        if let Some(legacy) = legacy {
            list.extend(
                legacy
                    .iter()
                    .filter(|a| supported.contains(a))
                    .map(|a| a.to_string()),
            );
        }
        return Ok(list);
    }
    let unknown: Vec<String> = explicit
        .iter()
        .filter(|a| !supported.contains(&a.as_str()))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(OfferError::Unsupported {
            key,
            unknown,
            supported: supported
                .iter()
                .filter(|a| !is_kex_marker(a))
                .map(|a| a.to_string())
                .collect(),
        });
    }
    Ok(explicit.to_vec())
}

impl Offer {
    /// Modern defaults (+ the legacy family for `legacy_ssh`), or the device's explicit
    /// lists, checked against what this libssh2 supports. Host key algorithms whose key type
    /// `known_hosts` already holds for the host go first, as OpenSSH does, so a host known by
    /// its RSA key is not reported as changed because it also has an Ed25519 key.
    pub(super) fn build(
        session: &Session,
        ssh: &SshSettings,
        known_types: &[String],
    ) -> Result<Offer, OfferError> {
        let mut lists = Vec::with_capacity(4);
        for (kind, key, legacy) in kinds() {
            let supported = session
                .supported_algs(kind)
                .map_err(|source| OfferError::CannotList { key, source })?;
            let explicit = match kind {
                MethodType::Kex => &ssh.kex,
                MethodType::HostKey => &ssh.host_key_algorithms,
                MethodType::CryptCs => &ssh.ciphers,
                _ => &ssh.macs,
            };
            let legacy = ssh.legacy.then_some(legacy);
            lists.push(list_for(key, &supported, explicit, legacy)?);
        }
        let mut offer = Offer {
            macs: lists.pop().unwrap_or_default(),
            ciphers: lists.pop().unwrap_or_default(),
            host_key: lists.pop().unwrap_or_default(),
            kex: lists.pop().unwrap_or_default(),
        };
        if !known_types.is_empty() {
            let (first, rest): (Vec<String>, Vec<String>) = offer
                .host_key
                .into_iter()
                .partition(|a| known_types.iter().any(|t| t == key_type_of_algorithm(a)));
            offer.host_key = first.into_iter().chain(rest).collect();
        }
        Ok(offer)
    }

    /// Makes this the session's preference, both directions alike.
    pub(super) fn apply(&self, session: &Session) -> Result<(), OfferError> {
        let set = |kind: MethodType, key: &'static str, list: &[String]| {
            session
                .method_pref(kind, &list.join(","))
                .map_err(|source| OfferError::Refused {
                    key,
                    list: list.to_vec(),
                    source,
                })
        };
        set(MethodType::Kex, "kex", &self.kex)?;
        set(MethodType::HostKey, "host_key_algorithms", &self.host_key)?;
        set(MethodType::CryptCs, "ciphers", &self.ciphers)?;
        set(MethodType::CryptSc, "ciphers", &self.ciphers)?;
        set(MethodType::MacCs, "macs", &self.macs)?;
        set(MethodType::MacSc, "macs", &self.macs)
    }
}

/// The key type (as in `known_hosts`) a host key algorithm signs with.
fn key_type_of_algorithm(alg: &str) -> &str {
    match alg {
        "rsa-sha2-256" | "rsa-sha2-512" => "ssh-rsa",
        other => other,
    }
}

/// Ciphers that authenticate themselves: with them the MAC list does not matter.
fn is_aead(cipher: &str) -> bool {
    cipher.contains("-gcm@") || cipher.starts_with("chacha20-poly1305")
}

/// Turns a failed handshake into a message a field engineer can act on.
pub(super) fn explain_handshake_failure(
    e: &ssh2::Error,
    addr: SocketAddr,
    deadline: Instant,
    offer: &Offer,
    device: &Device,
) -> String {
    if is_timeout(e) {
        return format!(
            "no SSH handshake within connect_timeout ({:?}): {addr} accepts TCP but the server did not complete the handshake; check that it is an SSH port and not overloaded",
            device.connect_timeout
        );
    }
    match probe_server_offer(addr, deadline) {
        Ok(server) => match explain_mismatch(&server, offer, &device.ssh, &device.name) {
            Some(why) => format!("no common algorithms with {} ({why})", server.banner),
            None => format!(
                "SSH handshake failed: {} (the server, {}, shares algorithms with us, so this is not a negotiation problem)",
                e.message(),
                server.banner
            ),
        },
        Err(probe) => format!(
            "SSH handshake failed: {}; we offered kex {}, host keys {}, ciphers {}, macs {} (could not read the server's offer: {probe})",
            e.message(),
            offer.kex.join(","),
            offer.host_key.join(","),
            offer.ciphers.join(","),
            offer.macs.join(",")
        ),
    }
}

/// One kind of algorithm to compare with the server.
struct Check<'a> {
    label: &'static str,
    key: &'static str,
    legacy: &'static [&'static str],
    ours: &'a [String],
    theirs: &'a [String],
    /// Whether our list is the built-in default (not the device's explicit list).
    default: bool,
}

fn common(ours: &[String], theirs: &[String]) -> bool {
    ours.iter().any(|a| theirs.contains(a))
}

/// The kinds that must each have an algorithm in common with `server` for a handshake.
fn checks<'a>(
    server: &'a ServerOffer,
    server_kex: &'a [String],
    offer: &'a Offer,
    ssh: &SshSettings,
) -> Vec<Check<'a>> {
    let first_common =
        |ours: &[String], theirs: &[String]| ours.iter().find(|a| theirs.contains(a)).cloned();
    let cipher_cs = first_common(&offer.ciphers, &server.ciphers_cs);
    let cipher_sc = first_common(&offer.ciphers, &server.ciphers_sc);
    // Name the direction that fails (they are the same list on every server we know).
    let ciphers_theirs = if cipher_cs.is_none() {
        &server.ciphers_cs
    } else {
        &server.ciphers_sc
    };
    let macs_theirs = if common(&offer.macs, &server.macs_cs) {
        &server.macs_sc
    } else {
        &server.macs_cs
    };
    let mut checks = vec![
        Check {
            label: "key exchange",
            key: "kex",
            legacy: LEGACY_KEX,
            ours: &offer.kex,
            theirs: server_kex,
            default: ssh.kex.is_empty(),
        },
        Check {
            label: "host key",
            key: "host_key_algorithms",
            legacy: LEGACY_HOST_KEY,
            ours: &offer.host_key,
            theirs: &server.host_key,
            default: ssh.host_key_algorithms.is_empty(),
        },
        Check {
            label: "cipher",
            key: "ciphers",
            legacy: LEGACY_CIPHERS,
            ours: &offer.ciphers,
            theirs: ciphers_theirs,
            default: ssh.ciphers.is_empty(),
        },
    ];
    // Only an AEAD cipher agreed in both directions makes the MAC lists irrelevant; with no
    // cipher in common yet, the MAC must fit too for the suggested fix to work.
    let aead = |c: &Option<String>| c.as_deref().is_some_and(is_aead);
    if !(aead(&cipher_cs) && aead(&cipher_sc)) {
        checks.push(Check {
            label: "MAC",
            key: "macs",
            legacy: LEGACY_MACS,
            ours: &offer.macs,
            theirs: macs_theirs,
            default: ssh.macs.is_empty(),
        });
    }
    checks
}

/// Names every kind with nothing in common and the setting that fixes it; `None` when every
/// kind has a common algorithm.
fn explain_mismatch(
    server: &ServerOffer,
    offer: &Offer,
    ssh: &SshSettings,
    device: &str,
) -> Option<String> {
    let server_kex: Vec<String> = server
        .kex
        .iter()
        .filter(|a| !is_kex_marker(a))
        .cloned()
        .collect();
    let checks = checks(server, &server_kex, offer, ssh);
    let failing: Vec<&Check> = checks
        .iter()
        .filter(|c| !common(c.ours, c.theirs))
        .collect();
    if failing.is_empty() {
        return None;
    }
    let problems: Vec<String> = failing
        .iter()
        .map(|c| {
            format!(
                "{}: server offers only {}; we offer {}",
                c.label,
                c.theirs.join(", "),
                c.ours.join(", ")
            )
        })
        .collect();
    let legacy_fixes = !ssh.legacy
        && failing
            .iter()
            .all(|c| c.default && c.legacy.iter().any(|a| c.theirs.iter().any(|t| t == a)));
    let fix = if legacy_fixes {
        format!("set legacy_ssh = true on device `{device}` (the server needs the SHA-1 family)")
    } else {
        let keys: Vec<String> = failing
            .iter()
            .map(|c| format!("`{} = [...]`", c.key))
            .collect();
        format!(
            "add one of the server's algorithms to {} on device `{device}` (explicit lists replace the defaults)",
            keys.join(", ")
        )
    };
    Some(format!("{}; {fix}", problems.join("; ")))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::inventory::HostKeyCheck;
    use crate::transport::ssh::kexinit::tests::old_switch;

    fn modern_offer() -> Offer {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        Offer {
            kex: s(&["curve25519-sha256", "diffie-hellman-group14-sha256"]),
            host_key: s(&["ssh-ed25519", "rsa-sha2-512"]),
            ciphers: s(&["aes256-gcm@openssh.com", "aes128-ctr"]),
            macs: s(&["hmac-sha2-256"]),
        }
    }

    fn settings(legacy: bool) -> SshSettings {
        SshSettings {
            key_file: None,
            key_passphrase: None,
            host_key_check: HostKeyCheck::Strict,
            known_hosts: PathBuf::from("/nonexistent"),
            legacy,
            kex: vec![],
            host_key_algorithms: vec![],
            ciphers: vec![],
            macs: vec![],
            keepalive: Duration::from_secs(30),
        }
    }

    #[test]
    fn a_sha1_only_server_is_explained_with_every_missing_kind_and_the_fix() {
        let server = old_switch();
        assert_eq!(server.host_key, vec!["ssh-rsa".to_string()]);
        let why = explain_mismatch(&server, &modern_offer(), &settings(false), "sw1").unwrap();
        for needle in [
            "key exchange: server offers only diffie-hellman-group14-sha1;",
            "host key: server offers only ssh-rsa;",
            "cipher: server offers only aes128-cbc;",
            "MAC: server offers only hmac-sha1;",
            "set legacy_ssh = true on device `sw1`",
        ] {
            assert!(why.contains(needle), "missing {needle:?} in {why}");
        }
        assert!(
            !why.contains("kex-strict"),
            "markers are not algorithms: {why}"
        );
    }

    #[test]
    fn a_server_sharing_our_algorithms_is_not_called_a_mismatch() {
        let mut server = old_switch();
        server.kex.push("curve25519-sha256".into());
        server.host_key.push("ssh-ed25519".into());
        server.ciphers_cs.push("aes256-gcm@openssh.com".into());
        server.ciphers_sc.push("aes256-gcm@openssh.com".into());
        // An AEAD cipher in common: the MAC lists no longer matter.
        assert_eq!(
            explain_mismatch(&server, &modern_offer(), &settings(false), "sw1"),
            None
        );
    }

    #[test]
    fn explicit_lists_get_a_different_fix_than_legacy() {
        let server = old_switch();
        let mut ssh = settings(false);
        ssh.kex = vec!["curve25519-sha256".into()];
        let why = explain_mismatch(&server, &modern_offer(), &ssh, "sw1").unwrap();
        assert!(why.contains("`kex = [...]`"), "{why}");
        assert!(!why.contains("legacy_ssh"), "{why}");
    }

    #[test]
    fn default_offer_leaves_sha1_out_and_legacy_appends_it_last() {
        let session = Session::new().unwrap();
        let modern = Offer::build(&session, &settings(false), &[]).unwrap();
        for alg in LEGACY_KEX
            .iter()
            .chain(LEGACY_HOST_KEY)
            .chain(LEGACY_CIPHERS)
            .chain(LEGACY_MACS)
        {
            let all = [&modern.kex, &modern.host_key, &modern.ciphers, &modern.macs];
            assert!(
                !all.iter().any(|l| l.iter().any(|a| a == alg)),
                "{alg} offered by default: {modern:?}"
            );
        }
        assert!(modern.kex.iter().all(|a| !is_kex_marker(a)));
        let legacy = Offer::build(&session, &settings(true), &[]).unwrap();
        assert_eq!(&legacy.kex[..modern.kex.len()], &modern.kex[..]);
        assert_eq!(
            legacy.kex.last().map(String::as_str),
            Some("diffie-hellman-group1-sha1")
        );
        assert!(legacy.host_key.iter().any(|a| a == "ssh-rsa"));
        assert!(legacy.macs.iter().any(|a| a == "hmac-sha1"));
        legacy.apply(&session).unwrap();
    }

    #[test]
    fn known_key_types_go_first_and_unknown_explicit_names_are_refused() {
        let session = Session::new().unwrap();
        let offer = Offer::build(&session, &settings(false), &["ssh-rsa".to_string()]).unwrap();
        assert_eq!(
            key_type_of_algorithm(&offer.host_key[0]),
            "ssh-rsa",
            "{:?}",
            offer.host_key
        );
        let mut ssh = settings(false);
        ssh.ciphers = vec!["aes128-ctr".into(), "rot13-cbc".into()];
        let err = Offer::build(&session, &ssh, &[]).unwrap_err();
        assert!(
            matches!(&err, OfferError::Unsupported { key: "ciphers", unknown, .. } if unknown == &["rot13-cbc"]),
            "{err}"
        );
        let err = err.to_string();
        assert!(err.contains("`ciphers` names rot13-cbc"), "{err}");
    }
}
