//! The status LED: how the agent is doing, readable by someone walking past the rack.
//!
//! `[board] status_led` names the LED (`inventory::StatusLed`). While the agent runs it owns
//! that LED and blinks one pattern per [`LedState`]; when it stops, the LED goes back to what
//! it was (its kernel trigger, or off for a GPIO line). The parts, each tested alone:
//! - `state.rs`: the state, a pure function of the agent's facts;
//! - `pattern.rs`: the patterns as data and a pure engine over an injected clock;
//! - `driver.rs`: the one thread, waiting on a channel with deadlines (no polling);
//! - `sysfs.rs` and `gpio.rs`: the two backends, both embedded-hal `OutputPin`s, so the
//!   blink logic is tested with `embedded-hal-mock` and the backend can change.
//!
//! An LED that is missing or cannot be written is a warning at start, never a failure: the
//! agent's job is collecting, the LED is a courtesy.

mod driver;
mod gpio;
mod pattern;
mod state;
mod sysfs;

use std::path::PathBuf;
use std::sync::mpsc::{self, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use embedded_hal::digital::OutputPin;

use crate::device_history::DeviceHistory;
use crate::inventory::{Inventory, StatusLed};
use crate::ship::ShipReport;
use crate::sink::mqtt::DeviceCounts;
use crate::spool::Stats;

use driver::{ChannelWaiter, Command};
pub(crate) use state::{DeviceRuns, Facts, state_of};

/// How often the agent's facts are looked at: a state change shows within about this long.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// What the LED says, one blink pattern each (README's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum LedState {
    Starting,
    Healthy,
    Degraded,
    Failing,
}

impl LedState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LedState::Starting => "starting",
            LedState::Healthy => "healthy",
            LedState::Degraded => "degraded",
            LedState::Failing => "failing",
        }
    }
}

/// Why the LED cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LedError {
    #[error("{} does not exist", .0.display())]
    Missing(PathBuf),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", chip.display())]
    Gpio {
        chip: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{} has no line named \"{name}\" (`gpioinfo` lists them)", chip.display())]
    NoLine { chip: PathBuf, name: String },
}

impl embedded_hal::digital::Error for LedError {
    fn kind(&self) -> embedded_hal::digital::ErrorKind {
        embedded_hal::digital::ErrorKind::Other
    }
}

impl LedError {
    /// What to do about it, for the warning at start.
    fn advice(&self) -> &'static str {
        match self {
            LedError::Missing(_) | LedError::NoLine { .. } => {
                "check [board] status_led: `ls /sys/class/leds` lists the board's LEDs (boards/*.toml \
                 name them), `gpiodetect` the GPIO chips"
            }
            LedError::Io { .. } => {
                "the Debian package's udev rule (/usr/lib/udev/rules.d/60-rackhand-leds.rules) gives \
                 the rackhand group write access to trigger and brightness: install it, run \
                 `udevadm trigger --subsystem-match=leds`, and run the agent as a member of group \
                 rackhand (the unit does)"
            }
            LedError::Gpio { .. } => {
                "the agent needs read-write access to the GPIO chip: on Raspberry Pi OS, membership \
                 of group gpio (the unit has SupplementaryGroups=gpio and DeviceAllow=char-gpiochip rw)"
            }
        }
    }
}

/// What the agent sees now, for [`StatusLight::observe`].
pub(crate) struct Seen<'a> {
    pub(crate) inventory: &'a Inventory,
    pub(crate) stats: &'a Stats,
    /// New collections are held back (the spool is full under `block`, or the disk).
    pub(crate) admission_paused: bool,
    pub(crate) ship: &'a ShipReport,
    pub(crate) spool_max_bytes: u64,
}

/// The agent's handle on the LED thread; the LED goes back when it is dropped (also when
/// the start-up fails half-way or unwinds), so the agent never leaves the LED its own.
pub(crate) struct StatusLight {
    thread: Option<(Sender<Command>, JoinHandle<()>)>,
    shown: LedState,
    runs: DeviceRuns,
    next_check: Instant,
}

impl StatusLight {
    /// Takes `led` over and starts blinking "starting". Without one, or when it cannot be
    /// used (logged as a warning naming the path and the fix), a handle that does nothing.
    pub(crate) fn start(led: Option<&StatusLed>) -> StatusLight {
        let thread = led.and_then(|led| match spawn(led) {
            Ok(thread) => {
                log::info!("status LED: {}", led.describe());
                Some(thread)
            }
            Err(e) => {
                log::warn!(
                    "status LED {}: {e}; running without it. {}",
                    led.describe(),
                    e.advice()
                );
                None
            }
        });
        StatusLight {
            thread,
            shown: LedState::Starting,
            runs: DeviceRuns::default(),
            next_check: Instant::now(),
        }
    }

    /// A device's collection finished, all ok or not.
    pub(crate) fn finished(&mut self, device: &str, ok: bool) {
        self.runs.finished(device, ok);
    }

    /// The config changed: devices no longer in it are forgotten.
    pub(crate) fn retain(&mut self, inventory: &Inventory) {
        self.runs.retain(inventory);
    }

    /// Whether the facts are worth looking at now. Also without an LED: the state is what
    /// the MQTT presence message reports as `led`.
    pub(crate) fn due(&self, now: Instant) -> bool {
        now >= self.next_check
    }

    /// The configured devices and how their last collections since the start went (the
    /// MQTT presence message's `devices`).
    pub(crate) fn device_counts(&self, inventory: &Inventory) -> DeviceCounts {
        self.runs.counts(inventory)
    }

    /// The state shown (or that would be shown, without an LED).
    pub(crate) fn state(&self) -> LedState {
        self.shown
    }

    /// The state for what the agent knows now; the thread hears of it only when it changes.
    pub(crate) fn observe<'a>(
        &mut self,
        now: Instant,
        histories: impl Iterator<Item = (&'a str, &'a DeviceHistory)>,
        seen: Seen<'_>,
    ) {
        self.next_check = now + CHECK_EVERY;
        let facts = Facts::observe(
            &self.runs,
            histories,
            seen.inventory,
            seen.stats,
            seen.admission_paused,
            seen.ship,
            seen.spool_max_bytes,
        );
        self.show(state_of(&facts));
    }

    fn show(&mut self, state: LedState) {
        if state == self.shown {
            return;
        }
        let was = std::mem::replace(&mut self.shown, state);
        if let Some((tx, _)) = &self.thread {
            log::info!("status LED: {} → {}", was.as_str(), state.as_str());
            let _ = tx.send(Command::Show(state));
        }
    }

    /// Stops the thread and waits for it to give the LED back.
    pub(crate) fn stop(&mut self) {
        if let Some((tx, thread)) = self.thread.take() {
            let _ = tx.send(Command::Stop);
            let _ = thread.join();
        }
    }
}

impl Drop for StatusLight {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `rackhand check`'s line about the LED the agent will use, and whether it is here.
pub(crate) fn describe_for_check(led: &StatusLed) -> String {
    let path = match led {
        StatusLed::Class(dir) => dir,
        StatusLed::Gpio { chip, .. } => chip,
    };
    let here = if path.exists() {
        ""
    } else {
        " (not on this machine: the agent will warn and run without it)"
    };
    format!("status LED {}{here}\n", led.describe())
}

/// Opens the backend on this thread (so its error is the caller's warning) and moves it to
/// the LED thread, which drops it, giving the LED back, when it ends.
fn spawn(led: &StatusLed) -> Result<(Sender<Command>, JoinHandle<()>), LedError> {
    match led {
        StatusLed::Class(dir) => spawn_with(sysfs::SysfsLed::open(dir)?),
        StatusLed::Gpio { chip, line } => spawn_with(gpio::GpioLed::open(chip, line)?),
    }
}

fn spawn_with<P>(mut pin: P) -> Result<(Sender<Command>, JoinHandle<()>), LedError>
where
    P: OutputPin<Error = LedError> + Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("rackhand-led".into())
        .spawn(move || {
            driver::drive(&mut pin, &mut ChannelWaiter(rx), LedState::Starting);
        })
        .map_err(|source| LedError::Io {
            path: PathBuf::from("(thread)"),
            source,
        })?;
    Ok((tx, thread))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// The real thread over a fake LED class directory: owned while running, given back on
    /// stop. The only waits are the thread's join and a bounded look at the brightness file.
    #[test]
    fn the_light_owns_a_fake_led_and_gives_it_back_when_dropped() {
        let tmp = crate::test_support::temp_dir("led");
        let led = tmp.path().join("ACT");
        fs::create_dir(&led).unwrap();
        fs::write(led.join("trigger"), "none [mmc0] timer heartbeat\n").unwrap();
        fs::write(led.join("brightness"), "0\n").unwrap();
        let light = StatusLight::start(Some(&StatusLed::Class(led.clone())));
        assert!(light.thread.is_some());
        assert_eq!(
            fs::read_to_string(led.join("trigger")).unwrap().trim(),
            "none"
        );
        drop(light);
        let trigger = fs::read_to_string(led.join("trigger")).unwrap();
        assert_eq!(trigger.trim(), "mmc0");
    }

    #[test]
    fn a_missing_led_is_a_handle_that_does_nothing() {
        let tmp = crate::test_support::temp_dir("led");
        let mut light = StatusLight::start(Some(&StatusLed::Class(tmp.path().join("nope"))));
        assert!(light.thread.is_none());
        // The state is still decided: the MQTT presence message reports it.
        light.show(LedState::Failing);
        assert_eq!(light.state(), LedState::Failing);
        light.stop();
        let none = StatusLight::start(None);
        assert!(none.thread.is_none());
    }

    #[test]
    fn a_missing_gpio_chip_is_an_error_naming_it() {
        let chip = PathBuf::from("/dev/gpiochip-not-here");
        let e = gpio::GpioLed::open(&chip, &crate::inventory::GpioLine::Offset(3))
            .err()
            .expect("no such chip");
        assert!(e.to_string().contains("/dev/gpiochip-not-here"), "{e}");
        assert!(e.advice().contains("status_led"), "{}", e.advice());
    }
}
