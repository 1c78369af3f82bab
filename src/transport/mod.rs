//! Transports move bytes to and from a device: SSH, Telnet, a serial console, a child process.
//! Nothing else — no prompts, no paging, no platform knowledge (that is `channel` and
//! `driver`). Every read takes a deadline, so no layer above ever blocks without one.

pub(crate) mod resolve;
pub mod serial;
pub mod ssh;
pub mod telnet;

use std::time::Instant;

/// What can go wrong while moving bytes. Mapped once into a record's `status` by the session.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("no data from {peer} before the deadline")]
    TimedOut { peer: String },
    #[error("{peer} closed the connection")]
    Closed { peer: String },
    #[error("cannot connect to {peer}: {detail}")]
    Connect { peer: String, detail: String },
    /// Another program holds the serial port (its exclusive open, or a live UUCP lock):
    /// the port is busy, not broken.
    #[error("cannot connect to {peer}: {holder}")]
    Busy {
        peer: String,
        holder: Box<serial::PortHolder>,
    },
    /// The device's name gave no address within its connect deadline.
    #[error("cannot connect to {peer}: {source}")]
    Resolve {
        peer: String,
        #[source]
        source: resolve::ResolveError,
    },
    #[error("{peer} refused the credentials: {detail}")]
    Auth { peer: String, detail: String },
    #[error(
        "host key of {peer} does not match {known_hosts}: {detail}; if the device was replaced, remove its old key from that file"
    )]
    HostKeyMismatch {
        peer: String,
        known_hosts: String,
        detail: String,
    },
    #[error("{peer}: {detail}")]
    Io { peer: String, detail: String },
}

/// A byte pipe to one device.
pub trait Transport: Send {
    /// Reads what is available, waiting at most until `deadline`. `Ok(0)` is never returned:
    /// a closed peer is `Err(Closed)`, an expired deadline `Err(TimedOut)`.
    fn recv(&mut self, buf: &mut [u8], deadline: Instant) -> Result<usize, TransportError>;

    /// Writes all of `data`.
    fn send(&mut self, data: &[u8]) -> Result<(), TransportError>;

    /// `ssh 10.0.0.1:22`, `serial /dev/ttyUSB0`: for messages.
    fn peer(&self) -> &str;

    /// Text the channel set aside: the device printed it on its own (log lines, a backlog at
    /// wake-up), during a session. Dropped by default; a captured console's lease
    /// (`crate::console`) sends it up as console records.
    fn set_aside(&mut self, _text: &[u8]) {}

    /// Sends a BREAK (serial line break, Telnet IAC BRK). Transports without one say so.
    fn send_break(&mut self) -> Result<(), TransportError> {
        Err(TransportError::Io {
            peer: self.peer().to_string(),
            detail: "this transport cannot send a BREAK".into(),
        })
    }
}

/// Sessions hold whichever transport the device uses behind one box.
impl<T: Transport + ?Sized> Transport for Box<T> {
    fn recv(&mut self, buf: &mut [u8], deadline: Instant) -> Result<usize, TransportError> {
        (**self).recv(buf, deadline)
    }

    fn send(&mut self, data: &[u8]) -> Result<(), TransportError> {
        (**self).send(data)
    }

    fn peer(&self) -> &str {
        (**self).peer()
    }

    fn send_break(&mut self) -> Result<(), TransportError> {
        (**self).send_break()
    }

    fn set_aside(&mut self, text: &[u8]) {
        (**self).set_aside(text)
    }
}
