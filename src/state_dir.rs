//! The agent's state folder (`[agent] state_dir`): who may use it and who may read it.
//!
//! It holds the spool, the outbox, `status.json` and the seq file, and the spool and the
//! outbox hold device output: configurations, inventories, sometimes secrets a device
//! printed. So the folder is 0750 and every file in it 0640 whatever the umask the agent was
//! started with (a shell's 022 would make them world-readable). Group read is kept on
//! purpose: `rackhand status` is run by operators, and adding them to the service's group is
//! how they get to read `status.json` without being root; nobody else reads anything.
//!
//! One agent per folder: two on one spool would corrupt it. [`StateLock`] holds a flock on
//! `state_dir/lock` that the kernel drops however the process dies.

use std::fs;
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::durable_file::{DIR_MODE, FILE_MODE};

/// The umask the agent runs with: nothing for others, no writing for the group.
pub(crate) const UMASK: u32 = 0o027;

#[derive(Debug, thiserror::Error)]
pub(crate) enum StateDirError {
    #[error(
        "another rackhand{holder} is running with state_dir {dir}: two agents on one spool would corrupt it; stop the other one (systemctl stop rackhand) or give this one its own [agent] state_dir"
    )]
    Busy { dir: PathBuf, holder: String },
    #[error("cannot lock {path}: {error}; check that state_dir exists and is writable")]
    Lock { path: PathBuf, error: io::Error },
    #[error(
        "cannot create state_dir {path}: {error}; check that its parent exists and is writable by the agent's user"
    )]
    Create { path: PathBuf, error: io::Error },
}

/// Creates `state_dir` if need be and takes away what the umask gave others: the folder and
/// the folders in it 0750 at most, files 0640 at most (two levels: `state_dir` and the spool
/// and outbox in it). Sets the process umask to [`UMASK`] so files created from now on come
/// out right too. Files the agent cannot change (another owner) are left as they are.
pub(crate) fn prepare(state_dir: &Path) -> Result<(), StateDirError> {
    // SAFETY: umask only sets the process's file-creation mask.
    unsafe { libc::umask(UMASK as libc::mode_t) };
    fs::create_dir_all(state_dir).map_err(|error| StateDirError::Create {
        path: state_dir.to_path_buf(),
        error,
    })?;
    tighten(state_dir, 2);
    Ok(())
}

/// Clears the mode bits above 0750 (folders) or 0640 (files), `depth` levels down.
fn tighten(path: &Path, depth: u32) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    let allowed = if meta.is_dir() { DIR_MODE } else { FILE_MODE };
    let mode = meta.permissions().mode() & 0o7777;
    if (meta.is_dir() || meta.is_file()) && mode & !allowed != 0 {
        let narrower = mode & allowed;
        if let Err(e) = fs::set_permissions(path, fs::Permissions::from_mode(narrower)) {
            log::warn!(
                "{} is mode {mode:o}: others may read device output; cannot narrow it to {narrower:o}: {e}",
                path.display()
            );
        }
    }
    if meta.is_dir() && depth > 0 {
        for entry in fs::read_dir(path).into_iter().flatten().flatten() {
            tighten(&entry.path(), depth - 1);
        }
    }
}

/// Holds `state_dir/lock` (flock) while the agent runs: one agent per spool. The kernel
/// drops the lock when the process dies, however it dies, so a crash never needs a manual
/// unlock.
pub(crate) struct StateLock {
    _file: nix::fcntl::Flock<fs::File>,
}

impl StateLock {
    pub(crate) fn acquire(state_dir: &Path) -> Result<StateLock, StateDirError> {
        let path = state_dir.join("lock");
        let err = |error| StateDirError::Lock {
            path: path.clone(),
            error,
        };
        fs::create_dir_all(state_dir).map_err(err)?;
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(err)?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(mut file) => {
                // The holder's pid, for the message another instance gives.
                let _ = file
                    .set_len(0)
                    .and_then(|()| file.rewind())
                    .and_then(|()| writeln!(file, "{}", std::process::id()));
                Ok(StateLock { _file: file })
            }
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                Err(StateDirError::Busy {
                    dir: state_dir.to_path_buf(),
                    holder: if pid.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {pid})")
                    },
                })
            }
            Err((_, errno)) => Err(err(io::Error::from(errno))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::temp_dir;

    #[test]
    fn one_agent_per_state_dir() {
        let tmp = temp_dir("state-lock");
        let dir = tmp.path().join("state");
        let first = StateLock::acquire(&dir).unwrap();
        let second = StateLock::acquire(&dir)
            .err()
            .expect("the second agent is refused");
        let text = second.to_string();
        assert!(
            text.contains(&format!("(pid {})", std::process::id())),
            "{text}"
        );
        drop(first);
        StateLock::acquire(&dir).expect("free again once the first is gone");
    }

    #[test]
    fn a_world_readable_state_dir_is_narrowed_to_the_owner_and_group() {
        let tmp = temp_dir("state-modes");
        let dir = tmp.path().join("state");
        fs::create_dir_all(dir.join("spool")).unwrap();
        fs::write(dir.join("spool/00000000000000000001.seg"), b"x").unwrap();
        fs::write(dir.join("status.json"), b"{}").unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        fs::set_permissions(dir.join("spool"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(dir.join("status.json"), fs::Permissions::from_mode(0o666)).unwrap();
        let old = unsafe { libc::umask(0o022) };
        prepare(&dir).unwrap();
        unsafe { libc::umask(old) };
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o750);
        assert_eq!(mode(&dir.join("spool")), 0o750);
        assert_eq!(mode(&dir.join("status.json")), 0o640);
        assert_eq!(mode(&dir.join("spool/00000000000000000001.seg")), 0o640);
    }
}
