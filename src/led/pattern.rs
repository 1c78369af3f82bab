//! The blink patterns, as data, and the pure engine that walks them.
//!
//! A pattern is a list of steps (LED on or off, for how long) repeated forever. The engine
//! ([`Blinker`]) holds no clock and does no I/O: it is told the time and says which level the
//! LED should have and when the next change is due, so the thread that drives it sleeps until
//! exactly that deadline and the tests run it on a virtual clock.
//!
//! The patterns are chosen to be told apart by eye from across a rack, and to cost few
//! wake-ups: every step changes the LED (an unchanged step would be a wasted wake-up), and no
//! pattern changes it more than 4 times a second.

use std::time::{Duration, Instant};

use super::LedState;

/// One step of a pattern: the LED on or off, for this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Step {
    pub(crate) on: bool,
    pub(crate) lasts: Duration,
}

const fn on(ms: u64) -> Step {
    Step {
        on: true,
        lasts: Duration::from_millis(ms),
    }
}

const fn off(ms: u64) -> Step {
    Step {
        on: false,
        lasts: Duration::from_millis(ms),
    }
}

/// Fast even blink, twice a second: the agent is opening its spool and has not finished its
/// first round of collections yet.
const STARTING: &[Step] = &[on(250), off(250)];
/// A short blip every 2 s, a heartbeat: all is well.
const HEALTHY: &[Step] = &[on(100), off(1900)];
/// Two blips every 2 s: working, but the uplink is down, the spool is filling, or a device
/// fails its collections.
const DEGRADED: &[Step] = &[on(100), off(200), on(100), off(1600)];
/// Three fast blinks, then on for most of a second, every 2 s: needs someone.
const FAILING: &[Step] = &[
    on(150),
    off(150),
    on(150),
    off(150),
    on(150),
    off(150),
    on(900),
    off(200),
];

/// The pattern of a state.
pub(crate) fn pattern(state: LedState) -> &'static [Step] {
    match state {
        LedState::Starting => STARTING,
        LedState::Healthy => HEALTHY,
        LedState::Degraded => DEGRADED,
        LedState::Failing => FAILING,
    }
}

/// Where the LED is in its pattern.
#[derive(Debug, Clone)]
pub(crate) struct Blinker {
    state: LedState,
    step: usize,
    /// When the current step ends: the next deadline.
    step_ends: Instant,
}

impl Blinker {
    /// `state`'s pattern from its first step, at `now`.
    pub(crate) fn new(state: LedState, now: Instant) -> Blinker {
        Blinker {
            state,
            step: 0,
            step_ends: now + pattern(state)[0].lasts,
        }
    }

    /// Whether the LED is on now.
    pub(crate) fn on(&self) -> bool {
        pattern(self.state)[self.step].on
    }

    /// When the LED changes next.
    pub(crate) fn deadline(&self) -> Instant {
        self.step_ends
    }

    /// A new state starts its pattern from the top, so the change shows at once; the same
    /// state again changes nothing. Returns whether the state changed.
    pub(crate) fn set_state(&mut self, state: LedState, now: Instant) -> bool {
        if state == self.state {
            return false;
        }
        *self = Blinker::new(state, now);
        true
    }

    /// Moves past every step that has ended by `now`. A late wake-up (a loaded board) skips
    /// ahead within the pattern rather than replaying what it missed; deadlines stay on the
    /// pattern's own grid, so lateness does not accumulate.
    pub(crate) fn advance(&mut self, now: Instant) {
        let steps = pattern(self.state);
        // Bounded: a wake-up more than one whole cycle late starts the cycle again from now.
        let cycle: Duration = steps.iter().map(|s| s.lasts).sum();
        if now.saturating_duration_since(self.step_ends) >= cycle {
            *self = Blinker::new(self.state, now);
            return;
        }
        while self.step_ends <= now {
            self.step = (self.step + 1) % steps.len();
            self.step_ends += steps[self.step].lasts;
        }
    }
}

/// How many times per second `state`'s pattern changes the LED, i.e. wakes its thread.
#[cfg(test)]
fn changes_per_second(state: LedState) -> f64 {
    let steps = pattern(state);
    let cycle: Duration = steps.iter().map(|s| s.lasts).sum();
    steps.len() as f64 / cycle.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [LedState; 4] = [
        LedState::Starting,
        LedState::Healthy,
        LedState::Degraded,
        LedState::Failing,
    ];

    #[test]
    fn every_step_changes_the_led_and_patterns_start_on() {
        for state in ALL {
            let steps = pattern(state);
            assert!(
                steps[0].on,
                "{state:?} starts dark: the change would not show"
            );
            assert_eq!(steps.len() % 2, 0, "{state:?}: odd length repeats a level");
            for pair in steps.windows(2) {
                assert_ne!(pair[0].on, pair[1].on, "{state:?} repeats a level");
            }
        }
    }

    #[test]
    fn patterns_are_apart_by_eye_and_cheap() {
        // By eye: different numbers of blinks per cycle, or a different cycle.
        let shape = |s: LedState| {
            let steps = pattern(s);
            let blinks = steps.iter().filter(|s| s.on).count();
            let cycle: Duration = steps.iter().map(|s| s.lasts).sum();
            (blinks, cycle)
        };
        for (i, a) in ALL.iter().enumerate() {
            for b in &ALL[i + 1..] {
                assert_ne!(shape(*a), shape(*b), "{a:?} and {b:?} look alike");
            }
        }
        for state in ALL {
            assert!(
                changes_per_second(state) <= 4.0,
                "{state:?} wakes too often"
            );
            for step in pattern(state) {
                // Under ~100 ms a blink is hard to see; longer than 2 s looks stuck.
                assert!(step.lasts >= Duration::from_millis(100), "{state:?}");
                assert!(step.lasts <= Duration::from_secs(2), "{state:?}");
            }
        }
    }

    #[test]
    fn the_blinker_walks_its_pattern_on_the_given_clock() {
        let t0 = Instant::now();
        let mut b = Blinker::new(LedState::Degraded, t0);
        let mut seen = vec![(b.on(), b.deadline() - t0)];
        for _ in 0..5 {
            let at = b.deadline();
            b.advance(at);
            seen.push((b.on(), b.deadline() - t0));
        }
        let ms = Duration::from_millis;
        assert_eq!(
            seen,
            [
                (true, ms(100)),
                (false, ms(300)),
                (true, ms(400)),
                (false, ms(2000)),
                (true, ms(2100)),
                (false, ms(2300)),
            ]
        );
    }

    #[test]
    fn a_late_wake_up_skips_ahead_and_a_new_state_starts_at_its_top() {
        let t0 = Instant::now();
        let mut b = Blinker::new(LedState::Healthy, t0);
        // 50 ms late: off, and the next blip still at 2 s.
        b.advance(t0 + Duration::from_millis(150));
        assert!(!b.on());
        assert_eq!(b.deadline(), t0 + Duration::from_secs(2));
        // Ten seconds late: restart from now instead of replaying five cycles.
        let late = t0 + Duration::from_secs(12);
        b.advance(late);
        assert!(b.on());
        assert_eq!(b.deadline(), late + Duration::from_millis(100));
        assert!(!b.set_state(LedState::Healthy, late));
        assert!(b.set_state(LedState::Failing, late));
        assert!(b.on());
        assert_eq!(b.deadline(), late + Duration::from_millis(150));
    }
}
