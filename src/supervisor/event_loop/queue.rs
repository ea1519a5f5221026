//! The executor's event queue. The loop pushes what it observes (a signal, a child's exit, a
//! probe's answer, a due timer) and what carrying out an action produced (a spawned pid, a failed
//! spawn); `drain` hands one event at a time to `State::decide` and carries out every action that
//! comes back before the next event is decided. So an action never re-enters the state machine
//! while the actions of an earlier decision are still being carried out.

use std::collections::VecDeque;

use crate::supervisor::state::{Action, Event};

#[derive(Debug, Default)]
pub(super) struct EventQueue {
    events: VecDeque<Event>,
}

impl EventQueue {
    /// Decided after every event already queued, and after all actions of the decision being
    /// carried out now.
    pub(super) fn push(&mut self, event: Event) {
        self.events.push_back(event);
    }

    fn pop(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

/// What `drain` needs of the executor.
pub(super) trait Executor {
    fn queue(&mut self) -> &mut EventQueue;
    fn decide(&mut self, event: Event) -> Vec<Action>;
    /// May push events (never decide them).
    fn apply(&mut self, action: Action);
}

/// Decides the queued events in order, and what their actions push, until none is left.
pub(super) fn drain(executor: &mut impl Executor) {
    while let Some(event) = executor.queue().pop() {
        for action in executor.decide(event) {
            executor.apply(action);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::supervisor::state::{ReloadKind, Signal, State};

    /// A real `State` behind the queue; applying an action only records it, and a `Spawn` pushes
    /// the pid it would have produced, as the executor does.
    struct Recorder {
        queue: EventQueue,
        state: State,
        now: Instant,
        seen: Vec<String>,
        /// Pushed while `CommitSockets` is applied: an event the loop would observe meanwhile.
        on_commit: Option<Event>,
    }

    impl Executor for Recorder {
        fn queue(&mut self) -> &mut EventQueue {
            &mut self.queue
        }
        fn decide(&mut self, event: Event) -> Vec<Action> {
            self.seen.push(format!("decide {event:?}"));
            self.state.decide(event, self.now)
        }
        fn apply(&mut self, action: Action) {
            match &action {
                Action::Spawn { generation, .. } => self.queue.push(Event::Spawned {
                    generation: *generation,
                    pid: 100 + *generation as i32,
                }),
                Action::CommitSockets { .. } => {
                    if let Some(event) = self.on_commit.take() {
                        self.queue.push(event);
                    }
                }
                _ => {}
            }
            self.seen.push(format!("apply {action:?}"));
        }
    }

    fn recorder() -> Recorder {
        Recorder {
            queue: EventQueue::default(),
            state: State::default(),
            now: Instant::now(),
            seen: Vec::new(),
            on_commit: None,
        }
    }

    fn position(seen: &[String], prefix: &str) -> usize {
        seen.iter()
            .position(|s| s.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in {seen:#?}"))
    }

    #[test]
    fn what_an_action_produces_is_decided_next() {
        let mut r = recorder();
        r.queue.push(Event::Boot);
        drain(&mut r);
        assert_eq!(r.state.starting_pid(), Some(101), "{:#?}", r.seen);
        assert!(position(&r.seen, "apply Spawn") < position(&r.seen, "decide Spawned"));
    }

    /// An event pushed while an action is carried out waits until every other action of the
    /// same decision is carried out: the old worker's exit, observed while the new worker's
    /// sockets are committed, does not cut in before the old worker's soft stop.
    #[test]
    fn an_event_pushed_by_an_action_waits_for_the_rest_of_its_decision() {
        let mut r = recorder();
        r.queue.push(Event::Boot);
        drain(&mut r);
        r.queue.push(Event::WorkerReady { pid: 101 });
        drain(&mut r);
        r.queue.push(Event::ReloadRequested(ReloadKind::Soft));
        drain(&mut r);
        r.on_commit = Some(Event::WorkerExited {
            pid: 101,
            status: "exit status 0".into(),
            code: 0,
        });
        r.seen.clear();
        r.queue.push(Event::WorkerReady { pid: 102 });
        drain(&mut r);
        let soft_stop = format!(
            "apply {:?}",
            Action::Signal {
                pid: 101,
                signal: Signal::SoftStop
            }
        );
        let exited = position(&r.seen, "decide WorkerExited");
        assert!(position(&r.seen, &soft_stop) < exited, "{:#?}", r.seen);
        assert!(
            position(&r.seen, "apply NotifyReady") < exited,
            "{:#?}",
            r.seen
        );
        assert!(r.state.worker(101).is_none());
        assert_eq!(r.state.current().map(|w| w.pid), Some(102));
    }
}
