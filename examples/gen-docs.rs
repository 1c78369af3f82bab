//! Writes rackhand's man pages and shell completions from its CLI definition
//! (`rackhand::cli::Cli`), so they never drift from the binary's `--help`.
//!
//! `cargo run --example gen-docs -- OUT_DIR` writes
//!   - `OUT_DIR/man/rackhand.1` (with FILES, ENVIRONMENT and SEE ALSO for the packaged service)
//!     and `rackhand-<subcommand>.1` for each visible subcommand,
//!   - `OUT_DIR/completions/rackhand.bash` and `OUT_DIR/completions/_rackhand` (zsh).
//!
//! scripts/package runs it once on the host for every .deb: the output does not depend on the
//! architecture (the arch-specific long version is left out). An example, not a `[[bin]]`, so
//! clap_mangen and clap_complete stay dev-dependencies and out of the agent binary.

use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::Man;
use rackhand::cli::Cli;

const DESCRIPTION: &str = "rackhand reaches switches, routers, firewalls, PDUs and server \
consoles over console serial, Telnet and SSH, runs CLI commands on a schedule, and ships the \
output upstream (HTTP, MQTT or files) in batches through a crash-safe on-disk spool. \
Its run subcommand is the agent, which the Debian package runs as the systemd service rackhand.";

/// The sections of rackhand(1) that clap knows nothing about: where the packaged service keeps
/// its files.
const FILES_AND_SEE_ALSO: &str = r#".SH FILES
.TP
\fI/etc/rackhand/rackhand.toml\fR
The config, unless \fB\-c\fR or \fBRACKHAND_CONFIG\fR names another.
\fBrackhand check\fR validates it; \fBsystemctl reload rackhand\fR makes the running agent
load it again.
.TP
\fI/etc/rackhand/env\fR
Secrets for the service, one NAME=value per line, read by systemd as root
(EnvironmentFile=); the config names them with its *_env keys.
.TP
\fI/var/lib/rackhand\fR
The agent's state (agent.state_dir): the spool of records not yet shipped, sequence
numbers, known_hosts, and the kept copy of status.json (written when it changes, at most
once a minute, and at a clean stop).
.TP
\fI/run/rackhand/status.json\fR
The live status the service rewrites every 2 s in memory-backed storage
(RuntimeDirectory=), which \fBrackhand status\fR reads first.
.TP
\fI/usr/share/doc/rackhand/examples/lab.toml\fR
A commented config for a whole rack.
.SH ENVIRONMENT
.TP
\fBRACKHAND_CONFIG\fR
The config file when \fB\-c\fR is not given.
.SH SEE ALSO
\fBsystemctl\fR(1), \fBjournalctl\fR(1), \fBsystemd.exec\fR(5),
\fI/usr/share/doc/rackhand/README.md\fR
"#;

fn main() -> ExitCode {
    let Some(out) = std::env::args_os().nth(1) else {
        eprintln!("usage: cargo run --example gen-docs -- OUT_DIR");
        return ExitCode::from(2);
    };
    match generate(Path::new(&out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!(
                "gen-docs: cannot write into {}: {err}",
                Path::new(&out).display()
            );
            ExitCode::FAILURE
        }
    }
}

fn generate(out: &Path) -> io::Result<()> {
    // The long version names the build's architecture: the pages are shared by every .deb.
    let cmd = Cli::command()
        .long_version(None)
        .long_about(DESCRIPTION)
        .disable_help_subcommand(true);

    let man_dir = out.join("man");
    fs::create_dir_all(&man_dir)?;
    // Every visible subcommand's page (rackhand(1) lists them), then rackhand(1) itself again
    // with the sections about the service's files.
    clap_mangen::generate_to(cmd.clone(), &man_dir)?;
    let mut page = Vec::new();
    let man = Man::new(cmd.clone());
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    man.render_subcommands_section(&mut page)?;
    page.write_all(FILES_AND_SEE_ALSO.as_bytes())?;
    man.render_version_section(&mut page)?;
    fs::write(man_dir.join("rackhand.1"), page)?;

    let completions = out.join("completions");
    fs::create_dir_all(&completions)?;
    for (shell, file) in [(Shell::Bash, "rackhand.bash"), (Shell::Zsh, "_rackhand")] {
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), "rackhand", &mut text);
        fs::write(completions.join(file), text)?;
    }
    Ok(())
}
