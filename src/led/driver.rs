//! The LED thread: one loop that sleeps until the pattern's next change or a message.
//!
//! It waits with a deadline on a channel (`recv_timeout`): a new state or a stop wakes it at
//! once, and otherwise it wakes only when the LED is due to change, so the number of wake-ups
//! is the pattern's number of changes (at most 4 a second), never a polling rate. Time comes
//! through the [`Waiter`] seam: the real one is the channel and `Instant::now`, the tests' a
//! virtual clock that jumps to each deadline, so a minute of blinking runs in microseconds.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Instant;

use embedded_hal::digital::OutputPin;

use super::LedState;
use super::pattern::Blinker;

/// What the agent tells the LED thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    Show(LedState),
    Stop,
}

/// What ended a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    Command(Command),
    Deadline,
}

/// The thread's clock and mailbox.
pub(crate) trait Waiter {
    fn now(&self) -> Instant;
    /// Waits until `deadline` or a command, whichever is first. A sender gone is a stop.
    fn wait_until(&mut self, deadline: Instant) -> Wake;
}

/// The real one: the channel from the agent, and the monotonic clock.
pub(crate) struct ChannelWaiter(pub(crate) Receiver<Command>);

impl Waiter for ChannelWaiter {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wait_until(&mut self, deadline: Instant) -> Wake {
        match self
            .0
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(command) => Wake::Command(command),
            Err(RecvTimeoutError::Timeout) => Wake::Deadline,
            Err(RecvTimeoutError::Disconnected) => Wake::Command(Command::Stop),
        }
    }
}

/// Blinks `state`'s pattern on `pin` until told to stop. A write that fails ends the loop
/// (logged once): an LED that cannot be driven is not worth a thread. The pin is the
/// caller's, so dropping it (which gives the LED back) happens however this ends.
pub(crate) fn drive<P: OutputPin>(pin: &mut P, waiter: &mut impl Waiter, state: LedState)
where
    P::Error: std::fmt::Display,
{
    let mut blinker = Blinker::new(state, waiter.now());
    if !show(pin, &blinker) {
        return;
    }
    loop {
        let changed = match waiter.wait_until(blinker.deadline()) {
            Wake::Deadline => {
                blinker.advance(waiter.now());
                true
            }
            Wake::Command(Command::Show(state)) => blinker.set_state(state, waiter.now()),
            Wake::Command(Command::Stop) => return,
        };
        if changed && !show(pin, &blinker) {
            return;
        }
    }
}

/// Sets the LED to the blinker's level; false (and a warning) when that fails.
fn show<P: OutputPin>(pin: &mut P, blinker: &Blinker) -> bool
where
    P::Error: std::fmt::Display,
{
    let done = if blinker.on() {
        pin.set_high()
    } else {
        pin.set_low()
    };
    match done {
        Ok(()) => true,
        Err(e) => {
            log::warn!("status LED: {e}; it is left alone from now on");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::time::Duration;

    use embedded_hal_mock::eh1::digital::{Mock, State, Transaction};

    use super::*;

    /// A virtual clock with a script of commands at given times; counts the wake-ups that
    /// were deadlines (the thread's own, as opposed to the agent's messages).
    struct VirtualClock {
        now: Instant,
        script: VecDeque<(Instant, Command)>,
        deadline_wakes: u32,
        waits: u32,
    }

    impl VirtualClock {
        fn new(t0: Instant, script: &[(u64, Command)]) -> VirtualClock {
            VirtualClock {
                now: t0,
                script: script
                    .iter()
                    .map(|(ms, c)| (t0 + Duration::from_millis(*ms), *c))
                    .collect(),
                deadline_wakes: 0,
                waits: 0,
            }
        }
    }

    impl Waiter for VirtualClock {
        fn now(&self) -> Instant {
            self.now
        }

        fn wait_until(&mut self, deadline: Instant) -> Wake {
            self.waits += 1;
            // Bounded: a test that forgot its Stop ends here rather than looping forever.
            assert!(self.waits < 100_000, "the LED thread does not stop");
            assert!(deadline > self.now, "a deadline in the past: a busy loop");
            match self.script.front() {
                Some((at, _)) if *at <= deadline => {
                    let (at, command) = self.script.pop_front().expect("checked");
                    self.now = at;
                    Wake::Command(command)
                }
                _ => {
                    self.now = deadline;
                    self.deadline_wakes += 1;
                    Wake::Deadline
                }
            }
        }
    }

    fn set(on: bool) -> Transaction {
        Transaction::set(if on { State::High } else { State::Low })
    }

    #[test]
    fn the_pin_follows_the_pattern_and_a_new_state_shows_at_once() {
        let t0 = Instant::now();
        // Healthy: on 100 ms, off 1900 ms. At 2.5 s the agent says failing, at 2.7 s stop.
        let mut clock = VirtualClock::new(
            t0,
            &[
                (2500, Command::Show(LedState::Failing)),
                (2700, Command::Stop),
            ],
        );
        let expected = [
            set(true),  // 0: healthy blip
            set(false), // 100 ms
            set(true),  // 2000 ms: next blip
            set(false), // 2100 ms
            set(true),  // 2500 ms: failing starts with its first blink
            set(false), // 2650 ms
        ];
        let mut pin = Mock::new(&expected);
        drive(&mut pin, &mut clock, LedState::Healthy);
        pin.done();
        assert_eq!(clock.now, t0 + Duration::from_millis(2700));
    }

    #[test]
    fn the_same_state_again_does_not_touch_the_pin() {
        let t0 = Instant::now();
        let mut clock = VirtualClock::new(
            t0,
            &[
                (50, Command::Show(LedState::Starting)),
                (60, Command::Show(LedState::Starting)),
                (70, Command::Stop),
            ],
        );
        let mut pin = Mock::new(&[set(true)]);
        drive(&mut pin, &mut clock, LedState::Starting);
        pin.done();
    }

    #[test]
    fn a_failing_write_ends_the_thread() {
        let t0 = Instant::now();
        let mut clock = VirtualClock::new(t0, &[]);
        let err = embedded_hal_mock::eh1::MockError::Io(std::io::ErrorKind::PermissionDenied);
        let mut pin = Mock::new(&[set(true), set(false).with_error(err)]);
        drive(&mut pin, &mut clock, LedState::Healthy);
        pin.done();
        assert_eq!(clock.deadline_wakes, 1);
    }

    /// The figure the issue asks for: wake-ups per second in each state, counted over a
    /// virtual minute.
    #[test]
    fn wake_ups_per_second_are_few_in_every_state() {
        let minute = 60_000;
        let mut per_second = Vec::new();
        for state in [
            LedState::Starting,
            LedState::Healthy,
            LedState::Degraded,
            LedState::Failing,
        ] {
            let t0 = Instant::now();
            // Stop just after the minute, so a change due at 60 s counts.
            let mut clock = VirtualClock::new(t0, &[(minute + 1, Command::Stop)]);
            let mut pin = CountingPin::default();
            drive(&mut pin, &mut clock, state);
            let rate = f64::from(clock.deadline_wakes) / 60.0;
            assert_eq!(pin.writes, clock.deadline_wakes + 1, "{state:?}");
            assert!(rate <= 4.0, "{state:?}: {rate} wake-ups/s");
            per_second.push((state, rate));
        }
        assert_eq!(
            per_second,
            [
                (LedState::Starting, 4.0),
                (LedState::Healthy, 1.0),
                (LedState::Degraded, 2.0),
                (LedState::Failing, 4.0),
            ]
        );
    }

    /// A pin that only counts writes (a minute of mock transactions would be long to list).
    #[derive(Default)]
    struct CountingPin {
        writes: u32,
    }

    impl embedded_hal::digital::ErrorType for CountingPin {
        type Error = std::convert::Infallible;
    }

    impl OutputPin for CountingPin {
        fn set_low(&mut self) -> Result<(), Self::Error> {
            self.writes += 1;
            Ok(())
        }
        fn set_high(&mut self) -> Result<(), Self::Error> {
            self.writes += 1;
            Ok(())
        }
    }
}
