//! Guards the build, not the code. Old switches and routers speak only the SHA-1 family
//! (diffie-hellman-group14-sha1, ssh-rsa, hmac-sha1, 3des-cbc, ssh-dss), which the bundled
//! libssh2 compiles out unless `.cargo/config.toml` passes its `LIBSSH2_*_ENABLE` defines.
//! When that silently stops (a renamed key, a caller's `CFLAGS_<target>` overriding ours),
//! nothing else fails until a field device answers "Unable to exchange encryption keys".
//! These tests fail first: libssh2 must list and accept each algorithm, and `--version` must
//! say so, because that is what a field engineer checks on a board.

use std::process::Command;

use ssh2::{MethodType, Session};

/// libssh2's method kinds have no `Debug`; failure messages name them with this.
fn label(kind: MethodType) -> &'static str {
    match kind {
        MethodType::Kex => "key exchange",
        MethodType::HostKey => "host key",
        MethodType::CryptCs => "cipher client->server",
        MethodType::CryptSc => "cipher server->client",
        MethodType::MacCs => "MAC client->server",
        MethodType::MacSc => "MAC server->client",
        _ => "other method",
    }
}

/// The algorithms compiled into this build's libssh2, as it reports them.
fn supported(kind: MethodType) -> Vec<&'static str> {
    let session = Session::new().expect("libssh2 session (out of memory?)");
    session
        .supported_algs(kind)
        .unwrap_or_else(|e| panic!("libssh2 cannot list its {} algorithms: {e}", label(kind)))
}

/// Each name must be compiled in *and* accepted as a per-device preference, which is how the
/// SSH transport turns the legacy family on for `legacy_ssh = true` devices.
fn assert_available(kind: MethodType, names: &[&str]) {
    let have = supported(kind);
    for name in names {
        assert!(
            have.contains(name),
            "libssh2 was built without {name} ({}); it has {have:?}. \
             Check the LIBSSH2_*_ENABLE defines in CFLAGS_<target> in .cargo/config.toml \
             and that the environment does not override them",
            label(kind)
        );
        let session = Session::new().expect("libssh2 session");
        session.method_pref(kind, name).unwrap_or_else(|e| {
            panic!(
                "libssh2 lists {name} but rejects it as {} preference: {e}",
                label(kind)
            )
        });
    }
}

#[test]
fn sha1_key_exchanges_are_compiled_in() {
    assert_available(
        MethodType::Kex,
        &[
            "diffie-hellman-group14-sha1",
            "diffie-hellman-group1-sha1",
            "diffie-hellman-group-exchange-sha1",
        ],
    );
}

#[test]
fn sha1_host_key_algorithms_are_compiled_in() {
    assert_available(MethodType::HostKey, &["ssh-rsa", "ssh-dss"]);
}

#[test]
fn sha1_macs_are_compiled_in() {
    for kind in [MethodType::MacCs, MethodType::MacSc] {
        assert_available(kind, &["hmac-sha1", "hmac-sha1-96"]);
    }
}

#[test]
fn triple_des_is_compiled_in() {
    for kind in [MethodType::CryptCs, MethodType::CryptSc] {
        assert_available(kind, &["3des-cbc"]);
    }
}

/// The preference check above means something only if libssh2 refuses names it lacks.
#[test]
fn unknown_algorithm_is_rejected() {
    let session = Session::new().expect("libssh2 session");
    assert!(
        session
            .method_pref(MethodType::Kex, "diffie-hellman-group99-sha1")
            .is_err()
    );
}

/// The modern defaults stay available next to the legacy ones.
#[test]
fn modern_algorithms_remain() {
    assert_available(MethodType::Kex, &["curve25519-sha256"]);
    assert_available(MethodType::HostKey, &["ssh-ed25519", "rsa-sha2-256"]);
}

#[test]
fn version_reports_legacy_algorithms() {
    let bin = env!("CARGO_BIN_EXE_rackhand");
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin} --version: {e}"));
    assert!(
        out.status.success(),
        "{bin} --version exited {}",
        out.status
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("legacy SHA-1 algorithms available"),
        "{bin} --version says {text:?}: build.rs did not see LIBSSH2_KEX_SHA1_ENABLE in CFLAGS"
    );
}
