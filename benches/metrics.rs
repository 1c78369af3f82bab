//! `/metrics` at 500 devices (issue 12): what a scrape costs and what the metrics hold.
//!
//! The registry is filled as a busy agent fills it (`rackhand::metrics::testing::Filled`:
//! every device through 20 collections, some failing, sessions of every length, a spool with
//! losses) for N devices from a config resolved like the agent's. Then:
//!
//! 1. Memory: bytes live on the heap (a counting global allocator) before and after the
//!    registry is built, i.e. what the metrics keep for N devices; the peak a served scrape
//!    adds on top (the snapshot copied under the lock and the handler's write buffer: the
//!    text is streamed, never held whole); and the resident memory
//!    the listener adds once it has served every scrape (VmRSS from /proc/self/status before
//!    it starts and after; its five threads' stacks, and the memory each handler thread's
//!    malloc arena keeps after rendering; the client reads into a buffer on the stack so
//!    that it adds nothing itself).
//! 2. Render: the text alone, median and 99th percentile of `BENCH_METRICS_RENDERS` (500).
//! 3. Serve: `GET /metrics` over loopback to the real listener, one connection per request
//!    as Prometheus makes them, request written to answer read whole, median and 99th
//!    percentile of `BENCH_METRICS_SCRAPES` (500); the size of the answer's body.
//!
//! Run: `cargo bench --bench metrics` (N from `BENCH_METRICS_DEVICES`, default 500; 50 is
//! printed beside it for scale). Prints markdown; docs/metrics.md keeps the last figures.

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rackhand::metrics::testing::Filled;
use support::TempDir;
use support::config::{Config, Dev, list};

/// Counts live heap bytes and their high-water mark.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const ROUNDS: u64 = 20;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn inventory(n: usize, dir: &TempDir) -> rackhand::inventory::Inventory {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 2323));
    let mut config = Config::new()
        .agent("workers", "16")
        .defaults("platform", "\"cisco_ios\"")
        .defaults("commands", &list(&["show version", "show running-config"]));
    for i in 0..n {
        config = config.device(Dev::telnet(
            &format!("fra-a12-r{:02}-sw{i:03}", i / 40),
            addr,
        ));
    }
    config.inventory(&dir.join("rackhand.toml"))
}

/// `GET /metrics` read into a buffer on the stack, so the client's own allocations do not
/// count in the process's RSS: (status code, body bytes).
fn scrape(addr: SocketAddr) -> (u16, usize) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 16 * 1024];
    let mut total = 0;
    let mut code = 0;
    let mut head_len = None;
    loop {
        let n = stream.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        if total == 0 {
            code = std::str::from_utf8(&buf[9..12]).unwrap().parse().unwrap();
        }
        if head_len.is_none() {
            head_len = buf[..n]
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|i| total + i + 4);
        }
        total += n;
    }
    (code, total - head_len.unwrap_or(total))
}

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Median and 99th percentile.
fn percentiles(mut times: Vec<Duration>) -> (Duration, Duration) {
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

struct Row {
    devices: usize,
    registry_bytes: usize,
    scrape_peak_bytes: usize,
    listener_rss_kib: u64,
    render: (Duration, Duration),
    serve: (Duration, Duration),
    body_bytes: usize,
}

fn measure(n: usize, renders: usize, scrapes: usize) -> Row {
    let dir = TempDir::new("bench-metrics").unwrap();
    let inventory = inventory(n, &dir);
    let before = LIVE.load(Ordering::Relaxed);
    let filled = Filled::new(&inventory, ROUNDS);
    let registry_bytes = LIVE.load(Ordering::Relaxed) - before;

    let mut render_times = Vec::with_capacity(renders);
    for _ in 0..renders {
        let started = Instant::now();
        let text = filled.render();
        render_times.push(started.elapsed());
        std::hint::black_box(text);
    }

    let mut serve_times = Vec::with_capacity(scrapes);
    let rss_before = vm_rss_kib();
    let server = filled
        .serve(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .unwrap();
    // One scrape alone, for the heap it takes at its peak (the snapshot and the write
    // buffer in the handler thread; the client allocates nothing).
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let (code, _) = scrape(server.addr());
    assert_eq!(code, 200);
    let scrape_peak_bytes = PEAK.load(Ordering::Relaxed) - base;
    let mut body_bytes = 0;
    for _ in 0..scrapes {
        let started = Instant::now();
        let (code, body) = scrape(server.addr());
        serve_times.push(started.elapsed());
        assert_eq!(code, 200);
        body_bytes = body;
    }
    let listener_rss_kib = vm_rss_kib().saturating_sub(rss_before);
    drop(server);
    Row {
        devices: n,
        registry_bytes,
        scrape_peak_bytes,
        listener_rss_kib,
        render: percentiles(render_times),
        serve: percentiles(serve_times),
        body_bytes,
    }
}

fn main() {
    let n = env_or("BENCH_METRICS_DEVICES", 500);
    let renders = env_or("BENCH_METRICS_RENDERS", 500);
    let scrapes = env_or("BENCH_METRICS_SCRAPES", 500);
    let mut sizes = vec![50, n];
    sizes.dedup();
    let rows: Vec<Row> = sizes
        .into_iter()
        .map(|n| measure(n, renders, scrapes))
        .collect();
    let mut out = String::new();
    writeln!(
        out,
        "| devices | registry (heap) | per device | a scrape's peak (heap) | listener threads (RSS) | render median / p99 | GET /metrics median / p99 | body |"
    )
    .unwrap();
    writeln!(out, "|---|---|---|---|---|---|---|---|").unwrap();
    for r in &rows {
        writeln!(
            out,
            "| {} | {:.1} KiB | {} B | {:.1} KiB | {} KiB | {} / {} | {} / {} | {:.1} KiB |",
            r.devices,
            r.registry_bytes as f64 / 1024.0,
            r.registry_bytes / r.devices,
            r.scrape_peak_bytes as f64 / 1024.0,
            r.listener_rss_kib,
            us(r.render.0),
            us(r.render.1),
            us(r.serve.0),
            us(r.serve.1),
            r.body_bytes as f64 / 1024.0,
        )
        .unwrap();
    }
    println!("{out}");
    println!(
        "({renders} renders and {scrapes} scrapes per row; every device through {ROUNDS} collections)"
    );
}
