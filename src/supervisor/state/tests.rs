//! `State::decide` as a table of cases: each test is one race or request the master can meet,
//! with no process and no waiting.

use super::*;

fn has(actions: &[Action], pred: impl Fn(&Action) -> bool) -> bool {
    actions.iter().any(pred)
}

fn fired(timer: Timer) -> Event {
    Event::Timer {
        timer,
        detail: None,
    }
}

/// Worker `pid` was reaped with this status text and exit code.
fn reaped(pid: Pid, status: &str, code: i32) -> Event {
    Event::WorkerExited {
        pid,
        status: status.into(),
        code,
    }
}

fn spawn_gen(actions: &[Action]) -> Option<Generation> {
    actions.iter().find_map(|a| match a {
        Action::Spawn { generation, .. } => Some(*generation),
        _ => None,
    })
}

/// Boots and makes worker `pid` current.
fn running(pid: Pid, t: Instant) -> State {
    let mut s = State::default();
    let a = s.decide(Event::Boot, t);
    let g = spawn_gen(&a).unwrap();
    s.decide(Event::Spawned { generation: g, pid }, t);
    let a = s.decide(Event::WorkerReady { pid }, t);
    assert!(has(&a, |a| matches!(
        a,
        Action::NotifyReady { first: true, .. }
    )));
    assert!(has(&a, |a| *a == Action::CommitSockets { pid }));
    assert!(has(&a, |a| *a
        == Action::Disarm {
            timer: Timer::Ready { pid }
        }));
    s
}

/// Requests a reload and reports its worker `pid` started; returns the reload's generation.
fn start_reload(s: &mut State, pid: Pid, t: Instant) -> Generation {
    let a = s.decide(Event::ReloadRequested(ReloadKind::Soft), t);
    assert!(has(&a, |a| matches!(a, Action::NotifyReloading { .. })));
    let generation = spawn_gen(&a).unwrap();
    s.decide(Event::Spawned { generation, pid }, t);
    generation
}

fn reload_to(s: &mut State, pid: Pid, t: Instant) -> Vec<Action> {
    start_reload(s, pid, t);
    s.decide(Event::WorkerReady { pid }, t)
}

#[test]
fn reload_soft_stops_old_after_new_is_ready() {
    let t = Instant::now();
    let mut s = running(10, t);
    let a = s.decide(Event::ReloadRequested(ReloadKind::Soft), t);
    let g = spawn_gen(&a).unwrap();
    assert_eq!(g, 2);
    let a = s.decide(
        Event::Spawned {
            generation: g,
            pid: 11,
        },
        t,
    );
    assert!(
        !has(&a, |a| matches!(a, Action::Signal { .. })),
        "old worker untouched while new starts"
    );
    let a = s.decide(Event::WorkerReady { pid: 11 }, t);
    assert!(has(&a, |a| *a
        == Action::Signal {
            pid: 10,
            signal: Signal::SoftStop
        }));
    assert!(has(&a, |a| *a == Action::CommitSockets { pid: 11 }));
    assert_eq!(s.current().unwrap().pid, 11);
    assert_eq!(s.worker(10).unwrap().role, Role::Draining);
    let a = s.decide(reaped(10, "exit 0", 0), t);
    assert!(has(&a, |a| *a
        == Action::Forget {
            pid: 10,
            generation: 1
        }));
    assert!(!has(&a, |a| matches!(a, Action::Spawn { .. })));
}

#[test]
fn failed_reload_leaves_old_worker_alone() {
    let t = Instant::now();
    let mut s = running(10, t);
    start_reload(&mut s, 11, t);
    let a = s.decide(reaped(11, "exit 1", 0), t);
    assert!(!has(&a, |a| matches!(a, Action::Signal { pid: 10, .. })));
    assert!(has(
        &a,
        |a| matches!(a, Action::NotifyReady { status, .. } if status.starts_with("Reload failed: haproxy exited (exit 1)") && status.contains("worker pid 10"))
    ));
    assert_eq!(s.current().unwrap().pid, 10);
}

#[test]
fn ready_timeout_aborts_new_worker() {
    let t = Instant::now();
    let mut s = running(10, t);
    start_reload(&mut s, 11, t);
    let a = s.decide(
        Event::WorkerFailed {
            pid: 11,
            reason: "not ready".into(),
        },
        t,
    );
    assert!(has(&a, |a| *a == Action::Abort { pid: 11 }));
    assert!(has(
        &a,
        |a| matches!(a, Action::NotifyReady { status, .. } if status.starts_with("Reload failed"))
    ));
    // Its later exit is only forgotten.
    let a = s.decide(reaped(11, "signal 15", 0), t);
    assert_eq!(a.len(), 2, "{a:?}");
    assert_eq!(s.current().unwrap().pid, 10);
}

#[test]
fn reloads_during_a_reload_coalesce_into_one() {
    let t = Instant::now();
    let mut s = running(10, t);
    let a = s.decide(Event::ReloadRequested(ReloadKind::Soft), t);
    let g = spawn_gen(&a).unwrap();
    for _ in 0..50 {
        let a = s.decide(Event::ReloadRequested(ReloadKind::Soft), t);
        assert!(spawn_gen(&a).is_none());
    }
    s.decide(
        Event::Spawned {
            generation: g,
            pid: 11,
        },
        t,
    );
    let a = s.decide(Event::WorkerReady { pid: 11 }, t);
    assert_eq!(spawn_gen(&a), Some(3), "exactly one queued reload runs");
    s.decide(
        Event::Spawned {
            generation: 3,
            pid: 12,
        },
        t,
    );
    let a = s.decide(Event::WorkerReady { pid: 12 }, t);
    assert!(spawn_gen(&a).is_none());
    assert!(has(&a, |a| *a
        == Action::Signal {
            pid: 11,
            signal: Signal::SoftStop
        }));
}

#[test]
fn crash_is_replaced_at_once_then_backs_off() {
    let t = Instant::now();
    let mut s = running(10, t);
    let a = s.decide(reaped(10, "signal 9", 0), t);
    assert!(has(&a, |a| matches!(
        a,
        Action::Spawn {
            kind: StartKind::Replace,
            ..
        }
    )));
    let g = spawn_gen(&a).unwrap();
    s.decide(
        Event::Spawned {
            generation: g,
            pid: 11,
        },
        t,
    );
    s.decide(Event::WorkerReady { pid: 11 }, t);
    let a = s.decide(reaped(11, "signal 9", 0), t);
    assert!(has(&a, |a| *a
        == Action::Arm {
            at: t + Duration::from_millis(100),
            timer: Timer::Respawn
        }));
    assert!(spawn_gen(&a).is_none());
    let a = s.decide(fired(Timer::Respawn), t);
    assert!(spawn_gen(&a).is_some());
}

#[test]
fn stable_worker_resets_backoff() {
    let t = Instant::now();
    let mut s = running(10, t);
    s.crash_streak = 5;
    let later = t + STABLE_AFTER;
    let a = s.decide(reaped(10, "signal 9", 0), later);
    assert!(spawn_gen(&a).is_some(), "{a:?}");
}

#[test]
fn backoff_grows_to_cap() {
    assert_eq!(backoff(1), Duration::ZERO);
    assert_eq!(backoff(2), Duration::from_millis(100));
    assert_eq!(backoff(3), Duration::from_millis(200));
    assert_eq!(backoff(100), MAX_BACKOFF);
}

#[test]
fn initial_failure_exits_nonzero() {
    let t = Instant::now();
    let mut s = State::default();
    s.decide(Event::Boot, t);
    s.decide(
        Event::Spawned {
            generation: 1,
            pid: 10,
        },
        t,
    );
    let a = s.decide(reaped(10, "exit 1", 0), t);
    assert!(has(&a, |a| *a == Action::Exit { code: 1 }), "{a:?}");
    assert!(
        logs(&a).contains(&"stopping: no worker left to signal"),
        "{a:?}"
    );
}

#[test]
fn initial_exec_failure_exits_nonzero() {
    let t = Instant::now();
    let mut s = State::default();
    s.decide(Event::Boot, t);
    let a = s.decide(
        Event::SpawnFailed {
            generation: 1,
            reason: "no such file".into(),
        },
        t,
    );
    assert!(has(&a, |a| *a == Action::Exit { code: 1 }), "{a:?}");
}

#[test]
fn stop_terminates_all_and_exits_when_reaped() {
    let t = Instant::now();
    let mut s = running(10, t);
    reload_to(&mut s, 11, t);
    let a = s.decide(Event::StopRequested, t);
    assert!(has(&a, |a| *a
        == Action::Signal {
            pid: 10,
            signal: Signal::Terminate
        }));
    assert!(has(&a, |a| *a
        == Action::Signal {
            pid: 11,
            signal: Signal::Terminate
        }));
    assert!(has(&a, |a| *a
        == Action::Arm {
            at: t + STOP_GRACE,
            timer: Timer::Stop
        }));
    let a = s.decide(reaped(11, "exit 0", 0), t);
    assert!(!has(&a, |a| matches!(
        a,
        Action::Exit { .. } | Action::Spawn { .. }
    )));
    let a = s.decide(fired(Timer::Stop), t);
    assert_eq!(
        a[0],
        Action::Signal {
            pid: 10,
            signal: Signal::Kill
        }
    );
    let a = s.decide(reaped(10, "signal 9", 0), t);
    assert!(has(&a, |a| *a == Action::Exit { code: 0 }));
    assert!(s
        .decide(Event::ReloadRequested(ReloadKind::Soft), t)
        .is_empty());
}

/// haproxy's master passes SIGINT on and exits with the first current worker's status that is
/// neither 0 nor 143; old workers' statuses do not count.
#[test]
fn interrupt_is_passed_on_and_the_current_workers_status_is_the_exit_code() {
    let exited = |pid: Pid, code: i32| Event::WorkerExited {
        pid,
        status: format!("exit {code}"),
        code,
    };
    let t = Instant::now();
    let mut s = running(10, t);
    reload_to(&mut s, 11, t);
    let a = s.decide(Event::InterruptRequested, t);
    for pid in [10, 11] {
        assert!(has(&a, |a| *a
            == Action::Signal {
                pid,
                signal: Signal::Interrupt
            }));
    }
    // The old worker's own status is not the master's.
    let a = s.decide(exited(10, 1), t);
    assert!(!has(&a, |a| matches!(a, Action::Exit { .. })), "{a:?}");
    let a = s.decide(exited(11, 130), t);
    assert!(has(&a, |a| *a == Action::Exit { code: 130 }), "{a:?}");

    // SIGTERM: the workers' 143 is a normal end.
    let mut s = running(10, t);
    let a = s.decide(Event::StopRequested, t);
    assert!(has(&a, |a| *a
        == Action::Signal {
            pid: 10,
            signal: Signal::Terminate
        }));
    let a = s.decide(exited(10, 143), t);
    assert!(has(&a, |a| *a == Action::Exit { code: 0 }), "{a:?}");

    // SIGINT after SIGTERM: the hard stop already runs with SIGTERM.
    let mut s = running(10, t);
    s.decide(Event::StopRequested, t);
    let a = s.decide(Event::InterruptRequested, t);
    assert!(!has(&a, |a| matches!(a, Action::Signal { .. })), "{a:?}");
}

#[test]
fn soft_stop_then_hard_stop_escalates() {
    let t = Instant::now();
    let mut s = running(10, t);
    let a = s.decide(Event::SoftStopRequested, t);
    assert!(has(&a, |a| *a
        == Action::Signal {
            pid: 10,
            signal: Signal::SoftStop
        }));
    assert!(!has(&a, |a| matches!(a, Action::Arm { .. })));
    let a = s.decide(Event::StopRequested, t);
    assert!(has(&a, |a| *a
        == Action::Signal {
            pid: 10,
            signal: Signal::Terminate
        }));
}

#[test]
fn new_worker_dying_while_old_drains_keeps_serving_state() {
    let t = Instant::now();
    let mut s = running(10, t);
    reload_to(&mut s, 11, t);
    // The new current worker crashes while the old one is still draining.
    let a = s.decide(reaped(11, "signal 11", 0), t);
    assert!(has(&a, |a| matches!(
        a,
        Action::Spawn {
            kind: StartKind::Replace,
            ..
        }
    )));
    assert!(!has(&a, |a| matches!(a, Action::Signal { pid: 10, .. })));
}

#[test]
fn current_dying_during_reload_waits_for_the_new_worker() {
    let t = Instant::now();
    let mut s = running(10, t);
    start_reload(&mut s, 11, t);
    let a = s.decide(reaped(10, "signal 9", 0), t);
    assert!(spawn_gen(&a).is_none(), "the starting worker takes over");
    let a = s.decide(
        Event::WorkerFailed {
            pid: 11,
            reason: "timeout".into(),
        },
        t,
    );
    assert!(
        has(&a, |a| matches!(
            a,
            Action::Spawn {
                kind: StartKind::Replace,
                ..
            }
        )),
        "{a:?}"
    );
}

/// A reload asked for while a replacement starts (the current worker died) is queued; when
/// that replacement fails, the reload still runs and is answered: a `reload` or
/// `await-reload` client waiting for it must not wait for its timeout, and the files the
/// operator fixed are what the next worker runs.
#[test]
fn a_reload_queued_behind_a_failed_replacement_is_run_and_answered() {
    let t = Instant::now();
    let mut s = running(10, t);
    let a = s.decide(exited(10, 1), t);
    let replacement = spawn_gen(&a).expect("a replacement starts at once");
    s.decide(
        Event::Spawned {
            generation: replacement,
            pid: 11,
        },
        t,
    );
    // What a waiting client registers: the first reload above this generation answers it.
    let after = s.last_generation();
    s.decide(Event::ReloadRequested(ReloadKind::Soft), t);
    let mut all = s.decide(exited(11, 1), t);
    // The respawn timer, if one was armed, fires.
    if spawn_gen(&all).is_none() {
        all.extend(s.decide(fired(Timer::Respawn), t));
    }
    let next = spawn_gen(&all).expect("a worker starts after the failed replacement");
    s.decide(
        Event::Spawned {
            generation: next,
            pid: 12,
        },
        t,
    );
    all.extend(s.decide(Event::WorkerReady { pid: 12 }, t));
    assert!(
        has(&all, |a| matches!(
            a,
            Action::ReloadDone { generation, .. } if *generation > after
        )),
        "the queued reload was dropped: nothing answers its client: {all:?}"
    );
}

#[test]
fn drain_timeout_bounds_a_soft_stop_then_exit_is_zero() {
    let t = Instant::now();
    let policy = Policy {
        drain_timeout: Some(Duration::from_secs(30)),
        ..Policy::default()
    };
    let mut s = running_with(policy, 10, t);
    reload_to(&mut s, 11, t);
    let a = s.decide(Event::SoftStopRequested, t);
    assert!(has(&a, |a| *a
        == Action::Arm {
            at: t + Duration::from_secs(30),
            timer: Timer::SoftStop
        }));
    let a = s.decide(fired(Timer::SoftStop), t + Duration::from_secs(30));
    for pid in [10, 11] {
        assert!(
            has(&a, |a| *a
                == Action::Signal {
                    pid,
                    signal: Signal::Terminate
                }),
            "{a:?}"
        );
    }
    s.decide(exited(10, 143), t);
    let a = s.decide(exited(11, 143), t);
    assert!(has(&a, |a| *a == Action::Exit { code: 0 }), "{a:?}");
    // Once hard, the soft deadline means nothing more.
    assert!(s.decide(fired(Timer::SoftStop), t).is_empty());
}

#[test]
fn a_soft_stop_ending_in_time_leaves_its_deadline_idle() {
    let t = Instant::now();
    let policy = Policy {
        drain_timeout: Some(Duration::from_secs(30)),
        ..Policy::default()
    };
    let mut s = running_with(policy, 10, t);
    s.decide(Event::SoftStopRequested, t);
    let a = s.decide(exited(10, 0), t);
    assert!(has(&a, |a| *a == Action::Exit { code: 0 }), "{a:?}");
    assert!(s.decide(fired(Timer::SoftStop), t).is_empty());
}

#[test]
fn orphans_are_ignored() {
    let t = Instant::now();
    let mut s = running(10, t);
    assert!(s.decide(reaped(999, "exit 0", 0), t).is_empty());
}

fn running_with(policy: Policy, pid: Pid, t: Instant) -> State {
    let mut s = State::new(policy);
    let a = s.decide(Event::Boot, t);
    let generation = spawn_gen(&a).unwrap();
    s.decide(Event::Spawned { generation, pid }, t);
    s.decide(Event::WorkerReady { pid }, t);
    s
}

fn exited(pid: Pid, code: i32) -> Event {
    Event::WorkerExited {
        pid,
        status: format!("exit status {code}"),
        code,
    }
}

#[test]
fn exit_on_failure_stops_with_the_worker_status() {
    let t = Instant::now();
    let policy = Policy {
        exit_on_failure: true,
        ..Policy::default()
    };
    let mut s = running_with(policy, 10, t);
    reload_to(&mut s, 11, t);
    let a = s.decide(exited(11, 137), t);
    assert!(!has(&a, |a| matches!(a, Action::Spawn { .. })), "{a:?}");
    assert!(has(&a, |a| *a
        == Action::Signal {
            pid: 10,
            signal: Signal::Terminate
        }));
    let a = s.decide(exited(10, 0), t);
    assert!(has(&a, |a| *a == Action::Exit { code: 137 }), "{a:?}");
}

#[test]
fn exit_on_failure_does_not_apply_to_a_failed_reload() {
    let t = Instant::now();
    let policy = Policy {
        exit_on_failure: true,
        ..Policy::default()
    };
    let mut s = running_with(policy, 10, t);
    start_reload(&mut s, 11, t);
    let a = s.decide(exited(11, 1), t);
    assert!(!has(&a, |a| matches!(a, Action::Exit { .. })), "{a:?}");
    assert_eq!(s.current().unwrap().pid, 10);
}

#[test]
fn oldest_draining_workers_beyond_the_limit_are_terminated() {
    let t = Instant::now();
    let policy = Policy {
        max_old_workers: 1,
        ..Policy::default()
    };
    let mut s = running_with(policy, 10, t);
    let a = reload_to(&mut s, 11, t);
    assert!(
        !has(&a, |a| matches!(a, Action::Abort { .. })),
        "one draining is allowed"
    );
    let a = reload_to(&mut s, 12, t);
    assert!(has(&a, |a| *a == Action::Abort { pid: 10 }), "{a:?}");
    assert!(!has(&a, |a| *a == Action::Abort { pid: 11 }));
    assert_eq!(s.worker(10).unwrap().role, Role::Terminating);
    // A terminating worker no longer counts as draining.
    let a = reload_to(&mut s, 13, t);
    assert!(has(&a, |a| *a == Action::Abort { pid: 11 }), "{a:?}");
    assert!(!has(&a, |a| *a == Action::Abort { pid: 10 }));
}

#[test]
fn drain_timeout_terminates_a_lingering_worker() {
    let t = Instant::now();
    let policy = Policy {
        drain_timeout: Some(Duration::from_secs(30)),
        ..Policy::default()
    };
    let mut s = running_with(policy, 10, t);
    let a = reload_to(&mut s, 11, t);
    assert!(has(&a, |a| *a
        == Action::Arm {
            at: t + Duration::from_secs(30),
            timer: Timer::Drain { pid: 10 }
        }));
    let a = s.decide(fired(Timer::Drain { pid: 10 }), t);
    assert!(has(&a, |a| *a == Action::Abort { pid: 10 }), "{a:?}");
    // Once gone, its deadline means nothing; nor does one for the current worker.
    s.decide(exited(10, 0), t);
    assert!(s.decide(fired(Timer::Drain { pid: 10 }), t).is_empty());
    assert!(s.decide(fired(Timer::Drain { pid: 11 }), t).is_empty());
}

#[test]
fn a_starting_worker_not_ready_in_time_fails_with_the_probe_detail() {
    let t = Instant::now();
    let policy = Policy {
        ready_timeout: Duration::from_secs(3),
        ..Policy::default()
    };
    let mut s = running_with(policy, 10, t);
    let a = s.decide(Event::ReloadRequested(ReloadKind::Soft), t);
    let generation = spawn_gen(&a).unwrap();
    let a = s.decide(
        Event::Spawned {
            generation,
            pid: 11,
        },
        t,
    );
    assert!(has(&a, |a| *a
        == Action::Arm {
            at: t + Duration::from_secs(3),
            timer: Timer::Ready { pid: 11 }
        }));
    let later = t + Duration::from_secs(3);
    let a = s.decide(
        Event::Timer {
            timer: Timer::Ready { pid: 11 },
            detail: Some("connection refused".into()),
        },
        later,
    );
    assert!(has(&a, |a| *a == Action::Abort { pid: 11 }), "{a:?}");
    assert!(has(&a, |a| *a
        == Action::Arm {
            at: later + ABORT_GRACE,
            timer: Timer::Kill { pid: 11 }
        }));
    let (_, reason) = reload_done(&a).unwrap();
    assert_eq!(
        reason.as_deref(),
        Some(
            "not ready within 3000 ms (connection refused); raise --ready-timeout if it \
             needs longer"
        )
    );
    assert_eq!(s.current().unwrap().pid, 10);
    // A worker that became ready in time ignores its timer.
    let mut s = running_with(policy, 10, t);
    assert!(s.decide(fired(Timer::Ready { pid: 10 }), later).is_empty());
}

#[test]
fn an_aborted_worker_that_lingers_is_killed_and_a_gone_one_is_not() {
    let t = Instant::now();
    let mut s = running(10, t);
    start_reload(&mut s, 11, t);
    let a = s.decide(
        Event::WorkerFailed {
            pid: 11,
            reason: "handoff".into(),
        },
        t,
    );
    assert!(has(&a, |a| *a
        == Action::Arm {
            at: t + ABORT_GRACE,
            timer: Timer::Kill { pid: 11 }
        }));
    let a = s.decide(fired(Timer::Kill { pid: 11 }), t + ABORT_GRACE);
    assert!(has(&a, |a| *a
        == Action::Signal {
            pid: 11,
            signal: Signal::Kill
        }));
    assert!(
        logs(&a)[0].contains("did not exit 5 s after SIGTERM"),
        "{a:?}"
    );
    s.decide(exited(11, 137), t);
    assert!(s.decide(fired(Timer::Kill { pid: 11 }), t).is_empty());
}

fn reload_done(actions: &[Action]) -> Option<(Generation, Option<String>)> {
    actions.iter().find_map(|a| match a {
        Action::ReloadDone { generation, reason } => Some((*generation, reason.clone())),
        _ => None,
    })
}

#[test]
fn reload_done_reports_success_and_failure_by_generation() {
    let t = Instant::now();
    let mut s = running(10, t);
    assert_eq!(s.last_generation(), 1);
    let a = reload_to(&mut s, 11, t);
    assert_eq!(reload_done(&a), Some((2, None)));
    start_reload(&mut s, 12, t);
    let a = s.decide(exited(12, 1), t);
    let (g, reason) = reload_done(&a).unwrap();
    assert_eq!(g, 3);
    assert!(reason.unwrap().contains("exit status 1"));
    // A crash replacement is not a reload: nobody waits for it.
    let a = s.decide(exited(11, 9), t);
    assert!(reload_done(&a).is_none());
}

#[test]
fn stop_during_a_reload_fails_it() {
    let t = Instant::now();
    let mut s = running(10, t);
    start_reload(&mut s, 11, t);
    let a = s.decide(Event::StopRequested, t);
    assert_eq!(
        reload_done(&a),
        Some((2, Some("the master is stopping".to_string())))
    );
}

#[test]
fn hard_reload_terminates_old_workers() {
    let t = Instant::now();
    let mut s = running(10, t);
    let a = s.decide(Event::ReloadRequested(ReloadKind::Hard), t);
    let generation = spawn_gen(&a).unwrap();
    s.decide(
        Event::Spawned {
            generation,
            pid: 11,
        },
        t,
    );
    let a = s.decide(Event::WorkerReady { pid: 11 }, t);
    assert!(has(&a, |a| *a == Action::Abort { pid: 10 }), "{a:?}");
    assert!(!has(&a, |a| matches!(a, Action::Signal { pid: 10, .. })));
    assert_eq!(s.worker(10).unwrap().role, Role::Terminating);
    // A hard request coalesced into a queued reload keeps it hard.
    let a = s.decide(Event::ReloadRequested(ReloadKind::Soft), t);
    let generation = spawn_gen(&a).unwrap();
    s.decide(Event::ReloadRequested(ReloadKind::Hard), t);
    s.decide(
        Event::Spawned {
            generation,
            pid: 12,
        },
        t,
    );
    let a = s.decide(Event::WorkerReady { pid: 12 }, t);
    assert!(has(&a, |a| *a
        == Action::Signal {
            pid: 11,
            signal: Signal::SoftStop
        }));
    let generation = spawn_gen(&a).expect("the queued reload starts");
    s.decide(
        Event::Spawned {
            generation,
            pid: 13,
        },
        t,
    );
    let a = s.decide(Event::WorkerReady { pid: 13 }, t);
    assert!(has(&a, |a| *a == Action::Abort { pid: 12 }), "{a:?}");
}

fn logs(actions: &[Action]) -> Vec<&str> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Log { message, .. } => Some(message.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn stop_logs_count_the_workers_signalled() {
    let t = Instant::now();
    let mut s = running(10, t);
    reload_to(&mut s, 11, t);
    let a = s.decide(Event::SoftStopRequested, t);
    assert!(
        logs(&a).contains(&"soft-stopping: signalling 2 workers"),
        "{a:?}"
    );
}

#[test]
fn every_reload_request_while_one_starts_is_logged() {
    let t = Instant::now();
    let mut s = running(10, t);
    start_reload(&mut s, 11, t);
    let first = s.decide(Event::ReloadRequested(ReloadKind::Soft), t);
    let second = s.decide(Event::ReloadRequested(ReloadKind::Hard), t);
    assert!(
        logs(&first)[0].contains("it will run right after"),
        "{first:?}"
    );
    assert!(logs(&second)[0].contains("coalesced"), "{second:?}");
}

/// The log's lines start lowercase, like haproxy's own; STATUS= texts are capitalised.
#[test]
fn log_lines_start_lowercase() {
    let t = Instant::now();
    let mut all = Vec::new();
    let mut s = running(10, t);
    all.extend(reload_to(&mut s, 11, t));
    start_reload(&mut s, 12, t);
    all.extend(s.decide(Event::ReloadRequested(ReloadKind::Soft), t));
    all.extend(s.decide(Event::ReloadRequested(ReloadKind::Soft), t));
    all.extend(s.decide(exited(12, 1), t));
    all.extend(s.decide(exited(11, 9), t));
    all.extend(s.decide(exited(10, 0), t));
    all.extend(s.decide(Event::StopRequested, t));
    all.extend(s.decide(fired(Timer::Stop), t));
    let logs = logs(&all);
    assert!(logs.len() >= 6, "{all:?}");
    for line in logs {
        assert!(!line.starts_with(char::is_uppercase), "{line:?}");
    }
}
