//! The words between the state machine and the executor: what the executor observed (`Event`),
//! what it is to do (`Action`), and what both speak of (why a worker starts, which signal, which
//! timer).

use std::time::Instant;

use super::{Generation, Pid};

/// Why a worker is being started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartKind {
    /// The first worker of this master.
    Initial,
    /// A reload requested by a signal or a control command.
    Reload(ReloadKind),
    /// The current worker died and is being replaced.
    Replace,
}

/// What a reload does to the old workers once the new one is ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadKind {
    /// SIGUSR1: they finish their connections (`reload`, SIGUSR2, SIGHUP).
    Soft,
    /// SIGTERM (`hard-reload`).
    Hard,
}

impl ReloadKind {
    /// Requests coalesced into one reload: hard if any of them was.
    pub(super) fn join(self, other: ReloadKind) -> ReloadKind {
        if self == ReloadKind::Hard || other == ReloadKind::Hard {
            ReloadKind::Hard
        } else {
            ReloadKind::Soft
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGUSR1: haproxy's soft stop.
    SoftStop,
    /// SIGTERM: haproxy's hard stop.
    Terminate,
    /// SIGINT: a hard stop too, which haproxy's workers report by exiting 130.
    Interrupt,
    /// SIGKILL.
    Kill,
}

/// A deadline the state machine set (`Action::Arm`) and decides about when it is due
/// (`Event::Timer`): every escalation and every wait is one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// `--ready-timeout` of a starting worker.
    Ready { pid: Pid },
    /// SIGKILL for a worker sent SIGTERM alone (`Action::Abort`), after `ABORT_GRACE`.
    Kill { pid: Pid },
    /// `--drain-timeout` of a soft-stopped worker.
    Drain { pid: Pid },
    /// The crash-loop backoff is over: start the replacement.
    Respawn,
    /// `STOP_GRACE` after a hard stop's SIGTERM: SIGKILL whatever is left.
    Stop,
    /// `--drain-timeout` of a soft stop: a hard stop for whatever still runs.
    SoftStop,
}

impl Timer {
    /// The worker the timer is about, if it is about one.
    pub fn pid(&self) -> Option<Pid> {
        match *self {
            Timer::Ready { pid } | Timer::Kill { pid } | Timer::Drain { pid } => Some(pid),
            Timer::Respawn | Timer::Stop | Timer::SoftStop => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The master has just started.
    Boot,
    ReloadRequested(ReloadKind),
    /// SIGTERM.
    StopRequested,
    /// SIGINT: a hard stop, passed on to the workers as SIGINT.
    InterruptRequested,
    /// SIGUSR1.
    SoftStopRequested,
    /// The executor started the process asked for by `Action::Spawn`.
    Spawned {
        generation: Generation,
        pid: Pid,
    },
    /// The executor could not even start the process (exec failed, fragment not writable, ...).
    SpawnFailed {
        generation: Generation,
        reason: String,
    },
    /// The worker answered on its stats socket and its sockets were fetched.
    WorkerReady {
        pid: Pid,
    },
    /// The worker is alive but did not become ready (timeout, handoff error).
    WorkerFailed {
        pid: Pid,
        reason: String,
    },
    /// waitpid reported this child: `status` in words, `code` as a shell reports it (the exit
    /// status, or 128 + the signal number).
    WorkerExited {
        pid: Pid,
        status: String,
        code: i32,
    },
    /// A timer armed by `Action::Arm` is due. `detail` is what the executor knows of why the
    /// awaited thing did not happen (for `Timer::Ready`: the readiness probe's last error).
    Timer {
        timer: Timer,
        detail: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Spawn {
        generation: Generation,
        kind: StartKind,
    },
    /// Make the sockets fetched from this (now current) worker the held set.
    CommitSockets {
        pid: Pid,
    },
    Signal {
        pid: Pid,
        signal: Signal,
    },
    /// Stop a worker alone: end its readiness probe, SIGTERM it. (The state arms its
    /// `Timer::Kill` alongside.)
    Abort {
        pid: Pid,
    },
    /// The worker is reaped: remove its fragment and sockets.
    Forget {
        pid: Pid,
        generation: Generation,
    },
    NotifyReady {
        status: String,
        first: bool,
    },
    NotifyReloading {
        status: String,
    },
    NotifyStatus {
        status: String,
    },
    NotifyStopping {
        status: String,
    },
    /// Push `Event::Timer { timer, .. }` at `at`; arming an armed timer moves it.
    Arm {
        at: Instant,
        timer: Timer,
    },
    /// What the timer waited for has happened: it is not to wake the loop.
    Disarm {
        timer: Timer,
    },
    Log {
        level: log::Level,
        message: String,
    },
    /// A reload (generation) finished: it serves, or it failed for `reason`. Synchronous
    /// `reload` commands wait for this.
    ReloadDone {
        generation: Generation,
        reason: Option<String>,
    },
    Exit {
        code: i32,
    },
}
