//! The executor: one poll loop over the signal pipe, the master's `_getsocks` socket and the
//! readiness probe, with the earliest deadline as its timeout. It turns what it observes into
//! `Event`s for `State::decide` and carries out the `Action`s that come back. All syscalls of the
//! supervisor live here or in the modules it calls.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal as NixSignal};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid as NixPid;

use super::probe::{Probe, Progress};
use super::signals;
use super::signals::Signals;
use super::state::{Action, Event, Pid, Policy, Signal, State, Worker};
use super::upgrade::{self, HeldSnapshot, Launch, Snapshot, WorkerSnapshot};
use super::worker::{self, WorkerSpec};
use crate::handoff::fetch::fetch_sockets;
use crate::handoff::fetch::ReceivedSocket;
use crate::handoff::listeners::HeldSet;
use crate::handoff::serve::serve_getsocks;
use crate::notify::Notifier;
use crate::options::Options;
use crate::runtime_dir::RuntimeDir;

/// A worker that failed to start gets this long between SIGTERM and SIGKILL.
const ABORT_GRACE: Duration = Duration::from_secs(5);
/// Bound on one `_getsocks` exchange with a worker, either direction.
const HANDOFF_TIMEOUT: Duration = Duration::from_secs(5);

/// What can keep the master from starting its loop at all.
#[derive(Debug)]
pub enum SetupError {
    Signals(io::Error),
    HandoffSocket { path: PathBuf, source: io::Error },
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
        }
    }
}

impl std::error::Error for SetupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SetupError::Signals(e) | SetupError::HandoffSocket { source: e, .. } => Some(e),
        }
    }
}

/// Runs the master until it stops; returns its exit code. `resume` is the state a previous image
/// of this process handed over in an upgrade in place; `launch` is what such an upgrade executes.
pub fn run(
    opts: &Options,
    runtime: &RuntimeDir,
    notifier: Option<&Notifier>,
    launch: &Launch,
    resume: Option<Snapshot>,
) -> Result<i32, SetupError> {
    let signals = Signals::install().map_err(SetupError::Signals)?;
    // An image started by an upgrade in place inherits the handled signals blocked.
    signals::unblock_handled().map_err(SetupError::Signals)?;
    let handoff = bind_handoff_socket(&runtime.master_socket())?;
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
        handoff,
        held: HeldSet::default(),
        fetched: None,
        probe: None,
        aborts: Vec::new(),
        drain_deadlines: Vec::new(),
        respawn_at: None,
        stop_deadline: None,
        exit: None,
        launch,
        upgrade_requested: false,
    };
    match resume {
        None => master.feed(Event::Boot),
        Some(snapshot) => master.resume(snapshot),
    }
    while master.exit.is_none() {
        master.turn();
    }
    Ok(master.exit.unwrap_or(1))
}

fn bind_handoff_socket(path: &Path) -> Result<UnixListener, SetupError> {
    let err = |source| SetupError::HandoffSocket {
        path: path.to_path_buf(),
        source,
    };
    // Only a previous image of this very master (upgrade in place) can have left it: the runtime
    // directory is locked, and a crashed predecessor's files were swept when it was acquired.
    crate::pidfile::remove_quietly(path, "previous socket handoff socket");
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

struct Master<'a> {
    opts: &'a Options,
    runtime: &'a RuntimeDir,
    notifier: Option<&'a Notifier>,
    state: State,
    signals: Signals,
    /// `-x` target of new workers: serves `held`.
    handoff: UnixListener,
    /// One copy of each listening socket of the current worker.
    held: HeldSet,
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
    launch: &'a Launch,
    /// SIGURG came; the upgrade in place runs once no worker is starting.
    upgrade_requested: bool,
}

impl Master<'_> {
    fn turn(&mut self) {
        let timeout = self.poll_timeout(Instant::now());
        let (sig_ready, handoff_ready) = {
            let mut fds = vec![
                PollFd::new(self.signals.fd(), PollFlags::POLLIN),
                PollFd::new(self.handoff.as_fd(), PollFlags::POLLIN),
            ];
            if let Some(fd) = self.probe.as_ref().and_then(|p| p.poll_fd()) {
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
            }
            match poll(&mut fds, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => log::error!("poll failed: {e}"),
            }
            let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), ready(&fds[1]))
        };
        if sig_ready {
            self.handle_signals();
        }
        if handoff_ready {
            self.serve_handoff_clients();
        }
        let now = Instant::now();
        self.step_probe(now);
        self.fire_timers(now);
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
        for sig in self.signals.take() {
            match sig {
                libc::SIGCHLD => self.reap(),
                libc::SIGTERM | libc::SIGINT => {
                    log::info!("received {}: stopping", signal_name(sig));
                    self.feed(Event::StopRequested)
                }
                libc::SIGUSR1 => {
                    log::info!("received SIGUSR1: soft stop");
                    self.feed(Event::SoftStopRequested)
                }
                libc::SIGURG => {
                    if self.state.is_stopping() {
                        log::warn!("received SIGURG while stopping: no upgrade in place");
                    } else {
                        log::info!("received SIGURG: upgrade in place requested");
                        self.upgrade_requested = true;
                    }
                }
                libc::SIGUSR2 | libc::SIGHUP => {
                    log::info!("received {}: reloading", signal_name(sig));
                    self.feed(Event::ReloadRequested)
                }
                _ => {}
            }
        }
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

    fn serve_handoff_clients(&mut self) {
        loop {
            match self.handoff.accept() {
                Ok((stream, _)) => self.serve_one(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!(
                        "accept on {} failed: {e}",
                        self.runtime.master_socket().display()
                    );
                    break;
                }
            }
        }
    }

    /// Serves the held sockets to one client, normally a new worker started with `-x`. Blocking
    /// but bounded by HANDOFF_TIMEOUT: the client is our own child in the middle of its start.
    fn serve_one(&mut self, stream: UnixStream) {
        let (peer_pid, peer_uid) = match getsockopt(&stream, PeerCredentials) {
            Ok(c) => (c.pid(), c.uid()),
            Err(e) => {
                log::warn!("handoff socket: cannot read peer credentials: {e}");
                return;
            }
        };
        let own_uid = nix::unistd::geteuid().as_raw();
        if peer_uid != 0 && peer_uid != own_uid {
            log::warn!(
                "handoff socket: refused pid {peer_pid} (uid {peer_uid}): only root and uid {own_uid} may take sockets"
            );
            return;
        }
        if let Err(e) = stream.set_nonblocking(false) {
            log::warn!("handoff socket: {e}");
            return;
        }
        match serve_getsocks(&stream, &self.held.as_serve_list(), HANDOFF_TIMEOUT) {
            Ok(outcome) => log::debug!(
                "handed {} listening sockets to pid {peer_pid}",
                outcome.sent
            ),
            Err(e) => log::warn!("handing the listening sockets to pid {peer_pid} failed: {e}"),
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

    fn fire_timers(&mut self, now: Instant) {
        let due: Vec<Pid> = self
            .aborts
            .iter()
            .filter(|(_, at)| *at <= now)
            .map(|(pid, _)| *pid)
            .collect();
        self.aborts.retain(|(_, at)| *at > now);
        for pid in due {
            log::warn!(
                "worker pid {pid} did not exit {} s after SIGTERM: SIGKILL",
                ABORT_GRACE.as_secs()
            );
            self.send_signal(pid, Signal::Kill);
        }
        let drained: Vec<Pid> = self
            .drain_deadlines
            .iter()
            .filter(|(_, at)| *at <= now)
            .map(|(pid, _)| *pid)
            .collect();
        self.drain_deadlines.retain(|(_, at)| *at > now);
        for pid in drained {
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
                self.notify(|n| n.ready(&status, mainpid));
            }
            Action::NotifyReloading { status } => self.notify(|n| n.reloading(&status)),
            Action::NotifyStatus { status } => self.notify(|n| n.status(&status)),
            Action::NotifyStopping { status } => self.notify(|n| n.stopping(&status)),
            Action::ScheduleRespawn { after } => self.respawn_at = Some(Instant::now() + after),
            Action::ArmDrainDeadline { pid, after } => {
                self.drain_deadlines.push((pid, Instant::now() + after))
            }
            Action::ArmStopDeadline { after } => self.stop_deadline = Some(Instant::now() + after),
            Action::Log { level, message } => log::log!(level, "{message}"),
            Action::Exit { code } => self.exit = Some(code),
            Action::ReloadDone { .. } => {}
        }
    }

    /// Re-executes the binary on disk, keeping pid, workers and held sockets. Returns only if
    /// the exec failed; the master then goes on unchanged.
    fn upgrade(&mut self) {
        let (workers, current, next_generation, crash_streak) = self.state.snapshot();
        let snapshot = Snapshot {
            runtime_dir: self.runtime.path().to_path_buf(),
            runtime_created: self.runtime.created(),
            lock_fd: self.runtime.lock_fd().as_raw_fd(),
            next_generation,
            current,
            crash_streak,
            workers: workers
                .into_iter()
                .map(|w| WorkerSnapshot {
                    pid: w.pid,
                    generation: w.generation,
                    role: w.role,
                })
                .collect(),
            held: self
                .held
                .iter()
                .map(|h| HeldSnapshot {
                    fd: h.fd.as_raw_fd(),
                    record: h.record.clone(),
                })
                .collect(),
        };
        let mut keep: Vec<_> = self.held.iter().map(|h| h.fd.as_fd()).collect();
        keep.push(self.runtime.lock_fd());
        log::info!(
            "upgrading in place: executing {} with {} worker(s) and {} listening socket(s)",
            self.launch.exe.display(),
            snapshot.workers.len(),
            snapshot.held.len()
        );
        let err = upgrade::exec(
            self.launch,
            &snapshot,
            &keep,
            self.notifier.map(Notifier::address),
        );
        let message = format!(
            "upgrade in place failed: cannot execute {}: {err}; still running hapmaster {}",
            self.launch.exe.display(),
            env!("CARGO_PKG_VERSION")
        );
        log::error!("{message}");
        let status = format!("Serving: {}; {message}", self.state.serving_status());
        self.notify(|n| n.status(&status));
    }

    /// Takes over from the previous image after an upgrade in place.
    fn resume(&mut self, snapshot: Snapshot) {
        let received = snapshot
            .held
            .into_iter()
            .filter_map(|h| match upgrade::adopt_fd(h.fd) {
                Ok(fd) => Some(ReceivedSocket {
                    fd,
                    record: h.record,
                }),
                Err(e) => {
                    log::warn!("after the upgrade in place: {e}");
                    None
                }
            })
            .collect();
        self.held = HeldSet::from_received(received, |_| false).unwrap_or_else(|e| {
            log::error!(
                "after the upgrade in place: {e}; holding no listening sockets (the next \
                 reload binds them afresh)"
            );
            HeldSet::default()
        });
        let now = Instant::now();
        let workers = snapshot
            .workers
            .into_iter()
            .map(|w| Worker {
                pid: w.pid,
                generation: w.generation,
                role: w.role,
                started: now,
            })
            .collect();
        let (state, actions) = State::resume(
            self.state.policy(),
            workers,
            snapshot.current,
            snapshot.next_generation,
            snapshot.crash_streak,
        );
        self.state = state;
        for action in actions {
            self.apply(action);
        }
        log::info!(
            "hapmaster {} took over after an upgrade in place: {} worker(s), {} listening socket(s)",
            env!("CARGO_PKG_VERSION"),
            self.state.workers().count(),
            self.held.len()
        );
        let status = format!(
            "Serving: {}; upgraded in place to hapmaster {}",
            self.state.serving_status(),
            env!("CARGO_PKG_VERSION")
        );
        self.notify(|n| n.ready(&status, None));
    }

    fn notify(&self, send: impl FnOnce(&Notifier) -> io::Result<()>) {
        if let Some(n) = self.notifier {
            if let Err(e) = send(n) {
                log::warn!("sd_notify failed: {e}");
            }
        }
    }

    fn spawn(&mut self, generation: u64, kind: super::state::StartKind) {
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
        let spec = WorkerSpec {
            haproxy: &self.opts.haproxy,
            passthrough: &self.opts.worker_args,
            config_files: &self.opts.config_files,
            fragment: &fragment,
            handoff_socket: (!self.held.is_empty()).then_some(handoff_socket.as_path()),
        };
        log::info!(
            "starting worker generation {generation} ({kind:?}){}",
            if self.held.is_empty() {
                String::new()
            } else {
                format!(", handing over {} listening sockets", self.held.len())
            }
        );
        match worker::spawn(&spec) {
            Ok(pid) => {
                self.probe = Some(Probe::new(
                    pid,
                    self.runtime.worker_socket(generation),
                    Instant::now(),
                    self.opts.ready_timeout,
                ));
                self.feed(Event::Spawned { generation, pid });
            }
            Err(e) => {
                self.runtime.remove_worker_files(generation);
                self.feed(Event::SpawnFailed {
                    generation,
                    reason: e.to_string(),
                });
            }
        }
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

fn signal_name(sig: libc::c_int) -> &'static str {
    NixSignal::try_from(sig).map_or("signal", |s| s.as_str())
}
