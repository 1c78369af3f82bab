//! What each command prints: real captures, embedded or from a directory.
//!
//! A simulator is only as convincing as its output, so it answers with real device captures
//! (`src/sim/captures/`, embedded at build time by `build.rs` so the binary works anywhere)
//! or with a directory the user points at. Line ends are normalised here once (`\r\n` → `\n`);
//! the session puts `\r\n` back on the wire. A file that does not end with a newline is still
//! followed by one on the wire (a device always ends the line before its prompt), so what a
//! collector gets back is the file plus `\n`.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use super::SimError;
use super::profile::normalise_command;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded_outputs.rs"));
}

/// Output files larger than this are refused: the simulator keeps them in memory.
pub const MAX_OUTPUT_FILE: u64 = 64 * 1024 * 1024;

/// Command (normalised: lower case, single spaces) → output with `\n` line ends. Cheap to
/// clone: the map is shared.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    map: Arc<BTreeMap<String, Arc<[u8]>>>,
}

impl Outputs {
    /// The captures built into the binary for `platform` (empty for a platform without any,
    /// e.g. `linux`).
    pub fn embedded(platform: &str) -> Outputs {
        let map = embedded::EMBEDDED_OUTPUTS
            .iter()
            .filter(|(p, _, _)| *p == platform)
            .map(|(_, stem, bytes)| (command_of_stem(stem), normalise(bytes)))
            .collect();
        Outputs { map: Arc::new(map) }
    }

    /// One `.txt` file per command in `dir`; the file stem is the command with spaces as `_`
    /// (`show_ip_interface_brief.txt`).
    pub fn from_dir(dir: &Path) -> Result<Outputs, SimError> {
        let io_err = |source| SimError::OutputsDir {
            path: dir.to_path_buf(),
            source,
        };
        let mut map = BTreeMap::new();
        for entry in fs::read_dir(dir).map_err(io_err)? {
            let path = entry.map_err(io_err)?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("txt") || !path.is_file() {
                continue;
            }
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let file_err = |source| SimError::OutputFile {
                path: path.clone(),
                source,
            };
            let len = fs::metadata(&path).map_err(file_err)?.len();
            if len > MAX_OUTPUT_FILE {
                return Err(SimError::OutputTooLarge {
                    path,
                    size: len,
                    max: MAX_OUTPUT_FILE,
                });
            }
            let bytes = fs::read(&path).map_err(file_err)?;
            map.insert(command_of_stem(stem), normalise(&bytes));
        }
        if map.is_empty() {
            return Err(SimError::NoOutputs {
                path: dir.to_path_buf(),
            });
        }
        Ok(Outputs { map: Arc::new(map) })
    }

    /// Adds or replaces one command's output (for tests and the demo).
    pub fn insert(&mut self, command: &str, output: &[u8]) {
        Arc::make_mut(&mut self.map).insert(normalise_command(command), normalise(output));
    }

    /// The output of a normalised command.
    pub fn get(&self, command: &str) -> Option<&[u8]> {
        self.map.get(command).map(|b| &b[..])
    }

    /// Every command with an output, normalised, in order.
    pub fn commands(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

fn command_of_stem(stem: &str) -> String {
    normalise_command(&stem.replace('_', " "))
}

/// `\r\n` → `\n`; everything else byte for byte.
fn normalise(bytes: &[u8]) -> Arc<[u8]> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_captures_are_there_and_normalised() {
        let junos = Outputs::embedded("juniper_junos");
        let version = junos
            .get("show version")
            .expect("embedded junos show version");
        assert!(!version.windows(2).any(|w| w == b"\r\n"));
        assert!(version.starts_with(b"fpc0:\n"));
        let ios = Outputs::embedded("cisco_ios");
        assert!(ios.get("show mac-address-table").is_some());
        assert!(Outputs::embedded("linux").is_empty());
    }

    #[test]
    fn directory_outputs_and_errors_name_the_path() {
        let tmp = crate::test_support::temp_dir("sim-outputs");
        let dir = tmp.path().join("outputs");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("show_foo_bar.txt"), b"a\r\nb").unwrap();
        fs::write(dir.join("notes.md"), b"ignored").unwrap();
        let outputs = Outputs::from_dir(&dir).unwrap();
        assert_eq!(outputs.get("show foo bar"), Some(&b"a\nb"[..]));
        assert_eq!(outputs.len(), 1);
        fs::remove_dir_all(&dir).unwrap();
        let err = Outputs::from_dir(&dir).unwrap_err().to_string();
        assert!(err.contains(&dir.display().to_string()), "{err}");
    }
}
