//! Session counters of a simulated rack.
//!
//! Tests and benchmarks need proof of what the agent did to the devices: that the worker pool
//! really ran N sessions at once, that it never opened two sessions to one device, that
//! retries happened. The rack counts sessions as they open and close and keeps the maxima,
//! and counts the log lines chatty devices printed on their own (proof a test met them).

use std::sync::{Arc, Mutex, MutexGuard};

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    pub max_concurrent: usize,
    pub max_concurrent_per_device: usize,
    pub total: u64,
    pub(crate) current: usize,
    /// Log lines printed on their own by chatty devices (`Profile::chatty`).
    pub(crate) unsolicited_lines: u64,
}

impl StatsSnapshot {
    /// `{"max_concurrent":N,"max_concurrent_per_device":N,"total":N,"current":N,
    /// "unsolicited_lines":N}`
    pub fn to_json(&self) -> String {
        format!(
            "{{\"max_concurrent\":{},\"max_concurrent_per_device\":{},\"total\":{},\"current\":{},\"unsolicited_lines\":{}}}",
            self.max_concurrent,
            self.max_concurrent_per_device,
            self.total,
            self.current,
            self.unsolicited_lines
        )
    }
}

type Listener = Box<dyn Fn(&StatsSnapshot) + Send + Sync>;

#[derive(Default)]
struct Inner {
    snapshot: StatsSnapshot,
    per_device: Vec<usize>,
    listener: Option<Listener>,
}

/// Shared by every session of a rack (hence `Arc`).
#[derive(Default)]
pub struct Stats {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Stats").field(&self.snapshot()).finish()
    }
}

impl Stats {
    pub fn new(devices: usize) -> Arc<Stats> {
        Arc::new(Stats {
            inner: Mutex::new(Inner {
                per_device: vec![0; devices],
                ..Inner::default()
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking session must not take the counters down with it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        self.lock().snapshot
    }

    pub fn max_concurrent(&self) -> usize {
        self.snapshot().max_concurrent
    }

    pub fn max_concurrent_per_device(&self) -> usize {
        self.snapshot().max_concurrent_per_device
    }

    pub fn total(&self) -> u64 {
        self.snapshot().total
    }

    pub fn current(&self) -> usize {
        self.snapshot().current
    }

    pub fn unsolicited_lines(&self) -> u64 {
        self.snapshot().unsolicited_lines
    }

    /// Counts `lines` more log lines a device printed on its own.
    pub fn count_unsolicited(&self, lines: u64) {
        if lines == 0 {
            return;
        }
        let mut inner = self.lock();
        inner.snapshot.unsolicited_lines += lines;
        notify(&inner);
    }

    /// Called (under the counters' lock, so calls never overlap or reorder) after every
    /// change; `rackhand sim --stats` writes its file from here.
    pub fn set_listener(&self, listener: impl Fn(&StatsSnapshot) + Send + Sync + 'static) {
        self.lock().listener = Some(Box::new(listener));
    }

    /// Counts a session on `device` (0-based) until the guard is dropped.
    pub fn session(self: &Arc<Self>, device: usize) -> SessionGuard {
        let mut inner = self.lock();
        if inner.per_device.len() <= device {
            inner.per_device.resize(device + 1, 0);
        }
        inner.per_device[device] += 1;
        let on_device = inner.per_device[device];
        let s = &mut inner.snapshot;
        s.current += 1;
        s.total += 1;
        s.max_concurrent = s.max_concurrent.max(s.current);
        s.max_concurrent_per_device = s.max_concurrent_per_device.max(on_device);
        notify(&inner);
        SessionGuard {
            stats: Arc::clone(self),
            device,
        }
    }
}

fn notify(inner: &Inner) {
    if let Some(listener) = &inner.listener {
        listener(&inner.snapshot);
    }
}

/// One open session; closing it is dropping this.
#[derive(Debug)]
pub struct SessionGuard {
    stats: Arc<Stats>,
    device: usize,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut inner = self.stats.lock();
        inner.per_device[self.device] -= 1;
        inner.snapshot.current -= 1;
        notify(&inner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_keeps_maxima() {
        let stats = Stats::new(2);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        stats.set_listener(move |s| sink.lock().unwrap().push(s.current));
        let a = stats.session(0);
        let b = stats.session(0);
        let c = stats.session(1);
        assert_eq!(stats.current(), 3);
        drop((a, b));
        let _d = stats.session(1);
        drop(c);
        assert_eq!(
            stats.snapshot(),
            StatsSnapshot {
                max_concurrent: 3,
                max_concurrent_per_device: 2,
                total: 4,
                current: 1,
                unsolicited_lines: 0,
            }
        );
        assert_eq!(*seen.lock().unwrap(), vec![1, 2, 3, 2, 1, 2, 1]);
        assert_eq!(
            stats.snapshot().to_json(),
            r#"{"max_concurrent":3,"max_concurrent_per_device":2,"total":4,"current":1,"unsolicited_lines":0}"#
        );
    }
}
