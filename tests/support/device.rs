//! What the tests know about each simulated platform from the outside (prompt shapes, the
//! paging-off command, login dialogue) and the shared story "log in, run every capture,
//! compare byte for byte" that every transport's test tells.

use std::time::Instant;

use super::client::{ClientError, PromptClient, Wire};
use super::fixtures::{Capture, captures};

/// The prompt a device of `platform` shows, as a regex (any privilege level).
pub fn prompt_regex(platform: &str, hostname: &str, username: &str) -> String {
    let host = regex_lite::escape(hostname);
    let user = regex_lite::escape(username);
    match platform {
        "juniper_junos" => format!(r"{user}@{host}[>#] ?"),
        "linux" => format!(r"{user}@{host}:~[$#] ?"),
        _ => format!(r"{host}[>#] ?"),
    }
}

/// The command that turns the pager off for the session.
pub fn paging_off_command(platform: &str) -> &'static str {
    match platform {
        "juniper_junos" => "set cli screen-length 0",
        _ => "terminal length 0",
    }
}

/// The username prompt of `platform`'s login dialogue.
pub const USERNAME_PROMPT: &str = r"(?:Username|login): ?";
pub const PASSWORD_PROMPT: &str = r"Password: ?";

/// Answers the login dialogue and waits for the first prompt. Returns what came before the
/// username prompt (banner, "Press RETURN" line) and what came between password and prompt.
pub fn login<W: Wire>(
    client: &mut PromptClient<W>,
    username: &str,
    password: &str,
    deadline: Instant,
) -> Result<(Vec<u8>, Vec<u8>), ClientError> {
    let before = client.expect(USERNAME_PROMPT, deadline)?;
    send(client, username)?;
    client.expect(PASSWORD_PROMPT, deadline)?;
    send(client, password)?;
    let after = client.wait_prompt(deadline)?;
    Ok((before, after))
}

fn send<W: Wire>(client: &mut PromptClient<W>, line: &str) -> Result<(), ClientError> {
    client.send_line(line).map_err(|source| ClientError::Io {
        waiting_for: format!("sending {line:?}"),
        source,
    })
}

/// Runs every capture of `platform` in this one session and checks each output byte for
/// byte. Returns the pager prompts answered per command, for the paging checks.
pub fn run_every_capture<W: Wire>(
    client: &mut PromptClient<W>,
    platform: &str,
    transport: &str,
    deadline: Instant,
) -> Vec<(Capture, usize)> {
    let mut pages = Vec::new();
    for capture in captures(platform) {
        let reply = client.run(&capture.command, deadline).unwrap_or_else(|e| {
            panic!(
                "{transport}/{platform}: `{}` ({}) failed: {e}",
                capture.command,
                capture.path.display()
            )
        });
        assert_same_output(&capture, &reply.output, transport);
        pages.push((capture, reply.pages));
    }
    pages
}

/// Compares with a message that points at the first difference instead of dumping kilobytes.
pub fn assert_same_output(capture: &Capture, got: &[u8], transport: &str) {
    let want = capture.expected();
    if want == got {
        return;
    }
    let at = want
        .iter()
        .zip(got)
        .position(|(a, b)| a != b)
        .unwrap_or(want.len().min(got.len()));
    let window = |b: &[u8]| {
        let from = at.saturating_sub(60);
        String::from_utf8_lossy(&b[from..(at + 60).min(b.len())]).into_owned()
    };
    panic!(
        "{transport}/{}: `{}` differs from {} at byte {at} (want {} bytes, got {}).\n\
         want …{:?}…\n got …{:?}…",
        capture.platform,
        capture.command,
        capture.path.display(),
        want.len(),
        got.len(),
        window(&want),
        window(got),
    );
}

/// Lines in a capture as the device prints them.
pub fn line_count(capture: &Capture) -> usize {
    capture.expected().iter().filter(|&&b| b == b'\n').count()
}

/// With paging on, a capture longer than two screens must have been paged at least once,
/// and one shorter than half a screen never; the sums show the client paged through.
pub fn assert_paged(pages: &[(Capture, usize)], page_lines: usize, transport: &str) {
    for (capture, n) in pages {
        let lines = line_count(capture);
        if lines > 2 * page_lines {
            assert!(
                *n >= lines / page_lines - 1,
                "{transport}/{}: `{}` has {lines} lines but only {n} pager prompts at {page_lines} lines a page",
                capture.platform,
                capture.command
            );
        }
        if lines < page_lines / 2 {
            assert_eq!(
                *n, 0,
                "{transport}/{}: `{}` has {lines} lines yet was paged",
                capture.platform, capture.command
            );
        }
    }
}

/// With paging off, nothing may be paged.
pub fn assert_not_paged(pages: &[(Capture, usize)], transport: &str) {
    for (capture, n) in pages {
        assert_eq!(
            *n, 0,
            "{transport}/{}: `{}` was paged {n} times with paging off",
            capture.platform, capture.command
        );
    }
}
