//! A small tmpfs mounted for one test, so the agent's `state_dir` can run out of space for
//! real (ENOSPC from the kernel, not from a fake filesystem) without filling the machine's
//! disk. Mounting needs root (CAP_SYS_ADMIN); without it the test fails and says so rather
//! than pass without having filled anything. Unmounted in `Drop` (also when the test
//! panics), then its folder is removed.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::TempDir;

pub struct Tmpfs {
    mounted: bool,
    // Dropped after `Drop::drop` has unmounted it: removes the empty mount point.
    dir: TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=`, e.g. `"6m"`) on a fresh folder.
    /// Panics with what to do when the kernel refuses.
    pub fn mount(tag: &str, size: &str) -> Tmpfs {
        let dir = TempDir::new(tag).expect("create the tmpfs mount point");
        let c = |s: &[u8]| CString::new(s).expect("no NUL in mount arguments");
        let target = c(dir.path().as_os_str().as_bytes());
        let (source, fstype) = (c(b"tmpfs"), c(b"tmpfs"));
        let data = c(format!("size={size},mode=0750").as_bytes());
        // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                data.as_ptr().cast(),
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            panic!(
                "cannot mount a {size} tmpfs on {} ({e}): the full-disk tests need root \
                 (CAP_SYS_ADMIN) to give the agent a small disk of its own; run them as root \
                 (CI does) or in a container started with --privileged",
                dir.path().display()
            );
        }
        Tmpfs { mounted: true, dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Free bytes on it now.
    pub fn free_bytes(&self) -> u64 {
        let c = CString::new(self.path().as_os_str().as_bytes()).expect("no NUL in the path");
        // SAFETY: a valid path and a zeroed statvfs the call fills in.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
        assert_eq!(
            rc,
            0,
            "statvfs {}: {}",
            self.path().display(),
            io::Error::last_os_error()
        );
        st.f_bavail as u64 * st.f_frsize as u64
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        let target = CString::new(self.path().as_os_str().as_bytes()).expect("no NUL");
        // SAFETY: a valid NUL-terminated path. A plain unmount first; if something still
        // holds a file there (an agent that is being reaped), detach it: the kernel frees it
        // once the last user is gone, and the mount point can go now.
        let rc = unsafe { libc::umount2(target.as_ptr(), 0) };
        if rc != 0 {
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
        self.mounted = false;
    }
}
