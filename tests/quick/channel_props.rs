//! Property tests of the channel and its screen over an in-memory transport: no input panics
//! them, however the bytes are chunked, and a device that talks on its own (log lines,
//! reprinted prompts, context lines) before a command's echo or after its prompt still yields
//! exactly the output it printed for each command.
//!
//! Issue 9 found a crash (`range end index 735 out of range for slice of length 0`) that
//! needed a log line, a wait that timed out and a second wait in that order; hand-written
//! cases found it only once it was known. These tests generate the orders instead.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use proptest::collection::vec;
use proptest::prelude::*;
use rackhand::channel::screen::Screen;
use rackhand::channel::{Channel, ChannelError, Prompt, QUOTE_MAX};
use rackhand::transport::{Transport, TransportError};
use regex_lite::Regex;

/// A device in memory: what it has sent waits in `pending`, read one chunk per `recv` (cut
/// to the caller's buffer); each line the channel sends releases the next batch of replies.
/// An empty queue times out at once: no test here waits on a clock.
struct Memory {
    pending: VecDeque<Vec<u8>>,
    replies: VecDeque<Vec<Vec<u8>>>,
    sent: Vec<u8>,
}

impl Memory {
    fn new(pending: Vec<Vec<u8>>, replies: Vec<Vec<Vec<u8>>>) -> Memory {
        Memory {
            pending: pending.into_iter().filter(|c| !c.is_empty()).collect(),
            replies: replies.into(),
            sent: Vec::new(),
        }
    }
}

impl Transport for Memory {
    fn recv(&mut self, buf: &mut [u8], _deadline: Instant) -> Result<usize, TransportError> {
        let Some(mut chunk) = self.pending.pop_front() else {
            return Err(TransportError::TimedOut {
                peer: "memory".into(),
            });
        };
        let n = chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        if n < chunk.len() {
            self.pending.push_front(chunk.split_off(n));
        }
        Ok(n)
    }

    fn send(&mut self, data: &[u8]) -> Result<(), TransportError> {
        self.sent.extend_from_slice(data);
        if data.ends_with(b"\n")
            && let Some(batch) = self.replies.pop_front()
        {
            self.pending
                .extend(batch.into_iter().filter(|c| !c.is_empty()));
        }
        Ok(())
    }

    fn peer(&self) -> &str {
        "memory"
    }
}

/// `bytes` cut at `cuts` (taken modulo the length): how reads happen to split the stream.
fn chunked(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    if bytes.is_empty() {
        return Vec::new();
    }
    let mut at: Vec<usize> = cuts.iter().map(|c| c % bytes.len()).collect();
    at.push(0);
    at.push(bytes.len());
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| bytes[w[0]..w[1]].to_vec()).collect()
}

/// Terminal bytes with the interesting ones (line ends, backspace, escapes, pager and prompt
/// text) far more likely than in uniform noise.
fn terminal_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        4 => any::<u8>(),
        4 => prop::sample::select(b"\r\n\x08\x7f\x1b[]();0m \x07\x00#>-".to_vec()),
        2 => prop::sample::select(b"sw1show clockMore".to_vec()),
    ];
    let piece = prop_oneof![
        6 => vec(byte, 1..8),
        1 => Just(b"sw1#".to_vec()),
        1 => Just(b" --More-- ".to_vec()),
        1 => Just(b"\r\n".to_vec()),
        1 => Just(b"show clock\r\n".to_vec()),
        1 => Just(b"{master:0}\r\n".to_vec()),
    ];
    vec(piece, 0..max).prop_map(|p| p.concat())
}

/// The screen's promises, checked through its public face.
fn assert_screen_invariants(s: &Screen) -> Result<(), TestCaseError> {
    let start = s.line_start();
    prop_assert!(start <= s.text().len(), "line_start {start} past the text");
    prop_assert!(start == 0 || s.text()[start - 1] == b'\n');
    prop_assert!(!s.unfinished().contains(&b'\n'));
    Ok(())
}

#[derive(Debug, Clone)]
enum ScreenOp {
    Feed(Vec<u8>),
    TakeFront(usize),
    Truncate(usize),
    DropUnfinished,
    TakeAll,
}

fn screen_op() -> impl Strategy<Value = ScreenOp> {
    prop_oneof![
        6 => terminal_bytes(12).prop_map(ScreenOp::Feed),
        1 => (0usize..64).prop_map(ScreenOp::TakeFront),
        1 => (0usize..64).prop_map(ScreenOp::Truncate),
        1 => Just(ScreenOp::DropUnfinished),
        1 => Just(ScreenOp::TakeAll),
    ]
}

/// Every way a waiting caller drives the channel.
#[derive(Debug, Clone)]
enum ChannelOp {
    Command(&'static str),
    WaitFor,
    WaitForLines,
    Settle,
}

fn channel_op() -> impl Strategy<Value = ChannelOp> {
    prop_oneof![
        3 => prop::sample::select(vec!["show clock", "sh ver", "", "terminal length 0"])
            .prop_map(ChannelOp::Command),
        1 => Just(ChannelOp::WaitFor),
        1 => Just(ChannelOp::WaitForLines),
        1 => Just(ChannelOp::Settle),
    ]
}

fn ios_prompt() -> Prompt {
    Prompt {
        line: Regex::new(r"^sw1[>#]\s?$").unwrap(),
        context: Some(Regex::new(r"^\{\w+(:\w+)?\}\s*$").unwrap()),
    }
}

fn pagers() -> Vec<rackhand::channel::Pager> {
    rackhand::platform::table().common.pagers.clone()
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: crate::support::proptest_regressions(), ..ProptestConfig::default() })]

    #[test]
    fn the_screen_text_does_not_depend_on_how_reads_split_the_stream(
        bytes in terminal_bytes(200),
        cuts in vec(any::<usize>(), 0..24),
    ) {
        let mut whole = Screen::new();
        whole.feed(&bytes);
        let mut split = Screen::new();
        for chunk in chunked(&bytes, &cuts) {
            split.feed(&chunk);
            assert_screen_invariants(&split)?;
        }
        prop_assert_eq!(whole.text(), split.text());
        prop_assert_eq!(whole.line_start(), split.line_start());
    }

    #[test]
    fn no_sequence_of_feeds_and_cuts_breaks_the_screen(ops in vec(screen_op(), 0..60)) {
        let mut s = Screen::new();
        for op in ops {
            let before = s.text().len();
            match op {
                ScreenOp::Feed(bytes) => s.feed(&bytes),
                ScreenOp::TakeFront(n) => {
                    let front = s.take_front(n);
                    prop_assert_eq!(front.len(), n.min(before));
                }
                ScreenOp::Truncate(n) => {
                    s.truncate(n);
                    prop_assert_eq!(s.text().len(), n.min(before));
                }
                ScreenOp::DropUnfinished => s.drop_unfinished(),
                ScreenOp::TakeAll => {
                    prop_assert_eq!(s.take_all().len(), before);
                }
            }
            assert_screen_invariants(&s)?;
        }
    }

    #[test]
    fn no_bytes_and_no_order_of_waits_panic_the_channel(
        stream in terminal_bytes(300),
        cuts in vec(any::<usize>(), 0..40),
        ops in vec(channel_op(), 1..8),
        max_output in 1usize..2048,
    ) {
        let prompt = ios_prompt();
        let login = [Regex::new(r"(?i)username:\s*$").unwrap(), prompt.line.clone()];
        let press = [Regex::new(r"(?i)press return").unwrap()];
        let mut ch = Channel::new(Memory::new(chunked(&stream, &cuts), Vec::new()), pagers(), max_output);
        for op in ops {
            let result = match op {
                ChannelOp::Command(command) => ch.command(command, &prompt, soon()).map(|output| {
                    assert!(output.len() <= max_output, "{} bytes over max_output {max_output}", output.len());
                    // The output ends where a line ended: the prompt line is never in it.
                    assert!(output.is_empty() || output.ends_with(b"\n"), "{output:?}");
                }),
                ChannelOp::WaitFor => ch.wait_for(&login, soon()).map(drop),
                ChannelOp::WaitForLines => ch.wait_for_lines(&login, &press, soon()).map(drop),
                ChannelOp::Settle => ch.settle(Duration::ZERO, soon()).map(drop),
            };
            match result {
                Err(ChannelError::TooLarge { output, limit, .. }) => {
                    prop_assert_eq!(limit, max_output);
                    prop_assert!(output.len() <= max_output);
                }
                Err(ChannelError::Timeout { last_line, .. }) => {
                    prop_assert!(last_line.chars().count() <= QUOTE_MAX);
                    prop_assert!(!last_line.contains('\n'));
                }
                Ok(()) | Err(ChannelError::Transport { .. }) => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// A chatty device, modelled: every command's output must come back exactly.

/// What the device prints on its own (a console log line), maybe with its prompt after it.
#[derive(Debug, Clone)]
struct Chatter {
    number: u16,
    reprint: bool,
}

impl Chatter {
    fn bytes(&self, prompt: &[u8]) -> Vec<u8> {
        let mut b = format!(
            "\r\n*Mar  1 00:00:{:02}.000: %LINK-3-UPDOWN: Interface Gi0/{}, changed state to up\r\n",
            self.number % 60,
            self.number
        )
        .into_bytes();
        if self.reprint {
            b.extend_from_slice(prompt);
        }
        b
    }
}

fn chatter() -> impl Strategy<Value = Chatter> {
    (any::<u16>(), any::<bool>()).prop_map(|(number, reprint)| Chatter { number, reprint })
}

/// One command as the device answers it.
#[derive(Debug, Clone)]
struct Exchange {
    command: &'static str,
    /// Output lines (no `#`/`>`, so none is a prompt; no control bytes, so the screen keeps
    /// them as they are).
    lines: Vec<String>,
    before_echo: Option<Chatter>,
    after_prompt: Option<Chatter>,
    context: bool,
    cuts: Vec<usize>,
}

fn exchange() -> impl Strategy<Value = Exchange> {
    (
        prop::sample::select(vec![
            "show clock",
            "show version",
            "terminal length 0",
            "show ip int br",
        ]),
        vec("[a-zA-Z0-9 .:/,()-]{0,50}", 0..12),
        prop::option::of(chatter()),
        prop::option::of(chatter()),
        any::<bool>(),
        vec(any::<usize>(), 0..16),
    )
        .prop_map(
            |(command, lines, before_echo, after_prompt, context, cuts)| Exchange {
                command,
                lines,
                before_echo,
                after_prompt,
                context,
                cuts,
            },
        )
}

impl Exchange {
    /// The device's bytes after the command was sent, and the output it printed for it.
    fn device(&self) -> (Vec<u8>, Vec<u8>) {
        let prompt = if self.context {
            &b"{master:0}\r\nsw1#"[..]
        } else {
            b"sw1#"
        };
        let mut bytes = Vec::new();
        if let Some(c) = &self.before_echo {
            bytes.extend(c.bytes(prompt));
        }
        bytes.extend_from_slice(self.command.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        let mut output = Vec::new();
        for line in &self.lines {
            bytes.extend_from_slice(line.as_bytes());
            bytes.extend_from_slice(b"\r\n");
            output.extend_from_slice(line.as_bytes());
            output.push(b'\n');
        }
        bytes.extend_from_slice(prompt);
        if let Some(c) = &self.after_prompt {
            bytes.extend(c.bytes(prompt));
        }
        (bytes, output)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: crate::support::proptest_regressions(), ..ProptestConfig::default() })]

    #[test]
    fn log_lines_and_reprinted_prompts_around_commands_never_reach_the_output(
        exchanges in vec(exchange(), 1..6),
    ) {
        let mut replies = Vec::new();
        let mut want = Vec::new();
        for e in &exchanges {
            let (bytes, output) = e.device();
            replies.push(chunked(&bytes, &e.cuts));
            want.push(output);
        }
        // The session's login saw the prompt before the first command.
        let memory = Memory::new(vec![b"\r\nsw1#".to_vec()], replies);
        let mut ch = Channel::new(memory, pagers(), 1 << 20);
        let prompt = ios_prompt();
        ch.wait_for(std::slice::from_ref(&prompt.line), soon()).unwrap();
        for (e, want) in exchanges.iter().zip(&want) {
            let got = ch.command(e.command, &prompt, soon());
            match got {
                Ok(got) => prop_assert_eq!(
                    String::from_utf8_lossy(&got),
                    String::from_utf8_lossy(want),
                    "`{}` of {:?}",
                    e.command,
                    e
                ),
                Err(err) => prop_assert!(false, "`{}` failed: {err} ({e:?})", e.command),
            }
        }
        // What came before an echo was read and set aside; a quiet device sets nothing aside.
        if exchanges.iter().any(|e| e.before_echo.is_some()) {
            prop_assert!(ch.unsolicited_bytes() > 0);
        }
        if exchanges.iter().all(|e| e.before_echo.is_none() && e.after_prompt.is_none()) {
            prop_assert_eq!(ch.unsolicited_bytes(), 0);
        }
    }
}
