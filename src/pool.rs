//! The worker pool: a fixed number of threads working through a list of devices.
//!
//! Threads are for waiting on devices (blocking I/O). Exactly `workers` threads run, each takes
//! the next device when it is free, so at most `workers` sessions are open at once and one
//! device is never worked on twice at the same time. A panic in one device's work is caught
//! and becomes `driver_crashed` outcomes for that device; the worker goes on.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::time::{Duration, SystemTime};

use crate::inventory::Device;
use crate::record::{Outcome, Status};

/// What workers report while they work.
#[derive(Debug)]
pub enum Event {
    /// A device's session starts (for progress displays).
    Started { device: usize },
    /// One command's outcome.
    Outcome { device: usize, outcome: Outcome },
    /// A device is done.
    Finished { device: usize, elapsed: Duration },
}

/// Runs `work` for every device on `workers` threads, sending events as they happen. Returns
/// when every device is done.
pub fn run<F>(devices: &[Device], workers: usize, events: Sender<Event>, work: F)
where
    F: Fn(&Device, &mut dyn FnMut(Outcome)) + Sync,
{
    let next = AtomicUsize::new(0);
    let workers = workers.clamp(1, devices.len().max(1));
    std::thread::scope(|scope| {
        for w in 0..workers {
            let events = events.clone();
            let next = &next;
            let work = &work;
            std::thread::Builder::new()
                .name(format!("worker-{w}"))
                .spawn_scoped(scope, move || {
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(device) = devices.get(index) else {
                            break;
                        };
                        let _ = events.send(Event::Started { device: index });
                        let start = std::time::Instant::now();
                        let mut sent = 0usize;
                        let result = catch_unwind(AssertUnwindSafe(|| {
                            work(device, &mut |outcome| {
                                sent += 1;
                                let _ = events.send(Event::Outcome {
                                    device: index,
                                    outcome,
                                });
                            })
                        }));
                        if let Err(panic) = result {
                            let why = panic_message(&panic);
                            log::error!("{}: driver panicked: {why}", device.name);
                            for command in device.commands.iter().skip(sent) {
                                let _ = events.send(Event::Outcome {
                                    device: index,
                                    outcome: crashed(device, command, &why),
                                });
                            }
                        }
                        let _ = events.send(Event::Finished {
                            device: index,
                            elapsed: start.elapsed(),
                        });
                    }
                })
                .expect("spawn a worker thread");
        }
    });
}

fn crashed(device: &Device, command: &str, why: &str) -> Outcome {
    Outcome {
        device: device.name.clone(),
        transport: device.transport.as_str().to_string(),
        command: command.to_string(),
        status: Status::DriverCrashed,
        error: Some(format!("{}: the driver panicked: {why}", device.name)),
        output: Vec::new(),
        started_at: SystemTime::now(),
        duration: Duration::ZERO,
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}
