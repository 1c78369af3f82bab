//! Console capture (`capture = true` on a serial device): the console is read between jobs,
//! and what the device prints on its own goes upstream as console records.
//!
//! A console says the most when nobody is logged in: crash information, boot messages, a
//! ROMMON prompt after a failed upgrade. Opened only for scheduled jobs, a port loses all of
//! that (the kernel keeps a few KiB). So a captured port has one owner for the agent's life
//! (`owner.rs`: the port and its UUCP lock held throughout), and the device's jobs borrow the
//! open port from it (a [`Lease`]) instead of opening it. `chunk.rs` cuts the byte stream into
//! records (quiet gap, size and line bounds, offsets, alerts); `record.rs` is their JSON.
//!
//! [`Consoles`] is what the agent holds: the owners by device name (started, reloaded and
//! stopped with the config) and the queue their chunks come in on.

pub(crate) mod chunk;
pub(crate) mod owner;
pub(crate) mod record;
pub mod tail;

use std::collections::BTreeMap;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use regex_lite::Regex;

use crate::inventory::{Capture, Device, Inventory};
use crate::outcome::Outcome;
use crate::session::{Session, SessionError};
use crate::transport::TransportError;

pub use chunk::{Alerts, Arrival, Chunker, ConsoleChunk, Limits};
pub use owner::{Lease, Lender, Outlet, PortOwner};

/// Chunks waiting for the agent loop, across all ports; a full queue makes owners wait (the
/// ports' own buffers hold meanwhile).
const QUEUE: usize = 1024;
/// How long stopping owners may take to flush and close their ports.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// Something a port owner reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleEvent {
    pub device: String,
    pub what: Captured,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Captured {
    /// Console text: a console record.
    Text(ConsoleChunk),
    /// The port was away: what the device printed then is lost.
    Gap(PortGap),
}

/// The time a captured port was away (unplugged, or not openable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortGap {
    /// Bytes read before the gap.
    pub offset: u64,
    pub from: SystemTime,
    pub to: SystemTime,
    /// Why, as the user reads it.
    pub detail: String,
    /// The most the device can have printed meanwhile: the line's top speed over the time
    /// away (what it did print is unknowable). `None` when the line settings are not known.
    pub lost_bytes_max: Option<u64>,
}

/// A device's alert patterns: its own `alert` and its platform's `alerts`.
pub fn alerts_for(device: &Device) -> Alerts {
    let own = device
        .capture
        .iter()
        .flat_map(|c| c.alert.iter())
        // Checked by the config already; a pattern that fails here is skipped.
        .filter_map(|p| Regex::new(p).ok());
    let platform = crate::platform::table()
        .get(&device.platform)
        .map(|p| p.alerts.clone())
        .unwrap_or_default();
    Alerts::new(own.chain(platform).collect())
}

/// Runs `commands` on a captured device over its borrowed port (see [`Lender::lend`]), as
/// `session::collect_each` does over a port of its own.
/// Without a lender (the capture is not running: a reload just removed it) the commands
/// fail as `connect_failed`.
pub fn collect_each(
    lender: Option<&Lender>,
    device: &Device,
    commands: &[String],
    emit: &mut dyn FnMut(Outcome),
) {
    crate::session::collect_each_with(device, commands, emit, &mut |d| {
        let deadline = Instant::now() + d.connect_timeout;
        let mut lease = match lender {
            Some(lender) => lender.lend(deadline),
            None => Err(TransportError::Connect {
                peer: format!("serial {}", d.address()),
                detail: "the console capture of this port is not running (the config was just reloaded?)".into(),
            }),
        }
        .map_err(SessionError::Transport)?;
        let secrets = [&d.password, &d.enable_secret]
            .into_iter()
            .flatten()
            .filter_map(|s| s.expose().map(str::to_string));
        lease.redact(secrets);
        Session::start(d, Box::new(lease), deadline)
    });
}

/// What a capture depends on: a reload that changes none of it (commands, interval,
/// credentials) keeps the capture running, its offsets going on.
fn capture_key(d: &Device) -> (&crate::inventory::Endpoint, &str, &Option<Capture>) {
    (&d.endpoint, &d.platform, &d.capture)
}

/// The lenders of the running owners, shared with the workers.
#[derive(Default)]
pub struct Registry {
    lenders: Mutex<BTreeMap<String, Lender>>,
}

impl Registry {
    pub fn lender(&self, device: &str) -> Option<Lender> {
        self.lenders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(device)
            .cloned()
    }
}

/// The agent's captured consoles. See the module doc.
pub struct Consoles {
    owners: BTreeMap<String, PortOwner>,
    registry: Arc<Registry>,
    events: Receiver<ConsoleEvent>,
    sender: SyncSender<ConsoleEvent>,
    wake: Arc<dyn Fn() + Send + Sync>,
    limits: Limits,
}

impl Consoles {
    /// Starts an owner per captured device of `inventory`; `wake` wakes the agent loop
    /// when chunks wait.
    pub fn start(
        inventory: &Inventory,
        registry: Arc<Registry>,
        wake: Arc<dyn Fn() + Send + Sync>,
    ) -> Consoles {
        let (sender, events) = mpsc::sync_channel(QUEUE);
        let mut consoles = Consoles {
            owners: BTreeMap::new(),
            registry,
            events,
            sender,
            wake,
            limits: Limits::default(),
        };
        consoles.reload(inventory, &mut |_| {});
        consoles
    }

    /// What workers ask for a captured device's port.
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.registry)
    }

    /// Devices captured now.
    pub fn devices(&self) -> impl Iterator<Item = &str> {
        self.owners.keys().map(String::as_str)
    }

    /// Owners for the captured devices of `inventory`, by name: new ones started, removed
    /// ones stopped, changed ones restarted. The stopped ones' last events go to `each`.
    pub fn reload(&mut self, inventory: &Inventory, each: &mut dyn FnMut(ConsoleEvent)) {
        let wanted: BTreeMap<&str, &Device> = inventory
            .devices
            .iter()
            .filter(|d| d.capture.is_some())
            .map(|d| (d.name.as_str(), d))
            .collect();
        let stale: Vec<String> = self
            .owners
            .iter()
            .filter(|(name, owner)| {
                wanted
                    .get(name.as_str())
                    .is_none_or(|d| capture_key(d) != capture_key(owner.device()))
            })
            .map(|(name, _)| name.clone())
            .collect();
        let mut stopping = Vec::new();
        for name in stale {
            self.registry_mut().remove(&name);
            stopping.extend(self.owners.remove(&name));
        }
        self.stop_owners(stopping, each);
        for (name, device) in wanted {
            if self.owners.contains_key(name) {
                continue;
            }
            let outlet = Outlet {
                events: self.sender.clone(),
                wake: Arc::clone(&self.wake),
            };
            match PortOwner::start(device, alerts_for(device), self.limits, outlet, None) {
                Ok(owner) => {
                    self.registry_mut().insert(name.to_string(), owner.lender());
                    self.owners.insert(name.to_string(), owner);
                }
                Err(e) => log::error!("{name}: cannot start the console capture thread: {e}"),
            }
        }
    }

    fn registry_mut(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Lender>> {
        self.registry
            .lenders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Console events waiting, without blocking.
    pub fn take_events(&self) -> Vec<ConsoleEvent> {
        self.events.try_iter().take(QUEUE).collect()
    }

    /// Stops `owners`, giving `each` every event meanwhile (an owner may wait on a full
    /// queue) and to the last; within a few seconds.
    fn stop_owners(&mut self, owners: Vec<PortOwner>, each: &mut dyn FnMut(ConsoleEvent)) {
        if owners.is_empty() {
            return;
        }
        for owner in &owners {
            owner.request_stop();
        }
        let until = Instant::now() + STOP_WAIT;
        // Each turn takes an event or waits a slice for the threads; bounded by `until`.
        loop {
            for event in self.events.try_iter() {
                each(event);
            }
            if owners.iter().all(PortOwner::is_finished) || Instant::now() >= until {
                break;
            }
            if let Ok(event) = self.events.recv_timeout(Duration::from_millis(50)) {
                each(event);
            }
        }
        for owner in owners {
            owner.stop();
        }
        for event in self.events.try_iter() {
            each(event);
        }
    }

    /// Stops every owner (at the agent's stop): each flushes what it holds; `each` gets
    /// every event, to the last.
    pub fn stop(mut self, each: &mut dyn FnMut(ConsoleEvent)) {
        self.registry_mut().clear();
        let owners = std::mem::take(&mut self.owners).into_values().collect();
        self.stop_owners(owners, each);
    }
}
