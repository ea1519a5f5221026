//! The executor's side of what crosses a process boundary other than a reload: an upgrade in
//! place (the master re-executes itself), sockets systemd passes at start, and systemd's fd store.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Instant;

use super::workers::WorkerRuntime;
use super::Master;
use crate::fdstore::FdStore;
use crate::handoff::listeners::{HeldSet, SocketInfo};
use crate::handoff::wire::Record;
use crate::notify::Notifier;
use crate::supervisor::output::Output;
use crate::supervisor::state::State;
use crate::supervisor::upgrade::{self, HeldSnapshot, MasterSnapshot, Snapshot, WorkerSnapshot};

impl Master<'_> {
    /// Re-executes the binary on disk, keeping pid, workers and held sockets. Returns only if
    /// the exec failed; the master then goes on unchanged.
    pub(super) fn upgrade(&mut self) {
        let snapshot = Snapshot {
            runtime_dir: self.runtime.path().to_path_buf(),
            runtime_created: self.runtime.created(),
            lock_fd: self.runtime.lock_fd().as_raw_fd(),
            master: MasterSnapshot {
                started: self.started,
                reloads: self.reloads,
                failed_reloads: self.failed_reloads,
                metrics: self.metrics.totals(),
            },
            state: self.state.snapshot(),
            workers: self
                .workers
                .iter()
                .map(|(pid, r)| WorkerSnapshot {
                    pid,
                    reloads_at_spawn: r.reloads_at_spawn,
                    version: r.version.clone(),
                    output: r.output.fd().map(|fd| fd.as_raw_fd()),
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
        keep.extend(self.workers.iter().filter_map(|(_, r)| r.output.fd()));
        keep.push(self.runtime.lock_fd());
        // SAFETY: the inherited fds stay open for the life of the process (nothing closes them).
        keep.extend(
            self.launch
                .inherited
                .iter()
                .map(|fd| unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) }),
        );
        log::info!(
            "upgrading in place: executing {} with {} worker(s) and {} listening socket(s)",
            self.launch.exe.display(),
            snapshot.state.workers.len(),
            snapshot.held.len()
        );
        // The new image starts with an empty stderr buffer: what waits goes now, or never.
        crate::stderr_buffer::drain_for(crate::stderr_buffer::LAST_WORDS);
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

    /// Sockets systemd passed (a `.socket` unit, or the fd store after this master was
    /// restarted) are the first held set: the first worker adopts them with `-x`, and the ones it
    /// does not use are closed when its own set is fetched.
    pub(super) fn adopt_passed(&mut self, passed: Vec<(OwnedFd, Option<String>)>) {
        if passed.is_empty() {
            return;
        }
        let mut from_store = Vec::new();
        let mut received = Vec::new();
        for (fd, name) in passed {
            match SocketInfo::of(fd.as_fd()) {
                Ok(info) => {
                    log::info!(
                        "systemd passed {}{}",
                        info.local,
                        name.as_deref()
                            .map(|n| format!(" ({n})"))
                            .unwrap_or_default()
                    );
                    if name.as_deref() == Some(crate::fdstore::fd_name(info.inode).as_str()) {
                        from_store.push(info.inode);
                    }
                    received.push((fd, Record::default()));
                }
                Err(e) => log::warn!("systemd passed an fd that is not a socket, closed: {e}"),
            }
        }
        match HeldSet::from_received(received, |_| false) {
            Ok(set) => self.held = Rc::new(set),
            Err(e) => log::error!("systemd's sockets: {e}"),
        }
        self.fdstore = FdStore::new(from_store);
    }

    pub(super) fn sync_fdstore(&mut self) {
        if let Some(n) = self.notifier {
            self.fdstore.sync(n, &self.held);
        }
    }

    /// The notify socket has room: queued state messages first, then the fd store.
    pub(super) fn notify_writable(&mut self) {
        if let Some(n) = self.notifier {
            n.flush();
            if !n.wants_writable() && self.fdstore.waiting() {
                self.fdstore.sync(n, &self.held);
            }
        }
    }

    /// Takes over from the previous image after an upgrade in place.
    pub(super) fn resume(&mut self, snapshot: Snapshot) {
        let received: Vec<(OwnedFd, Record)> = snapshot
            .held
            .into_iter()
            .filter_map(|h| match upgrade::adopt_fd(h.fd) {
                Ok(fd) => Some((fd, h.record)),
                Err(e) => {
                    log::warn!("after the upgrade in place: {e}");
                    None
                }
            })
            .collect();
        let held = HeldSet::from_received(received, |_| false).unwrap_or_else(|e| {
            log::error!(
                "after the upgrade in place: {e}; holding no listening sockets (the next \
                 reload binds them afresh)"
            );
            HeldSet::default()
        });
        self.held = Rc::new(held);
        // `show proc` goes on counting where the previous image stopped.
        self.started = snapshot.master.started;
        self.reloads = snapshot.master.reloads;
        self.failed_reloads = snapshot.master.failed_reloads;
        self.metrics.resume(snapshot.master.metrics);
        for w in snapshot.workers {
            let output = match w.output.map(upgrade::adopt_fd) {
                Some(Ok(fd)) => Output::running(fd),
                Some(Err(e)) => {
                    log::warn!(
                        "after the upgrade in place: stderr of worker pid {}: {e}",
                        w.pid
                    );
                    Output::none()
                }
                None => Output::none(),
            };
            // A record with no worker in the state (none is written) only closes its pipe.
            let Some(generation) = snapshot
                .state
                .workers
                .iter()
                .find(|s| s.pid == w.pid)
                .map(|s| s.generation)
            else {
                continue;
            };
            let mut record =
                WorkerRuntime::new(generation, output, w.reloads_at_spawn.min(self.reloads));
            record.version = w.version;
            self.workers.add(w.pid, record);
        }
        // What the store holds is unknown here; storing a socket systemd has already is a no-op.
        self.sync_fdstore();
        let (state, actions) = State::resume(self.state.policy(), snapshot.state, Instant::now());
        self.state = state;
        self.adopt_config_copies();
        for action in actions {
            self.apply_action(action);
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
}
