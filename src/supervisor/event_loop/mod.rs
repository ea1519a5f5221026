//! The executor: one poll loop over the signal pipe, the control sockets and their clients, the
//! readiness probe and the workers' stderr, with the earliest deadline as its timeout. It turns what it observes into
//! `Event`s for `State::decide` and carries out the `Action`s that come back. All syscalls of the
//! supervisor live here or in the modules it calls.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal as NixSignal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid as NixPid;

use super::last_good::LastGood;
use super::output::Outputs;
use super::probe::{Probe, Progress};
use super::sessions::Session;
use super::signals;
use super::signals::Signals;
use super::state::{Action, Event, Pid, Policy, Signal, StartKind, State};
use super::upgrade::{Launch, Snapshot};
use super::worker::{self, WorkerSpec};
use crate::fdstore::FdStore;
use crate::handoff::fetch::fetch_sockets;
use crate::handoff::listeners::HeldSet;
use crate::notify::Notifier;
use crate::options::Options;
use crate::runtime_dir::RuntimeDir;

/// A worker that failed to start gets this long between SIGTERM and SIGKILL.
const ABORT_GRACE: Duration = Duration::from_secs(5);
/// Bound on one `_getsocks` exchange with a worker, either direction.
const HANDOFF_TIMEOUT: Duration = Duration::from_secs(5);

mod await_reload;
mod control;
mod handover;
mod last_good;

use control::ControlListener;

/// What can keep the master from starting its loop at all.
#[derive(Debug)]
pub enum SetupError {
    Signals(io::Error),
    HandoffSocket { path: PathBuf, source: io::Error },
    ControlSocket(crate::control::spec::SpecError),
}

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SetupError::Signals(e) => write!(f, "cannot install signal handlers: {e}"),
            SetupError::HandoffSocket { path, source } => write!(
                f,
                "cannot listen on the socket handoff socket {}: {source} \
                 (is the runtime directory writable? see --runtime-dir)",
                path.display()
            ),
            SetupError::ControlSocket(e) => write!(f, "-S: {e}"),
        }
    }
}

impl std::error::Error for SetupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SetupError::Signals(e) | SetupError::HandoffSocket { source: e, .. } => Some(e),
            SetupError::ControlSocket(e) => Some(e),
        }
    }
}

/// What the caller does once, when the first worker of a fresh start is ready, before the master
/// says so (READY=1): write the pid file, let a `-D` parent return. An error fails the start like
/// a worker that never became ready. A first worker that fails is told by `run`'s exit code.
pub type FirstReady<'a> = Box<dyn FnOnce() -> Result<(), String> + 'a>;

/// Runs the master until it stops; returns its exit code. `resume` is the state a previous image
/// of this process handed over in an upgrade in place; `launch` is what such an upgrade executes.
pub fn run(
    opts: &Options,
    runtime: &RuntimeDir,
    notifier: Option<&Notifier>,
    launch: &Launch,
    resume: Option<Snapshot>,
    passed: Vec<(OwnedFd, Option<String>)>,
    first_ready: Option<FirstReady<'_>>,
) -> Result<i32, SetupError> {
    let signals = Signals::install().map_err(SetupError::Signals)?;
    // An image started by an upgrade in place inherits the handled signals blocked.
    signals::unblock_handled().map_err(SetupError::Signals)?;
    let staging =
        crate::fs_at::Dir::open(runtime.path()).map_err(|source| SetupError::HandoffSocket {
            path: runtime.master_socket(),
            source,
        })?;
    let mut listeners = vec![ControlListener {
        listener: bind_handoff_socket(runtime, &staging)?,
        path: runtime.master_socket(),
        internal: true,
        placed: None,
    }];
    for arg in &opts.master_sockets {
        let spec = crate::control::spec::parse_spec(arg).map_err(SetupError::ControlSocket)?;
        let (listener, placed) =
            crate::control::spec::bind(&spec, Some(&staging)).map_err(SetupError::ControlSocket)?;
        log::info!("master CLI on {}", spec.path.display());
        listeners.push(ControlListener {
            listener,
            path: spec.path,
            internal: false,
            placed: Some(placed),
        });
    }
    let mut master = Master {
        opts,
        runtime,
        notifier,
        state: State::new(Policy {
            exit_on_failure: opts.exit_on_failure,
            max_old_workers: opts.max_old_workers,
            drain_timeout: opts.drain_timeout,
        }),
        signals,
        listeners,
        sessions: HashMap::new(),
        next_session: 0,
        held: HeldSet::default(),
        fdstore: FdStore::default(),
        fetched: None,
        probe: None,
        aborts: Vec::new(),
        drain_deadlines: Vec::new(),
        respawn_at: None,
        stop_deadline: None,
        exit: None,
        outputs: Outputs::default(),
        last_startup: None,
        generations: HashMap::new(),
        worker_extra: HashMap::new(),
        reloads: 0,
        failed_reloads: 0,
        started: Instant::now(),
        launch,
        upgrade_requested: false,
        last_good: LastGood::default(),
        signal_reloads: Default::default(),
        first_ready,
    };
    master.adopt_passed(passed);
    match resume {
        None => {
            master.sweep_config_copies();
            master.feed(Event::Boot)
        }
        Some(snapshot) => master.resume(snapshot),
    }
    while master.exit.is_none() {
        master.turn();
    }
    // Every worker is gone: no copy is anyone's any more.
    master.sweep_config_copies();
    master.abandon_reloads();
    for placed in master.listeners.iter().filter_map(|l| l.placed.as_ref()) {
        placed.remove("master CLI socket");
    }
    Ok(master.exit.unwrap_or(1))
}

/// `<runtime dir>/master.sock`, 0600 from the start. A stale one can only be a previous image's
/// of this very master (upgrade in place): the runtime directory is locked, and a crashed
/// predecessor's files were swept when it was acquired. It is replaced.
fn bind_handoff_socket(
    runtime: &RuntimeDir,
    dir: &crate::fs_at::Dir,
) -> Result<UnixListener, SetupError> {
    let err = |source| SetupError::HandoffSocket {
        path: runtime.master_socket(),
        source,
    };
    let (fd, _) = dir
        .bind_unix(
            std::ffi::OsStr::new(crate::runtime_dir::MASTER_SOCKET),
            0o600,
            (None, None),
            libc::SOMAXCONN,
            Some(dir),
        )
        .map_err(|e| err(e.into_io()))?;
    Ok(UnixListener::from(fd))
}

struct Master<'a> {
    opts: &'a Options,
    runtime: &'a RuntimeDir,
    notifier: Option<&'a Notifier>,
    state: State,
    signals: Signals,
    /// The master CLI: `master.sock` (also the `-x` target of new workers), then each `-S`.
    listeners: Vec<ControlListener>,
    sessions: HashMap<u64, Session>,
    next_session: u64,
    /// One copy of each listening socket of the current worker.
    held: HeldSet,
    /// systemd's copies of `held`.
    fdstore: FdStore,
    /// Sockets fetched from a worker that just became ready, until the state commits them.
    fetched: Option<(Pid, HeldSet)>,
    probe: Option<Probe>,
    /// SIGKILL deadlines of workers that failed to start.
    aborts: Vec<(Pid, Instant)>,
    /// When draining workers hit `--drain-timeout`.
    drain_deadlines: Vec<(Pid, Instant)>,
    respawn_at: Option<Instant>,
    stop_deadline: Option<Instant>,
    exit: Option<i32>,
    /// Workers' stderr pipes.
    outputs: Outputs,
    /// Start-up output of the worker that became ready last, until a reload answer takes it.
    last_startup: Option<(Pid, Vec<u8>)>,
    /// The pid of each live worker's generation.
    generations: HashMap<u64, Pid>,
    /// What `show proc` tells of each worker beyond the state.
    worker_extra: HashMap<Pid, WorkerExtra>,
    /// Successful and failed reloads, as `show proc` counts them.
    reloads: u64,
    failed_reloads: u64,
    started: Instant,
    launch: &'a Launch,
    /// SIGURG came; the upgrade in place runs once no worker is starting.
    upgrade_requested: bool,
    /// The configuration copies, and which one a crash replacement runs.
    last_good: LastGood,
    /// Which reload a signal asked for, for `await-reload`.
    signal_reloads: await_reload::SignalReloads,
    /// Until the first worker is ready (fresh start only).
    first_ready: Option<FirstReady<'a>>,
}

struct WorkerExtra {
    version: Option<String>,
    reloads_at_spawn: u64,
}

/// What a polled fd belongs to.
#[derive(Clone, Copy)]
enum Token {
    Signals,
    Listener(usize),
    Probe,
    Output(Pid),
    Session(u64),
    /// Our stderr has room for what waits in `crate::stderr_buffer`.
    Stderr,
    /// The notify socket has room for what waits (queued messages, the fd store).
    Notify,
}

impl Master<'_> {
    /// Polls every fd the master watches; returns those with events.
    fn wait(&self, timeout: PollTimeout) -> Vec<(Token, PollFlags)> {
        let stderr = io::stderr();
        let mut tokens = vec![Token::Signals];
        let mut fds = vec![PollFd::new(self.signals.fd(), PollFlags::POLLIN)];
        // At a socket's client limit, its new clients wait in the listen backlog. The limit is
        // per socket so that idle `-S` clients never keep a new worker's `-x` from master.sock.
        for (i, l) in self.listeners.iter().enumerate() {
            if self.clients_of(i) < crate::supervisor::sessions::MAX_SESSIONS {
                tokens.push(Token::Listener(i));
                fds.push(PollFd::new(l.listener.as_fd(), PollFlags::POLLIN));
            }
        }
        if let Some(fd) = self.probe.as_ref().and_then(|p| p.poll_fd()) {
            tokens.push(Token::Probe);
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        for (pid, fd) in self.outputs.fds() {
            tokens.push(Token::Output(pid));
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        for (id, s) in &self.sessions {
            let mut flags = PollFlags::empty();
            if !s.closing {
                flags |= PollFlags::POLLIN;
            }
            if s.wants_output() {
                flags |= PollFlags::POLLOUT;
            }
            tokens.push(Token::Session(*id));
            fds.push(PollFd::new(s.fd(), flags));
        }
        // Only while something waits: an idle master polls neither.
        if crate::stderr_buffer::wants_writable() {
            tokens.push(Token::Stderr);
            fds.push(PollFd::new(stderr.as_fd(), PollFlags::POLLOUT));
        }
        if let Some(n) = self
            .notifier
            .filter(|n| n.wants_writable() || self.fdstore.waiting())
        {
            tokens.push(Token::Notify);
            fds.push(PollFd::new(n.fd(), PollFlags::POLLOUT));
        }
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => log::error!("poll failed: {e}"),
        }
        tokens
            .into_iter()
            .zip(
                fds.iter()
                    .map(|fd| fd.revents().unwrap_or(PollFlags::empty())),
            )
            .filter(|(_, revents)| !revents.is_empty())
            .collect()
    }

    fn turn(&mut self) {
        let timeout = self.poll_timeout(Instant::now());
        for (token, revents) in self.wait(timeout) {
            match token {
                Token::Signals => self.handle_signals(),
                Token::Listener(i) => self.accept_clients(i),
                // Stepped below in any case.
                Token::Probe => {}
                Token::Output(pid) => self.outputs.drain(pid),
                Token::Session(id) => self.on_session(id, revents),
                Token::Stderr => crate::stderr_buffer::flush(),
                Token::Notify => self.notify_writable(),
            }
        }
        let now = Instant::now();
        self.step_probe(now);
        self.fire_timers(now);
        self.expire_sessions(now);
        if self.upgrade_requested && self.state.is_settled() {
            self.upgrade_requested = false;
            self.upgrade();
        }
    }

    /// The earliest deadline, rounded up to the millisecond so the loop never spins on a
    /// sub-millisecond remainder; no deadline at all means sleeping until an fd or signal wakes us.
    fn poll_timeout(&self, now: Instant) -> PollTimeout {
        let deadlines = [
            self.probe.as_ref().map(Probe::wakeup),
            self.aborts.iter().map(|(_, d)| *d).min(),
            self.drain_deadlines.iter().map(|(_, d)| *d).min(),
            self.respawn_at,
            self.stop_deadline,
            self.sessions
                .values()
                .filter(|s| s.awaiting_reload.is_none())
                .map(|s| s.deadline)
                .min(),
        ];
        match deadlines.into_iter().flatten().min() {
            None => PollTimeout::NONE,
            Some(at) => {
                let left = at.saturating_duration_since(now);
                let ms = left.as_micros().div_ceil(1000).min(60_000) as i32;
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::NONE)
            }
        }
    }

    fn handle_signals(&mut self) {
        for received in self.signals.take() {
            match received.signal {
                libc::SIGCHLD => self.reap(),
                libc::SIGTERM | libc::SIGINT => {
                    log::info!("received {received}: stopping");
                    self.feed(Event::StopRequested)
                }
                libc::SIGUSR1 => {
                    log::info!("received {received}: soft stop");
                    self.feed(Event::SoftStopRequested)
                }
                libc::SIGURG => {
                    if self.state.is_stopping() {
                        log::warn!("received {received} while stopping: no upgrade in place");
                    } else {
                        log::info!("received {received}: upgrade in place requested");
                        self.upgrade_requested = true;
                    }
                }
                libc::SIGUSR2 | libc::SIGHUP => {
                    self.signal_reloads.requested(self.state.last_generation());
                    self.request_reload(false, &received)
                }
                _ => {}
            }
        }
    }

    /// Every reload request says who asked, before the state says what becomes of it (started,
    /// queued behind the one starting, joined with the queued one, ignored while stopping).
    fn request_reload(&mut self, hard: bool, origin: &dyn std::fmt::Display) {
        let (what, event) = if hard {
            ("hard reload", Event::HardReloadRequested)
        } else {
            ("reload", Event::ReloadRequested)
        };
        log::info!("{what} requested by {origin}");
        self.feed(event)
    }

    /// Every child, ours or an orphan handed to us as PID 1, is reaped here and only here.
    fn reap(&mut self) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(status) => {
                    if let Some(pid) = status.pid() {
                        let code = worker::exit_code(&status);
                        let status = worker::describe_wait_status(&status);
                        self.feed(Event::WorkerExited {
                            pid: pid.as_raw(),
                            status,
                            code,
                        });
                    }
                }
                Err(Errno::EINTR) => {}
                Err(e) => {
                    log::error!("waitpid failed: {e}");
                    break;
                }
            }
        }
    }

    fn step_probe(&mut self, now: Instant) {
        let Some(probe) = self.probe.as_mut() else {
            return;
        };
        let pid = probe.pid;
        match probe.step(now) {
            Progress::Waiting => {}
            Progress::Ready => {
                if let (Some(v), Some(extra)) = (probe.version(), self.worker_extra.get_mut(&pid)) {
                    extra.version = Some(v.to_string());
                }
                self.probe = None;
                self.take_sockets_of(pid);
            }
            Progress::TimedOut => {
                let detail = probe.last_error().unwrap_or("no answer").to_string();
                self.probe = None;
                self.feed(Event::WorkerFailed {
                    pid,
                    reason: format!(
                        "not ready within {} ms ({detail}); raise --ready-timeout if it needs longer",
                        self.opts.ready_timeout.as_millis()
                    ),
                });
            }
        }
    }

    /// A worker that answers is ready once the master holds its listening sockets.
    fn take_sockets_of(&mut self, pid: Pid) {
        let Some(generation) = self.state.worker(pid).map(|w| w.generation) else {
            return;
        };
        let path = self.runtime.worker_socket(generation);
        let runtime = self.runtime;
        // The worker-private stats sockets die with their worker; holding a copy would keep a
        // socket alive that nobody answers on.
        let fetched = fetch_sockets(&path, HANDOFF_TIMEOUT)
            .map_err(|e| e.to_string())
            .and_then(|received| {
                HeldSet::from_received(received, |info| {
                    info.unix_path
                        .as_deref()
                        .is_some_and(|p| runtime.is_worker_socket_name(p))
                })
                .map_err(|e| format!("{e}; the worker does not speak haproxy's _getsocks protocol"))
            });
        match fetched {
            Ok(set) => {
                if let Err(e) = self.fire_first_ready(pid) {
                    // Dropping `set` closes the copies; the worker is stopped as a failed start.
                    self.feed(Event::WorkerFailed {
                        pid,
                        reason: format!("it is ready, but {e}"),
                    });
                    return;
                }
                self.fetched = Some((pid, set));
                self.feed(Event::WorkerReady { pid });
            }
            Err(e) => self.feed(Event::WorkerFailed {
                pid,
                reason: format!(
                    "could not take its listening sockets from {}: {e}",
                    path.display()
                ),
            }),
        }
    }

    /// Runs the caller's `FirstReady` if `pid` is the first worker and the state will take it
    /// as ready (it is the one starting, and the master is not stopping).
    fn fire_first_ready(&mut self, pid: Pid) -> Result<(), String> {
        if self.state.starting_pid() != Some(pid) || self.state.is_stopping() {
            return Ok(());
        }
        match self.first_ready.take() {
            Some(first_ready) => first_ready(),
            None => Ok(()),
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        for pid in take_due(&mut self.aborts, now) {
            log::warn!(
                "worker pid {pid} did not exit {} s after SIGTERM: SIGKILL",
                ABORT_GRACE.as_secs()
            );
            self.send_signal(pid, Signal::Kill);
        }
        for pid in take_due(&mut self.drain_deadlines, now) {
            self.feed(Event::DrainDeadline { pid });
        }
        if self.respawn_at.is_some_and(|at| at <= now) {
            self.respawn_at = None;
            self.feed(Event::RespawnDue);
        }
        if self.stop_deadline.is_some_and(|at| at <= now) {
            self.stop_deadline = None;
            self.feed(Event::StopDeadline);
        }
    }

    fn feed(&mut self, event: Event) {
        let actions = self.state.decide(event, Instant::now());
        for action in actions {
            self.apply(action);
        }
    }

    fn apply(&mut self, action: Action) {
        match action {
            Action::Spawn { generation, kind } => self.spawn(generation, kind),
            Action::CommitSockets { pid } => match self.fetched.take() {
                Some((fetched_pid, set)) if fetched_pid == pid => {
                    warn_rebound(&self.held, &set, pid);
                    log::debug!(
                        "holding {} listening sockets of worker pid {pid}",
                        set.len()
                    );
                    // Dropping the previous set closes the copies the new worker did not take.
                    self.held = set;
                    self.sync_fdstore();
                    // Ready: what it said while starting is kept for a waiting `reload` only.
                    self.last_startup = Some((pid, self.outputs.take_startup(pid)));
                    self.config_ready(pid);
                }
                other => self.fetched = other,
            },
            Action::Signal { pid, signal } => self.send_signal(pid, signal),
            Action::Abort { pid } => {
                if self.probe.as_ref().is_some_and(|p| p.pid == pid) {
                    self.probe = None;
                }
                self.send_signal(pid, Signal::Terminate);
                self.aborts.push((pid, Instant::now() + ABORT_GRACE));
            }
            Action::Forget { pid, generation } => {
                self.runtime.remove_worker_files(generation);
                self.config_forgotten(generation);
                self.outputs.forget(pid);
                self.worker_extra.remove(&pid);
                self.generations.remove(&generation);
                if self.last_startup.as_ref().is_some_and(|(p, _)| *p == pid) {
                    self.last_startup = None;
                }
                self.aborts.retain(|(p, _)| *p != pid);
                self.drain_deadlines.retain(|(p, _)| *p != pid);
                if self.probe.as_ref().is_some_and(|p| p.pid == pid) {
                    self.probe = None;
                }
                if self.fetched.as_ref().is_some_and(|(p, _)| *p == pid) {
                    self.fetched = None;
                }
            }
            Action::NotifyReady { status, first } => {
                let mainpid = first.then(std::process::id);
                let status = self.with_config_status(&status);
                self.notify(|n| n.ready(&status, mainpid));
            }
            Action::NotifyReloading { status } => self.notify(|n| n.reloading(&status)),
            Action::NotifyStatus { status } => {
                let status = self.with_config_status(&status);
                self.notify(|n| n.status(&status))
            }
            Action::NotifyStopping { status } => self.notify(|n| n.stopping(&status)),
            Action::ScheduleRespawn { after } => self.respawn_at = Some(Instant::now() + after),
            Action::ArmDrainDeadline { pid, after } => {
                self.drain_deadlines.push((pid, Instant::now() + after))
            }
            Action::ArmStopDeadline { after } => self.stop_deadline = Some(Instant::now() + after),
            Action::Log { level, message } => log::log!(level, "{message}"),
            Action::Exit { code } => self.exit = Some(code),
            Action::ReloadDone { generation, reason } => {
                if reason.is_none() {
                    self.reloads += 1;
                } else {
                    self.failed_reloads += 1;
                }
                let startup = self.startup_output(generation, reason.is_none());
                self.config_reload_done(&startup, reason.as_deref());
                self.answer_reloads(generation, reason.as_deref(), &startup);
            }
        }
    }

    fn notify(&self, send: impl FnOnce(&Notifier) -> io::Result<()>) {
        if let Some(n) = self.notifier {
            if let Err(e) = send(n) {
                log::warn!("sd_notify failed: {e}");
            }
        }
    }

    fn spawn(&mut self, generation: u64, kind: StartKind) {
        let fragment = match self.runtime.write_fragment(generation) {
            Ok(f) => f,
            Err(e) => {
                self.feed(Event::SpawnFailed {
                    generation,
                    reason: e.to_string(),
                });
                return;
            }
        };
        let handoff_socket = self.runtime.master_socket();
        let config_files = self.worker_config(generation, kind);
        // Before any process runs these files: a reload refused here leaves the old worker as
        // it was.
        let change_dir = self.opts.change_dir().map(std::path::Path::new);
        if let Some(found) = crate::master_worker_keyword::find(&config_files, change_dir) {
            self.spawn_failed(generation, found.to_string());
            return;
        }
        log::info!(
            "starting worker generation {generation} ({}){}",
            match kind {
                StartKind::Initial => "first worker",
                StartKind::Reload => "reload",
                StartKind::Replace => "replacement",
            },
            if self.held.is_empty() {
                String::new()
            } else {
                format!(", handing over {} listening sockets", self.held.len())
            }
        );
        let spec = WorkerSpec {
            haproxy: &self.opts.haproxy,
            passthrough: &self.opts.worker_args,
            config_files: &config_files,
            fragment: &fragment,
            handoff_socket: (!self.held.is_empty()).then_some(handoff_socket.as_path()),
        };
        match worker::spawn(&spec) {
            Ok((pid, stderr)) => {
                self.outputs.add(pid, stderr);
                self.worker_extra.insert(
                    pid,
                    WorkerExtra {
                        version: None,
                        reloads_at_spawn: self.reloads,
                    },
                );
                self.generations.insert(generation, pid);
                self.probe = Some(Probe::new(
                    pid,
                    self.runtime.worker_socket(generation),
                    Instant::now(),
                    self.opts.ready_timeout,
                ));
                self.feed(Event::Spawned { generation, pid });
            }
            Err(e) => self.spawn_failed(generation, e.to_string()),
        }
    }

    /// Worker `generation` was not started: its files go, and the state hears why.
    fn spawn_failed(&mut self, generation: u64, reason: String) {
        self.runtime.remove_worker_files(generation);
        self.config_forgotten(generation);
        self.feed(Event::SpawnFailed { generation, reason });
    }

    /// Signals only children that have not been reaped: a reaped pid may already belong to
    /// another process.
    fn send_signal(&self, pid: Pid, signal: Signal) {
        if self.state.worker(pid).is_none() {
            return;
        }
        let sig = match signal {
            Signal::SoftStop => NixSignal::SIGUSR1,
            Signal::Terminate => NixSignal::SIGTERM,
            Signal::Kill => NixSignal::SIGKILL,
        };
        match kill(NixPid::from_raw(pid), sig) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => log::warn!("cannot send {} to worker pid {pid}: {e}", sig.as_str()),
        }
    }
}

/// Removes and returns the pids whose deadline has come.
fn take_due(deadlines: &mut Vec<(Pid, Instant)>, now: Instant) -> Vec<Pid> {
    let due = deadlines
        .iter()
        .filter(|(_, at)| *at <= now)
        .map(|(pid, _)| *pid)
        .collect();
    deadlines.retain(|(_, at)| *at > now);
    due
}

/// A listener the new worker bound afresh instead of taking over is not seamless: say so, with
/// the one known cause and its fix.
fn warn_rebound(held: &HeldSet, newer: &HeldSet, pid: Pid) {
    for info in held.rebound_in(newer) {
        let hint = if info.family == crate::handoff::listeners::Family::Inet6 {
            "; haproxy 2.3 and later only take over an IPv6 socket bound to a specific address \
             when its bind line says `v6only` (the kernel makes such sockets v6-only): \
             add `v6only` to that bind line"
        } else {
            ""
        };
        log::warn!(
            "worker pid {pid} bound a new socket for {} instead of taking over the one it was \
             handed: connections queued on the old socket are reset when the old worker stops{hint}",
            info.local
        );
    }
}
