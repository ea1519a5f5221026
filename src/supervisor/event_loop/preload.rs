//! haproxy 1.5 – 1.7 workers, which have no `-x` and no `_getsocks`: each is started with
//! hapmaster's preload library and a channel of its own (`crate::preload`). Its conversation is
//! a task of its record, stepped as the channel has messages; at readiness it ends and the
//! sockets the worker reported become the held set, as a fetch's do from 1.8 on.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use super::Master;
use crate::haproxy_version::ListenerHandoff;
use crate::preload::channel::PreloadChannel;
use crate::supervisor::state::{Event, Pid};

/// Messages read from one worker a turn: one worker binding thousands of listeners does not
/// keep the loop from the others.
const MESSAGES_PER_TURN: usize = 64;

impl Master<'_> {
    /// The library and a fresh channel (with the worker's end) for a worker of a haproxy before
    /// 1.8; none from 1.8 on. The library is written into the runtime directory at the first
    /// such worker, and again if it went missing.
    pub(super) fn preload_channel(
        &mut self,
        handoff: ListenerHandoff,
    ) -> Result<Option<(PathBuf, PreloadChannel, OwnedFd)>, String> {
        if handoff != ListenerHandoff::Preload {
            return Ok(None);
        }
        let library = match self.preload_library.clone().filter(|p| p.exists()) {
            Some(path) => path,
            None => {
                let path = crate::preload::install(self.runtime.path()).map_err(|e| {
                    format!("{e}; check the runtime directory's file system (not noexec, not full)")
                })?;
                self.preload_library = Some(path.clone());
                path
            }
        };
        let (channel, worker_end) = PreloadChannel::open().map_err(|e| {
            format!(
                "cannot make the new worker's preload channel (a socketpair): {e}; check the \
                 open files limit"
            )
        })?;
        Ok(Some((library, channel, worker_end)))
    }

    /// Worker `pid`'s preload channel has messages: answers them (a bounded number a turn).
    pub(super) fn step_preload(&mut self, pid: Pid) {
        let Some(session) = self.workers.get_mut(pid).and_then(|r| r.preload.as_mut()) else {
            return;
        };
        if let Err(reason) = session.step(MESSAGES_PER_TURN) {
            self.preload_failed(pid, reason);
        }
    }

    fn preload_failed(&mut self, pid: Pid, reason: String) {
        if let Some(record) = self.workers.get_mut(pid) {
            // Closing the channel makes the library fail every further bind.
            record.preload = None;
        }
        self.push(Event::WorkerFailed { pid, reason });
    }

    /// Worker `pid` (haproxy before 1.8) answers: its conversation ends, and the sockets it
    /// listens on are what the master holds once the state commits it.
    pub(super) fn ready_after_preload(&mut self, pid: Pid) {
        let library = self
            .preload_library
            .as_ref()
            .map_or_else(String::new, |p| p.display().to_string());
        let Some(session) = self.workers.get_mut(pid).and_then(|r| r.preload.take()) else {
            self.preload_failed(
                pid,
                "it answered, but hapmaster started it without its preload library".to_string(),
            );
            return;
        };
        let finished = match session.finish(&library, &self.binary_name()) {
            Ok(f) => f,
            Err(reason) => return self.preload_failed(pid, reason),
        };
        log::debug!(
            "worker pid {pid} listens on {} sockets, {} of them taken over from the master at \
             bind()",
            finished.sockets.len(),
            finished.adopted
        );
        let runtime = self.runtime;
        let stats_socket_reported = std::cell::Cell::new(false);
        // Its private stats socket dies with it, as with a fetch.
        let set = finished.held.from_fetched(finished.sockets, |info| {
            let private = info
                .unix_path
                .as_deref()
                .is_some_and(|p| runtime.is_worker_socket_name(p));
            stats_socket_reported.set(stats_socket_reported.get() || private);
            private
        });
        match set {
            // The proof that the image that binds is the one that loaded the library: a wrapper
            // script that says HELLO and then execs haproxy without LD_PRELOAD reports nothing.
            Ok(_) if !stats_socket_reported.get() => self.preload_failed(
                pid,
                crate::preload::session::not_loaded(&library, &self.binary_name()),
            ),
            Ok(set) => self.ready_holding(pid, set),
            Err(e) => self.preload_failed(
                pid,
                format!("a socket its preload library reported cannot be held: {e}"),
            ),
        }
    }
}
