//! `rackhand check`: the story of an engineer editing the rack's config.

use std::path::Path;
use std::process::Command;

use crate::support::TempDir;
use crate::support::config::{Config, Table, list};

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

fn check(config: &Path) -> Outcome {
    let out = Command::new(env!("CARGO_BIN_EXE_rackhand"))
        .args(["check", "-c"])
        .arg(config)
        .env_remove("RACKHAND_CONFIG")
        .output()
        .expect("run rackhand check");
    Outcome {
        code: out.status.code().expect("exit code"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// Each `(line, col, words)` is an error or warning of `check` at `file:line:col` saying `words`.
fn assert_reported_at(stderr: &str, file: &str, expected: &[(u32, u32, &str)]) {
    for (line, col, words) in expected {
        let prefix = format!("{file}:{line}:{col}: ");
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&prefix) && l.contains(words)),
            "expected `{prefix}...{words}...` in:\n{stderr}"
        );
    }
}

#[test]
fn the_shipped_lab_example_is_valid_and_lists_every_device() {
    let lab = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/lab.toml");
    let out = check(&lab);
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    for device in [
        "fra-a12-core1",
        "fra-a12-core2",
        "fra-a12-oob-sw",
        "fra-a12-pdu1",
        "con-fra-a12-core1",
    ] {
        assert!(
            out.stdout.contains(device),
            "{device} missing:\n{}",
            out.stdout
        );
    }
    for column in [
        "DEVICE",
        "TRANSPORT",
        "ADDRESS",
        "PLATFORM",
        "COMMANDS",
        "INTERVAL",
        "ISOLATION",
    ] {
        assert!(out.stdout.contains(column));
    }
    // Inheritance shows: the consoles group's interval (1h) beats core's (5m) for
    // con-fra-a12-core1 because it lists consoles first; the core group's 5m applies to core1.
    let row = |name: &str| {
        out.stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name}"))
            .to_string()
    };
    assert!(
        row("con-fra-a12-core1").contains(" 1h "),
        "{}",
        row("con-fra-a12-core1")
    );
    assert!(row("con-fra-a12-core1").contains("process"));
    assert!(row("fra-a12-core1").contains(" 5m "));
    assert!(row("fra-a12-edge1").contains("10.12.0.254:2222"));
    assert!(row("fra-a12-oob-sw").contains("10.12.0.6:23"));
    assert!(row("con-fra-a12-core2").contains("115200 8N1"));
    assert!(out.stdout.contains("10 devices: 5 ssh, 2 telnet, 3 serial"));
}

#[test]
fn five_different_mistakes_are_all_reported_at_their_line_and_column() {
    let dir = TempDir::new("five").unwrap();
    // Line numbers are written next to each line to keep this test honest.
    let config = dir.write(
        "rackhand.toml",
        concat!(
            "[defaults]\n",                    // 1
            "platform = \"cisco_ios\"\n",      // 2
            "commands = [\"show version\"]\n", // 3
            "interval = \"5 minutes\"\n",      // 4  bad duration, col 12
            "\n",                              // 5
            "[[device]]\n",                    // 6
            "name = \"sw1\"\n",                // 7
            "transport = \"ssh\"\n",           // 8
            "host = \"10.0.0.1\"\n",           // 9
            "comands = [\"show clock\"]\n",    // 10 unknown key, col 1
            "\n",                              // 11
            "[[device]]\n",                    // 12 missing host, col 1
            "name = \"sw2\"\n",                // 13
            "transport = \"telnet\"\n",        // 14
            "port = \"23\"\n",                 // 15 wrong type, col 8
            "\n",                              // 16
            "[[device]]\n",                    // 17
            "name = \"sw1\"\n",                // 18 duplicate name, col 8
            "transport = \"ssh\"\n",           // 19
            "host = \"10.0.0.3\"\n",           // 20
        ),
    );
    let out = check(&config);
    assert_eq!(
        out.code, 2,
        "stdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    let file = config.display().to_string();
    let expected = [
        (4, 12, "interval"),
        (10, 1, "unknown key `comands`"),
        (12, 1, "no `host`"),
        (15, 8, "`port` must be an integer"),
        (18, 8, "duplicate device name `sw1`"),
    ];
    assert_reported_at(&out.stderr, &file, &expected);
    assert!(out.stderr.contains("did you mean `commands`?"));
    assert!(out.stderr.contains("5 errors"), "{}", out.stderr);
    assert!(
        out.stdout.is_empty(),
        "no inventory on errors:\n{}",
        out.stdout
    );
}

#[test]
fn every_kind_of_device_mistake_is_found_in_one_pass() {
    let dir = TempDir::new("kinds").unwrap();
    let text = r#"[agent]
workers = 0

[defaults]
commands = ["show version"]
platform = "cisco_ios"

[[group]]
name = "core"

[[device]]
name = "con1"
transport = "serial"

[[device]]
name = "pdu1"
transport = "telnet"
host = "10.0.0.9"
platform = "generic"
prompt = '^pdu1(>\s*$'

[[device]]
name = "fw1"
transport = "ssh"
host = "10.0.0.10"
platform = "palo_alto"

[[device]]
name = "sw9"
transport = "rlogin"
host = "10.0.0.11"

[[device]]
name = "sw10"
host = "10.0.0.12"
password_file = "does-not-exist/pw"
key_file = "/nonexistent/id_ed25519"
groups = ["core", "cor"]
command_timeout = 30
max_output = "16 megs"

[upstrem]
sink = "http"
"#;
    let config = dir.write("rackhand.toml", text);
    let out = check(&config);
    assert_eq!(out.code, 2, "{}", out.stderr);
    // Each finding points at the offending value; find it by the text it points at.
    let at = |needle: &str, nth: usize| -> String {
        let offset = text
            .match_indices(needle)
            .nth(nth)
            .unwrap_or_else(|| panic!("{needle} not in config"))
            .0;
        let line = text[..offset].matches('\n').count() + 1;
        let col = offset - text[..offset].rfind('\n').map_or(0, |i| i + 1) + 1;
        format!("{}:{line}:{col}: ", config.display())
    };
    let expect = |prefix: String, words: &str| {
        assert!(
            out.stderr
                .lines()
                .any(|l| l.starts_with(&prefix) && l.contains(words)),
            "expected `{prefix}...{words}...` in:\n{}",
            out.stderr
        );
    };
    expect(at("0\n", 0), "`workers` must be between 1");
    expect(at("[[device]]", 0), "no `serial_port`");
    expect(at("'^pdu1(", 0), "not a valid regular expression");
    expect(at("\"palo_alto\"", 0), "unknown platform `palo_alto`");
    expect(at("\"rlogin\"", 0), "unknown transport `rlogin`");
    expect(
        at("\"does-not-exist/pw\"", 0),
        "cannot read `password_file`",
    );
    expect(
        at("\"/nonexistent/id_ed25519\"", 0),
        "cannot read `key_file`",
    );
    expect(
        at("\"cor\"", 0),
        "group `cor` does not exist (did you mean `core`?)",
    );
    expect(at("30\n", 0), "write durations with a unit");
    expect(at("\"16 megs\"", 0), "bad size for `max_output`");
    expect(
        at("upstrem", 0),
        "unknown section `upstrem` (did you mean `upstream`?)",
    );
    assert!(out.stderr.contains("11 errors"), "{}", out.stderr);
}

#[test]
fn secrets_files_shared_with_others_and_inline_passwords_are_warned_not_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("secrets").unwrap();
    let pw = dir.write("pw", "s3cret\n");
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = dir.write(
        "rackhand.toml",
        r#"[defaults]
commands = ["show version"]
platform = "cisco_ios"
password_file = "pw"

[[device]]
name = "sw1"
host = "127.0.0.1"
enable_secret = "plain"
"#,
    );
    let out = check(&config);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("readable by group or others (mode 644); run chmod 600"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("warning: `enable_secret` is written in the config itself")
    );
}

#[test]
fn the_config_comes_from_c_then_rackhand_config_then_etc() {
    let dir = TempDir::new("env").unwrap();
    let config = Config::new()
        .defaults("commands", &list(&["show clock"]))
        .defaults("platform", "\"linux\"")
        .device(Table::named("envdev").set("host", "\"127.0.0.1\""))
        .write(&dir.join("from-env.toml"));
    let out = Command::new(env!("CARGO_BIN_EXE_rackhand"))
        .arg("check")
        .env("RACKHAND_CONFIG", &config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("envdev"));

    let missing = dir.join("nope.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_rackhand"))
        .args(["check", "-c"])
        .arg(&missing)
        .env("RACKHAND_CONFIG", &config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "-c wins over RACKHAND_CONFIG");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("nope.toml") && stderr.contains("-c FILE"),
        "{stderr}"
    );
}

#[test]
fn a_password_in_the_upstream_url_is_refused_at_its_column_and_never_printed() {
    let cases = [
        (
            "http",
            "url",
            "https://rack:hunter2@collector.example.net/ingest",
            "https://***@collector.example.net/ingest",
            "headers = { Authorization = \"Basic {env:COLLECTOR_AUTH}\" }",
        ),
        (
            "mqtt",
            "broker",
            "mqtts://rack:hunter2@broker.example.net:8883",
            "mqtts://***@broker.example.net:8883",
            "password_env = \"MQTT_PASSWORD\"",
        ),
    ];
    for (sink, key, url, shown, fix) in cases {
        let dir = TempDir::new(&format!("userinfo-{sink}")).unwrap();
        let config = dir.write(
            "rackhand.toml",
            &format!(
                concat!(
                    "[[device]]\n",                    // 1
                    "name = \"sw1\"\n",                // 2
                    "host = \"10.0.0.1\"\n",           // 3
                    "platform = \"cisco_ios\"\n",      // 4
                    "commands = [\"show version\"]\n", // 5
                    "\n",                              // 6
                    "[upstream]\n",                    // 7
                    "sink = \"{}\"\n",                 // 8
                    "{} = \"{}\"\n",                   // 9 the URL, after `key = `
                ),
                sink, key, url
            ),
        );
        let out = check(&config);
        assert_eq!(
            out.code, 2,
            "stdout:\n{}\nstderr:\n{}",
            out.stdout, out.stderr
        );
        let prefix = format!("{}:9:{}: ", config.display(), key.len() + 4);
        let line = out
            .stderr
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no error at `{prefix}` in:\n{}", out.stderr));
        assert!(line.contains("user name or password"), "{line}");
        assert!(line.contains(shown), "{line}");
        assert!(line.contains(fix), "the fix is named: {line}");
        for text in [&out.stdout, &out.stderr] {
            assert!(
                !text.contains("hunter2"),
                "the password was printed:\n{text}"
            );
        }
    }
}

/// Issue 13: `commands` entries as tables; every mistake in one at its own line and column,
/// and `check` says which commands ship `on_change`.
#[test]
fn command_tables_are_checked_entry_by_entry_and_check_shows_each_ship_mode() {
    let dir = TempDir::new("ship").unwrap();
    let bad = dir.write(
        "bad.toml",
        concat!(
            "[defaults]\n",                                                                  // 1
            "platform = \"cisco_ios\"\n",                                                    // 2
            "ship = \"on_change\"\n",                                                        // 3
            "\n",                                                                            // 4
            "[[device]]\n",                                                                  // 5
            "name = \"core1\"\n",                                                            // 6
            "host = \"192.0.2.1\"\n",                                                        // 7
            "commands = [\n",                                                                // 8
            "  \"show version\",\n",                                                         // 9
            "  { run = \"show running-config\", ignore = [\"^! Last\", \"(unclosed\"] },\n", // 10 regex col 55
            "  { run = \"show x\", shp = \"always\" },\n", // 11 unknown key col 21
            "  { ship = \"always\" },\n",                  // 12 no run col 3
            "  { run = \"show y\", ship = \"sometimes\" },\n", // 13 bad choice col 28
            "  { run = \"show z\", full_every = \"soon\" },\n", // 14 bad duration col 34
            "  42,\n",                                     // 15 wrong type col 3
            "]\n",                                         // 16
            "full_every = \"0s\"\n",                       // 17 col 14
        ),
    );
    let out = check(&bad);
    assert_eq!(
        out.code, 2,
        "stdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    let file = bad.display().to_string();
    assert_reported_at(
        &out.stderr,
        &file,
        &[
            (10, 55, "not a valid regular expression"),
            (
                11,
                21,
                "unknown key `shp` in an entry of `commands` (did you mean `ship`?)",
            ),
            (12, 3, "has no `run`"),
            (13, 28, "`sometimes`; expected one of: always, on_change"),
            (14, 34, "bad duration for `commands.full_every`"),
            (15, 3, "must be a command (a string) or a table"),
            (17, 14, "`full_every` must be longer than zero"),
        ],
    );
    assert!(out.stderr.contains("7 errors"), "{}", out.stderr);

    let good = Config::new()
        .defaults("platform", "\"cisco_ios\"")
        .defaults("ship", "\"on_change\"")
        .device(
            Table::named("core1").set("host", "\"192.0.2.1\"").set(
                "commands",
                "[\"show version\", { run = \"show running-config\", ignore = [\"^! Last\"] }, \
                 { run = \"show clock\", ship = \"always\", full_every = \"1h\" }, \
                 { run = \"show inventory\", ignore = [\"^\"] }]",
            ),
        )
        .device(
            Table::named("edge1")
                .set("host", "\"192.0.2.2\"")
                .set("ship", "\"always\"")
                .set(
                    "commands",
                    "[{ run = \"show running-config\", ship = \"on_change\", full_every = \"6h\" }, \"show clock\"]",
                ),
        )
        .device(
            Table::named("pdu1")
                .set("host", "\"192.0.2.3\"")
                .set("ship", "\"always\"")
                .set("commands", &list(&["olStatus all"])),
        )
        .write(&dir.join("good.toml"));
    let out = check(&good);
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    assert!(
        out.stdout.contains("ship on_change (")
            && out
                .stdout
                .contains("  core1: show version, show running-config (ignore 1 pattern), show inventory (ignore 1 pattern)\n")
            && out
                .stdout
                .contains("  edge1: show running-config (whole every 6h)\n")
            && !out.stdout.contains("pdu1:")
            && out.stdout.contains("every other command ships always"),
        "{}",
        out.stdout
    );
    // A pattern that matches every line would hide every change: said.
    assert!(
        out.stderr
            .contains("`commands.ignore` pattern `^` matches every line"),
        "{}",
        out.stderr
    );
    // `full_every` on a command that ships always does nothing: said, at the entry.
    assert!(
        out.stderr
            .contains("`show clock` ships always, so its `ignore`/`full_every` do nothing"),
        "{}",
        out.stderr
    );
}
