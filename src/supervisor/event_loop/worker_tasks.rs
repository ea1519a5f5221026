//! The socket handoff with each worker, as tasks in its record (`WorkerRuntime`): taking its
//! listening sockets once it answers the probe (`fetch`), and serving it the held ones when it
//! asks on its own channel (`handoff_serve`). Each is a `_getsocks` conversation that never
//! waits; `step_worker_tasks` advances them as far as their peers allow, and one that ends
//! pushes its outcome as an event (a fetch: `WorkerReady` or `WorkerFailed`), like the probe.

use std::rc::Rc;
use std::time::Instant;

use super::workers::{Fetching, HandoffServe};
use super::{Master, HANDOFF_TIMEOUT};
use crate::handoff::channel::Received;
use crate::handoff::fetch::{FetchError, FetchProgress, FetchTask, FetchedSocket};
use crate::handoff::listeners::HeldSet;
use crate::handoff::serve::{ServeProgress, ServeTask};
use crate::open_files;
use crate::supervisor::state::{Event, Pid};

impl Master<'_> {
    /// Advances every worker's fetch and handoff serve.
    pub(super) fn step_worker_tasks(&mut self, now: Instant) {
        let busy: Vec<Pid> = self
            .workers
            .iter()
            .filter(|(_, r)| r.fetch.is_some() || r.handoff_serve.is_some())
            .map(|(pid, _)| pid)
            .collect();
        for pid in busy {
            self.step_fetch(pid, now);
            self.step_handoff(pid, now);
        }
    }

    /// Worker `pid` answers: it is ready once the master holds its listening sockets, which it
    /// starts taking now.
    pub(super) fn start_fetch(&mut self, pid: Pid, now: Instant) {
        let Some(generation) = self.state.worker(pid).map(|w| w.generation) else {
            return;
        };
        if self.workers.get(pid).is_some_and(|r| !r.takes.takes_x()) {
            self.ready_after_preload(pid);
            return;
        }
        let path = self.runtime.worker_socket(generation);
        let held = Rc::clone(&self.held);
        match FetchTask::connect(&path, HANDOFF_TIMEOUT, now) {
            Ok(task) => {
                if let Some(record) = self.workers.get_mut(pid) {
                    record.fetch = Some(Fetching {
                        task: task.knowing(held.known()),
                        held,
                        wants: nix::poll::PollFlags::POLLOUT,
                    });
                }
                self.step_fetch(pid, now);
            }
            Err(e) => self.fetched(pid, &held, Err(e)),
        }
    }

    fn step_fetch(&mut self, pid: Pid, now: Instant) {
        let Some(record) = self.workers.get_mut(pid) else {
            return;
        };
        let Some(fetch) = record.fetch.as_mut() else {
            return;
        };
        match fetch.task.step(now) {
            FetchProgress::Wants(flags) => fetch.wants = flags,
            FetchProgress::Done(result) => {
                let held = Rc::clone(&fetch.held);
                record.fetch = None;
                self.fetched(pid, &held, result);
            }
        }
    }

    /// The fetch from worker `pid`, which knew `held`, ended: ready with its sockets held, or
    /// failed.
    fn fetched(
        &mut self,
        pid: Pid,
        held: &HeldSet,
        result: Result<Vec<FetchedSocket>, FetchError>,
    ) {
        let runtime = self.runtime;
        let set = result
            .map_err(|e| match e {
                FetchError::ControlTruncated { announced, .. } => {
                    format!("{e}: {}", open_files::advice(held.len(), announced))
                }
                e => e.to_string(),
            })
            .and_then(|fetched| {
                // The worker-private stats sockets die with their worker; holding a copy would
                // keep a socket alive that nobody answers on.
                held.from_fetched(fetched, |info| {
                    info.unix_path
                        .as_deref()
                        .is_some_and(|p| runtime.is_worker_socket_name(p))
                })
                .map_err(|e| format!("{e}; the worker does not speak haproxy's _getsocks protocol"))
            });
        let set = match set {
            Ok(set) => set,
            Err(e) => {
                let path = match self.state.worker(pid) {
                    Some(w) => self.runtime.worker_socket(w.generation),
                    None => return,
                };
                self.push(Event::WorkerFailed {
                    pid,
                    reason: format!(
                        "could not take its listening sockets from {}: {e}",
                        path.display()
                    ),
                });
                return;
            }
        };
        self.ready_holding(pid, set);
    }

    /// Worker `pid` is ready, with `set` to become the held set when the state commits it.
    pub(super) fn ready_holding(&mut self, pid: Pid, set: HeldSet) {
        if let Err(e) = self.fire_first_ready(pid) {
            // Dropping `set` closes the copies; the worker is stopped as a failed start.
            self.push(Event::WorkerFailed {
                pid,
                reason: format!("it is ready, but {e}"),
            });
            return;
        }
        if let Some(record) = self.workers.get_mut(pid) {
            record.fetched = Some(set);
        }
        self.push(Event::WorkerReady { pid });
    }

    /// The haproxy the workers run, for the log: "haproxy 1.7.14 (/usr/sbin/haproxy)".
    pub(super) fn binary_name(&self) -> String {
        match &self.binary_version {
            Some(v) => format!("haproxy {} ({})", v.text, self.opts.haproxy.display()),
            None => self.opts.haproxy.display().to_string(),
        }
    }

    /// The new worker `pid` sent (or connected) the socket it asks `_getsocks` on: serving it the
    /// held sockets becomes a task of its record, bounded by `HANDOFF_TIMEOUT` (1 s per step).
    /// Only this worker can be at the other end, never a CLI client. How the serve ends is only
    /// logged: the worker's readiness (or its exit) tells the state the rest.
    pub(super) fn hand_over_to(&mut self, pid: Pid) {
        let held = Rc::clone(&self.held);
        let Some(record) = self.workers.get_mut(pid) else {
            return;
        };
        let Some(channel) = &record.handoff else {
            return;
        };
        let stream = match channel.receive(pid) {
            Received::Pending => return,
            Received::Connection(stream) => stream,
            Received::Closed(why) => {
                // Its exit or its readiness timeout tells the rest.
                log::debug!("worker pid {pid}: {why}");
                record.handoff = None;
                return;
            }
        };
        record.handoff = None;
        let now = Instant::now();
        match ServeTask::new(&stream, &*held, HANDOFF_TIMEOUT, true, now) {
            Ok(task) => {
                record.handoff_serve = Some(HandoffServe {
                    stream,
                    task,
                    held,
                    wants: nix::poll::PollFlags::POLLIN,
                });
                self.step_handoff(pid, now);
            }
            Err(e) => log::warn!("handing the listening sockets to worker pid {pid} failed: {e}"),
        }
    }

    fn step_handoff(&mut self, pid: Pid, now: Instant) {
        let Some(record) = self.workers.get_mut(pid) else {
            return;
        };
        let Some(serve) = record.handoff_serve.as_mut() else {
            return;
        };
        let result = match serve.task.step(&serve.stream, &*serve.held, now) {
            ServeProgress::Wants(flags) => {
                serve.wants = flags;
                return;
            }
            ServeProgress::Done(result) => result,
        };
        // Closes the stream and lets go of the set it served.
        record.handoff_serve = None;
        match result {
            Ok(outcome) => {
                log::debug!(
                    "handed {} listening sockets to worker pid {pid} over its own channel",
                    outcome.sent
                );
                // Its stats socket comes next: a backed-off probe would find it late.
                if let Some(probe) = record.probe.as_mut() {
                    probe.hurry(now);
                }
            }
            Err(e) => log::warn!("handing the listening sockets to worker pid {pid} failed: {e}"),
        }
    }
}
