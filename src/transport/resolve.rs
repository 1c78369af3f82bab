//! Name lookups within the device's connect deadline.
//!
//! `connect_timeout` promises that an unreachable device costs a worker at most that long,
//! but getaddrinfo(3) takes no timeout: with a dead DNS server it waits for the resolver's
//! own timeouts and retries (`/etc/resolv.conf`: 5 s × attempts × servers), which is far
//! beyond a few seconds of `connect_timeout`. So a name (never a literal IP address, which
//! needs no lookup) is resolved on a helper thread while the caller waits on a channel until
//! its deadline.
//!
//! getaddrinfo cannot be cancelled: a lookup that missed its deadline keeps its thread until
//! the C library gives up by itself. Such stray threads are bounded: at most [`MAX_LOOKUPS`]
//! lookup threads exist at once in the process (each holds a slot until its lookup returns),
//! and a lookup that finds no free slot before its deadline fails without starting one. A
//! DNS outage therefore costs a fixed number of small threads, not one per connect attempt.
//!
//! The lookup itself is behind [`Resolve`], so tests can inject one that hangs.

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Lookup threads alive at once, abandoned ones included. Above the default worker count (8)
/// with room for bursts; a host with more workers waits for a slot within its deadline.
pub const MAX_LOOKUPS: usize = 32;

/// Turns a host name into addresses (blocking, as long as it takes).
pub trait Resolve: Send + Sync {
    fn lookup(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>>;
}

/// The C library's resolver (getaddrinfo: `/etc/hosts`, DNS, whatever NSS says).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn lookup(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        Ok((host, port).to_socket_addrs()?.collect())
    }
}

/// The resolver transports use unless told otherwise.
pub fn system() -> Arc<dyn Resolve> {
    Arc::new(SystemResolver)
}

/// Why a name gave no address to connect to.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(
        "DNS lookup of `{host}` gave no answer within connect_timeout ({budget:?}); check DNS on this machine (/etc/resolv.conf) or give the device's IP address as `host`"
    )]
    TimedOut { host: String, budget: Duration },
    #[error(
        "DNS lookup of `{host}` could not start within connect_timeout ({budget:?}): {max} earlier lookups are still waiting for DNS; check DNS on this machine (/etc/resolv.conf) or give the device's IP address as `host`"
    )]
    Saturated {
        host: String,
        budget: Duration,
        max: usize,
    },
    #[error("cannot resolve `{host}`: {source}; check `host` and DNS")]
    Failed {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("`{host}` resolves to no address; check `host` and DNS")]
    NoAddress { host: String },
}

/// The addresses of `host:port`, or an error by `deadline` (`budget` is the configured
/// timeout it came from, for the message). A literal IP address is returned at once.
pub fn resolve(
    resolver: &Arc<dyn Resolve>,
    host: &str,
    port: u16,
    deadline: Instant,
    budget: Duration,
) -> Result<Vec<SocketAddr>, ResolveError> {
    resolve_in(&LOOKUPS, resolver, host, port, deadline, budget)
}

static LOOKUPS: Lookups = Lookups::new(MAX_LOOKUPS);

/// Counts lookup threads; a slot is taken before a thread starts and given back when its
/// lookup returns, however long after its caller stopped waiting.
struct Lookups {
    live: Mutex<usize>,
    freed: Condvar,
    max: usize,
}

impl Lookups {
    const fn new(max: usize) -> Lookups {
        Lookups {
            live: Mutex::new(0),
            freed: Condvar::new(),
            max,
        }
    }

    fn lock(&self) -> MutexGuard<'_, usize> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot, waiting for one until `deadline`.
    fn acquire(&'static self, deadline: Instant) -> Option<Slot> {
        let mut live = self.lock();
        // Each turn either takes a slot or waits until the deadline: spurious wake-ups
        // aside, at most one turn per freed slot, and never past the deadline.
        while *live >= self.max {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            live = self
                .freed
                .wait_timeout(live, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *live += 1;
        Some(Slot(self))
    }

    #[cfg(test)]
    fn live(&self) -> usize {
        *self.lock()
    }
}

/// One lookup thread's place in [`Lookups`]; freed on drop.
struct Slot(&'static Lookups);

impl Drop for Slot {
    fn drop(&mut self) {
        *self.0.lock() -= 1;
        self.0.freed.notify_one();
    }
}

fn resolve_in(
    lookups: &'static Lookups,
    resolver: &Arc<dyn Resolve>,
    host: &str,
    port: u16,
    deadline: Instant,
    budget: Duration,
) -> Result<Vec<SocketAddr>, ResolveError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let slot = lookups
        .acquire(deadline)
        .ok_or_else(|| ResolveError::Saturated {
            host: host.to_string(),
            budget,
            max: lookups.max,
        })?;
    // Room for the one answer, so the thread never blocks on a caller that gave up.
    let (tx, rx) = mpsc::sync_channel(1);
    let resolver = Arc::clone(resolver);
    let name = host.to_string();
    std::thread::Builder::new()
        .name("dns-lookup".into())
        .spawn(move || {
            let _slot = slot;
            let _ = tx.send(resolver.lookup(&name, port));
        })
        .map_err(|e| ResolveError::Failed {
            host: host.to_string(),
            source: io::Error::new(e.kind(), format!("cannot start a lookup thread: {e}")),
        })?;
    let failed = |source| ResolveError::Failed {
        host: host.to_string(),
        source,
    };
    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(Ok(addrs)) if addrs.is_empty() => Err(ResolveError::NoAddress {
            host: host.to_string(),
        }),
        Ok(Ok(addrs)) => Ok(addrs),
        Ok(Err(e)) => Err(failed(e)),
        Err(RecvTimeoutError::Timeout) => Err(ResolveError::TimedOut {
            host: host.to_string(),
            budget,
        }),
        // The resolver panicked.
        Err(RecvTimeoutError::Disconnected) => Err(failed(io::Error::other(
            "the lookup ended without an answer",
        ))),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A resolver that answers nothing until released (dropped or `release`d), counting
    /// the lookups it was asked for: a DNS server that went silent.
    pub(crate) struct Hanging {
        release: Mutex<Option<mpsc::Sender<()>>>,
        wait: Mutex<mpsc::Receiver<()>>,
        pub(crate) calls: AtomicUsize,
    }

    impl Hanging {
        pub(crate) fn new() -> Arc<Hanging> {
            let (tx, rx) = mpsc::channel();
            Arc::new(Hanging {
                release: Mutex::new(Some(tx)),
                wait: Mutex::new(rx),
                calls: AtomicUsize::new(0),
            })
        }

        /// Lets every pending and future lookup fail at once.
        pub(crate) fn release(&self) {
            self.release.lock().unwrap().take();
        }
    }

    impl Resolve for Hanging {
        fn lookup(&self, host: &str, _port: u16) -> io::Result<Vec<SocketAddr>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            // Bounded: released by the test, and never longer than a minute.
            let _ = self
                .wait
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(60));
            Err(io::Error::other(format!(
                "released before answering {host}"
            )))
        }
    }

    pub(crate) fn as_resolver(h: &Arc<Hanging>) -> Arc<dyn Resolve> {
        Arc::clone(h) as Arc<dyn Resolve>
    }

    /// A device at `host` over `transport`, resolved from config text as the agent does.
    pub(crate) fn net_device(
        transport: &str,
        host: &str,
        connect_timeout: &str,
    ) -> crate::inventory::Device {
        let text = format!(
            "[[device]]\nname = \"core1\"\ntransport = \"{transport}\"\nhost = \"{host}\"\n\
             platform = \"cisco_ios\"\ncommands = [\"show clock\"]\nusername = \"u\"\n\
             password_env = \"RACKHAND_TEST_UNSET\"\nhost_key_check = \"off\"\n\
             connect_timeout = \"{connect_timeout}\"\n"
        );
        let (raw, mut report) =
            crate::config::parse_str(std::path::Path::new("/tmp/rackhand.toml"), &text);
        let inventory = crate::inventory::resolve(&raw, &mut report);
        assert!(!report.has_errors(), "{report}");
        inventory.devices.into_iter().next().expect("one device")
    }

    /// What a connect through `connect` shows when DNS does not answer: `connect_failed`,
    /// the host and the deadline named, at connect_timeout.
    pub(crate) fn assert_connect_fails_at_the_dns_deadline<T>(
        transport: &str,
        connect: impl FnOnce(
            &crate::inventory::Device,
            &Arc<dyn Resolve>,
        ) -> Result<T, crate::transport::TransportError>,
    ) {
        use crate::record::Status;
        use crate::session::SessionError;
        let device = net_device(transport, "core1.dc.example", "400ms");
        let hanging = Hanging::new();
        let start = Instant::now();
        let Err(err) = connect(&device, &as_resolver(&hanging)) else {
            panic!("connected to a name that never resolved");
        };
        let took = start.elapsed();
        hanging.release();
        let text = err.to_string();
        assert!(text.contains("`core1.dc.example`"), "{text}");
        assert!(
            text.contains("DNS lookup") && text.contains("within connect_timeout (400ms)"),
            "{text}"
        );
        assert_eq!(SessionError::Transport(err).status(), Status::ConnectFailed);
        let budget = Duration::from_millis(400);
        assert!(took >= budget, "gave up early: {took:?}");
        assert!(took < budget + Duration::from_secs(1), "took {took:?}");
    }

    /// Waits (bounded) until `lookups` has `n` live threads.
    fn wait_live(lookups: &Lookups, n: usize) {
        let until = Instant::now() + Duration::from_secs(10);
        let mut live = lookups.lock();
        while *live != n {
            let left = until.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "{} lookup threads, expected {n}", *live);
            live = lookups.freed.wait_timeout(live, left).unwrap().0;
        }
    }

    #[test]
    fn a_hanging_lookup_fails_at_the_deadline_naming_the_host() {
        static LOOKUPS: Lookups = Lookups::new(4);
        let hanging = Hanging::new();
        let budget = Duration::from_millis(300);
        let start = Instant::now();
        let err = resolve_in(
            &LOOKUPS,
            &as_resolver(&hanging),
            "core1.dc.example",
            22,
            start + budget,
            budget,
        )
        .unwrap_err();
        let took = start.elapsed();
        assert!(matches!(err, ResolveError::TimedOut { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("`core1.dc.example`"), "{text}");
        assert!(
            text.contains("DNS lookup") && text.contains("within connect_timeout (300ms)"),
            "{text}"
        );
        assert!(took >= budget, "gave up early: {took:?}");
        assert!(took < budget + Duration::from_secs(1), "took {took:?}");
        // The abandoned thread holds its slot until its lookup returns.
        assert_eq!(LOOKUPS.live(), 1);
        hanging.release();
        wait_live(&LOOKUPS, 0);
    }

    #[test]
    fn stray_lookup_threads_are_capped() {
        static LOOKUPS: Lookups = Lookups::new(2);
        let hanging = Hanging::new();
        let resolver = as_resolver(&hanging);
        let budget = Duration::from_millis(100);
        for _ in 0..2 {
            let err = resolve_in(
                &LOOKUPS,
                &resolver,
                "a.example",
                23,
                Instant::now() + budget,
                budget,
            )
            .unwrap_err();
            assert!(matches!(err, ResolveError::TimedOut { .. }), "{err:?}");
        }
        // Two threads still stuck in their lookups: a third lookup starts no thread.
        let start = Instant::now();
        let err =
            resolve_in(&LOOKUPS, &resolver, "b.example", 23, start + budget, budget).unwrap_err();
        assert!(
            start.elapsed() >= budget,
            "waited for a slot until the deadline"
        );
        assert!(
            matches!(err, ResolveError::Saturated { max: 2, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("`b.example`"), "{err}");
        assert_eq!(LOOKUPS.live(), 2);
        // Once DNS answers (here: fails), the slots are free again.
        hanging.release();
        wait_live(&LOOKUPS, 0);
        assert_eq!(hanging.calls.load(Ordering::SeqCst), 2);
        let err = resolve_in(
            &LOOKUPS,
            &resolver,
            "c.example",
            23,
            Instant::now() + budget,
            budget,
        )
        .unwrap_err();
        assert!(matches!(err, ResolveError::Failed { .. }), "{err:?}");
        assert_eq!(hanging.calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_literal_ip_address_needs_no_lookup_and_no_thread() {
        static LOOKUPS: Lookups = Lookups::new(0);
        let hanging = Hanging::new();
        let resolver = as_resolver(&hanging);
        let past = Instant::now();
        for (host, want) in [
            ("192.0.2.7", "192.0.2.7:22"),
            ("::1", "[::1]:22"),
            ("fe80::1", "[fe80::1]:22"),
        ] {
            // No slot (max 0) and a deadline already passed: only a literal gets through.
            let addrs = resolve_in(&LOOKUPS, &resolver, host, 22, past, Duration::ZERO).unwrap();
            assert_eq!(addrs, vec![want.parse::<SocketAddr>().unwrap()]);
        }
        assert_eq!(hanging.calls.load(Ordering::SeqCst), 0);
        assert_eq!(LOOKUPS.live(), 0);
    }

    #[test]
    fn the_system_resolver_answers_for_localhost() {
        let budget = Duration::from_secs(5);
        let addrs = resolve(&system(), "localhost", 23, Instant::now() + budget, budget).unwrap();
        assert!(
            addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 23),
            "{addrs:?}"
        );
    }
}
