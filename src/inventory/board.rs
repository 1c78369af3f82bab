//! `[board]` resolved and checked: the status LED the agent blinks.
//!
//! Apart from devices and upstream because it is about the machine the agent runs on, not
//! what it collects or where records go. `status_led` takes three forms, told apart here once
//! so the LED module gets a typed [`StatusLed`]: a name under `/sys/class/leds` (`"ACT"`), an
//! LED class directory (`"/sys/class/leds/ACT"`), or a GPIO line (`"gpio:gpiochip0:17"`). Only
//! the form is checked: whether the LED exists is for the agent to warn about at start (the
//! config may be checked on another machine than the board).

use std::path::{Path, PathBuf};

use crate::config::{Layer, Report};

/// Where LED class devices live.
pub(crate) const LED_CLASS_DIR: &str = "/sys/class/leds";

/// The three forms, for messages about a bad one.
const FORMS: &str = "an LED name under /sys/class/leds (\"ACT\", \"PWR\"; `ls /sys/class/leds` \
     lists them), an LED class directory (\"/sys/class/leds/ACT\") or a GPIO line \
     \"gpio:CHIP:LINE\" (\"gpio:gpiochip0:17\", or a line name: \"gpio:gpiochip0:GPIO17\")";

/// `[board]`, resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Board {
    pub(crate) status_led: Option<StatusLed>,
}

/// The LED the agent owns while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StatusLed {
    /// An LED class directory (with `trigger` and `brightness`).
    Class(PathBuf),
    /// A line of a GPIO chip, driven through the GPIO character device.
    Gpio { chip: PathBuf, line: GpioLine },
}

/// A GPIO line by its offset on the chip, or by the name the device tree gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GpioLine {
    Offset(u32),
    Name(String),
}

impl StatusLed {
    /// What `rackhand check` and the logs show.
    pub(crate) fn describe(&self) -> String {
        match self {
            StatusLed::Class(dir) => format!("{} (LED class)", dir.display()),
            StatusLed::Gpio { chip, line } => match line {
                GpioLine::Offset(n) => format!("{} line {n} (GPIO)", chip.display()),
                GpioLine::Name(name) => format!("{} line \"{name}\" (GPIO)", chip.display()),
            },
        }
    }
}

pub(super) fn resolve_board(layer: Option<&Layer>, report: &mut Report) -> Board {
    let Some(setting) = layer.and_then(|l| l.get("status_led")) else {
        return Board::default();
    };
    let text = setting.as_str().unwrap_or_default();
    match parse_status_led(text) {
        Ok(led) => Board {
            status_led: Some(led),
        },
        Err(why) => {
            report.error(
                setting.span.clone(),
                format!("`status_led` \"{text}\" {why}; write {FORMS}"),
            );
            Board::default()
        }
    }
}

/// One of the three forms, or why `text` is none of them.
pub(crate) fn parse_status_led(text: &str) -> Result<StatusLed, String> {
    if let Some(rest) = text.strip_prefix("gpio:") {
        return parse_gpio(rest);
    }
    if text.starts_with('/') {
        let path = Path::new(text);
        if path.components().any(|c| c.as_os_str() == "..") {
            return Err("has `..` in it".to_string());
        }
        return Ok(StatusLed::Class(path.to_path_buf()));
    }
    if text.contains('/') {
        return Err("is a relative path".to_string());
    }
    if text == "." || text == ".." || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("is not an LED name".to_string());
    }
    Ok(StatusLed::Class(Path::new(LED_CLASS_DIR).join(text)))
}

fn parse_gpio(rest: &str) -> Result<StatusLed, String> {
    let Some((chip, line)) = rest.split_once(':') else {
        return Err("names no line (gpio:CHIP:LINE)".to_string());
    };
    let chip_ok = !chip.is_empty() && !chip.contains(char::is_whitespace) && !chip.contains("..");
    if !chip_ok {
        return Err(format!("names no GPIO chip (\"{chip}\")"));
    }
    let chip = if chip.starts_with('/') {
        PathBuf::from(chip)
    } else if chip.contains('/') {
        return Err(format!("names the chip by a relative path (\"{chip}\")"));
    } else if chip.bytes().all(|b| b.is_ascii_digit()) {
        // "gpio:0:17" for gpiochip0, as gpioset takes it.
        PathBuf::from(format!("/dev/gpiochip{chip}"))
    } else {
        Path::new("/dev").join(chip)
    };
    if line.is_empty() || line.contains(':') || line.contains(char::is_whitespace) {
        return Err(format!("names no line (\"{line}\")"));
    }
    let line = match line.parse::<u32>() {
        Ok(n) => GpioLine::Offset(n),
        Err(_) if line.bytes().all(|b| b.is_ascii_digit() || b == b'-') => {
            return Err(format!("has a line number out of range (\"{line}\")"));
        }
        Err(_) => GpioLine::Name(line.to_string()),
    };
    Ok(StatusLed::Gpio { chip, line })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_forms_are_told_apart() {
        assert_eq!(
            parse_status_led("ACT"),
            Ok(StatusLed::Class("/sys/class/leds/ACT".into()))
        );
        assert_eq!(
            parse_status_led("mmc0::"),
            Ok(StatusLed::Class("/sys/class/leds/mmc0::".into()))
        );
        assert_eq!(
            parse_status_led("/sys/devices/platform/leds/leds/PWR"),
            Ok(StatusLed::Class(
                "/sys/devices/platform/leds/leds/PWR".into()
            ))
        );
        assert_eq!(
            parse_status_led("gpio:gpiochip0:17"),
            Ok(StatusLed::Gpio {
                chip: "/dev/gpiochip0".into(),
                line: GpioLine::Offset(17)
            })
        );
        assert_eq!(
            parse_status_led("gpio:4:GPIO17"),
            Ok(StatusLed::Gpio {
                chip: "/dev/gpiochip4".into(),
                line: GpioLine::Name("GPIO17".into())
            })
        );
        assert_eq!(
            parse_status_led("gpio:/dev/gpiochip0:5"),
            Ok(StatusLed::Gpio {
                chip: "/dev/gpiochip0".into(),
                line: GpioLine::Offset(5)
            })
        );
    }

    #[test]
    fn bad_forms_say_what_is_wrong() {
        for bad in [
            "leds/ACT",
            "my led",
            "..",
            "/sys/class/leds/../ACT",
            "gpio:",
            "gpio:gpiochip0",
            "gpio:gpiochip0:",
            "gpio::17",
            "gpio:gpiochip0:1:2",
            "gpio:gpiochip0:-1",
            "gpio:dev/gpiochip0:1",
        ] {
            assert!(parse_status_led(bad).is_err(), "{bad} was taken");
        }
    }

    #[test]
    fn a_bad_status_led_is_an_error_at_its_value_naming_the_three_forms() {
        let path = Path::new("/etc/rackhand/rackhand.toml");
        let text = "[agent]\nid = \"a\"\n[board]\nstatus_led = \"gpio:gpiochip0\"\n";
        let (raw, mut report) = crate::config::parse_str(path, text);
        let inv = crate::inventory::resolve(&raw, &mut report);
        assert_eq!(inv.board.status_led, None);
        let errors: Vec<String> = report.errors().map(|d| report.render(d)).collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("/etc/rackhand/rackhand.toml:4:14: `status_led`"),
            "{}",
            errors[0]
        );
        for form in ["/sys/class/leds", "\"ACT\"", "gpio:CHIP:LINE"] {
            assert!(errors[0].contains(form), "{}", errors[0]);
        }
    }
}
