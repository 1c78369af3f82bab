//! telnet transport (being written).
