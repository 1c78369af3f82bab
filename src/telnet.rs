//! Telnet protocol (RFC 854/855) state machine, no I/O.
