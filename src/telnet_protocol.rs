//! Telnet protocol (RFC 854/855) as a state machine with no I/O inside.
//!
//! Old gear and terminal servers still speak Telnet, and the simulator must speak it too. Both
//! ends of rackhand need the same rules (the simulator's server now, the agent's client
//! transport later), so this module is role-neutral and knows nothing about sockets: a
//! [`Parser`] turns received bytes into data and [`Event`]s, a [`Negotiator`] runs option
//! negotiation by the RFC 1143 "Q method" (so two peers can never loop on WILL/DO), and
//! [`escape`] prepares outgoing data. Keeping it pure makes it testable at every byte boundary
//! and fuzzable.

/// Interpret As Command: starts every protocol sequence.
pub const IAC: u8 = 255;
pub const DONT: u8 = 254;
pub const DO: u8 = 253;
pub const WONT: u8 = 252;
pub const WILL: u8 = 251;
/// Subnegotiation begin / end.
pub const SB: u8 = 250;
pub const SE: u8 = 240;
pub const GA: u8 = 249;
pub const EL: u8 = 248;
pub const EC: u8 = 247;
pub const AYT: u8 = 246;
pub const AO: u8 = 245;
/// Interrupt Process: what a client sends for Ctrl-C in some modes.
pub const IP: u8 = 244;
pub const BRK: u8 = 243;
pub const DM: u8 = 242;
pub const NOP: u8 = 241;

/// Option codes rackhand cares about.
pub const OPT_BINARY: u8 = 0;
pub const OPT_ECHO: u8 = 1;
pub const OPT_SGA: u8 = 3;
pub const OPT_TTYPE: u8 = 24;
pub const OPT_NAWS: u8 = 31;
pub const OPT_LINEMODE: u8 = 34;

/// Subnegotiation payloads longer than this are truncated: a peer must not make us buffer
/// without bound.
pub const MAX_SUBNEGOTIATION: usize = 1024;

/// The four negotiation verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Will,
    Wont,
    Do,
    Dont,
}

impl Verb {
    pub fn byte(self) -> u8 {
        match self {
            Verb::Will => WILL,
            Verb::Wont => WONT,
            Verb::Do => DO,
            Verb::Dont => DONT,
        }
    }

    fn from_byte(b: u8) -> Option<Verb> {
        match b {
            WILL => Some(Verb::Will),
            WONT => Some(Verb::Wont),
            DO => Some(Verb::Do),
            DONT => Some(Verb::Dont),
            _ => None,
        }
    }
}

/// Something the peer said that is not plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `IAC WILL/WONT/DO/DONT option`; feed it to a [`Negotiator`].
    Negotiation(Verb, u8),
    /// `IAC SB option ... IAC SE`, with IAC IAC inside already unescaped.
    Subnegotiation(u8, Vec<u8>),
    /// A NAWS subnegotiation, decoded (RFC 1073).
    WindowSize { width: u16, height: u16 },
    /// Any other two-byte command (`IP`, `AYT`, `BRK`, `NOP`, `GA`, ...).
    Command(u8),
}

/// Parser output in arrival order, so an `IP` between two keystrokes stays between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Data(Vec<u8>),
    Event(Event),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Data,
    /// A CR arrived in NVT mode; the next byte decides between CR LF, CR NUL and a bare CR.
    Cr,
    Iac,
    Verb(Verb),
    /// `IAC SB` seen, option byte next.
    SbOption,
    SbData,
    SbIac,
}

/// Incremental decoder of a received Telnet stream. Feed it whatever `read` returned; a
/// sequence split across reads is completed on the next call.
#[derive(Debug)]
pub struct Parser {
    state: State,
    sb_option: u8,
    sb_data: Vec<u8>,
    /// With TRANSMIT-BINARY received from the peer, CR is an ordinary byte (RFC 856).
    binary: bool,
}

impl Default for Parser {
    fn default() -> Self {
        Parser::new()
    }
}

impl Parser {
    pub fn new() -> Parser {
        Parser {
            state: State::Data,
            sb_option: 0,
            sb_data: Vec::new(),
            binary: false,
        }
    }

    /// Whether the peer's data is binary (its side of TRANSMIT-BINARY is enabled).
    pub fn set_binary(&mut self, binary: bool) {
        self.binary = binary;
    }

    /// Decodes `input`. Data has IAC IAC unescaped and, in NVT mode, CR NUL turned into CR
    /// (CR LF is kept as CR LF: the application decides what a line end is).
    pub fn feed(&mut self, input: &[u8]) -> Vec<Item> {
        let mut items = Vec::new();
        let mut data = Vec::with_capacity(input.len());
        for &b in input {
            match self.state {
                State::Data => self.data_byte(b, &mut data),
                State::Cr => {
                    self.state = State::Data;
                    match b {
                        0 => {}
                        b'\n' => data.push(b'\n'),
                        // A bare CR followed by something else: RFC 854 does not allow it, but
                        // clients send it; keep the byte.
                        _ => self.data_byte(b, &mut data),
                    }
                }
                State::Iac => {
                    self.state = State::Data;
                    if b == IAC {
                        data.push(IAC);
                    } else if let Some(verb) = Verb::from_byte(b) {
                        self.state = State::Verb(verb);
                    } else if b == SB {
                        self.state = State::SbOption;
                    } else {
                        flush(&mut data, &mut items);
                        items.push(Item::Event(Event::Command(b)));
                    }
                }
                State::Verb(verb) => {
                    self.state = State::Data;
                    flush(&mut data, &mut items);
                    items.push(Item::Event(Event::Negotiation(verb, b)));
                }
                State::SbOption => {
                    self.sb_option = b;
                    self.sb_data.clear();
                    self.state = State::SbData;
                }
                State::SbData => {
                    if b == IAC {
                        self.state = State::SbIac;
                    } else {
                        self.push_sb(b);
                    }
                }
                State::SbIac => match b {
                    IAC => {
                        self.push_sb(IAC);
                        self.state = State::SbData;
                    }
                    SE => {
                        self.state = State::Data;
                        flush(&mut data, &mut items);
                        items.push(Item::Event(self.finish_sb()));
                    }
                    _ => {
                        // IAC without SE inside a subnegotiation: the peer forgot SE. End the
                        // subnegotiation here and treat the byte as the command it starts.
                        flush(&mut data, &mut items);
                        items.push(Item::Event(self.finish_sb()));
                        self.state = State::Iac;
                        let rest = self.feed(&[b]);
                        items.extend(rest);
                    }
                },
            }
        }
        flush(&mut data, &mut items);
        items
    }

    fn data_byte(&mut self, b: u8, data: &mut Vec<u8>) {
        match b {
            IAC => self.state = State::Iac,
            b'\r' if !self.binary => {
                data.push(b'\r');
                self.state = State::Cr;
            }
            _ => data.push(b),
        }
    }

    fn push_sb(&mut self, b: u8) {
        if self.sb_data.len() < MAX_SUBNEGOTIATION {
            self.sb_data.push(b);
        }
    }

    fn finish_sb(&mut self) -> Event {
        let data = std::mem::take(&mut self.sb_data);
        if self.sb_option == OPT_NAWS && data.len() == 4 {
            return Event::WindowSize {
                width: u16::from_be_bytes([data[0], data[1]]),
                height: u16::from_be_bytes([data[2], data[3]]),
            };
        }
        Event::Subnegotiation(self.sb_option, data)
    }
}

fn flush(data: &mut Vec<u8>, items: &mut Vec<Item>) {
    if !data.is_empty() {
        items.push(Item::Data(std::mem::take(data)));
    }
}

/// Prepares application data for the wire: IAC doubled and, unless `binary`, a CR that is not
/// followed by LF sent as CR NUL (RFC 854), so the receiver cannot mistake it for a line end.
pub fn escape(data: &[u8], binary: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 16 + 2);
    for (i, &b) in data.iter().enumerate() {
        out.push(b);
        if b == IAC {
            out.push(IAC);
        } else if b == b'\r' && !binary && data.get(i + 1) != Some(&b'\n') {
            out.push(0);
        }
    }
    out
}

/// `IAC verb option`.
pub fn command(verb: Verb, option: u8) -> [u8; 3] {
    [IAC, verb.byte(), option]
}

/// `IAC SB option data IAC SE` with IAC inside `data` doubled.
pub fn subnegotiation(option: u8, data: &[u8]) -> Vec<u8> {
    let mut out = vec![IAC, SB, option];
    out.extend(escape(data, true));
    out.extend([IAC, SE]);
    out
}

/// The NAWS report a client sends (RFC 1073).
pub fn naws(width: u16, height: u16) -> Vec<u8> {
    let w = width.to_be_bytes();
    let h = height.to_be_bytes();
    subnegotiation(OPT_NAWS, &[w[0], w[1], h[0], h[1]])
}

/// RFC 1143 option state on one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Q {
    #[default]
    No,
    Yes,
    WantNo,
    WantYes,
}

/// One side of one option, with the RFC 1143 one-slot queue ("opposite" requested while a
/// negotiation is in flight).
#[derive(Debug, Clone, Copy, Default)]
struct Side {
    state: Q,
    opposite: bool,
}

/// A change of an option's effective state, for the application to act on (e.g. start
/// echoing, switch the parser to binary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub(crate) option: u8,
    /// `true`: our side (we WILL/WONT); `false`: the peer's side (it WILL/WONT).
    pub(crate) local: bool,
    pub(crate) enabled: bool,
}

/// Option negotiation by the RFC 1143 Q method. `accept_local`/`accept_remote` say which
/// options we agree to enable on our side (peer sends DO) and on the peer's side (peer sends
/// WILL); everything else is refused.
#[derive(Debug, Clone)]
pub struct Negotiator {
    us: [Side; 256],
    him: [Side; 256],
    accept_local: [bool; 256],
    accept_remote: [bool; 256],
}

impl Negotiator {
    pub fn new(accept_local: &[u8], accept_remote: &[u8]) -> Negotiator {
        let mut n = Negotiator {
            us: [Side::default(); 256],
            him: [Side::default(); 256],
            accept_local: [false; 256],
            accept_remote: [false; 256],
        };
        for &o in accept_local {
            n.accept_local[o as usize] = true;
        }
        for &o in accept_remote {
            n.accept_remote[o as usize] = true;
        }
        n
    }

    pub fn local_enabled(&self, option: u8) -> bool {
        self.us[option as usize].state == Q::Yes
    }

    pub fn remote_enabled(&self, option: u8) -> bool {
        self.him[option as usize].state == Q::Yes
    }

    /// We want our side of `option` on or off (WILL/WONT). Returns the bytes to send (maybe
    /// none: already there, or queued behind a negotiation in flight).
    pub fn request_local(&mut self, option: u8, enable: bool) -> Vec<u8> {
        if enable {
            self.accept_local[option as usize] = true;
        }
        let side = &mut self.us[option as usize];
        request(side, enable, Verb::Will, Verb::Wont, option)
    }

    /// We want the peer's side of `option` on or off (DO/DONT).
    pub fn request_remote(&mut self, option: u8, enable: bool) -> Vec<u8> {
        if enable {
            self.accept_remote[option as usize] = true;
        }
        let side = &mut self.him[option as usize];
        request(side, enable, Verb::Do, Verb::Dont, option)
    }

    /// Handles a received negotiation: returns the bytes to answer with and, if the option's
    /// effective state changed, what changed.
    pub fn receive(&mut self, verb: Verb, option: u8) -> (Vec<u8>, Option<Change>) {
        let o = option as usize;
        match verb {
            Verb::Will => {
                let accept = self.accept_remote[o];
                receive_yes(
                    &mut self.him[o],
                    accept,
                    Verb::Do,
                    Verb::Dont,
                    option,
                    false,
                )
            }
            Verb::Wont => receive_no(&mut self.him[o], Verb::Do, Verb::Dont, option, false),
            Verb::Do => {
                let accept = self.accept_local[o];
                receive_yes(
                    &mut self.us[o],
                    accept,
                    Verb::Will,
                    Verb::Wont,
                    option,
                    true,
                )
            }
            Verb::Dont => receive_no(&mut self.us[o], Verb::Will, Verb::Wont, option, true),
        }
    }
}

fn request(side: &mut Side, enable: bool, yes: Verb, no: Verb, option: u8) -> Vec<u8> {
    let send = |v: Verb| command(v, option).to_vec();
    match (enable, side.state) {
        (true, Q::No) => {
            side.state = Q::WantYes;
            send(yes)
        }
        (true, Q::WantNo) => {
            side.opposite = true;
            Vec::new()
        }
        (true, Q::WantYes) => {
            side.opposite = false;
            Vec::new()
        }
        (false, Q::Yes) => {
            side.state = Q::WantNo;
            send(no)
        }
        (false, Q::WantYes) => {
            side.opposite = true;
            Vec::new()
        }
        (false, Q::WantNo) => {
            side.opposite = false;
            Vec::new()
        }
        // Already in the wanted state.
        (true, Q::Yes) | (false, Q::No) => Vec::new(),
    }
}

/// RFC 1143 "Upon receipt of WILL" (or DO, for our side).
fn receive_yes(
    side: &mut Side,
    accept: bool,
    yes: Verb,
    no: Verb,
    option: u8,
    local: bool,
) -> (Vec<u8>, Option<Change>) {
    let change = |enabled| {
        Some(Change {
            option,
            local,
            enabled,
        })
    };
    match side.state {
        Q::No => {
            if accept {
                side.state = Q::Yes;
                (command(yes, option).to_vec(), change(true))
            } else {
                (command(no, option).to_vec(), None)
            }
        }
        // Already on: answering again is exactly the loop RFC 1143 forbids.
        Q::Yes => (Vec::new(), None),
        Q::WantNo => {
            if side.opposite {
                side.state = Q::Yes;
                side.opposite = false;
                (Vec::new(), change(true))
            } else {
                // The peer answered our DONT with WILL: an error by the RFC; settle on No.
                side.state = Q::No;
                (Vec::new(), None)
            }
        }
        Q::WantYes => {
            if side.opposite {
                side.state = Q::WantNo;
                side.opposite = false;
                (command(no, option).to_vec(), None)
            } else {
                side.state = Q::Yes;
                (Vec::new(), change(true))
            }
        }
    }
}

/// RFC 1143 "Upon receipt of WONT" (or DONT, for our side).
fn receive_no(
    side: &mut Side,
    yes: Verb,
    no: Verb,
    option: u8,
    local: bool,
) -> (Vec<u8>, Option<Change>) {
    let change = |enabled| {
        Some(Change {
            option,
            local,
            enabled,
        })
    };
    match side.state {
        Q::No => (Vec::new(), None),
        Q::Yes => {
            side.state = Q::No;
            (command(no, option).to_vec(), change(false))
        }
        Q::WantNo => {
            if side.opposite {
                side.state = Q::WantYes;
                side.opposite = false;
                (command(yes, option).to_vec(), None)
            } else {
                side.state = Q::No;
                (Vec::new(), change(false))
            }
        }
        Q::WantYes => {
            side.state = Q::No;
            side.opposite = false;
            (Vec::new(), None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Concatenated data and events, with adjacent data merged, so results from different
    /// split points compare equal.
    fn normalise(items: Vec<Item>) -> Vec<Item> {
        let mut out: Vec<Item> = Vec::new();
        for item in items {
            match (out.last_mut(), item) {
                (Some(Item::Data(prev)), Item::Data(more)) => prev.extend(more),
                (_, item) => out.push(item),
            }
        }
        out
    }

    fn feed_split(input: &[u8], at: usize) -> Vec<Item> {
        let mut p = Parser::new();
        let mut items = p.feed(&input[..at]);
        items.extend(p.feed(&input[at..]));
        normalise(items)
    }

    fn sample_stream() -> Vec<u8> {
        let mut s = b"ab".to_vec();
        s.extend([IAC, IAC]);
        s.extend(b"c\r\nd\r\0e");
        s.extend(command(Verb::Will, OPT_NAWS));
        s.extend(naws(80, 255));
        s.extend([IAC, IP]);
        s.extend(subnegotiation(OPT_TTYPE, &[0, IAC, b'x']));
        s.extend(b"\xfe\x00z");
        s
    }

    fn expected_items() -> Vec<Item> {
        vec![
            Item::Data(b"ab\xffc\r\nd\re".to_vec()),
            Item::Event(Event::Negotiation(Verb::Will, OPT_NAWS)),
            Item::Event(Event::WindowSize {
                width: 80,
                height: 255,
            }),
            Item::Event(Event::Command(IP)),
            Item::Event(Event::Subnegotiation(OPT_TTYPE, vec![0, IAC, b'x'])),
            Item::Data(b"\xfe\x00z".to_vec()),
        ]
    }

    #[test]
    fn whole_stream_decodes() {
        let mut p = Parser::new();
        assert_eq!(normalise(p.feed(&sample_stream())), expected_items());
    }

    #[test]
    fn split_at_every_byte_boundary_gives_the_same_result() {
        let s = sample_stream();
        for at in 0..=s.len() {
            assert_eq!(feed_split(&s, at), expected_items(), "split at byte {at}");
        }
    }

    #[test]
    fn byte_by_byte_gives_the_same_result() {
        let s = sample_stream();
        let mut p = Parser::new();
        let mut items = Vec::new();
        for b in &s {
            items.extend(p.feed(std::slice::from_ref(b)));
        }
        assert_eq!(normalise(items), expected_items());
    }

    #[test]
    fn iac_iac_is_one_data_byte_and_escape_round_trips() {
        let data: Vec<u8> = (0..=255u8)
            .chain([IAC, IAC, b'\r', 0, b'\r', b'\n'])
            .collect();
        let wire = escape(&data, true);
        assert_eq!(wire.iter().filter(|&&b| b == IAC).count(), 2 * 3);
        let mut p = Parser::new();
        p.set_binary(true);
        assert_eq!(normalise(p.feed(&wire)), vec![Item::Data(data)]);
    }

    #[test]
    fn nvt_escape_sends_bare_cr_as_cr_nul() {
        assert_eq!(escape(b"a\rb\r\n\r", false), b"a\r\0b\r\n\r\0".to_vec());
        let mut p = Parser::new();
        assert_eq!(
            normalise(p.feed(&escape(b"a\rb\r\n", false))),
            vec![Item::Data(b"a\rb\r\n".to_vec())]
        );
    }

    #[test]
    fn subnegotiation_with_escaped_iac_inside() {
        // NAWS width 255 is sent as IAC IAC inside SB.
        let wire = naws(0x00ff, 0xff00);
        assert_eq!(
            wire,
            vec![IAC, SB, OPT_NAWS, 0, IAC, IAC, IAC, IAC, 0, IAC, SE]
        );
        for at in 0..=wire.len() {
            assert_eq!(
                feed_split(&wire, at),
                vec![Item::Event(Event::WindowSize {
                    width: 255,
                    height: 0xff00
                })]
            );
        }
    }

    #[test]
    fn subnegotiation_is_bounded() {
        let mut wire = vec![IAC, SB, OPT_TTYPE];
        wire.extend(std::iter::repeat_n(b'x', MAX_SUBNEGOTIATION * 3));
        wire.extend([IAC, SE]);
        let mut p = Parser::new();
        match &p.feed(&wire)[..] {
            [Item::Event(Event::Subnegotiation(OPT_TTYPE, d))] => {
                assert_eq!(d.len(), MAX_SUBNEGOTIATION)
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn repeated_will_and_do_are_answered_once() {
        let mut n = Negotiator::new(&[OPT_ECHO], &[OPT_NAWS]);
        let (reply, change) = n.receive(Verb::Will, OPT_NAWS);
        assert_eq!(reply, command(Verb::Do, OPT_NAWS).to_vec());
        assert_eq!(
            change,
            Some(Change {
                option: OPT_NAWS,
                local: false,
                enabled: true
            })
        );
        for _ in 0..5 {
            assert_eq!(n.receive(Verb::Will, OPT_NAWS), (Vec::new(), None));
        }
        assert!(n.remote_enabled(OPT_NAWS));

        let (reply, _) = n.receive(Verb::Do, OPT_ECHO);
        assert_eq!(reply, command(Verb::Will, OPT_ECHO).to_vec());
        for _ in 0..5 {
            assert_eq!(n.receive(Verb::Do, OPT_ECHO), (Vec::new(), None));
        }
        assert!(n.local_enabled(OPT_ECHO));
    }

    #[test]
    fn our_request_acknowledged_is_not_answered_again() {
        let mut n = Negotiator::new(&[], &[]);
        assert_eq!(
            n.request_local(OPT_ECHO, true),
            command(Verb::Will, OPT_ECHO).to_vec()
        );
        // Asking again while in flight sends nothing.
        assert!(n.request_local(OPT_ECHO, true).is_empty());
        let (reply, change) = n.receive(Verb::Do, OPT_ECHO);
        assert!(
            reply.is_empty(),
            "a DO answering our WILL must not be answered"
        );
        assert!(change.is_some_and(|c| c.enabled && c.local));
        assert!(n.request_local(OPT_ECHO, true).is_empty());
    }

    #[test]
    fn refused_options_are_refused_once() {
        let mut n = Negotiator::new(&[], &[]);
        assert_eq!(
            n.receive(Verb::Will, OPT_LINEMODE).0,
            command(Verb::Dont, OPT_LINEMODE).to_vec()
        );
        assert_eq!(
            n.receive(Verb::Do, OPT_TTYPE).0,
            command(Verb::Wont, OPT_TTYPE).to_vec()
        );
        // WONT/DONT for options that are off are never answered.
        for _ in 0..5 {
            assert_eq!(n.receive(Verb::Wont, OPT_LINEMODE), (Vec::new(), None));
            assert_eq!(n.receive(Verb::Dont, OPT_TTYPE), (Vec::new(), None));
        }
    }

    #[test]
    fn two_negotiators_settle_without_looping() {
        // Both sides ask for everything at once; the exchange must end within a few rounds.
        let mut a = Negotiator::new(&[OPT_ECHO, OPT_SGA], &[OPT_NAWS, OPT_SGA]);
        let mut b = Negotiator::new(&[OPT_NAWS, OPT_SGA], &[OPT_ECHO, OPT_SGA]);
        let mut to_b = Vec::new();
        to_b.extend(a.request_local(OPT_ECHO, true));
        to_b.extend(a.request_local(OPT_SGA, true));
        to_b.extend(a.request_remote(OPT_NAWS, true));
        let mut to_a = Vec::new();
        to_a.extend(b.request_local(OPT_SGA, true));
        to_a.extend(b.request_remote(OPT_SGA, true));
        let (mut pa, mut pb) = (Parser::new(), Parser::new());
        let mut rounds = 0;
        while !(to_a.is_empty() && to_b.is_empty()) {
            rounds += 1;
            assert!(rounds < 10, "negotiation loops");
            let mut next_a = Vec::new();
            for item in pb.feed(&std::mem::take(&mut to_b)) {
                if let Item::Event(Event::Negotiation(v, o)) = item {
                    next_a.extend(b.receive(v, o).0);
                }
            }
            let mut next_b = Vec::new();
            for item in pa.feed(&std::mem::take(&mut to_a)) {
                if let Item::Event(Event::Negotiation(v, o)) = item {
                    next_b.extend(a.receive(v, o).0);
                }
            }
            to_a = next_a;
            to_b = next_b;
        }
        assert!(a.local_enabled(OPT_ECHO) && b.remote_enabled(OPT_ECHO));
        assert!(a.local_enabled(OPT_SGA) && a.remote_enabled(OPT_SGA));
        assert!(a.remote_enabled(OPT_NAWS) && b.local_enabled(OPT_NAWS));
    }

    #[test]
    fn disabling_while_enabling_is_queued_not_looped() {
        let mut n = Negotiator::new(&[], &[]);
        n.request_remote(OPT_NAWS, true);
        // Change of mind while the DO is in flight: queued, nothing sent.
        assert!(n.request_remote(OPT_NAWS, false).is_empty());
        // The WILL arrives: we now send DONT, once.
        let (reply, change) = n.receive(Verb::Will, OPT_NAWS);
        assert_eq!(reply, command(Verb::Dont, OPT_NAWS).to_vec());
        assert_eq!(change, None);
        let (reply, _) = n.receive(Verb::Wont, OPT_NAWS);
        assert!(reply.is_empty());
        assert!(!n.remote_enabled(OPT_NAWS));
    }

    #[test]
    fn random_streams_decode_the_same_however_they_are_split() {
        // Deterministic xorshift noise, biased towards the protocol's special bytes.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let special = [
            IAC, SB, SE, WILL, DO, WONT, DONT, b'\r', b'\n', 0, OPT_NAWS, IP,
        ];
        for round in 0..500 {
            let len = (next() % 64) as usize;
            let stream: Vec<u8> = (0..len)
                .map(|_| {
                    let r = next();
                    if r % 3 == 0 {
                        special[(r >> 8) as usize % special.len()]
                    } else {
                        r as u8
                    }
                })
                .collect();
            let whole = normalise(Parser::new().feed(&stream));
            let mut p = Parser::new();
            let mut pieces = Vec::new();
            let mut at = 0;
            while at < stream.len() {
                let step = 1 + (next() % 5) as usize;
                let end = (at + step).min(stream.len());
                pieces.extend(p.feed(&stream[at..end]));
                at = end;
            }
            assert_eq!(normalise(pieces), whole, "round {round}: {stream:?}");
        }
    }

    #[test]
    fn missing_se_ends_subnegotiation() {
        let mut p = Parser::new();
        let items = p.feed(&[IAC, SB, OPT_TTYPE, 1, IAC, IP, b'a']);
        assert_eq!(
            items,
            vec![
                Item::Event(Event::Subnegotiation(OPT_TTYPE, vec![1])),
                Item::Event(Event::Command(IP)),
                Item::Data(b"a".to_vec()),
            ]
        );
    }
}
