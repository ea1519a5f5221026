//! The executor's one timer list. `State` arms every timer (`Action::Arm { at, timer }`) and
//! decides what each means when it is due (`Event::Timer`); the loop only keeps them, sleeps
//! until the earliest, and pushes the due ones as events, earliest first.

use std::time::Instant;

use crate::supervisor::state::{Pid, Timer};

#[derive(Debug, Default)]
pub(super) struct Timers {
    /// In arming order; few entries (a handful per worker at most).
    entries: Vec<(Instant, Timer)>,
}

impl Timers {
    /// Arming a timer that is already armed moves it to `at`.
    pub(super) fn arm(&mut self, at: Instant, timer: Timer) {
        self.disarm(timer);
        self.entries.push((at, timer));
    }

    pub(super) fn disarm(&mut self, timer: Timer) {
        self.entries.retain(|(_, t)| *t != timer);
    }

    /// When the loop must wake up at the latest.
    pub(super) fn earliest(&self) -> Option<Instant> {
        self.entries.iter().map(|(at, _)| *at).min()
    }

    /// Removes and returns the timers due at `now`, earliest first (in arming order when due at
    /// the same moment).
    pub(super) fn take_due(&mut self, now: Instant) -> Vec<Timer> {
        let mut due: Vec<(Instant, Timer)> = Vec::new();
        self.entries.retain(|(at, timer)| {
            if *at <= now {
                due.push((*at, *timer));
                false
            } else {
                true
            }
        });
        // Stable: equal times keep their arming order.
        due.sort_by_key(|(at, _)| *at);
        due.into_iter().map(|(_, timer)| timer).collect()
    }

    /// A forgotten worker's timers would only wake the loop for nothing.
    pub(super) fn forget_worker(&mut self, pid: Pid) {
        self.entries.retain(|(_, t)| t.pid() != Some(pid));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn due_timers_come_earliest_first_and_the_rest_wait() {
        let t = Instant::now();
        let s = Duration::from_secs;
        let mut timers = Timers::default();
        assert_eq!(timers.earliest(), None);
        timers.arm(t + s(30), Timer::Drain { pid: 10 });
        timers.arm(t + s(5), Timer::Kill { pid: 11 });
        timers.arm(t + s(10), Timer::Stop);
        timers.arm(t + s(5), Timer::Respawn);
        timers.arm(t + s(1), Timer::Ready { pid: 12 });
        assert_eq!(timers.earliest(), Some(t + s(1)));
        assert!(timers.take_due(t).is_empty());
        assert_eq!(
            timers.take_due(t + s(10)),
            vec![
                Timer::Ready { pid: 12 },
                Timer::Kill { pid: 11 },
                Timer::Respawn,
                Timer::Stop
            ]
        );
        assert_eq!(timers.earliest(), Some(t + s(30)));
        assert!(timers.take_due(t + s(29)).is_empty());
        assert_eq!(timers.take_due(t + s(30)), vec![Timer::Drain { pid: 10 }]);
        assert_eq!(timers.earliest(), None);
    }

    #[test]
    fn rearming_moves_a_timer_and_disarming_removes_it() {
        let t = Instant::now();
        let mut timers = Timers::default();
        timers.arm(t + Duration::from_secs(1), Timer::Kill { pid: 10 });
        timers.arm(t + Duration::from_secs(9), Timer::Kill { pid: 10 });
        timers.arm(t + Duration::from_secs(2), Timer::Ready { pid: 11 });
        timers.disarm(Timer::Ready { pid: 11 });
        assert_eq!(timers.earliest(), Some(t + Duration::from_secs(9)));
        assert_eq!(
            timers.take_due(t + Duration::from_secs(9)),
            vec![Timer::Kill { pid: 10 }]
        );
    }

    #[test]
    fn a_forgotten_worker_leaves_no_timer() {
        let t = Instant::now();
        let mut timers = Timers::default();
        timers.arm(t, Timer::Kill { pid: 10 });
        timers.arm(t, Timer::Drain { pid: 10 });
        timers.arm(t, Timer::Kill { pid: 11 });
        timers.arm(t, Timer::Stop);
        timers.forget_worker(10);
        assert_eq!(
            timers.take_due(t),
            vec![Timer::Kill { pid: 11 }, Timer::Stop]
        );
    }
}
