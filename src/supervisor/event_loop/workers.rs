//! One record per worker: everything the executor knows of a worker beyond the state machine's
//! `Worker` (its stderr, readiness probe, fetched sockets, version, ...). A record is made when the
//! worker is spawned (or taken over after an upgrade in place) and dropped whole, closing what it
//! holds, when the state forgets the worker (`Action::Forget`): nothing of a worker is kept in a
//! map of its own, so nothing of it can be left behind.
//!
//! A task that talks to one worker (the readiness probe, fetching its listening sockets, serving
//! it the held ones on its own channel) belongs in its record: it then ends with the worker. The
//! loop polls what each wants (`Master::wait`), wakes for its deadline (`poll_timeout`) and steps
//! it (`Master::step_worker_tasks`).

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::rc::Rc;

use nix::poll::PollFlags;

use crate::handoff::channel::Channel;
use crate::handoff::fetch::FetchTask;
use crate::handoff::listeners::HeldSet;
use crate::handoff::serve::ServeTask;
use crate::haproxy_version::ListenerHandoff;
use crate::supervisor::output::Output;
use crate::supervisor::probe::Probe;
use crate::supervisor::state::{Generation, Pid};

pub(super) struct WorkerRuntime {
    pub generation: Generation,
    /// Its stderr, forwarded to the master's.
    pub output: Output,
    /// Asks it `show info` until it answers with its own pid (while it starts).
    pub probe: Option<Probe>,
    /// Its own `-x` channel, until it asked for the held sockets over it.
    pub handoff: Option<Channel>,
    /// Serving it the held sockets over that channel.
    pub handoff_serve: Option<HandoffServe>,
    /// How it was started to take the held sockets (its binary's version then): how the master
    /// takes its sockets once it answers, whatever the binary on disk is by then.
    pub takes: ListenerHandoff,
    /// haproxy before 1.8: its preload library's conversation, from spawn until it is ready.
    pub preload: Option<crate::preload::session::PreloadSession>,
    /// Taking its listening sockets, once it answered the probe.
    pub fetch: Option<Fetching>,
    /// Its listening sockets, fetched once it answered, until the state commits them.
    pub fetched: Option<HeldSet>,
    /// What it said while starting, kept once it is ready until a reload's answer takes it.
    pub startup: Option<Vec<u8>>,
    /// The haproxy version it reported when it became ready.
    pub version: Option<String>,
    /// The master's reload count when it was started (`show proc` counts the reloads since).
    pub reloads_at_spawn: u64,
}

impl WorkerRuntime {
    pub(super) fn new(generation: Generation, output: Output, reloads_at_spawn: u64) -> Self {
        WorkerRuntime {
            generation,
            output,
            probe: None,
            handoff: None,
            handoff_serve: None,
            takes: ListenerHandoff::XPath,
            preload: None,
            fetch: None,
            fetched: None,
            startup: None,
            version: None,
            reloads_at_spawn,
        }
    }
}

/// The `_getsocks` conversation that takes a worker's listening sockets.
pub(super) struct Fetching {
    pub task: FetchTask,
    /// The set the task knows (its slots index it): open until the fetch ends, so that the
    /// copies the task closes keep their sockets alive, even if the master holds another by
    /// then.
    pub held: Rc<HeldSet>,
    /// What its stream waits for next.
    pub wants: PollFlags,
}

/// The `_getsocks` conversation that hands the held sockets to a new worker on its own channel.
pub(super) struct HandoffServe {
    pub stream: UnixStream,
    pub task: ServeTask,
    /// The set it serves, open until the conversation ends even if the master holds another by
    /// then.
    pub held: Rc<HeldSet>,
    /// What its stream waits for next.
    pub wants: PollFlags,
}

impl WorkerRuntime {
    /// When its socket handoff tasks must be stepped even if their streams say nothing.
    pub(super) fn task_wakeup(&self) -> Option<std::time::Instant> {
        let fetch = self.fetch.as_ref().map(|f| f.task.wakeup());
        let serve = self.handoff_serve.as_ref().map(|s| s.task.wakeup());
        fetch.into_iter().chain(serve).min()
    }
}

#[derive(Default)]
pub(super) struct Workers {
    records: HashMap<Pid, WorkerRuntime>,
}

impl Workers {
    pub(super) fn add(&mut self, pid: Pid, record: WorkerRuntime) {
        self.records.insert(pid, record);
    }

    pub(super) fn get(&self, pid: Pid) -> Option<&WorkerRuntime> {
        self.records.get(&pid)
    }

    pub(super) fn get_mut(&mut self, pid: Pid) -> Option<&mut WorkerRuntime> {
        self.records.get_mut(&pid)
    }

    pub(super) fn of_generation(
        &mut self,
        generation: Generation,
    ) -> Option<(Pid, &mut WorkerRuntime)> {
        self.records
            .iter_mut()
            .find(|(_, r)| r.generation == generation)
            .map(|(pid, r)| (*pid, r))
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (Pid, &WorkerRuntime)> {
        self.records.iter().map(|(pid, r)| (*pid, r))
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (Pid, &mut WorkerRuntime)> {
        self.records.iter_mut().map(|(pid, r)| (*pid, r))
    }

    /// The worker is reaped: what is left of its stderr is forwarded, and the record goes whole
    /// (its pipe, probe connection and fetched sockets are closed).
    pub(super) fn forget(&mut self, pid: Pid) {
        if let Some(mut record) = self.records.remove(&pid) {
            record.output.finish(pid);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::{ErrorKind, Read, Write};
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;

    use nix::fcntl::OFlag;

    use super::*;
    use crate::handoff::wire::Record;

    /// A worker record with a real stderr pipe and one fetched socket; returns the worker's end
    /// of the pipe and the peer of the fetched socket.
    fn record(generation: Generation) -> (WorkerRuntime, File, UnixStream) {
        let (reader, writer) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).unwrap();
        let (held, peer) = UnixStream::pair().unwrap();
        let received = vec![(OwnedFd::from(held), Record::default())];
        let mut record = WorkerRuntime::new(generation, Output::starting(reader), 0);
        record.fetched = Some(HeldSet::from_received(received, |_| false).unwrap());
        record.version = Some("2.6.12".into());
        (record, File::from(writer), peer)
    }

    #[test]
    fn forget_drops_the_record_whole() {
        let mut workers = Workers::default();
        let (gone, mut gone_stderr, gone_peer) = record(7);
        let (kept, mut kept_stderr, kept_peer) = record(8);
        workers.add(42, gone);
        workers.add(43, kept);
        gone_stderr.write_all(b"last words\n").unwrap();
        workers.forget(42);
        assert!(workers.get(42).is_none());
        assert!(workers.of_generation(7).is_none());
        // Its stderr pipe is closed: the worker's end now fails with EPIPE (the test harness
        // ignores SIGPIPE, as Rust programs do).
        let err = gone_stderr.write_all(b"more\n").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BrokenPipe);
        // Its fetched sockets are closed: their peer reads EOF at once.
        assert_eq!((&gone_peer).read(&mut [0u8; 1]).unwrap(), 0);
        // The other worker's record is whole.
        assert_eq!(workers.of_generation(8).map(|(pid, _)| pid), Some(43));
        kept_stderr.write_all(b"still here\n").unwrap();
        kept_peer.set_nonblocking(true).unwrap();
        let err = (&kept_peer).read(&mut [0u8; 1]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WouldBlock);
        assert_eq!(workers.get(43).unwrap().version.as_deref(), Some("2.6.12"));
    }
}
