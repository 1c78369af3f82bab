//! The broker URL, credentials and TLS, turned into rumqttc's `MqttOptions`.
//!
//! Checked when the sink is built, so a mistake in `[upstream]` shows at start, not at the
//! first batch.

use std::fs;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::{MqttConfig, MqttSinkError, QUEUE};
use crate::config::url::redact;

/// The largest packet accepted from the broker: it only sends CONNACK, PUBACK and PINGRESP.
const MAX_INCOMING_PACKET: usize = 64 * 1024;

/// The options to connect with (`url`: the broker URL redacted) and the broker's host.
pub(super) fn options(
    config: &MqttConfig,
    url: &str,
) -> Result<(MqttOptions, String), MqttSinkError> {
    let (tls, host, port) = parse_broker(&config.broker)?;
    let mut options = MqttOptions::new(config.client_id.clone(), host.clone(), port);
    options
        .set_clean_session(false)
        .set_keep_alive(config.keep_alive.max(Duration::from_secs(1)))
        // rumqttc refuses to send a larger packet too (and drops the connection): the
        // sink never asks it to, as such records are dead-lettered instead.
        .set_max_packet_size(MAX_INCOMING_PACKET, config.max_packet_size)
        .set_request_channel_capacity(QUEUE);
    credentials(&mut options, config, url)?;
    if tls {
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls_config(config, url)?,
        )));
    } else if let Some(path) = &config.ca_file {
        return Err(MqttSinkError::BadUrl {
            url: url.to_string(),
            detail: format!(
                "ca_file {} is set but mqtt:// does not use TLS: use mqtts:// to talk TLS with the broker, or remove ca_file",
                path.display()
            ),
        });
    }
    Ok((options, host))
}

/// The username and password, if any: a password needs a username in MQTT 3.1.1.
fn credentials(
    options: &mut MqttOptions,
    config: &MqttConfig,
    url: &str,
) -> Result<(), MqttSinkError> {
    let password = match &config.password {
        None => None,
        Some(secret) => Some(
            secret
                .expose()
                .ok_or_else(|| MqttSinkError::BadCredentials {
                    url: url.to_string(),
                    detail: format!(
                        "the password comes from {}, which is not set in the agent's environment",
                        secret.describe()
                    ),
                })?,
        ),
    };
    match (&config.username, password) {
        (Some(user), pw) => {
            options.set_credentials(user.clone(), pw.unwrap_or_default());
        }
        (None, Some(_)) => {
            return Err(MqttSinkError::BadCredentials {
                url: url.to_string(),
                detail: "a password without a username (MQTT 3.1.1 sends none); add username to [upstream]".into(),
            });
        }
        (None, None) => {}
    }
    Ok(())
}

/// `(tls, host, port)` of `mqtt://host[:port]` or `mqtts://host[:port]`; a trailing `/` is
/// allowed, a path, user info or query is not.
pub(super) fn parse_broker(url: &str) -> Result<(bool, String, u16), MqttSinkError> {
    let bad = |detail: &str| MqttSinkError::BadUrl {
        url: redact(url).into_owned(),
        detail: detail.to_string(),
    };
    let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else {
        return Err(bad("it needs an mqtt:// or mqtts:// scheme"));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('@') {
        return Err(bad(
            "credentials do not go in the URL; set username and password_env (or password_file) in [upstream]",
        ));
    }
    if authority.contains(['/', '?', '#']) {
        return Err(bad("MQTT has no path or query; give only host and port"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("an IPv6 address needs its closing `]`"))?;
        match after {
            "" => (host, None),
            p => (
                host,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad("after `]` only `:port` may follow"))?,
                ),
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad("it has no host"));
    }
    let port = match port {
        None => {
            if tls {
                8883
            } else {
                1883
            }
        }
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(bad("the port must be a number from 1 to 65535")),
        },
    };
    Ok((tls, host.to_string(), port))
}

fn tls_config(config: &MqttConfig, url: &str) -> Result<Arc<rustls::ClientConfig>, MqttSinkError> {
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let invalid = |detail: String| MqttSinkError::CaFileInvalid {
                path: path.clone(),
                url: url.to_string(),
                detail,
            };
            let pem = fs::read(path).map_err(|error| MqttSinkError::CaFileRead {
                path: path.clone(),
                url: url.to_string(),
                error,
            })?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| invalid(format!("is not valid PEM ({e})")))?;
                roots
                    .add(cert)
                    .map_err(|e| invalid(format!("holds a certificate rustls cannot use ({e})")))?;
            }
            if roots.is_empty() {
                return Err(invalid("holds no certificate".into()));
            }
        }
    }
    // The provider is named here, not taken from the process default, so nothing else
    // (aws-lc, a second provider) can change what this sink uses.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(tls))
}
