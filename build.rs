//! Build script: embeds the simulator's default device outputs and records whether libssh2
//! was built with the legacy SHA-1 algorithms old network gear needs.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::{env, fs};

fn main() {
    embed_fixtures();
    detect_legacy_ssh();
}

/// `rackhand sim` answers with real captures from `../shared/fixtures/device-output/` by
/// default. They are embedded so the binary (and `rackhand demo`) works on a board where the
/// repository is not checked out. Without that directory the embedded set is empty and the
/// simulator needs `--outputs DIR`.
fn embed_fixtures() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let dir = env::var_os("RACKHAND_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../shared/fixtures/device-output"));
    println!("cargo:rerun-if-env-changed=RACKHAND_FIXTURES");
    println!("cargo:rerun-if-changed={}", dir.display());

    let mut entries: Vec<(String, String, PathBuf)> = Vec::new();
    if let Ok(platforms) = fs::read_dir(&dir) {
        for platform in platforms.flatten() {
            let ppath = platform.path();
            if !ppath.is_dir() {
                continue;
            }
            println!("cargo:rerun-if-changed={}", ppath.display());
            let pname = platform.file_name().to_string_lossy().into_owned();
            for file in fs::read_dir(&ppath).into_iter().flatten().flatten() {
                let fpath = file.path();
                if fpath.extension().and_then(|e| e.to_str()) != Some("txt") {
                    continue;
                }
                let stem = fpath.file_stem().unwrap().to_string_lossy().into_owned();
                entries.push((pname.clone(), stem, fpath));
            }
        }
    } else {
        println!(
            "cargo:warning=no device outputs at {} (set RACKHAND_FIXTURES); the simulator will need --outputs",
            dir.display()
        );
    }
    entries.sort();

    let mut code = String::from(
        "/// (platform, command file stem, output) for every embedded capture.\n\
         pub static EMBEDDED_OUTPUTS: &[(&str, &str, &[u8])] = &[\n",
    );
    for (platform, stem, path) in &entries {
        let abs = fs::canonicalize(path).unwrap();
        writeln!(
            code,
            "    ({platform:?}, {stem:?}, include_bytes!({:?})),",
            abs.display()
        )
        .unwrap();
    }
    code.push_str("];\n");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("embedded_outputs.rs");
    fs::write(out, code).unwrap();
}

/// libssh2 compiles the SHA-1 family only with these defines in CFLAGS (../shared/CRATES.md).
/// The flags are set per target in `.cargo/config.toml`; this records the fact for
/// `rackhand --version` and for the SSH transport's error messages.
fn detect_legacy_ssh() {
    let target = env::var("TARGET").unwrap();
    let keys = [
        "CFLAGS".to_string(),
        format!("CFLAGS_{}", target.replace('-', "_")),
        format!("CFLAGS_{target}"),
        "TARGET_CFLAGS".to_string(),
    ];
    let mut legacy = false;
    for key in &keys {
        println!("cargo:rerun-if-env-changed={key}");
        if env::var(key).is_ok_and(|v| v.contains("LIBSSH2_KEX_SHA1_ENABLE")) {
            legacy = true;
        }
    }
    if legacy {
        println!("cargo:rustc-env=RACKHAND_LEGACY_SSH=1");
    }
}
