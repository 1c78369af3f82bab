//! Where one command's reply begins and ends in the text a device printed after it was sent.
//!
//! A device does not only answer: a console logs to the line (`*Mar  1 00:01:02.123:
//! %LINK-3-UPDOWN: ...`), may reprint its prompt after a log line, and Junos prints context
//! lines (`{master:0}`, `[edit]`) above its prompt. So the reply is found by what frames it:
//!
//! - it begins after the **echo** of the command; completed lines before the echo came on their
//!   own and are not output. The echo is the first line if it ends with the command, or a
//!   later line that is the command alone or after a reprinted prompt. Words are compared as
//!   prefixes, since Junos completes `sh ver` to `show version` as it echoes.
//! - it ends at the first **prompt** after the echo: the unfinished line matching the prompt
//!   pattern, or a completed line identical to the prompt the device last showed (the prompt
//!   came, then a log line pushed it up). A context line right above the prompt belongs to it.
//! - a prompt *before* any echo is either reprinted (the echo follows at once) or the end of
//!   the reply of a device that does not echo; only the line staying quiet tells them apart,
//!   so the channel waits [`ECHO_QUIET`] for more before taking it as the end.
//!
//! This module only looks at text; reading, cutting and pagers are the channel's.

use std::borrow::Cow;
use std::time::Duration;

use regex_lite::Regex;

use super::TAIL_WINDOW;

/// How long a prompt seen before the command's echo must stay alone on the line before it
/// counts as the end of the reply (a device that does not echo).
pub const ECHO_QUIET: Duration = Duration::from_millis(300);

/// What ends a command's reply.
#[derive(Debug, Clone)]
pub struct Prompt {
    /// Matches the prompt line (the unfinished last line).
    pub line: Regex,
    /// Matches a context line the platform prints directly above its prompt (Junos
    /// `{master:0}`, `[edit interfaces ge-0/0/0]`): part of the prompt, not of the output.
    pub context: Option<Regex>,
}

impl Prompt {
    /// A prompt without context lines.
    pub fn new(line: Regex) -> Prompt {
        Prompt {
            line,
            context: None,
        }
    }
}

/// What the text read so far says about the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing decided: read more.
    Read,
    /// The echo is the line ending at `end` (exclusive, after its `\n`); `text[..noise]` came
    /// before it on its own.
    Echo { noise: usize, end: usize },
    /// The reply is complete: the output is `text[..output]`, the prompt (with its context
    /// line) runs to `prompt_end`, and what follows it came on its own.
    Done { output: usize, prompt_end: usize },
    /// The unfinished line is a prompt but no echo has come: final only if nothing follows.
    /// The output would be `text[..output]`.
    PromptBeforeEcho { output: usize },
}

/// The state of one command's reply while it is read.
#[derive(Debug)]
pub struct Reply<'p> {
    words: Vec<String>,
    prompt: &'p Prompt,
    /// The prompt the device showed before the command, if it matches the prompt pattern.
    last_prompt: Option<String>,
    echoed: bool,
    /// Completed lines before this offset have been looked at.
    scanned: usize,
}

impl<'p> Reply<'p> {
    /// `last_prompt`: the line that ended the previous wait, if any.
    pub fn new(command: &str, prompt: &'p Prompt, last_prompt: Option<&str>) -> Reply<'p> {
        let words: Vec<String> = command.split_whitespace().map(str::to_string).collect();
        let last_prompt = last_prompt
            .map(str::trim_end)
            .filter(|p| !p.is_empty() && prompt.line.is_match(p))
            .map(str::to_string);
        Reply {
            // Nothing typed, nothing echoed: the reply starts at once.
            echoed: words.is_empty(),
            words,
            prompt,
            last_prompt,
            scanned: 0,
        }
    }

    /// Whether the echo has been found (and cut by the caller); the tests ask.
    #[cfg(test)]
    pub fn echoed(&self) -> bool {
        self.echoed
    }

    /// How many bytes the echo may take in the text, on top of the output.
    pub fn echo_allowance(&self) -> usize {
        if self.echoed {
            0
        } else {
            self.words.iter().map(|w| w.len() + 1).sum::<usize>() + TAIL_WINDOW
        }
    }

    /// Looks at `text` (completed lines end before `line_start`). After [`Step::Echo`] the
    /// caller removes `text[..end]` before the next call.
    pub fn examine(&mut self, text: &[u8], line_start: usize) -> Step {
        while self.scanned < line_start {
            let begin = self.scanned;
            let end = text[begin..line_start]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(line_start, |i| begin + i);
            let next = (end + 1).min(line_start);
            if !self.echoed {
                if self.is_echo(&text[begin..end], begin == 0) {
                    self.echoed = true;
                    self.scanned = 0;
                    return Step::Echo {
                        noise: begin,
                        end: next,
                    };
                }
            } else if self.is_last_prompt(&text[begin..end]) {
                return Step::Done {
                    output: self.context_start(text, begin),
                    prompt_end: next,
                };
            }
            self.scanned = next;
        }
        if line_start < text.len() && self.prompt.line.is_match(&view(&text[line_start..])) {
            let output = self.context_start(text, line_start);
            return if self.echoed {
                Step::Done {
                    output,
                    prompt_end: text.len(),
                }
            } else {
                Step::PromptBeforeEcho { output }
            };
        }
        Step::Read
    }

    /// The echo of the command: its words at the end of the line (each typed word a prefix of
    /// the echoed one), after anything on the first line of the reply, else alone or after a
    /// reprinted prompt.
    fn is_echo(&self, line: &[u8], first: bool) -> bool {
        let window = TAIL_WINDOW + self.words.iter().map(String::len).sum::<usize>();
        let line = view_within(line, window);
        let tokens: Vec<(usize, &str)> = tokens(&line);
        let n = self.words.len();
        if tokens.len() < n {
            return false;
        }
        let tail = &tokens[tokens.len() - n..];
        let rest_match = tail[1..]
            .iter()
            .zip(&self.words[1..])
            .all(|((_, token), word)| token.starts_with(word.as_str()));
        if !rest_match {
            return false;
        }
        // The first word may be glued to a prompt (`sw1#show`).
        let (at, token) = tail[0];
        let first_word = self.words[0].as_str();
        token
            .char_indices()
            .filter(|(i, _)| token[*i..].starts_with(first_word))
            .any(|(i, _)| {
                let prefix = &line[..at + i];
                first || prefix.is_empty() || self.prompt.line.is_match(prefix)
            })
    }

    fn is_last_prompt(&self, line: &[u8]) -> bool {
        self.last_prompt
            .as_deref()
            .is_some_and(|p| view(line).trim_end() == p)
    }

    /// Where the prompt begins when it starts at `line_begin`: a context line right above it
    /// belongs to it.
    fn context_start(&self, text: &[u8], line_begin: usize) -> usize {
        let Some(context) = &self.prompt.context else {
            return line_begin;
        };
        if line_begin == 0 {
            return line_begin;
        }
        let above_end = line_begin - 1;
        let above_begin = text[..above_end]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        if context.is_match(&view(&text[above_begin..above_end])) {
            above_begin
        } else {
            line_begin
        }
    }
}

/// A line as patterns see it: what follows its last carriage return, at most the last
/// [`TAIL_WINDOW`] bytes.
pub fn view(line: &[u8]) -> Cow<'_, str> {
    view_within(line, TAIL_WINDOW)
}

fn view_within(line: &[u8], window: usize) -> Cow<'_, str> {
    let mut from = line.len().saturating_sub(window);
    if let Some(cr) = line[from..].iter().rposition(|&b| b == b'\r') {
        from += cr + 1;
    }
    String::from_utf8_lossy(&line[from..])
}

/// Whitespace-separated tokens with their byte offsets.
fn tokens(line: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in line.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                out.push((s, &line[s..i]));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, &line[s..]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ios() -> Prompt {
        Prompt::new(Regex::new(r"^sw1[>#]\s?$").unwrap())
    }

    fn junos() -> Prompt {
        let table = crate::platform::table();
        let platform = table.get("juniper_junos").unwrap();
        Prompt {
            line: platform.prompt.clone().unwrap(),
            context: platform.prompt_context.clone(),
        }
    }

    /// Runs `examine` to the end over the whole `text`, cutting at each echo as the channel
    /// does; returns (output, what came before the echo, what followed the prompt).
    fn reply(
        command: &str,
        prompt: &Prompt,
        last: Option<&str>,
        text: &str,
    ) -> Option<[String; 3]> {
        let mut r = Reply::new(command, prompt, last);
        let mut text = text.as_bytes().to_vec();
        let mut noise = Vec::new();
        loop {
            let line_start = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let (output, prompt_end) = match r.examine(&text, line_start) {
                Step::Read => return None,
                Step::Echo { noise: n, end } => {
                    noise.extend_from_slice(&text[..n]);
                    text.drain(..end);
                    continue;
                }
                Step::Done { output, prompt_end } => (output, prompt_end),
                Step::PromptBeforeEcho { output } => (output, text.len()),
            };
            let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            return Some([s(&text[..output]), s(&noise), s(&text[prompt_end..])]);
        }
    }

    #[test]
    fn lines_before_the_echo_are_not_output() {
        let got = reply(
            "show clock",
            &ios(),
            Some("sw1#"),
            "\n*Mar  1 00:01:02.123: %LINK-3-UPDOWN: Interface Gi0/1, changed state to up\nshow clock\n10:00\nsw1#",
        )
        .unwrap();
        assert_eq!(got[0], "10:00\n");
        assert!(got[1].contains("%LINK-3-UPDOWN"), "{got:?}");
    }

    #[test]
    fn a_reprinted_prompt_with_the_echo_on_it_is_the_echo() {
        let got = reply(
            "show clock",
            &ios(),
            Some("sw1#"),
            "\n*Mar 1: %SYS-5-CONFIG_I: Configured\nsw1#show clock\n10:00\nsw1#",
        )
        .unwrap();
        assert_eq!(got[0], "10:00\n");
    }

    #[test]
    fn a_prompt_pushed_up_by_a_log_line_still_ends_the_reply() {
        let got = reply(
            "show clock",
            &ios(),
            Some("sw1#"),
            "show clock\n10:00\nsw1#\n*Mar 1: %LINK-3-UPDOWN: up\n",
        )
        .unwrap();
        assert_eq!(got, ["10:00\n", "", "*Mar 1: %LINK-3-UPDOWN: up\n"]);
    }

    #[test]
    fn junos_completes_words_as_it_echoes() {
        let p = junos();
        let got = reply(
            "sh ver",
            &p,
            None,
            "netops@edge1> show version \nHostname: edge1\n\nnetops@edge1> ",
        )
        .unwrap();
        assert_eq!(got[0], "Hostname: edge1\n\n");
    }

    #[test]
    fn junos_context_lines_belong_to_the_prompt() {
        let p = junos();
        for context in [
            "{master:0}",
            "{primary:node0}",
            "{secondary:node1}",
            "[edit]",
            "[edit interfaces ge-0/0/0]",
        ] {
            let text = format!("show version\nHostname: edge1\n\n{context}\nnetops@edge1> ");
            let got = reply("show version", &p, None, &text).unwrap();
            assert_eq!(got[0], "Hostname: edge1\n\n", "{context}");
        }
        // Only directly above the prompt: elsewhere it is output.
        let text = "show version\n{master:0}\nHostname: edge1\nnetops@edge1> ";
        let got = reply("show version", &p, None, text).unwrap();
        assert_eq!(got[0], "{master:0}\nHostname: edge1\n");
    }

    #[test]
    fn a_prompt_before_the_echo_waits_for_quiet() {
        let p = ios();
        let mut r = Reply::new("show clock", &p, Some("sw1#"));
        let text = b"\n*Mar 1: log\nsw1#";
        assert_eq!(r.examine(text, 13), Step::PromptBeforeEcho { output: 13 });
        assert!(!r.echoed());
    }

    #[test]
    fn output_lines_that_end_like_the_command_are_not_taken_for_its_echo() {
        // No echo (a device that does not echo): a later line must be the command alone or
        // after a prompt to count.
        let p = ios();
        let mut r = Reply::new("show clock", &p, None);
        let text = b"Current time\nalias exec sc show clock\n  show clock\nsw1#";
        assert_eq!(r.examine(text, 51), Step::PromptBeforeEcho { output: 51 });
    }

    #[test]
    fn an_unknown_last_prompt_is_ignored() {
        let p = ios();
        let r = Reply::new("show clock", &p, Some("Username: "));
        assert!(r.last_prompt.is_none());
    }
}
