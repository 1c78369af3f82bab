//! An LED wired to a GPIO line, through the GPIO character device (`/dev/gpiochipN`).
//!
//! `linux-embedded-hal`'s `CdevPin` is the `OutputPin`; this wraps it to find the line (by
//! offset, or by the name the device tree gives it, since the Pi 5 moved its header from
//! gpiochip4 to gpiochip0), to give errors that name the chip, and to switch the LED off when
//! we let go ([`Drop`]). The kernel releases the line when the process ends anyway; off first
//! so an agent that stops does not leave the LED lit.

use std::path::{Path, PathBuf};

use embedded_hal::digital::{ErrorType, OutputPin};
use linux_embedded_hal::CdevPin;
use linux_embedded_hal::gpio_cdev::{Chip, LineRequestFlags};

use super::LedError;
use crate::inventory::GpioLine;

/// What the line's holder is called in `gpioinfo`.
const CONSUMER: &str = "rackhand-status-led";

pub(crate) struct GpioLed {
    chip: PathBuf,
    pin: CdevPin,
}

impl GpioLed {
    /// Requests `line` of `chip` as an output, off.
    pub(crate) fn open(chip_path: &Path, line: &GpioLine) -> Result<GpioLed, LedError> {
        let gpio = |source: linux_embedded_hal::gpio_cdev::Error| LedError::Gpio {
            chip: chip_path.to_path_buf(),
            source: source.into(),
        };
        if !chip_path.exists() {
            return Err(LedError::Missing(chip_path.to_path_buf()));
        }
        let mut chip = Chip::new(chip_path).map_err(gpio)?;
        let offset = match line {
            GpioLine::Offset(n) => *n,
            GpioLine::Name(name) => find_line(&chip, name).ok_or_else(|| LedError::NoLine {
                chip: chip_path.to_path_buf(),
                name: name.clone(),
            })?,
        };
        let handle = chip
            .get_line(offset)
            .and_then(|l| l.request(LineRequestFlags::OUTPUT, 0, CONSUMER))
            .map_err(gpio)?;
        let pin = CdevPin::new(handle).map_err(gpio)?;
        Ok(GpioLed {
            chip: chip_path.to_path_buf(),
            pin,
        })
    }

    fn gpio_error(&self, e: linux_embedded_hal::CdevPinError) -> LedError {
        LedError::Gpio {
            chip: self.chip.clone(),
            source: e.inner().to_string().into(),
        }
    }
}

/// The offset of the line called `name`.
fn find_line(chip: &Chip, name: &str) -> Option<u32> {
    chip.lines()
        .find(|line| line.info().is_ok_and(|i| i.name() == Some(name)))
        .map(|line| line.offset())
}

impl ErrorType for GpioLed {
    type Error = LedError;
}

impl OutputPin for GpioLed {
    fn set_low(&mut self) -> Result<(), LedError> {
        self.pin.set_low().map_err(|e| self.gpio_error(e))
    }

    fn set_high(&mut self) -> Result<(), LedError> {
        self.pin.set_high().map_err(|e| self.gpio_error(e))
    }
}

impl Drop for GpioLed {
    fn drop(&mut self) {
        if let Err(e) = self.set_low() {
            log::warn!("cannot switch the status LED off: {e}");
        }
    }
}
