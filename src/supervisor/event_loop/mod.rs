//! The executor: one poll loop over the signal pipe, the control sockets and their clients, the
//! workers' readiness probes and stderr (and, only while something waits for room, the master's
//! own stderr and the notify socket), with the earliest deadline as its timeout. It turns what
//! it observes into `Event`s for `State::decide` and carries out the `Action`s that come back.
//! All syscalls of the supervisor live here or in the modules it calls.
//!
//! Who owns what:
//! - this file: `Master`, the loop (`wait`, `turn`), signals and reaping, spawning a worker, and
//!   `apply_action`, which carries out one action.
//! - `queue.rs`: the event queue. What the loop observes, and what an action produces (a spawned
//!   pid, a failed spawn), is pushed; `settle` decides one event at a time and carries out all
//!   its actions before deciding the next. Only `queue::drain` calls `State::decide`.
//! - `timers.rs`: the one timer list. `State` arms every timer (`Action::Arm`) and decides what
//!   a due one means (`Event::Timer`); the list keeps them, gives the poll timeout (the
//!   earliest) and hands back the due ones.
//! - `workers.rs`: one record per worker (`WorkerRuntime`: stderr, readiness probe, the socket
//!   handoff tasks and fetched sockets, start-up output, version, reloads at spawn), made at
//!   spawn and dropped whole, with the worker's timers, at `Action::Forget`.
//! - `worker_tasks.rs`: the socket handoff with each worker, as tasks of its record: taking its
//!   listening sockets once it answers (`fetch`), serving it the held ones on its own channel
//!   (`handoff_serve`).
//! - `control.rs`: the master CLI's sessions and commands. Every session is bounded
//!   (`sessions.rs`): it is read only while it has no line to run and has read its answers
//!   (backpressure), its commands run one at a time while its unwritten output is below a mark
//!   (`run_sessions` each turn runs those that regained room; the poll does not wait while one
//!   can run), a forwarded `@` answer is streamed, read from the worker only as far as the
//!   client has room (`supervisor/forward.rs`), and `--cli-timeout` bounds each command line in
//!   all; `supervisor/admission.rs` decides who gets a session on a `-S` socket. `await_reload.rs`: which reload a
//!   signal asked for; `handover.rs`: the upgrade in place, sockets systemd passes and its fd
//!   store; `last_good.rs`: configuration copies; `watch.rs`: `--watch`'s inotify events and
//!   configuration comparisons.
//!
//! Where a task goes: an exchange with a peer that takes more than one step (the probe, fetching
//! a worker's sockets, serving `_getsocks` to a new worker or a client, a forwarded `@` command)
//! is a non-blocking state machine with its own deadline and buffers. One that talks to a worker
//! lives in that worker's `WorkerRuntime`, as `probe`, `fetch` and `handoff_serve` do (so it ends
//! when the worker is forgotten or aborted); one that serves a client lives in its session
//! (`Session::task`, stepped by `control::step_tasks`; the session runs its next command when
//! the task has answered).
//! `wait` polls the fds a task wants, `poll_timeout` includes its deadline, and when it ends it
//! pushes its outcome as an `Event` (the probe's answer starts the fetch, whose end is
//! `Event::WorkerReady` or `Event::WorkerFailed`); it never calls `State::decide` itself. How long the master waits for a worker is a state timer (as
//! `Timer::Ready` bounds the probe), not the task's own.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal as NixSignal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid as NixPid;

use super::last_good::LastGood;
use super::output::Output;
use super::probe::{Probe, Progress};
use super::sessions::{Session, Task};
use super::signals;
use super::signals::Signals;
use super::state::{Action, Event, Pid, Policy, ReloadKind, Signal, StartKind, State, Timer};
use super::upgrade::{Launch, Snapshot};
use super::worker::{self, Handoff, WorkerSpec};
use crate::fdstore::FdStore;
use crate::handoff::channel::Channel;
use crate::handoff::listeners::HeldSet;
use crate::handoff::named::NamedChannel;
use crate::handoff::sockpair::HandoffChannel;
use crate::haproxy_version::ListenerHandoff;
use crate::notify::Notifier;
use crate::options::Options;
use crate::preload::session::PreloadSession;
use crate::runtime_dir::RuntimeDir;

/// Bound on one `_getsocks` exchange with a worker, either direction.
const HANDOFF_TIMEOUT: Duration = Duration::from_secs(5);

mod await_reload;
mod control;
mod handover;
mod last_good;
mod preload;
mod queue;
mod timers;
mod version_check;
mod watch;
mod worker_tasks;
mod workers;

use control::ControlListener;
use queue::{EventQueue, Executor};
use timers::Timers;
use workers::{WorkerRuntime, Workers};

/// What can keep the master from starting its loop at all.
#[derive(Debug)]
pub enum SetupError {
    Signals(io::Error),
    HandoffSocket {
        path: PathBuf,
        source: io::Error,
    },
    ControlSocket(crate::control::spec::SpecError),
    MetricsBind {
        addr: std::net::SocketAddr,
        source: io::Error,
    },
    Watch(crate::config_watch::WatchError),
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
            SetupError::Watch(e) => write!(f, "{e}"),
            SetupError::MetricsBind { addr, source } => write!(
                f,
                "--metrics-bind: cannot listen on {addr}: {source} \
                 (is another process on that port? choose another, or leave the option out)"
            ),
        }
    }
}

impl std::error::Error for SetupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SetupError::Signals(e)
            | SetupError::HandoffSocket { source: e, .. }
            | SetupError::MetricsBind { source: e, .. } => Some(e),
            SetupError::ControlSocket(e) => Some(e),
            SetupError::Watch(e) => Some(e),
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
        level: crate::control::levels::Level::Admin,
        placed: None,
        peer_credentials: true,
        refusals: Default::default(),
    }];
    let mut taken: Vec<_> = passed
        .iter()
        .map(|(fd, _)| std::os::fd::AsRawFd::as_raw_fd(fd))
        .collect();
    for arg in &opts.master_sockets {
        let listener =
            ControlListener::open(arg, &staging, &mut taken).map_err(SetupError::ControlSocket)?;
        listeners.push(listener);
    }
    // Fatal at start; after an upgrade in place (the previous image's socket closed at the
    // exec) the workers must not lose their master over it.
    let metrics_http = match opts
        .metrics_bind
        .map(|addr| (addr, super::metrics_http::Endpoint::bind(addr)))
    {
        None => None,
        Some((_, Ok(endpoint))) => Some(endpoint),
        Some((addr, Err(source))) if resume.is_some() => {
            log::error!(
                "--metrics-bind: cannot listen on {addr} again after the upgrade in place: \
                 {source}; GET /metrics is off until the master restarts (show metrics still \
                 answers)"
            );
            None
        }
        Some((addr, Err(source))) => return Err(SetupError::MetricsBind { addr, source }),
    };
    let watching = match opts.watch.map(|_| watch::Watching::open()) {
        None => None,
        Some(Ok(w)) => Some(w),
        // As --metrics-bind: the workers must not lose their master over it.
        Some(Err(e)) if resume.is_some() => {
            log::error!("after the upgrade in place: {e}; configuration changes are not watched");
            None
        }
        Some(Err(e)) => return Err(SetupError::Watch(e)),
    };
    let sockets: Vec<_> = listeners
        .iter()
        .map(|l| {
            // An inherited fd@N has no path of its own.
            let named = l.internal || l.placed.is_some();
            (named.then_some(l.path.as_path()), l.listener.as_fd())
        })
        .collect();
    let master_cli_env = super::worker_env::master_cli_value(&sockets);
    super::worker_env::export(opts.binary_version.as_ref(), &master_cli_env);
    let mut master = Master {
        opts,
        runtime,
        notifier,
        events: EventQueue::default(),
        state: State::new(Policy {
            exit_on_failure: opts.exit_on_failure,
            max_old_workers: opts.max_old_workers,
            drain_timeout: opts.drain_timeout,
            ready_timeout: opts.ready_timeout,
            watch_delay: opts.watch,
        }),
        signals,
        listeners,
        sessions: HashMap::new(),
        next_session: 0,
        held: Rc::default(),
        fdstore: FdStore::default(),
        timers: Timers::default(),
        exit: None,
        workers: Workers::default(),
        reloads: 0,
        failed_reloads: 0,
        metrics: Default::default(),
        metrics_http,
        watching,
        startup_logs: String::new(),
        started: Instant::now(),
        launch,
        upgrade_requested: false,
        last_good: LastGood::default(),
        signal_reloads: Default::default(),
        first_ready,
        preload_library: None,
        binary_version: opts.binary_version.clone(),
        binary_identity: version_check::BinaryIdentity::of(&opts.haproxy),
        version_check: None,
        version_checks_unreaped: Vec::new(),
        master_cli_env,
    };
    master.adopt_passed(passed);
    let resumed = resume.is_some();
    match resume {
        None => {
            master.sweep_config_copies();
            master.push(Event::Boot)
        }
        Some(snapshot) => master.resume(snapshot),
    }
    master.start_watching(resumed);
    // Read once, so that scrapes agree; `started` crosses an upgrade in place, this follows it.
    master.metrics.start_time = std::time::SystemTime::now().checked_sub(master.started.elapsed());
    master.settle();
    while master.exit.is_none() {
        master.turn();
    }
    master.end_version_checks();
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
    /// Events observed and not yet decided.
    events: EventQueue,
    state: State,
    signals: Signals,
    /// The master CLI: `master.sock`, then each `-S`. New workers take their sockets over a
    /// channel of their own (`WorkerRuntime::handoff`), never over these.
    listeners: Vec<ControlListener>,
    sessions: HashMap<u64, Session>,
    next_session: u64,
    /// One copy of each listening socket of the current worker (shared with the `_getsocks`
    /// conversations serving it, which keep it open until they end).
    held: Rc<HeldSet>,
    /// systemd's copies of `held`.
    fdstore: FdStore,
    /// Every deadline the state armed.
    timers: Timers,
    exit: Option<i32>,
    /// Everything the executor knows of each worker, beyond the state.
    workers: Workers,
    /// Reload attempts, and the failures in a row among the last ones, as `show proc` counts
    /// them.
    reloads: u64,
    failed_reloads: u64,
    /// What `show metrics` counts (reload results and times, crash replacements).
    metrics: super::metrics::Counters,
    /// `--metrics-bind`'s listener and clients.
    metrics_http: Option<super::metrics_http::Endpoint>,
    /// `--watch`: the inotify watches and what the last load read.
    watching: Option<watch::Watching>,
    /// The last load's log in haproxy's format (`show startup-logs`, the `reload` answer).
    startup_logs: String,
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
    /// Where hapmaster's preload library was written for haproxy before 1.8, once one ran.
    preload_library: Option<PathBuf>,
    /// The version of the haproxy on disk, read at start and again when the file changes
    /// (`version_check`): how new workers take the held sockets.
    binary_version: Option<crate::haproxy_version::Version>,
    /// The file it was read from, as it was then.
    binary_identity: Option<version_check::BinaryIdentity>,
    /// `haproxy -v` of a changed binary, with the spawns that wait for it.
    version_check: Option<version_check::VersionCheck>,
    /// Those children until the loop reaps them (they are not workers).
    version_checks_unreaped: Vec<Pid>,
    /// `HAPROXY_MASTER_CLI` for workers that take it.
    master_cli_env: String,
}

/// What a polled fd belongs to.
#[derive(Clone, Copy)]
enum Token {
    Signals,
    Listener(usize),
    Probe,
    /// A new worker's own `-x` channel.
    Handoff(Pid),
    /// A haproxy 1.5 – 1.7 worker's preload channel.
    Preload(Pid),
    /// `haproxy -v` of a changed binary has output (stepped below in any case).
    VersionCheck,
    /// A worker's task (taking its sockets, serving it the held ones) has what it waits for
    /// (stepped below in any case).
    WorkerTask,
    Output(Pid),
    Session(u64),
    /// A session's task has what it waits for (stepped below in any case).
    Task,
    /// Our stderr has room for what waits in `crate::stderr_buffer`.
    Stderr,
    /// The notify socket has room for what waits (queued messages, the fd store).
    Notify,
    /// `--metrics-bind`'s listener has clients waiting.
    MetricsListener,
    /// A `--metrics-bind` client's socket is ready for what it waits for.
    MetricsClient(u64),
    /// `--watch`'s inotify fd has events.
    Watch,
}

impl Master<'_> {
    /// Polls every fd the master watches; returns those with events.
    fn wait(&self, timeout: PollTimeout) -> Vec<(Token, PollFlags)> {
        let stderr = io::stderr();
        let mut tokens = vec![Token::Signals];
        let mut fds = vec![PollFd::new(self.signals.fd(), PollFlags::POLLIN)];
        // At a socket's client limit, its new clients wait in the listen backlog. The limit is
        // per socket so that idle `-S` clients never keep root out of master.sock.
        for (i, l) in self.listeners.iter().enumerate() {
            if self.clients_of(i) < crate::supervisor::sessions::MAX_SESSIONS {
                tokens.push(Token::Listener(i));
                fds.push(PollFd::new(l.listener.as_fd(), PollFlags::POLLIN));
            }
        }
        for (pid, record) in self.workers.iter() {
            if let Some(fd) = record.probe.as_ref().and_then(Probe::poll_fd) {
                tokens.push(Token::Probe);
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
            }
            if let Some(channel) = &record.handoff {
                tokens.push(Token::Handoff(pid));
                fds.push(PollFd::new(channel.poll_fd(), PollFlags::POLLIN));
            }
            if let Some(fd) = record.preload.as_ref().and_then(|p| p.poll_fd()) {
                tokens.push(Token::Preload(pid));
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
            }
            if let Some(fetch) = &record.fetch {
                tokens.push(Token::WorkerTask);
                fds.push(PollFd::new(fetch.task.fd(), fetch.wants));
            }
            if let Some(serve) = &record.handoff_serve {
                tokens.push(Token::WorkerTask);
                fds.push(PollFd::new(serve.stream.as_fd(), serve.wants));
            }
            if let Some(fd) = record.output.fd() {
                tokens.push(Token::Output(pid));
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
            }
        }
        for (id, s) in &self.sessions {
            let mut flags = PollFlags::empty();
            // Backpressure: a client with a line to run or answers it has not read is not read.
            if s.wants_input() {
                flags |= PollFlags::POLLIN;
            }
            if s.wants_output() {
                flags |= PollFlags::POLLOUT;
            }
            // A task on the session's own stream (`_getsocks`) polls it alone.
            if !(s.task.as_ref().is_some_and(|t| t.fd().is_none())) {
                tokens.push(Token::Session(*id));
                fds.push(PollFd::new(s.fd(), flags));
            }
            // A relay that waits for its client to read is not polled at all: a worker that
            // has closed would report POLLHUP at every poll.
            if let Some(task) = s.task.as_ref().filter(|_| !s.relay_stalled()) {
                tokens.push(Token::Task);
                fds.push(PollFd::new(task.fd().unwrap_or(s.fd()), task.interest()));
            }
        }
        if let Some(http) = &self.metrics_http {
            // At the client limit, new clients wait in the listen backlog.
            if http.has_room() {
                tokens.push(Token::MetricsListener);
                fds.push(PollFd::new(http.listener.as_fd(), PollFlags::POLLIN));
            }
            for (id, c) in &http.clients {
                tokens.push(Token::MetricsClient(*id));
                fds.push(PollFd::new(c.fd(), c.interest()));
            }
        }
        if let Some(check) = &self.version_check {
            tokens.push(Token::VersionCheck);
            fds.push(PollFd::new(check.poll_fd(), PollFlags::POLLIN));
        }
        if let Some(w) = &self.watching {
            tokens.push(Token::Watch);
            fds.push(PollFd::new(w.fd(), PollFlags::POLLIN));
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
                Token::Probe | Token::WorkerTask | Token::VersionCheck => {}
                Token::Handoff(pid) => self.hand_over_to(pid),
                Token::Preload(pid) => self.step_preload(pid),
                Token::Output(pid) => {
                    if let Some(record) = self.workers.get_mut(pid) {
                        record.output.drain(pid);
                    }
                }
                Token::Session(id) => self.on_session(id, revents),
                Token::Task => {}
                Token::Stderr => crate::stderr_buffer::flush(),
                Token::Notify => self.notify_writable(),
                Token::MetricsListener => {
                    let deadline = Instant::now() + self.opts.cli_timeout;
                    if let Some(http) = self.metrics_http.as_mut() {
                        http.accept(deadline);
                    }
                }
                Token::MetricsClient(id) => self.step_metrics_client(id),
                Token::Watch => self.on_watch_events(),
            }
            // What a client's command does next sees what an earlier signal changed.
            self.settle();
        }
        let now = Instant::now();
        self.step_probes(now);
        self.step_worker_tasks(now);
        self.step_version_check(now);
        self.step_tasks(now);
        self.run_sessions();
        self.fire_timers(now);
        self.settle();
        self.expire_sessions(now);
        if let Some(http) = self.metrics_http.as_mut() {
            http.expire(now);
        }
        if self.upgrade_requested && self.state.is_settled() {
            self.upgrade_requested = false;
            self.upgrade();
        }
    }

    /// The earliest deadline, rounded up to the millisecond so the loop never spins on a
    /// sub-millisecond remainder; no deadline at all means sleeping until an fd or signal wakes us.
    fn poll_timeout(&self, now: Instant) -> PollTimeout {
        // A session with a command to run and room for its answer runs it next turn.
        if self.sessions.values().any(Session::runnable) {
            return PollTimeout::ZERO;
        }
        let deadlines = [
            self.workers
                .iter()
                .filter_map(|(_, r)| r.probe.as_ref().and_then(Probe::wakeup))
                .min(),
            self.workers
                .iter()
                .filter_map(|(_, r)| r.task_wakeup())
                .min(),
            self.timers.earliest(),
            self.sessions
                .values()
                .filter(|s| s.on_its_own_time())
                .map(|s| s.deadline)
                .min(),
            self.sessions
                .values()
                .filter(|s| !s.relay_stalled())
                .filter_map(|s| s.task.as_ref().map(Task::wakeup))
                .min(),
            self.metrics_http
                .as_ref()
                .and_then(|h| h.clients.values().map(|c| c.deadline).min()),
            self.version_check.as_ref().map(|c| c.deadline()),
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
                libc::SIGTERM if self.opts.soft_stop_on_sigterm => {
                    log::info!("received {received}: soft stop (--on-sigterm soft)");
                    self.push(Event::SoftStopRequested)
                }
                libc::SIGTERM | libc::SIGINT => {
                    log::info!("received {received}: stopping");
                    self.push(if received.signal == libc::SIGINT {
                        Event::InterruptRequested
                    } else {
                        Event::StopRequested
                    })
                }
                libc::SIGUSR1 => {
                    log::info!("received {received}: soft stop");
                    self.push(Event::SoftStopRequested)
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
                    let sender = received.sender.map(|s| s.pid);
                    self.signal_reloads
                        .requested(self.state.last_generation(), sender);
                    self.request_reload(ReloadKind::Soft, &received)
                }
                _ => {}
            }
        }
    }

    /// Every reload request says who asked, before the state says what becomes of it (started,
    /// queued behind the one starting, joined with the queued one, ignored while stopping).
    fn request_reload(&mut self, kind: ReloadKind, origin: &dyn std::fmt::Display) {
        let what = match kind {
            ReloadKind::Soft => "reload",
            ReloadKind::Hard => "hard reload",
        };
        log::info!("{what} requested by {origin}");
        self.metrics.reload_requested(Instant::now());
        self.push(Event::ReloadRequested(kind))
    }

    /// Every child, ours or an orphan handed to us as PID 1, is reaped here and only here.
    fn reap(&mut self) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(status) => {
                    if let Some(pid) = status
                        .pid()
                        .filter(|p| !self.reaped_version_check(p.as_raw()))
                    {
                        let code = worker::exit_code(&status);
                        let status = worker::describe_wait_status(&status);
                        self.push(Event::WorkerExited {
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

    fn step_probes(&mut self, now: Instant) {
        let probing: Vec<Pid> = self
            .workers
            .iter()
            .filter(|(_, r)| r.probe.is_some())
            .map(|(pid, _)| pid)
            .collect();
        for pid in probing {
            self.step_probe(pid, now);
        }
    }

    fn step_probe(&mut self, pid: Pid, now: Instant) {
        let Some(record) = self.workers.get_mut(pid) else {
            return;
        };
        let Some(probe) = record.probe.as_mut() else {
            return;
        };
        match probe.step(now) {
            Progress::Waiting => {}
            Progress::Ready => {
                record.version = probe.version().map(str::to_string);
                record.probe = None;
                self.start_fetch(pid, now);
            }
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

    /// Due timers become events; what each means is the state's to decide.
    fn fire_timers(&mut self, now: Instant) {
        for timer in self.timers.take_due(now) {
            let detail = match timer {
                Timer::Ready { pid } => self.workers.get(pid).and_then(|r| {
                    let probe = r.probe.as_ref().and_then(|p| p.last_error());
                    let fetch = r.fetch.as_ref().map(|f| {
                        format!(
                            "it answered; its listening sockets were still being taken from {} \
                             ({})",
                            f.task.peer(),
                            f.task.stage()
                        )
                    });
                    probe.map(str::to_string).or(fetch)
                }),
                _ => None,
            };
            self.push(Event::Timer { timer, detail });
        }
    }

    /// Queued for `settle`: an event is never decided while actions are being carried out.
    fn push(&mut self, event: Event) {
        self.events.push(event);
    }

    /// Decides every queued event and carries out its actions (`queue::drain`).
    fn settle(&mut self) {
        queue::drain(self);
    }

    fn apply_action(&mut self, action: Action) {
        match action {
            Action::Spawn { generation, kind } => self.spawn_when_version_known(generation, kind),
            Action::CommitSockets { pid } => self.commit_sockets(pid),
            Action::Signal { pid, signal } => self.send_signal(pid, signal),
            Action::Abort { pid } => {
                if let Some(record) = self.workers.get_mut(pid) {
                    record.probe = None;
                    record.fetch = None;
                    record.handoff_serve = None;
                    record.preload = None;
                }
                self.send_signal(pid, Signal::Terminate);
            }
            Action::Forget { pid, generation } => {
                self.runtime.remove_worker_files(generation);
                self.config_forgotten(generation);
                self.workers.forget(pid);
                self.timers.forget_worker(pid);
            }
            Action::NotifyReady { status, first } => {
                let mainpid = first.then(std::process::id);
                let status = self.with_config_status(&status);
                self.notify(|n| n.ready(&status, mainpid));
                if let Some(w) = first.then(|| self.state.current()).flatten() {
                    self.first_load_done(w.pid);
                }
            }
            Action::NotifyReloading { status } => self.notify(|n| n.reloading(&status)),
            Action::NotifyStatus { status } => {
                let status = self.with_config_status(&status);
                self.notify(|n| n.status(&status))
            }
            Action::NotifyStopping { status } => self.notify(|n| n.stopping(&status)),
            Action::Arm { at, timer } => self.timers.arm(at, timer),
            Action::Disarm { timer } => self.timers.disarm(timer),
            Action::Log { level, message } => log::log!(level, "{message}"),
            Action::Exit { code } => self.exit = Some(code),
            Action::CompareConfig => self.compare_config(),
            Action::ReloadDone { generation, reason } => {
                // Failures in a row, as haproxy counts them (`spawn` counted the attempt).
                if reason.is_none() {
                    self.failed_reloads = 0;
                } else {
                    self.failed_reloads += 1;
                }
                self.metrics.reload_done(
                    generation,
                    reason.is_none(),
                    Instant::now(),
                    std::time::SystemTime::now(),
                );
                let startup = self.startup_output(generation, reason.is_none());
                self.config_reload_done(&startup, reason.as_deref());
                self.answer_reloads(generation, reason.as_deref(), &startup);
            }
        }
    }

    /// The sockets fetched from worker `pid` become the held set.
    fn commit_sockets(&mut self, pid: Pid) {
        let Some(record) = self.workers.get_mut(pid) else {
            return;
        };
        let Some(set) = record.fetched.take() else {
            return;
        };
        // Ready: what it said while starting is kept for a waiting `reload` only.
        let startup = record.output.take_startup(pid);
        for (_, other) in self.workers.iter_mut() {
            other.startup = None;
        }
        if let Some(record) = self.workers.get_mut(pid) {
            record.startup = Some(startup);
        }
        let set = set.ordered_as(&self.held);
        warn_rebound(&self.held, &set, pid);
        log::debug!(
            "holding {} listening sockets of worker pid {pid}",
            set.len()
        );
        // Dropping the previous set closes the sockets the new one does not share.
        self.held = Rc::new(set);
        if let Some(advice) = crate::open_files::shortfall(self.held.len()) {
            log::warn!(
                "holding {} listening sockets, the next reload may fail: {advice}",
                self.held.len()
            );
        }
        self.sync_fdstore();
        self.config_ready(pid);
    }

    /// How new workers take the held sockets: by the version of the haproxy on disk.
    fn listener_handoff(&self) -> ListenerHandoff {
        ListenerHandoff::of(self.binary_version.as_ref())
    }

    fn notify(&self, send: impl FnOnce(&Notifier) -> io::Result<()>) {
        if let Some(n) = self.notifier {
            if let Err(e) = send(n) {
                log::warn!("sd_notify failed: {e}");
            }
        }
    }

    fn spawn(&mut self, generation: u64, kind: StartKind) {
        // haproxy counts a reload when it starts, whatever comes of it.
        match kind {
            StartKind::Reload(_) => {
                self.reloads += 1;
                self.metrics.reload_started(generation, Instant::now());
            }
            StartKind::Replace => self.metrics.worker_replaced(),
            StartKind::Initial => {}
        }
        let handoff = self.listener_handoff();
        let fragment = match self.runtime.write_fragment(generation, handoff) {
            Ok(f) => f,
            Err(e) => {
                self.push(Event::SpawnFailed {
                    generation,
                    reason: e.to_string(),
                });
                return;
            }
        };
        let handoff_socket = self.runtime.handoff_socket(generation);
        let channel = match self.handoff_channel(generation) {
            Ok(c) => c,
            Err(e) => {
                let what = if handoff == ListenerHandoff::XSockpair {
                    "a socketpair".to_string()
                } else {
                    handoff_socket.display().to_string()
                };
                self.spawn_failed(
                    generation,
                    format!(
                        "cannot make the new worker's socket handoff channel ({what}): {e}; \
                         check the runtime directory and the open files limit"
                    ),
                );
                return;
            }
        };
        let preload = match self.preload_channel(handoff) {
            Ok(p) => p,
            Err(e) => {
                self.spawn_failed(generation, e);
                return;
            }
        };
        if self.watching.is_some() {
            self.watch_spawning(kind);
        }
        let config_files = self.worker_config(generation, kind);
        // Before any process runs these files: a reload refused here leaves the old worker as
        // it was.
        let change_dir = self.opts.change_dir().map(std::path::Path::new);
        if let Some(found) = crate::refused_config::find(&config_files, change_dir) {
            self.spawn_failed(generation, found.to_string());
            return;
        }
        log::info!(
            "starting worker generation {generation} ({}){}",
            match kind {
                StartKind::Initial => "first worker",
                StartKind::Reload(_) => "reload",
                StartKind::Replace => "replacement",
            },
            if self.held.is_empty() {
                String::new()
            } else if preload.is_some() {
                format!(
                    ", offering {} held listening sockets to its binds (preload library)",
                    self.held.len()
                )
            } else {
                format!(", handing over {} listening sockets", self.held.len())
            }
        );
        let spec = WorkerSpec {
            haproxy: &self.opts.haproxy,
            passthrough: &self.opts.worker_args,
            config_files: &config_files,
            fragment: &fragment,
            handoff: match &channel {
                None => None,
                Some((_, Some(worker_end))) => Some(Handoff::Sockpair(worker_end.as_fd())),
                Some((_, None)) => Some(Handoff::Path(&handoff_socket)),
            },
            preload: preload
                .as_ref()
                .map(|(library, _, worker_end)| worker::Preload {
                    library,
                    channel: worker_end.as_fd(),
                }),
        };
        let spawned = worker::spawn(&spec);
        // The worker's end is the worker's alone from here: closing ours lets the channel end
        // when the worker does.
        let channel = channel.map(|(channel, _)| channel);
        match spawned {
            Ok((pid, stderr)) => {
                let mut record =
                    WorkerRuntime::new(generation, Output::starting(stderr), self.reloads);
                record.handoff = channel;
                record.takes = handoff;
                record.preload = preload
                    .map(|(_, channel, _)| PreloadSession::new(channel, Rc::clone(&self.held)));
                record.probe = Some(Probe::new(
                    pid,
                    self.runtime.worker_socket(generation),
                    Instant::now(),
                ));
                self.workers.add(pid, record);
                self.push(Event::Spawned { generation, pid });
            }
            Err(e) => self.spawn_failed(generation, e.to_string()),
        }
    }

    /// A channel of its own for worker `generation` when there are sockets to hand over: a
    /// socketpair (with the worker's end) for haproxy 2.6 and later, `handoff-<G>.sock` for 1.8
    /// to 2.5, none before 1.8 (no `-x`).
    fn handoff_channel(&self, generation: u64) -> io::Result<Option<(Channel, Option<OwnedFd>)>> {
        let handoff = self.listener_handoff();
        if self.held.is_empty() || !handoff.takes_x() {
            return Ok(None);
        }
        if handoff == ListenerHandoff::XSockpair {
            let (channel, worker_end) = HandoffChannel::open()?;
            return Ok(Some((Channel::Pair(channel), Some(worker_end))));
        }
        let dir = crate::fs_at::Dir::open(self.runtime.path())?;
        let name = crate::runtime_dir::handoff_socket_name(generation);
        let channel = NamedChannel::bind(dir, std::ffi::OsStr::new(&name))?;
        Ok(Some((Channel::Named(channel), None)))
    }

    /// Worker `generation` was not started: its files go, and the state hears why.
    fn spawn_failed(&mut self, generation: u64, reason: String) {
        self.runtime.remove_worker_files(generation);
        self.config_forgotten(generation);
        self.push(Event::SpawnFailed { generation, reason });
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
            Signal::Interrupt => NixSignal::SIGINT,
            Signal::Kill => NixSignal::SIGKILL,
        };
        match kill(NixPid::from_raw(pid), sig) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => log::warn!("cannot send {} to worker pid {pid}: {e}", sig.as_str()),
        }
    }
}

impl Executor for Master<'_> {
    fn queue(&mut self) -> &mut EventQueue {
        &mut self.events
    }

    fn decide(&mut self, event: Event) -> Vec<Action> {
        self.state.decide(event, Instant::now())
    }

    fn apply(&mut self, action: Action) {
        self.apply_action(action);
    }
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
