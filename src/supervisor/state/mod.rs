//! Workers and generations as a state machine.
//!
//! `State::decide` is a pure function of the current state, one event and the time: it returns the
//! actions for the executor (`event_loop`) to carry out. No syscalls here, so every race the
//! master can meet ("the new worker dies while the old one drains", "a reload arrives during a
//! crash replacement") is a plain unit test.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

mod events;

pub use events::{Action, Event, ReloadKind, Signal, StartKind, Timer};

pub type Pid = i32;
pub type Generation = u64;

/// A worker that has lived this long before dying is not part of a crash loop.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Ceiling of the crash-loop backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long workers get to exit after SIGTERM on a hard stop before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long a worker stopped alone (it failed to start, drained too long, or one old worker too
/// many) gets between SIGTERM and SIGKILL.
pub const ABORT_GRACE: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Started, not ready yet.
    Starting,
    /// The one serving.
    Current,
    /// Soft-stopped (SIGUSR1), finishing its connections.
    Draining,
    /// Failed to become ready; being stopped.
    Failed,
    /// Draining too long, or one too many old workers: SIGTERM sent.
    Terminating,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Worker {
    pub pid: Pid,
    pub generation: Generation,
    pub role: Role,
    pub started: Instant,
}

/// What the operator chose for failures and draining (`--exit-on-failure`,
/// `--max-old-workers`, `--drain-timeout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub exit_on_failure: bool,
    pub max_old_workers: usize,
    pub drain_timeout: Option<Duration>,
    /// `--ready-timeout`: how long a starting worker has to answer.
    pub ready_timeout: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            exit_on_failure: false,
            max_old_workers: 50,
            drain_timeout: None,
            ready_timeout: crate::options::DEFAULT_READY_TIMEOUT,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stopping {
    Soft,
    Hard,
}

/// The worker being started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Start {
    generation: Generation,
    kind: StartKind,
    /// Once spawned.
    pid: Option<Pid>,
}

/// Where the master is in its life: what a request or a worker's news leads to depends on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Nothing starting (serving, or waiting out a crash backoff).
    Idle,
    /// A worker is starting; reload requests meanwhile are coalesced into one, run after it.
    Starting {
        start: Start,
        queued: Option<ReloadKind>,
    },
    /// Workers were signalled; the master exits with `code` once they are all reaped.
    Stopping { how: Stopping, code: i32 },
    /// Every worker is gone after a stop: nothing more is decided.
    Exited,
}

/// What the state machine hands across an upgrade in place (`State::snapshot`) and resumes
/// from (`State::resume`); the executor's own part of each worker travels beside it
/// (`upgrade::Snapshot`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateSnapshot {
    pub workers: Vec<Worker>,
    pub current: Option<Pid>,
    pub next_generation: Generation,
    pub crash_streak: u32,
}

#[derive(Debug)]
pub struct State {
    policy: Policy,
    workers: BTreeMap<Pid, Worker>,
    current: Option<Pid>,
    phase: Phase,
    /// `Timer::Respawn` is armed. Not a phase: a reload may start (and fail) meanwhile, and the
    /// replacement still comes when the timer is due.
    respawn_scheduled: bool,
    next_generation: Generation,
    crash_streak: u32,
    /// The time of the event being decided: timers are armed relative to it.
    now: Instant,
    /// What a hard stop sends the workers: the signal the master got, as haproxy's master
    /// passes it on (SIGINT makes a haproxy worker exit 130, SIGTERM 143).
    hard_stop_signal: Signal,
}

impl Default for State {
    fn default() -> Self {
        State::new(Policy::default())
    }
}

impl State {
    pub fn new(policy: Policy) -> Self {
        State {
            policy,
            workers: BTreeMap::new(),
            current: None,
            phase: Phase::Idle,
            respawn_scheduled: false,
            next_generation: 1,
            crash_streak: 0,
            now: Instant::now(),
            hard_stop_signal: Signal::Terminate,
        }
    }
}

/// Delay before the n-th consecutive replacement: at once, then 100 ms doubling up to the cap.
pub fn backoff(streak: u32) -> Duration {
    if streak <= 1 {
        return Duration::ZERO;
    }
    let exp = (streak - 2).min(16);
    Duration::from_millis(100u64 << exp).min(MAX_BACKOFF)
}

fn log(level: log::Level, message: String) -> Action {
    Action::Log { level, message }
}

/// SIGTERM now, SIGKILL if it has not exited `ABORT_GRACE` later.
fn abort(pid: Pid, now: Instant, out: &mut Vec<Action>) {
    out.push(Action::Abort { pid });
    out.push(Action::Arm {
        at: now + ABORT_GRACE,
        timer: Timer::Kill { pid },
    });
}

impl State {
    pub fn workers(&self) -> impl Iterator<Item = &Worker> {
        self.workers.values()
    }

    pub fn worker(&self, pid: Pid) -> Option<&Worker> {
        self.workers.get(&pid)
    }

    pub fn current(&self) -> Option<&Worker> {
        self.current.and_then(|p| self.workers.get(&p))
    }

    fn starting(&self) -> Option<Start> {
        match self.phase {
            Phase::Starting { start, .. } => Some(start),
            _ => None,
        }
    }

    /// The worker being started, once it has a pid.
    pub fn starting_pid(&self) -> Option<Pid> {
        self.starting().and_then(|s| s.pid)
    }

    /// Stopping, or stopped.
    pub fn is_stopping(&self) -> bool {
        matches!(self.phase, Phase::Stopping { .. } | Phase::Exited)
    }

    /// Whether an upgrade in place may run now: not while a worker starts (its probe and
    /// handoff would be cut), nor while stopping.
    pub fn is_settled(&self) -> bool {
        self.phase == Phase::Idle
    }

    /// The start in progress ends (ready or failed); returns it and the reload queued behind it.
    fn end_start(&mut self) -> Option<(Start, Option<ReloadKind>)> {
        match self.phase {
            Phase::Starting { start, queued } => {
                self.phase = Phase::Idle;
                Some((start, queued))
            }
            _ => None,
        }
    }

    /// What an upgrade in place hands to the next image.
    pub fn snapshot(&self) -> StateSnapshot {
        StateSnapshot {
            workers: self.workers.values().cloned().collect(),
            current: self.current,
            next_generation: self.next_generation,
            crash_streak: self.crash_streak,
        }
    }

    /// The state of a master re-executed by an upgrade in place, and what to do at once: timers
    /// did not survive the exec, so workers being stopped are signalled again and draining ones
    /// get a fresh drain deadline.
    pub fn resume(policy: Policy, snapshot: StateSnapshot, now: Instant) -> (State, Vec<Action>) {
        let StateSnapshot {
            workers,
            current,
            next_generation,
            crash_streak,
        } = snapshot;
        let mut state = State::new(policy);
        state.now = now;
        state.next_generation = next_generation;
        state.crash_streak = crash_streak;
        state.current = current.filter(|pid| workers.iter().any(|w| w.pid == *pid));
        let mut out = Vec::new();
        for w in workers {
            match w.role {
                Role::Failed | Role::Terminating | Role::Starting => abort(w.pid, now, &mut out),
                Role::Draining => {
                    if let Some(after) = policy.drain_timeout {
                        out.push(Action::Arm {
                            at: now + after,
                            timer: Timer::Drain { pid: w.pid },
                        });
                    }
                }
                Role::Current => {}
            }
            state.workers.insert(w.pid, w);
        }
        if state.current.is_none() {
            // The current worker died in the exec window: replace it like any crash.
            state.schedule_replacement(&mut out);
        }
        (state, out)
    }

    pub fn decide(&mut self, event: Event, now: Instant) -> Vec<Action> {
        if self.phase == Phase::Exited {
            return Vec::new();
        }
        self.now = now;
        let mut out = Vec::new();
        match event {
            Event::Boot => self.start(StartKind::Initial, &mut out),
            Event::ReloadRequested(kind) => self.on_reload_requested(kind, &mut out),
            Event::StopRequested => self.on_stop(Stopping::Hard, &mut out),
            Event::InterruptRequested => {
                if !matches!(
                    self.phase,
                    Phase::Stopping {
                        how: Stopping::Hard,
                        ..
                    }
                ) {
                    self.hard_stop_signal = Signal::Interrupt;
                }
                self.on_stop(Stopping::Hard, &mut out)
            }
            Event::SoftStopRequested => self.on_stop(Stopping::Soft, &mut out),
            Event::Spawned { generation, pid } => self.on_spawned(generation, pid, now, &mut out),
            Event::SpawnFailed { generation, reason } => {
                if self.starting().is_some_and(|s| s.generation == generation) {
                    self.on_start_failed(None, reason, &mut out);
                }
            }
            Event::WorkerReady { pid } => self.on_ready(pid, &mut out),
            Event::WorkerFailed { pid, reason } => self.on_failed(pid, reason, &mut out),
            Event::WorkerExited { pid, status, code } => {
                self.on_exited(pid, status, code, now, &mut out)
            }
            Event::Timer { timer, detail } => self.on_timer(timer, detail, &mut out),
        }
        out
    }

    fn on_timer(&mut self, timer: Timer, detail: Option<String>, out: &mut Vec<Action>) {
        match timer {
            Timer::Ready { pid } => {
                let reason = format!(
                    "not ready within {} ms ({}); raise --ready-timeout if it needs longer",
                    self.policy.ready_timeout.as_millis(),
                    detail.as_deref().unwrap_or("no answer")
                );
                self.on_failed(pid, reason, out)
            }
            Timer::Kill { pid } => {
                if self.workers.contains_key(&pid) {
                    out.push(log(
                        log::Level::Warn,
                        format!(
                            "worker pid {pid} did not exit {} s after SIGTERM: SIGKILL",
                            ABORT_GRACE.as_secs()
                        ),
                    ));
                    out.push(Action::Signal {
                        pid,
                        signal: Signal::Kill,
                    });
                }
            }
            Timer::Drain { pid } => self.on_drain_deadline(pid, out),
            Timer::Respawn => {
                self.respawn_scheduled = false;
                if self.phase == Phase::Idle && self.current.is_none() {
                    self.start(StartKind::Replace, out);
                }
            }
            Timer::SoftStop => self.on_soft_stop_deadline(out),
            Timer::Stop => {
                for pid in self.workers.keys() {
                    out.push(Action::Signal {
                        pid: *pid,
                        signal: Signal::Kill,
                    });
                }
                if !self.workers.is_empty() {
                    out.push(log(
                        log::Level::Warn,
                        format!(
                            "workers still running {} s after SIGTERM: sending SIGKILL",
                            STOP_GRACE.as_secs()
                        ),
                    ));
                }
            }
        }
    }

    /// The worker starting is alive but will not be ready (no answer in time, handoff error).
    fn on_failed(&mut self, pid: Pid, reason: String, out: &mut Vec<Action>) {
        if self.starting_pid() == Some(pid) {
            if let Some(w) = self.workers.get_mut(&pid) {
                w.role = Role::Failed;
            }
            out.push(Action::Disarm {
                timer: Timer::Ready { pid },
            });
            abort(pid, self.now, out);
            self.on_start_failed(Some(pid), reason, out);
        }
    }

    /// Only from `Phase::Idle`.
    fn start(&mut self, kind: StartKind, out: &mut Vec<Action>) {
        let generation = self.next_generation;
        self.next_generation += 1;
        self.phase = Phase::Starting {
            start: Start {
                generation,
                kind,
                pid: None,
            },
            queued: None,
        };
        if matches!(kind, StartKind::Reload(_)) {
            out.push(Action::NotifyReloading {
                status: format!("Reloading: starting generation {generation}"),
            });
        }
        out.push(Action::Spawn { generation, kind });
    }

    fn on_reload_requested(&mut self, kind: ReloadKind, out: &mut Vec<Action>) {
        match &mut self.phase {
            Phase::Stopping { .. } | Phase::Exited => out.push(log(
                log::Level::Warn,
                "reload requested while stopping: ignored".into(),
            )),
            Phase::Starting { queued, .. } => {
                let message = if queued.is_some() {
                    "a reload is already queued: this request is coalesced into it"
                } else {
                    "reload requested while a worker is starting: it will run right after"
                };
                out.push(log(log::Level::Info, message.into()));
                *queued = Some(queued.map_or(kind, |q| q.join(kind)));
            }
            Phase::Idle => self.start(StartKind::Reload(kind), out),
        }
    }

    fn on_spawned(
        &mut self,
        generation: Generation,
        pid: Pid,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        match &mut self.phase {
            Phase::Starting { start, .. } if start.generation == generation => {
                start.pid = Some(pid)
            }
            _ => return,
        }
        self.workers.insert(
            pid,
            Worker {
                pid,
                generation,
                role: Role::Starting,
                started: now,
            },
        );
        out.push(log(
            log::Level::Info,
            format!("worker pid {pid} (generation {generation}) started"),
        ));
        out.push(Action::Arm {
            at: now + self.policy.ready_timeout,
            timer: Timer::Ready { pid },
        });
    }

    /// The generation most recently allocated: a reload requested now is answered by the first
    /// reload of a later generation (the one it starts, or the queued one after the pending).
    pub fn last_generation(&self) -> Generation {
        self.next_generation - 1
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// "worker pid P, generation G" of the current worker, for STATUS= and logs.
    pub fn serving_status(&self) -> String {
        match self.current() {
            Some(w) => format!("worker pid {}, generation {}", w.pid, w.generation),
            None => "no worker".to_string(),
        }
    }

    fn on_ready(&mut self, pid: Pid, out: &mut Vec<Action>) {
        if self.starting_pid() != Some(pid) {
            return;
        }
        let Some((start, queued)) = self.end_start() else {
            return;
        };
        out.push(Action::Disarm {
            timer: Timer::Ready { pid },
        });
        let old = self.current.replace(pid);
        if let Some(w) = self.workers.get_mut(&pid) {
            w.role = Role::Current;
        }
        out.push(Action::CommitSockets { pid });
        let now = self.now;
        // Every older worker that still serves gets soft-stopped, not only the last current one: a
        // replacement raced by a reload may have left more than one.
        for w in self.workers.values_mut() {
            if w.pid == pid || w.role != Role::Current {
                continue;
            }
            if start.kind == StartKind::Reload(ReloadKind::Hard) {
                w.role = Role::Terminating;
                abort(w.pid, now, out);
                continue;
            }
            w.role = Role::Draining;
            out.push(Action::Signal {
                pid: w.pid,
                signal: Signal::SoftStop,
            });
            if let Some(after) = self.policy.drain_timeout {
                out.push(Action::Arm {
                    at: now + after,
                    timer: Timer::Drain { pid: w.pid },
                });
            }
        }
        self.limit_old_workers(out);
        if matches!(start.kind, StartKind::Reload(_)) {
            out.push(Action::ReloadDone {
                generation: start.generation,
                reason: None,
            });
        }
        let status = format!("Serving: {}", self.serving_status());
        let message = match (start.kind, old) {
            (StartKind::Initial, _) => format!("worker pid {pid} ready"),
            (StartKind::Reload(kind), Some(old)) => {
                let how = match kind {
                    ReloadKind::Hard => "terminated",
                    ReloadKind::Soft => "soft-stopped",
                };
                format!("reload complete: worker pid {pid} ready, old worker pid {old} {how}")
            }
            (StartKind::Reload(_), None) | (StartKind::Replace, _) => {
                format!("worker pid {pid} ready (replacement)")
            }
        };
        out.push(log(log::Level::Info, message));
        out.push(Action::NotifyReady {
            status,
            first: start.kind == StartKind::Initial,
        });
        self.run_queued_reload(queued, out);
    }

    /// Beyond `max_old_workers` draining workers, the oldest are stopped: each holds memory and
    /// connections, and an operator reloading in a loop must not pile them up without bound.
    fn limit_old_workers(&mut self, out: &mut Vec<Action>) {
        let mut draining: Vec<(Generation, Pid)> = self
            .workers
            .values()
            .filter(|w| w.role == Role::Draining)
            .map(|w| (w.generation, w.pid))
            .collect();
        draining.sort_unstable();
        let excess = draining.len().saturating_sub(self.policy.max_old_workers);
        for (_, pid) in draining.into_iter().take(excess) {
            let why = format!(
                "is one of more than {} old workers draining (--max-old-workers)",
                self.policy.max_old_workers
            );
            self.terminate_old(pid, why, out);
        }
    }

    fn on_drain_deadline(&mut self, pid: Pid, out: &mut Vec<Action>) {
        if self
            .workers
            .get(&pid)
            .is_some_and(|w| w.role == Role::Draining)
        {
            let after = self.policy.drain_timeout.unwrap_or_default();
            let why = format!(
                "is still draining after {} ms (--drain-timeout)",
                after.as_millis()
            );
            self.terminate_old(pid, why, out);
        }
    }

    fn on_soft_stop_deadline(&mut self, out: &mut Vec<Action>) {
        if let Phase::Stopping {
            how: Stopping::Soft,
            code,
        } = self.phase
        {
            let after = self.policy.drain_timeout.unwrap_or_default();
            out.push(log(
                log::Level::Warn,
                format!(
                    "workers still draining {} ms after the soft stop (--drain-timeout): hard stop",
                    after.as_millis()
                ),
            ));
            self.begin_stop(Stopping::Hard, code, out);
        }
    }

    fn terminate_old(&mut self, pid: Pid, why: String, out: &mut Vec<Action>) {
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        w.role = Role::Terminating;
        out.push(log(
            log::Level::Warn,
            format!(
                "old worker pid {pid} (generation {}) {why}: SIGTERM, then SIGKILL if it lingers",
                w.generation
            ),
        ));
        abort(pid, self.now, out);
    }

    fn run_queued_reload(&mut self, queued: Option<ReloadKind>, out: &mut Vec<Action>) {
        if let (Some(kind), Phase::Idle) = (queued, self.phase) {
            self.start(StartKind::Reload(kind), out);
        }
    }

    fn on_start_failed(&mut self, pid: Option<Pid>, reason: String, out: &mut Vec<Action>) {
        let Some((start, queued)) = self.end_start() else {
            return;
        };
        if matches!(start.kind, StartKind::Reload(_)) {
            out.push(Action::ReloadDone {
                generation: start.generation,
                reason: Some(reason.clone()),
            });
        }
        let who = match pid {
            Some(pid) => format!("worker pid {pid} (generation {})", start.generation),
            None => format!("worker generation {}", start.generation),
        };
        match start.kind {
            StartKind::Initial => {
                out.push(log(
                    log::Level::Error,
                    format!("{who} failed to start: {reason}; exiting"),
                ));
                out.push(Action::NotifyStatus {
                    status: format!("Failed to start: {reason}"),
                });
                self.begin_stop(Stopping::Hard, 1, out);
            }
            StartKind::Reload(_) if self.current.is_some() => {
                out.push(log(
                    log::Level::Error,
                    format!(
                        "reload failed: {who}: {reason}; still serving with {}",
                        self.serving_status()
                    ),
                ));
                out.push(Action::NotifyReady {
                    status: format!(
                        "Reload failed: {reason}; still serving: {}",
                        self.serving_status()
                    ),
                    first: false,
                });
                self.run_queued_reload(queued, out);
            }
            StartKind::Reload(_) | StartKind::Replace => {
                out.push(log(
                    log::Level::Error,
                    format!("{who} failed to start: {reason}; no worker is serving"),
                ));
                out.push(Action::NotifyStatus {
                    status: format!("Worker failed to start: {reason}; retrying"),
                });
                if let Some(kind) = queued {
                    // Asked for while this worker started: it reads the files again (perhaps
                    // fixed), and its client waits for its answer. Once: if it fails too, the
                    // replacement is scheduled with the back-off.
                    self.crash_streak += 1;
                    out.push(log(
                        log::Level::Info,
                        "running the reload requested meanwhile".into(),
                    ));
                    self.start(StartKind::Reload(kind), out);
                } else {
                    self.schedule_replacement(out);
                }
            }
        }
    }

    fn schedule_replacement(&mut self, out: &mut Vec<Action>) {
        self.crash_streak += 1;
        let after = backoff(self.crash_streak);
        if after.is_zero() {
            self.start(StartKind::Replace, out);
        } else if !self.respawn_scheduled {
            self.respawn_scheduled = true;
            out.push(log(
                log::Level::Warn,
                format!(
                    "{} failures in a row: next worker start in {} ms",
                    self.crash_streak,
                    after.as_millis()
                ),
            ));
            out.push(Action::Arm {
                at: self.now + after,
                timer: Timer::Respawn,
            });
        }
    }

    fn on_exited(
        &mut self,
        pid: Pid,
        status: String,
        code: i32,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(worker) = self.workers.remove(&pid) else {
            // Not ours: an orphan re-parented to us (PID 1 in a container). Reaped; nothing else.
            return;
        };
        if self.starting_pid() == Some(pid) {
            self.on_start_failed(
                Some(pid),
                format!("haproxy exited ({status}) before it was ready"),
                out,
            );
        } else if self.current == Some(pid) {
            self.current = None;
            // haproxy's master exits with the status of the first current worker that ended
            // neither with 0 nor by SIGTERM (143): 130 after SIGINT, a crash's signal.
            if let Phase::Stopping {
                code: stop_code, ..
            } = &mut self.phase
            {
                if *stop_code == 0 && !matches!(code, 0 | 143) {
                    *stop_code = code;
                }
                out.push(log(
                    log::Level::Info,
                    format!(
                        "current worker pid {pid} (generation {}) exited ({status})",
                        worker.generation
                    ),
                ));
            }
            if !self.is_stopping() && self.policy.exit_on_failure {
                self.exit_with_worker(&worker, status, code, out);
            } else if !self.is_stopping() {
                self.on_current_died(&worker, status, now, out);
            }
        } else if !self.is_stopping() {
            let level = if matches!(worker.role, Role::Draining | Role::Terminating) {
                log::Level::Info
            } else {
                log::Level::Debug
            };
            out.push(log(
                level,
                format!(
                    "old worker pid {pid} (generation {}) exited ({status})",
                    worker.generation
                ),
            ));
        }
        // After the failure report: the executor still reads the worker's last output for it.
        out.push(Action::Forget {
            pid,
            generation: worker.generation,
        });
        if let (Phase::Stopping { code, .. }, true) = (self.phase, self.workers.is_empty()) {
            self.phase = Phase::Exited;
            out.push(log(log::Level::Info, "all workers have exited".into()));
            out.push(Action::Exit { code });
        }
    }

    /// `--exit-on-failure`: haproxy's own master-worker behaviour, for operators who prefer
    /// systemd's `Restart=` to an in-place replacement.
    fn exit_with_worker(
        &mut self,
        worker: &Worker,
        status: String,
        code: i32,
        out: &mut Vec<Action>,
    ) {
        out.push(log(
            log::Level::Error,
            format!(
                "current worker pid {} (generation {}) exited ({status}); \
                 --exit-on-failure: stopping with its status",
                worker.pid, worker.generation
            ),
        ));
        out.push(Action::NotifyStatus {
            status: format!("Worker pid {} exited ({status}); exiting", worker.pid),
        });
        // A worker that exited 0 on its own still ended the service unexpectedly.
        let code = if code == 0 { 1 } else { code };
        // A worker starting meanwhile is stopped with the others; nobody waits for it.
        self.begin_stop(Stopping::Hard, code, out);
    }

    fn on_current_died(
        &mut self,
        worker: &Worker,
        status: String,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if now.duration_since(worker.started) >= STABLE_AFTER {
            self.crash_streak = 0;
        }
        out.push(log(
            log::Level::Error,
            format!(
                "current worker pid {} (generation {}) exited unexpectedly ({status}); \
                 the listening sockets stay open, starting a replacement",
                worker.pid, worker.generation
            ),
        ));
        out.push(Action::NotifyStatus {
            status: format!(
                "Worker pid {} exited unexpectedly ({status}); starting a replacement",
                worker.pid
            ),
        });
        // A worker already starting (a reload) will take over when ready; if it fails,
        // on_start_failed schedules the replacement.
        if self.phase == Phase::Idle {
            self.schedule_replacement(out);
        }
    }

    fn on_stop(&mut self, how: Stopping, out: &mut Vec<Action>) {
        let code = match (self.phase, how) {
            (Phase::Exited, _)
            | (
                Phase::Stopping {
                    how: Stopping::Hard,
                    ..
                },
                _,
            )
            | (
                Phase::Stopping {
                    how: Stopping::Soft,
                    ..
                },
                Stopping::Soft,
            ) => return,
            // A soft stop made hard keeps its exit code.
            (Phase::Stopping { code, .. }, Stopping::Hard) => code,
            (Phase::Starting { start, .. }, _) => {
                if matches!(start.kind, StartKind::Reload(_)) {
                    out.push(Action::ReloadDone {
                        generation: start.generation,
                        reason: Some("the master is stopping".into()),
                    });
                }
                0
            }
            (Phase::Idle, _) => 0,
        };
        self.begin_stop(how, code, out);
    }

    /// Signals every worker (one starting included); the master exits with `code` once they are
    /// all reaped.
    fn begin_stop(&mut self, how: Stopping, code: i32, out: &mut Vec<Action>) {
        self.phase = Phase::Stopping { how, code };
        let (signal, status, what) = match how {
            Stopping::Hard => (self.hard_stop_signal, "Stopping", "stopping"),
            Stopping::Soft => (
                Signal::SoftStop,
                "Soft-stopping: waiting for workers to finish",
                "soft-stopping",
            ),
        };
        out.push(Action::NotifyStopping {
            status: status.to_string(),
        });
        let message = match self.workers.len() {
            0 => format!("{what}: no worker left to signal"),
            1 => format!("{what}: signalling 1 worker"),
            n => format!("{what}: signalling {n} workers"),
        };
        out.push(log(log::Level::Info, message));
        for w in self.workers.values() {
            // A worker that is not ready yet has no connections to finish.
            let signal = if matches!(w.role, Role::Starting | Role::Failed | Role::Terminating) {
                Signal::Terminate
            } else {
                signal
            };
            out.push(Action::Signal { pid: w.pid, signal });
        }
        match (how, self.policy.drain_timeout) {
            (Stopping::Hard, _) => out.push(Action::Arm {
                at: self.now + STOP_GRACE,
                timer: Timer::Stop,
            }),
            // A container runtime's stop waits a bounded time before SIGKILL: the drain must end
            // first, and the master exit 0 (a hard stop after a soft one keeps its exit code).
            (Stopping::Soft, Some(after)) => out.push(Action::Arm {
                at: self.now + after,
                timer: Timer::SoftStop,
            }),
            (Stopping::Soft, None) => {}
        }
        if self.workers.is_empty() {
            self.phase = Phase::Exited;
            out.push(Action::Exit { code });
        }
    }
}

#[cfg(test)]
mod tests;
