//! Build script: embeds the simulator's default device outputs and records whether libssh2
//! was built with the legacy SHA-1 algorithms old network gear needs.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs, io};

fn main() {
    embed_captures();
    detect_legacy_ssh();
}

/// Where the device captures live, relative to the package root (see its README.md).
const CAPTURES: &str = "src/sim/captures";

/// `rackhand sim` answers with the real captures in `src/sim/captures/<platform>/` by
/// default. They are embedded so the binary (and `rackhand demo`) works on a board where the
/// repository is not checked out. Without them the simulator would answer every command with
/// an error, so a missing or empty folder fails the build instead of warning.
///
/// The generated code names each file as `CARGO_MANIFEST_DIR` + its relative path, so it is
/// the same wherever the package sits: a copy of the repository (scripts/test builds one)
/// sharing this `target/` embeds its own files, not the ones of the tree that ran first.
fn embed_captures() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    // Relative: cargo takes it from the package root, and scans the folder for changes.
    println!("cargo:rerun-if-changed={CAPTURES}");
    let entries = match captures(&manifest.join(CAPTURES)) {
        Ok(entries) if !entries.is_empty() => entries,
        Ok(_) => fail(&format!(
            "no device captures (<platform>/<command>.txt) in {}: the simulator and `rackhand demo` need them; restore the folder from git (git checkout -- {CAPTURES})",
            manifest.join(CAPTURES).display()
        )),
        Err(e) => fail(&format!(
            "cannot read the device captures in {}: {e}; they are part of the repository (git checkout -- {CAPTURES})",
            manifest.join(CAPTURES).display()
        )),
    };

    let mut code = String::from(
        "/// (platform, command file stem, output) for every embedded capture.\n\
         pub static EMBEDDED_OUTPUTS: &[(&str, &str, &[u8])] = &[\n",
    );
    for (platform, stem) in &entries {
        let relative = format!("/{CAPTURES}/{platform}/{stem}.txt");
        writeln!(
            code,
            "    ({platform:?}, {stem:?}, include_bytes!(concat!(env!(\"CARGO_MANIFEST_DIR\"), {relative:?}))),",
        )
        .unwrap();
    }
    code.push_str("];\n");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("embedded_outputs.rs");
    fs::write(out, code).unwrap();
}

/// (platform, command file stem) of every `<platform>/*.txt` under `dir`, sorted.
fn captures(dir: &Path) -> io::Result<Vec<(String, String)>> {
    let mut entries = Vec::new();
    for platform in fs::read_dir(dir)? {
        let platform = platform?;
        if !platform.file_type()?.is_dir() {
            continue; // README.md
        }
        let pname = utf8(platform.file_name())?;
        for file in fs::read_dir(platform.path())? {
            let name = utf8(file?.file_name())?;
            if let Some(stem) = name.strip_suffix(".txt") {
                entries.push((pname.clone(), stem.to_string()));
            }
        }
    }
    entries.sort();
    Ok(entries)
}

fn utf8(name: OsString) -> io::Result<String> {
    name.into_string().map_err(|name| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{name:?} is not a UTF-8 file name"),
        )
    })
}

/// Stops the build with `message`; cargo shows a failed build script's stderr.
fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}

/// libssh2 compiles the SHA-1 family only with these defines in CFLAGS (docs/cross-builds.md).
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
