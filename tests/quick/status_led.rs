//! `[board] status_led` through `rackhand check`: each of the three forms is shown as the LED
//! the agent will use, and a value that is none of them is an error at its line and column
//! that names all three.

use std::process::Command;

use crate::support::TempDir;

fn check(dir: &TempDir, board: &str) -> (i32, String, String) {
    let config = dir.join("rackhand.toml");
    std::fs::write(
        &config,
        format!("[agent]\nid = \"rack-a12\"\nstate_dir = \"/tmp/x\"\n\n[board]\n{board}\n"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rackhand"))
        .args(["check", "-c"])
        .arg(&config)
        .env_remove("RACKHAND_CONFIG")
        .output()
        .expect("run rackhand check");
    (
        out.status.code().expect("exit code"),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn check_shows_the_led_the_agent_will_use_in_each_form() {
    let dir = TempDir::new("status-led").unwrap();
    let fake = dir.join("leds-ACT");
    std::fs::create_dir(&fake).unwrap();
    let cases = [
        (
            "status_led = \"ACT\"".to_string(),
            "status LED /sys/class/leds/ACT (LED class)".to_string(),
        ),
        (
            format!("status_led = \"{}\"", fake.display()),
            format!("status LED {} (LED class)\n", fake.display()),
        ),
        (
            "status_led = \"gpio:gpiochip0:17\"".to_string(),
            "status LED /dev/gpiochip0 line 17 (GPIO)".to_string(),
        ),
        (
            "status_led = \"gpio:0:GPIO17\"".to_string(),
            "status LED /dev/gpiochip0 line \"GPIO17\" (GPIO)".to_string(),
        ),
    ];
    for (board, shown) in cases {
        let (code, stdout, stderr) = check(&dir, &board);
        assert_eq!(code, 0, "{board}: {stderr}");
        assert!(stdout.contains(&shown), "{board}: {stdout}");
        // The agent line stays the second line, the LED the third.
        assert!(
            stdout.lines().nth(2).unwrap().starts_with("status LED"),
            "{stdout}"
        );
    }
}

#[test]
fn a_status_led_in_no_known_form_is_an_error_at_its_column_naming_the_three() {
    let dir = TempDir::new("status-led").unwrap();
    for bad in ["leds/ACT", "gpio:gpiochip0", "my led", "gpio:gpiochip0:x:y"] {
        let (code, stdout, stderr) = check(&dir, &format!("status_led = \"{bad}\""));
        assert_eq!(code, 2, "{bad} was taken: {stdout}");
        let line = stderr.lines().next().unwrap_or_default();
        assert!(
            line.contains("rackhand.toml:6:14: `status_led`"),
            "{stderr}"
        );
        for form in ["/sys/class/leds", "\"ACT\"", "gpio:CHIP:LINE"] {
            assert!(line.contains(form), "{form} not named: {line}");
        }
    }
    let (code, _, stderr) = check(&dir, "status_led = 1");
    assert_eq!(code, 2);
    assert!(stderr.contains("rackhand.toml:6:14:"), "{stderr}");
    let (code, _, stderr) = check(&dir, "status_leds = \"ACT\"");
    assert_eq!(code, 2);
    assert!(stderr.contains("status_led"), "no hint: {stderr}");
}
