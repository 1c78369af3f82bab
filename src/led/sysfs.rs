//! An LED of the kernel's LED class (`/sys/class/leds/NAME`) as an `OutputPin`.
//!
//! The kernel blinks the board's LEDs itself through a *trigger* (`mmc0` for SD card
//! activity on a Pi's ACT, `default-on` for PWR). To own one we remember the trigger in force
//! (the `[selected]` word of `trigger`), write `none`, and then drive `brightness`; when we
//! let go ([`Drop`], so also on an error or a panic) the remembered trigger goes back, or, if
//! there was none, the brightness it had. Every write names the file and keeps the OS error.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use embedded_hal::digital::{ErrorType, OutputPin};

use super::LedError;

/// An LED class device we own until dropped.
#[derive(Debug)]
pub(crate) struct SysfsLed {
    dir: PathBuf,
    /// What `brightness` gets for "on": the LED's `max_brightness`.
    on: String,
    /// How to give the LED back.
    restore: Restore,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Restore {
    Trigger(String),
    Brightness(String),
}

impl SysfsLed {
    /// Takes the LED at `dir` over: its trigger becomes `none`.
    pub(crate) fn open(dir: &Path) -> Result<SysfsLed, LedError> {
        if !dir.is_dir() {
            return Err(LedError::Missing(dir.to_path_buf()));
        }
        let trigger = read(&dir.join("trigger"))?;
        let selected = selected_trigger(&trigger).unwrap_or("none").to_string();
        let restore = if selected == "none" {
            Restore::Brightness(read(&dir.join("brightness"))?.trim().to_string())
        } else {
            Restore::Trigger(selected)
        };
        let on = match read(&dir.join("max_brightness")) {
            Ok(max) if max.trim().parse::<u32>().is_ok_and(|n| n > 0) => max.trim().to_string(),
            _ => "1".to_string(),
        };
        // Check that brightness can be written before the trigger changes: an LED we cannot
        // drive is left as it was.
        write(&dir.join("brightness"), "0")?;
        write(&dir.join("trigger"), "none")?;
        Ok(SysfsLed {
            dir: dir.to_path_buf(),
            on,
            restore,
        })
    }

    fn brightness(&self, value: &str) -> Result<(), LedError> {
        write(&self.dir.join("brightness"), value)
    }
}

impl ErrorType for SysfsLed {
    type Error = LedError;
}

impl OutputPin for SysfsLed {
    fn set_low(&mut self) -> Result<(), LedError> {
        self.brightness("0")
    }

    fn set_high(&mut self) -> Result<(), LedError> {
        let on = self.on.clone();
        self.brightness(&on)
    }
}

impl Drop for SysfsLed {
    fn drop(&mut self) {
        let done = match &self.restore {
            Restore::Trigger(t) => write(&self.dir.join("trigger"), t),
            Restore::Brightness(b) => self.brightness(b),
        };
        if let Err(e) = done {
            log::warn!("cannot give the status LED back: {e}");
        }
    }
}

/// The `[selected]` word of a `trigger` file: `none [mmc0] timer` → `mmc0`.
fn selected_trigger(text: &str) -> Option<&str> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
}

fn read(path: &Path) -> Result<String, LedError> {
    std::fs::read_to_string(path).map_err(|source| LedError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// One write of a sysfs attribute (never creates a file: a missing one is an error).
fn write(path: &Path, value: &str) -> Result<(), LedError> {
    let io = |source| LedError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(io)?;
    file.write_all(format!("{value}\n").as_bytes()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A fake LED class directory, as the kernel lays one out.
    fn fake_led(dir: &Path, trigger: &str, brightness: &str) -> PathBuf {
        let led = dir.join("ACT");
        fs::create_dir(&led).unwrap();
        fs::write(led.join("trigger"), trigger).unwrap();
        fs::write(led.join("brightness"), brightness).unwrap();
        fs::write(led.join("max_brightness"), "255\n").unwrap();
        led
    }

    fn text(path: PathBuf) -> String {
        fs::read_to_string(path).unwrap().trim().to_string()
    }

    #[test]
    fn the_selected_trigger_is_found() {
        assert_eq!(
            selected_trigger("none [mmc0] timer heartbeat\n"),
            Some("mmc0")
        );
        assert_eq!(selected_trigger("[none] mmc0"), Some("none"));
        assert_eq!(selected_trigger("none mmc0"), None);
    }

    #[test]
    fn owning_sets_trigger_none_drives_brightness_and_drop_restores_the_trigger() {
        let tmp = crate::test_support::temp_dir("led");
        let led = fake_led(tmp.path(), "none [mmc0] timer heartbeat\n", "0\n");
        let mut pin = SysfsLed::open(&led).unwrap();
        assert_eq!(text(led.join("trigger")), "none");
        pin.set_high().unwrap();
        assert_eq!(text(led.join("brightness")), "255");
        pin.set_low().unwrap();
        assert_eq!(text(led.join("brightness")), "0");
        pin.set_high().unwrap();
        drop(pin);
        assert_eq!(text(led.join("trigger")), "mmc0");
    }

    #[test]
    fn without_a_trigger_the_brightness_it_had_comes_back() {
        let tmp = crate::test_support::temp_dir("led");
        let led = fake_led(tmp.path(), "[none] mmc0 default-on\n", "1\n");
        let mut pin = SysfsLed::open(&led).unwrap();
        pin.set_low().unwrap();
        drop(pin);
        assert_eq!(text(led.join("trigger")), "none");
        assert_eq!(text(led.join("brightness")), "1");
    }

    #[test]
    fn a_missing_led_or_attribute_is_an_error_naming_the_path() {
        let tmp = crate::test_support::temp_dir("led");
        let gone = tmp.path().join("PWR");
        let e = SysfsLed::open(&gone).unwrap_err();
        assert!(matches!(e, LedError::Missing(ref p) if p == &gone), "{e}");
        let led = tmp.path().join("ACT");
        fs::create_dir(&led).unwrap();
        fs::write(led.join("trigger"), "none [mmc0]\n").unwrap();
        let e = SysfsLed::open(&led).unwrap_err();
        assert!(e.to_string().contains("ACT/brightness"), "{e}");
        // Nothing was taken over: the trigger is as it was.
        assert_eq!(text(led.join("trigger")), "none [mmc0]");
    }
}
