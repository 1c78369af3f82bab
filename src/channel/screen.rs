//! Turns the raw byte stream of a terminal session into the text a person would read.
//!
//! Devices talk to a terminal: they move the cursor with backspace and carriage return,
//! colour and clear with ANSI/VT100 escapes, and line ends are `\r\n`. The record's `output`
//! is what the device printed, so this strips escapes, applies backspace to the current line
//! and turns line ends into `\n`. A bare carriage return is kept as the device sent it
//! (progress lines, binary noise: the record must not drop what the device printed), except
//! where it means nothing (at the start of a line, as in `\n\r` line ends) and in the erase
//! idiom `\r` + spaces + `\r` that pagers use to wipe their prompt. It is incremental (escape
//! sequences and `\r\n` may be split across reads) and keeps bytes that are not UTF-8 as
//! they are.
//!
//! The screen owns the text it produced. Where the unfinished line starts (what prompt
//! patterns look at) and where an erase idiom began are positions in that text, so every cut
//! goes through a method here that moves them along: a caller that took the text and left
//! the positions behind is how a console's log line once crashed the session (`range end
//! index 735 out of range for slice of length 0`).

/// The longest line an erase idiom wipes; beyond it, spaces are data (and the check stays
/// cheap).
const ERASE_MAX: usize = 512;

/// Incremental terminal-to-text cleaner, and the text so far.
///
/// Invariants (kept by every method): `line_start <= text.len()`, `text[line_start - 1]` is
/// the `\n` that ended the last completed line, and an erase idiom's start lies inside the
/// unfinished line.
#[derive(Debug, Default)]
pub struct Screen {
    state: State,
    text: Vec<u8>,
    /// Start of the current (unfinished) line in `text`.
    line_start: usize,
    /// Where a kept bare `\r` sits in the current line while only spaces followed it: if
    /// another `\r` comes next, the line was being erased.
    cr_run: Option<usize>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Text,
    /// Saw `\r`; a `\n` next makes a line end, anything else a return to column 0.
    Cr,
    /// Saw ESC.
    Esc,
    /// Inside `ESC [ ...` until a final byte 0x40..=0x7E.
    Csi,
    /// Inside `ESC ] ...` until BEL or `ESC \`.
    Osc,
    OscEsc,
    /// `ESC (`, `ESC )` and friends take one more byte.
    EscArg,
}

impl Screen {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the cleaned form of `input` to the text.
    pub fn feed(&mut self, input: &[u8]) {
        let mut out = std::mem::take(&mut self.text);
        for &b in input {
            self.byte(b, &mut out);
        }
        self.text = out;
    }

    /// Everything cleaned so far.
    pub fn text(&self) -> &[u8] {
        &self.text
    }

    /// Start of the unfinished line in [`Screen::text`], where a prompt would be.
    pub fn line_start(&self) -> usize {
        self.line_start
    }

    /// The unfinished last line.
    pub fn unfinished(&self) -> &[u8] {
        &self.text[self.line_start..]
    }

    /// Removes and returns the first `end` bytes (all of them if `end` is past the end);
    /// positions move with the text. A cut inside the completed lines keeps them completed.
    pub fn take_front(&mut self, end: usize) -> Vec<u8> {
        let end = end.min(self.text.len());
        let rest = self.text.split_off(end);
        let front = std::mem::replace(&mut self.text, rest);
        if end > self.line_start {
            // The unfinished line was cut: what is left of it starts a line of its own.
            self.line_start = 0;
            self.cr_run = None;
        } else {
            self.line_start -= end;
            self.cr_run = self.cr_run.map(|at| at - end);
        }
        front
    }

    /// Removes and returns all the text; the next byte starts a fresh line.
    pub fn take_all(&mut self) -> Vec<u8> {
        self.take_front(self.text.len())
    }

    /// Drops the unfinished line (a pager prompt that was answered).
    pub fn drop_unfinished(&mut self) {
        self.text.truncate(self.line_start);
        self.cr_run = None;
    }

    /// Cuts the text to at most `len` bytes (an output cap).
    pub fn truncate(&mut self, len: usize) {
        if len >= self.text.len() {
            return;
        }
        self.text.truncate(len);
        if self.line_start > len {
            // The cut went into the completed lines: the rest is one unfinished line.
            self.line_start = self
                .text
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
        }
        self.cr_run = self.cr_run.filter(|&at| at < len);
    }

    fn byte(&mut self, b: u8, out: &mut Vec<u8>) {
        match self.state {
            State::Text => self.plain(b, out),
            State::Cr => {
                self.state = State::Text;
                if let Some(at) = self.cr_run.take()
                    && out.len() > at + 1
                    && out.len() <= self.line_start.max(at) + ERASE_MAX
                    && out[at + 1..].iter().all(|&c| c == b' ')
                {
                    // `\r` + spaces + `\r`: the line was wiped (Junos' pager does this).
                    out.truncate(self.line_start);
                }
                match b {
                    b'\n' => self.newline(out),
                    // `\r\r\n` is a line end too (some devices double the CR).
                    b'\r' => self.state = State::Cr,
                    _ => {
                        // A CR at column 0 changes nothing (`\n\r` line ends); elsewhere it
                        // is part of what the device printed.
                        if out.len() > self.line_start {
                            out.push(b'\r');
                            self.cr_run = Some(out.len() - 1);
                        }
                        self.plain(b, out);
                    }
                }
            }
            State::Esc => {
                self.state = match b {
                    b'[' => State::Csi,
                    b']' => State::Osc,
                    b'(' | b')' | b'*' | b'+' | b'#' | b'%' => State::EscArg,
                    _ => State::Text,
                }
            }
            State::EscArg => self.state = State::Text,
            State::Csi => {
                if (0x40..=0x7e).contains(&b) {
                    self.state = State::Text;
                }
            }
            State::Osc => match b {
                0x07 => self.state = State::Text,
                0x1b => self.state = State::OscEsc,
                // A title never spans lines: an unterminated one (line noise) must not eat
                // the rest of the output and the prompt with it.
                b'\n' => {
                    self.state = State::Text;
                    self.newline(out);
                }
                _ => {}
            },
            State::OscEsc => self.state = State::Text,
        }
    }

    fn plain(&mut self, b: u8, out: &mut Vec<u8>) {
        match b {
            b'\r' => self.state = State::Cr,
            b'\n' => self.newline(out),
            0x1b => self.state = State::Esc,
            // Backspace erases within the current line only, as on a terminal where the
            // cursor stops at column 0 (the `\b \b` of line editors leaves nothing behind).
            0x08 | 0x7f => {
                if out.len() > self.line_start {
                    out.pop();
                    // Do not leave half a UTF-8 character behind.
                    while out.len() > self.line_start && (out[out.len() - 1] & 0xc0) == 0x80 {
                        out.pop();
                    }
                }
            }
            // NUL padding and BEL are terminal noise, not text.
            0x00 | 0x07 => {}
            b' ' => out.push(b),
            _ => {
                self.cr_run = None;
                out.push(b);
            }
        }
    }

    fn newline(&mut self, out: &mut Vec<u8>) {
        out.push(b'\n');
        self.line_start = out.len();
        self.cr_run = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(chunks: &[&[u8]]) -> String {
        let mut s = Screen::new();
        for c in chunks {
            s.feed(c);
        }
        String::from_utf8(s.take_all()).unwrap()
    }

    #[test]
    fn crlf_and_doubled_cr_become_newlines_and_trailing_spaces_stay() {
        assert_eq!(clean(&[b"a  \r\nb\r\r\nc"]), "a  \nb\nc");
    }

    #[test]
    fn escapes_split_across_reads_are_removed() {
        assert_eq!(
            clean(&[b"\x1b[1", b";32mgreen\x1b[0m \x1b]0;title\x07x\x1b(B"]),
            "green x"
        );
    }

    #[test]
    fn backspace_erases_within_the_line_but_not_across_it() {
        assert_eq!(clean(&[b"abc\x08 \x08\x08X\r\n\x08\x08ok"]), "aX\nok");
    }

    #[test]
    fn a_bare_carriage_return_is_kept_unless_it_erases_or_means_nothing() {
        assert_eq!(clean(&[b"10%\r", b"100%\r\ndone"]), "10%\r100%\ndone");
        assert_eq!(clean(&[b"---(more)---\r            \rnext\r\n"]), "next\n");
        assert_eq!(
            clean(&[b"---(more)---\r     ", b"       \r", b"\nnext"]),
            "\nnext"
        );
        assert_eq!(clean(&[b"a\n\rb\n\r", b"c\r\n"]), "a\nb\nc\n");
        // Spaces after a CR that go on with text are data.
        assert_eq!(clean(&[b"x\r  y\r\n"]), "x\r  y\n");
    }

    #[test]
    fn ios_pager_erase_sequence_leaves_no_trace() {
        let more = b" --More-- ";
        let mut bytes = b"line1\r\n".to_vec();
        bytes.extend_from_slice(more);
        bytes.extend(std::iter::repeat_n(0x08, more.len()));
        bytes.extend(std::iter::repeat_n(b' ', more.len()));
        bytes.extend(std::iter::repeat_n(0x08, more.len()));
        bytes.extend_from_slice(b"  line2  \r\n");
        assert_eq!(clean(&[&bytes]), "line1\n  line2  \n");
    }

    #[test]
    fn an_unterminated_title_ends_at_the_line_end() {
        assert_eq!(clean(&[b"a\x1b]0;noise\r\nsw1#"]), "a\nsw1#");
    }

    #[test]
    fn bytes_that_are_not_utf8_are_kept() {
        let mut s = Screen::new();
        s.feed(b"\xff\xfe ok\r\n");
        assert_eq!(s.text(), b"\xff\xfe ok\n");
    }

    #[test]
    fn cuts_move_the_unfinished_line_with_the_text() {
        let mut s = Screen::new();
        s.feed(b"one\r\ntwo\r\nsw1#");
        assert_eq!(s.take_front(4), b"one\n");
        assert_eq!((s.line_start(), s.unfinished()), (4, &b"sw1#"[..]));
        assert_eq!(s.take_all(), b"two\nsw1#");
        assert_eq!((s.line_start(), s.text()), (0, &b""[..]));
        // A cut into the completed lines leaves one unfinished line.
        s.feed(b"ab\r\ncd\r\n");
        s.truncate(4);
        assert_eq!((s.text(), s.line_start()), (&b"ab\nc"[..], 3));
        // An erase idiom that began before a cut does not reach back across it.
        let mut s = Screen::new();
        s.feed(b"10%\r   ");
        s.take_all();
        s.feed(b"\rnext\r\n");
        assert_eq!(s.text(), b"next\n");
    }
}
