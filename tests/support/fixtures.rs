//! The real device captures the simulator replays (`src/sim/captures/`), read straight from
//! disk so the tests compare against the files themselves and not against the simulator's
//! embedded copy.

use std::path::PathBuf;

/// `src/sim/captures`: the same files `build.rs` embeds into the simulator.
pub fn device_output_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src/sim/captures"))
}

/// One capture: what `command` printed on a device of `platform`.
#[derive(Debug, Clone)]
pub struct Capture {
    pub platform: String,
    pub command: String,
    pub path: PathBuf,
    pub raw: Vec<u8>,
}

impl Capture {
    /// What a collector must hand back for this capture: line ends as `\n`, and a final
    /// `\n` when the file lacks one (the device still ends the line before its prompt).
    pub fn expected(&self) -> Vec<u8> {
        normalize_output(&self.raw)
    }
}

/// `\r\n` → `\n`, plus a final `\n` if missing (empty stays empty).
pub fn normalize_output(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 1);
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\r' && raw.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(raw[i]);
        i += 1;
    }
    if !out.is_empty() && out.last() != Some(&b'\n') {
        out.push(b'\n');
    }
    out
}

/// Every capture of `platform`, sorted by command. Panics with the directory named when the
/// captures are missing: without them these tests would prove nothing.
pub fn captures(platform: &str) -> Vec<Capture> {
    let dir = device_output_dir().join(platform);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "cannot read the device captures in {}: {e}; they are part of the repository (git checkout -- src/sim/captures)",
            dir.display()
        )
    });
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.expect("read_dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("txt") {
            continue;
        }
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let raw = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("cannot read capture {}: {e}", path.display()));
        out.push(Capture {
            platform: platform.to_string(),
            command: stem.replace('_', " "),
            path,
            raw,
        });
    }
    out.sort_by(|a, b| a.command.cmp(&b.command));
    assert!(
        !out.is_empty(),
        "no captures (*.txt) in {}: the end-to-end tests need them",
        dir.display()
    );
    out
}

/// The platforms with captures on disk, sorted.
pub fn platforms() -> Vec<String> {
    let dir = device_output_dir();
    let mut out: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

#[test]
fn normalizing_turns_crlf_into_lf_and_ends_the_last_line() {
    assert_eq!(normalize_output(b"a\r\nb"), b"a\nb\n");
    assert_eq!(normalize_output(b"a\nb\n"), b"a\nb\n");
    assert_eq!(normalize_output(b"a\rb\r\n"), b"a\rb\n");
    assert_eq!(normalize_output(b""), b"");
}

/// A made-up capture of about `bytes` bytes for a simulated device's command, when the tests
/// need more output than any real capture has (a 2.5 MB `show tech-support`): interface
/// counter lines, each different, from a seed, so compression cannot make it trivial and
/// every record differs from its neighbours only where the device's output would.
pub fn generated_output(bytes: usize, seed: u64) -> Vec<u8> {
    let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::with_capacity(bytes + 128);
    let mut line = 0u64;
    while out.len() < bytes {
        let r = next();
        let text = format!(
            "GigabitEthernet{}/0/{:<2} is up, line protocol is up  {:>12} packets input, {:>14} bytes, {:>6} CRC {:016x}\n",
            line % 8 + 1,
            line % 48 + 1,
            r % 1_000_000_007,
            (r >> 7) % 100_000_000_000,
            (r >> 40) % 1000,
            next()
        );
        out.extend_from_slice(text.as_bytes());
        line += 1;
    }
    out.truncate(bytes);
    // A capture ends its last line.
    if let Some(last) = out.last_mut() {
        *last = b'\n';
    }
    out
}
