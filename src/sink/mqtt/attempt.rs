//! One attempt at a batch: a clean connection, every record published on it, every PUBACK
//! back.
//!
//! The attempt counts as delivered only when as many PUBLISHes as the batch has records went
//! out on one connection (one `generation`) and none awaits its PUBACK. A connection lost on
//! the way fails the attempt, and the next one publishes the whole batch again on a fresh
//! connection: a broker restarted without persistence has lost the session and with it every
//! unacknowledged message, so resuming rumqttc's in-flight queue would not be enough.

use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use rumqttc::{ClientError, QoS};

use super::connection::{Phase, Shared, State, wait};
use super::{MqttSink, StopFlag};
use crate::config::url::redact;

/// Why one attempt failed; the text is for the operator.
pub(super) enum Failure {
    /// Worth another attempt after the backoff.
    Retry(String),
    Stopped(String),
    Deadline(String),
}

type Guard<'a> = MutexGuard<'a, State>;
/// A failed step, with the lock it held (the attempt then drops the connection).
type Failed<'a> = (Guard<'a>, Failure);

/// The limits of one attempt: `timeout` from its start, never past the batch's `until`, and
/// the stop flag.
struct Window<'a> {
    url: String,
    timeout: Duration,
    deadline: Instant,
    until: Instant,
    stop: &'a StopFlag,
}

impl Window<'_> {
    /// Time ran out: the batch's own deadline, or only this attempt's (worth another).
    fn expired(&self, what: String) -> Failure {
        if self.deadline >= self.until {
            Failure::Deadline(what)
        } else {
            Failure::Retry(what)
        }
    }

    /// A wait ended without news: stopped, or out of time.
    fn ended(&self, stopped: bool, what: String) -> Failure {
        if stopped {
            Failure::Stopped(what)
        } else {
            self.expired(what)
        }
    }
}

/// The connection an attempt publishes on: its number (CONNACKs so far) and the PUBLISHes
/// it had carried before the attempt began.
#[derive(Clone, Copy)]
struct OnConnection {
    generation: u64,
    base: u64,
}

impl OnConnection {
    fn lost(&self, st: &State) -> bool {
        st.generation != self.generation || st.phase != Phase::Connected
    }

    /// The failure of a lost connection: why it ended, as the connection thread worded it.
    fn lost_failure<'a>(&self, st: Guard<'a>, url: &str) -> Failed<'a> {
        let error = st
            .last_error
            .clone()
            .unwrap_or_else(|| format!("the connection to {url} closed"));
        (st, Failure::Retry(error))
    }
}

impl MqttSink {
    /// One attempt: a usable connection, every record published on it, every PUBACK back.
    pub(super) fn attempt(
        &mut self,
        records: &[(String, Vec<u8>)],
        until: Instant,
        stop: &StopFlag,
    ) -> Result<(), Failure> {
        let timeout = self.config.timeout;
        let window = Window {
            url: redact(&self.config.broker).into_owned(),
            timeout,
            deadline: (Instant::now() + timeout).min(until),
            until,
            stop,
        };
        let shared = Arc::clone(&self.shared);
        let (st, on) = connect(&shared, shared.lock(), &window)?;
        let delivered = self
            .publish(&shared, st, records, &window, on)
            .and_then(|st| await_pubacks(&shared, st, records.len() as u64, &window, on));
        let (st, failure) = match delivered {
            Ok(()) => return Ok(()),
            Err(failed) => failed,
        };
        // Requests of this attempt may still sit in the queue: the next attempt must not
        // count them as its own, so this connection is dropped and the next one starts clean.
        if st.phase != Phase::Idle {
            let mut st = st;
            st.close = true;
            shared.changed.notify_all();
            drop(st);
            let _ = self.client.try_disconnect();
        }
        Err(failure)
    }

    /// Step 2: every record handed to rumqttc, which takes `QUEUE` requests at a time.
    fn publish<'a>(
        &self,
        shared: &'a Shared,
        mut st: Guard<'a>,
        records: &[(String, Vec<u8>)],
        window: &Window<'_>,
        on: OnConnection,
    ) -> Result<Guard<'a>, Failed<'a>> {
        let n = records.len();
        let mut queued = 0;
        while queued < n {
            if on.lost(&st) {
                return Err(on.lost_failure(st, &window.url));
            }
            let (topic, payload) = &records[queued];
            match self
                .client
                .try_publish(topic.as_str(), QoS::AtLeastOnce, false, payload.clone())
            {
                Ok(()) => {
                    queued += 1;
                    continue;
                }
                Err(ClientError::TryRequest(_) | ClientError::Request(_)) => {}
            }
            st = match wait(shared, st, window.deadline, window.stop) {
                Ok(st) => st,
                Err(stopped) => {
                    let what = format!(
                        "{} took {queued} of {n} records within {:.1}s",
                        window.url,
                        window.timeout.as_secs_f64()
                    );
                    return Err((shared.lock(), window.ended(stopped, what)));
                }
            };
        }
        Ok(st)
    }
}

/// Step 1: a connection that carries nothing of an earlier attempt. Asks the connection
/// thread for one when it is idle; a connection that ends meanwhile fails the attempt with
/// its reason.
fn connect<'a>(
    shared: &'a Shared,
    mut st: Guard<'a>,
    window: &Window<'_>,
) -> Result<(Guard<'a>, OnConnection), Failure> {
    let mut seen = st.ended;
    // Bounded by the window: every wait returns by its deadline.
    let generation = loop {
        if st.phase == Phase::Connected && !st.close {
            break st.generation;
        }
        if st.ended != seen {
            seen = st.ended;
            if let Some(error) = st.last_error.clone() {
                return Err(Failure::Retry(error));
            }
        }
        if st.phase == Phase::Idle && !st.go {
            st.go = true;
            shared.changed.notify_all();
        }
        st = match wait(shared, st, window.deadline, window.stop) {
            Ok(st) => st,
            Err(true) => return Err(Failure::Stopped(format!("connecting to {}", window.url))),
            Err(false) => {
                return Err(window.expired(format!(
                    "{} did not accept the connection within {:.1}s; the broker is slow or unreachable",
                    window.url,
                    window.timeout.as_secs_f64()
                )));
            }
        };
    };
    let base = st.published;
    Ok((st, OnConnection { generation, base }))
}

/// Step 3: as many PUBLISHes out on this connection as there are records, and none of them
/// still awaiting its PUBACK.
fn await_pubacks<'a>(
    shared: &'a Shared,
    mut st: Guard<'a>,
    records: u64,
    window: &Window<'_>,
    on: OnConnection,
) -> Result<(), Failed<'a>> {
    // Bounded by the window: every wait returns by its deadline.
    loop {
        if on.lost(&st) {
            return Err(on.lost_failure(st, &window.url));
        }
        let sent = st.published - on.base;
        if sent >= records && st.unacked.is_empty() {
            return Ok(());
        }
        st = match wait(shared, st, window.deadline, window.stop) {
            Ok(st) => st,
            Err(stopped) => {
                let st = shared.lock();
                let acked = (st.published - on.base).saturating_sub(st.unacked.len() as u64);
                let what = format!(
                    "{} acknowledged {acked} of {records} records within {:.1}s",
                    window.url,
                    window.timeout.as_secs_f64()
                );
                return Err((st, window.ended(stopped, what)));
            }
        };
    }
}
