//! Turns the raw byte stream of a terminal session into the text a person would read.
//!
//! Devices talk to a terminal: they move the cursor with backspace and carriage return,
//! colour and clear with ANSI/VT100 escapes, and line ends are `\r\n`. The record's `output`
//! is the text, so this strips escapes, applies backspace and bare carriage returns to the
//! current line, and turns line ends into `\n`. It is incremental (escape sequences and
//! `\r\n` may be split across reads) and keeps bytes that are not UTF-8 as they are.

/// Incremental terminal-to-text cleaner.
#[derive(Debug, Default)]
pub struct Screen {
    state: State,
    /// Start of the current (unfinished) line in the output buffer.
    line_start: usize,
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

    /// Forgets where the current line starts (after the caller cut `out`).
    pub fn reset_line(&mut self, line_start: usize) {
        self.line_start = line_start;
    }

    /// Appends the cleaned form of `input` to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            self.byte(b, out);
        }
    }

    fn byte(&mut self, b: u8, out: &mut Vec<u8>) {
        match self.state {
            State::Text => self.text(b, out),
            State::Cr => {
                self.state = State::Text;
                match b {
                    b'\n' => self.newline(out),
                    // `\r\r\n` is a line end too (some devices double the CR).
                    b'\r' => self.state = State::Cr,
                    _ => {
                        // A bare CR returns to column 0: what follows overwrites the line.
                        out.truncate(self.line_start);
                        self.text(b, out);
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
                _ => {}
            },
            State::OscEsc => self.state = State::Text,
        }
    }

    fn text(&mut self, b: u8, out: &mut Vec<u8>) {
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
            _ => out.push(b),
        }
    }

    fn newline(&mut self, out: &mut Vec<u8>) {
        out.push(b'\n');
        self.line_start = out.len();
    }

    /// Start of the unfinished line in `out`, where a prompt would be.
    pub fn line_start(&self) -> usize {
        self.line_start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(chunks: &[&[u8]]) -> String {
        let mut s = Screen::new();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, &mut out);
        }
        String::from_utf8(out).unwrap()
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
    fn a_bare_carriage_return_overwrites_the_line() {
        assert_eq!(clean(&[b"10%\r", b"100%\r\ndone"]), "100%\ndone");
        assert_eq!(clean(&[b"---(more)---\r            \rnext\r\n"]), "next\n");
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
    fn bytes_that_are_not_utf8_are_kept() {
        let mut s = Screen::new();
        let mut out = Vec::new();
        s.feed(b"\xff\xfe ok\r\n", &mut out);
        assert_eq!(out, b"\xff\xfe ok\n");
    }
}
