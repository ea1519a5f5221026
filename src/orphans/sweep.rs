//! At master start: workers that a dead master left in the runtime directory are stopped before
//! the new master's first worker starts, so that two generations never share a port. A soft stop
//! first (SIGUSR1: the orphan closes its listening sockets at once and finishes the connections
//! it accepted), then SIGTERM and SIGKILL for one that keeps listening. This runs before the
//! event loop, so a wait bounded by these deadlines is acceptable.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;

use super::listening::holds_listener;
use super::process::{find_workers, DirId, WorkerProcess};

/// How long an orphan may keep listening after SIGUSR1 before it gets SIGTERM. haproxy closes
/// its listeners as soon as it handles the signal: this is for a stuck one.
pub const SOFT_STOP_GRACE: Duration = Duration::from_secs(5);
/// After SIGTERM, before SIGKILL.
pub const TERMINATE_GRACE: Duration = Duration::from_secs(5);
/// After SIGKILL, before giving up.
pub const KILL_GRACE: Duration = Duration::from_secs(5);
/// How often the kernel's listening tables are read again while waiting; an exit ends the wait
/// at once (the orphan's pidfd polls readable).
const RECHECK: Duration = Duration::from_millis(20);

#[derive(Debug)]
pub enum OrphanError {
    Inspect {
        path: PathBuf,
        source: io::Error,
    },
    /// Orphans that still listen after SIGKILL (or that could not be signalled).
    StillListening {
        path: PathBuf,
        workers: Vec<(u32, u64)>,
    },
}

impl fmt::Display for OrphanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OrphanError::Inspect { path, source } => write!(
                f,
                "cannot look for workers of a dead master in runtime directory {}: {source}",
                path.display()
            ),
            OrphanError::StillListening { path, workers } => {
                let list: Vec<String> = workers
                    .iter()
                    .map(|(pid, generation)| format!("pid {pid} (generation {generation})"))
                    .collect();
                let pids: Vec<String> = workers.iter().map(|(pid, _)| pid.to_string()).collect();
                write!(
                    f,
                    "worker {} of a dead master with runtime directory {} still listens after \
                     SIGUSR1, SIGTERM and SIGKILL; hapmaster does not start a worker beside it: \
                     find out what holds it (grep State /proc/{}/status), stop it, and start \
                     hapmaster again",
                    list.join(", "),
                    path.display(),
                    pids.join(" /proc/")
                )
            }
        }
    }
}

impl std::error::Error for OrphanError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OrphanError::Inspect { source, .. } => Some(source),
            OrphanError::StillListening { .. } => None,
        }
    }
}

/// Stops the workers of a dead master still running with `runtime_dir`; returns once none of
/// them holds a listening socket. Call it holding the directory's lock (no live master then
/// uses it, so every worker found is an orphan) and before its stale files are removed.
pub fn stop_orphans(runtime_dir: &Path) -> Result<(), OrphanError> {
    let dir = DirId::of_path(runtime_dir).map_err(|source| OrphanError::Inspect {
        path: runtime_dir.to_path_buf(),
        source,
    })?;
    let orphans = find_workers(&dir);
    let mut pending: Vec<Pending> = Vec::with_capacity(orphans.len());
    for worker in orphans {
        log::warn!(
            "worker pid {} (generation {}) of a dead master still runs with runtime directory \
             {}: soft-stopping it (SIGUSR1) before starting a new worker",
            worker.pid,
            worker.generation,
            runtime_dir.display()
        );
        send(&worker, &dir, Signal::SIGUSR1);
        pending.push(Pending {
            worker,
            unknown_said: false,
        });
    }
    let phases = [
        (SOFT_STOP_GRACE, Signal::SIGUSR1, Some(Signal::SIGTERM)),
        (TERMINATE_GRACE, Signal::SIGTERM, Some(Signal::SIGKILL)),
        (KILL_GRACE, Signal::SIGKILL, None),
    ];
    for (grace, sent, next) in phases {
        if pending.is_empty() {
            return Ok(());
        }
        pending = wait_released(pending, Instant::now() + grace);
        let Some(next) = next else { break };
        for p in &pending {
            log::warn!(
                "worker pid {} (generation {}) of a dead master still listens {} s after {}: \
                 sending {}",
                p.worker.pid,
                p.worker.generation,
                grace.as_secs(),
                sent.as_str(),
                next.as_str()
            );
            send(&p.worker, &dir, next);
        }
    }
    if pending.is_empty() {
        return Ok(());
    }
    Err(OrphanError::StillListening {
        path: runtime_dir.to_path_buf(),
        workers: pending
            .iter()
            .map(|p| (p.worker.pid, p.worker.generation))
            .collect(),
    })
}

struct Pending {
    worker: WorkerProcess,
    /// Whether the log already said that the kernel would not tell if it still listens.
    unknown_said: bool,
}

fn send(worker: &WorkerProcess, dir: &DirId, sig: Signal) {
    if let Err(e) = worker.signal(dir, sig) {
        log::error!(
            "cannot send {} to worker pid {} of a dead master: {e}",
            sig.as_str(),
            worker.pid
        );
    }
}

/// Waits until each orphan has exited or closed its listening sockets, or `deadline`; returns
/// those still listening.
fn wait_released(mut pending: Vec<Pending>, deadline: Instant) -> Vec<Pending> {
    loop {
        pending.retain_mut(still_listening);
        let now = Instant::now();
        if pending.is_empty() || now >= deadline {
            return pending;
        }
        let wait = deadline.saturating_duration_since(now).min(RECHECK);
        let mut fds: Vec<PollFd<'_>> = pending
            .iter()
            .filter_map(|p| p.worker.pidfd())
            .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
            .collect();
        let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::ZERO);
        // An error (EINTR) only ends this wait early: the loop looks again.
        let _ = poll(&mut fds, timeout);
    }
}

fn still_listening(p: &mut Pending) -> bool {
    let w = &p.worker;
    if w.is_gone() {
        log::info!(
            "worker pid {} (generation {}) of the dead master exited",
            w.pid,
            w.generation
        );
        return false;
    }
    match holds_listener(w.pid) {
        Ok(true) => true,
        Ok(false) => {
            log::info!(
                "worker pid {} (generation {}) of the dead master closed its listening sockets; \
                 it finishes its connections and exits",
                w.pid,
                w.generation
            );
            false
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => {
            if !p.unknown_said {
                p.unknown_said = true;
                log::warn!(
                    "cannot tell whether worker pid {} of the dead master still listens ({e}): \
                     waiting for it to exit",
                    w.pid
                );
            }
            true
        }
    }
}
