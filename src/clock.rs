//! Whether the wall clock can be trusted.
//!
//! A Raspberry Pi has no real-time clock: until NTP (systemd-timesyncd, chrony) has set the
//! time after boot, it may read 1970 or the last shutdown. Records never depend on the wall
//! clock for their order (that is what `seq` is for), but their `started_at` does, so each
//! record says whether the clock was synchronised when it was taken. The kernel knows: an
//! NTP daemon clears `STA_UNSYNC` in the `adjtimex(2)` status once it disciplines the clock.

/// `Some(true)` when the kernel reports the clock as synchronised by NTP, `Some(false)` when
/// it reports it as not synchronised, `None` when it cannot be asked (not Linux, or the call
/// failed).
pub fn synchronised() -> Option<bool> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: adjtimex with `modes = 0` only reads; `tx` is a valid, zeroed timex.
        let mut tx: libc::timex = unsafe { std::mem::zeroed() };
        let state = unsafe { libc::adjtimex(&mut tx) };
        if state == -1 {
            return None;
        }
        Some(state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_kernel_answers_on_linux() {
        // Synchronised or not depends on the machine; that it can be asked does not.
        assert!(super::synchronised().is_some());
    }
}
