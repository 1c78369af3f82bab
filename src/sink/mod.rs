//! Sinks: where records leave the agent. Today the `file` sink (NDJSON files); the spool in
//! front of every sink and the `http` and `mqtt` sinks follow (issue 5).

pub mod file;
pub mod http;
