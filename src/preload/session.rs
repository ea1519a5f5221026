//! One worker's preload conversation, the master's side (haproxy 1.5 – 1.7): answers each
//! ADOPT from the held set the worker was started with, collects the listening sockets the
//! worker reports (NEW), and at readiness ends the conversation (END) and hands what it
//! collected to the commit, as a `_getsocks` fetch does from 1.8 on.
//!
//! Bounded: at most [`MAX_SOCKETS`] sockets collected, at most `budget` messages read a turn;
//! in time, by the worker's readiness deadline (the record, and this session, go with it).

use std::os::fd::{AsFd, BorrowedFd};
use std::rc::Rc;

use super::channel::{Incoming, PreloadChannel};
use super::matcher::{Adoptions, SocketKey};
use super::socket_key::socket_key;
use super::wire::{Bind, Message};
use crate::handoff::fetch::FetchedSocket;
use crate::handoff::known::{KnownSockets, Slot};
use crate::handoff::listeners::HeldSet;
use crate::handoff::wire::Record;

/// More listening sockets than this from one worker is a broken peer, not a configuration:
/// hapmaster is tested to 50 000 listeners.
pub const MAX_SOCKETS: usize = 1_000_000;

pub struct PreloadSession {
    channel: PreloadChannel,
    /// The set the worker was started with: what its ADOPTs are answered from.
    held: Rc<HeldSet>,
    /// Index in `held` of each key `adoptions` was made from.
    key_index: Vec<usize>,
    adoptions: Adoptions,
    known: KnownSockets,
    hello: Option<u32>,
    collected: Vec<FetchedSocket>,
    adopted: usize,
    closed: bool,
}

/// How a worker's conversation ended at readiness.
#[derive(Debug)]
pub struct Finished {
    pub sockets: Vec<FetchedSocket>,
    /// How many held sockets it took over.
    pub adopted: usize,
    /// The set it was answered from, which the sockets' known slots index.
    pub held: Rc<HeldSet>,
}

impl PreloadSession {
    pub fn new(channel: PreloadChannel, held: Rc<HeldSet>) -> PreloadSession {
        let mut keys = Vec::with_capacity(held.len());
        let mut key_index = Vec::with_capacity(held.len());
        for (index, socket) in held.iter().enumerate() {
            match socket_key(socket.fd.as_fd()) {
                Ok(Some(key)) => {
                    keys.push(key);
                    key_index.push(index);
                }
                // Never adopted: the worker binds that address itself.
                Ok(None) => log::debug!("held {} has no key a bind could match", socket.info),
                Err(e) => log::warn!("cannot describe held {}: {e}", socket.info),
            }
        }
        PreloadSession {
            channel,
            adoptions: Adoptions::new(&keys),
            known: held.known(),
            held,
            key_index,
            hello: None,
            collected: Vec::new(),
            adopted: 0,
            closed: false,
        }
    }

    /// What the loop polls while the worker may still talk.
    pub fn poll_fd(&self) -> Option<BorrowedFd<'_>> {
        (!self.closed).then(|| self.channel.poll_fd())
    }

    /// Reads and answers up to `budget` messages. An error means the worker does not speak this
    /// master's protocol (or the channel broke): it cannot be made ready.
    pub fn step(&mut self, budget: usize) -> Result<(), String> {
        for _ in 0..budget {
            if self.closed {
                return Ok(());
            }
            let incoming = self
                .channel
                .receive()
                .map_err(|e| format!("its preload channel failed: {e}"))?;
            match incoming {
                Incoming::Pending => return Ok(()),
                Incoming::Closed => self.closed = true,
                Incoming::Message(message, fd) => self.on_message(message, fd)?,
            }
        }
        Ok(())
    }

    fn on_message(
        &mut self,
        message: Message,
        fd: Option<std::os::fd::OwnedFd>,
    ) -> Result<(), String> {
        match (message, fd) {
            (Message::Hello { pid }, None) => {
                self.hello = Some(pid);
                Ok(())
            }
            (Message::Adopt(bind), None) => self.answer(&bind),
            (Message::New(bind), Some(fd)) => {
                if self.collected.len() >= MAX_SOCKETS {
                    return Err(format!(
                        "it reported more than {MAX_SOCKETS} listening sockets"
                    ));
                }
                let slot = self.known.classify(fd);
                let record = match &slot {
                    Slot::Known(index) => self.held.get(*index).map(|s| s.record.clone()),
                    Slot::Fresh(_) => None,
                }
                .unwrap_or_else(|| Record {
                    namespace: Vec::new(),
                    interface: bind.iface.clone(),
                    options: [0; 4],
                });
                self.collected.push(FetchedSocket { slot, record });
                Ok(())
            }
            (other, _) => Err(format!(
                "its preload library sent {other:?}, which a worker never sends"
            )),
        }
    }

    /// The held socket for the worker's bind, or NONE (it binds for itself).
    fn answer(&mut self, bind: &Bind) -> Result<(), String> {
        let found = SocketKey::from_bind(bind)
            .and_then(|wanted| self.adoptions.answer(&wanted))
            .and_then(|i| self.held.get(self.key_index[i]));
        let sent = match found {
            Some(socket) => {
                self.adopted += 1;
                log::debug!("handing held {} to a worker's bind()", socket.info);
                self.channel.send(&Message::Fd, Some(socket.fd.as_fd()))
            }
            None => self.channel.send(&Message::None, None),
        };
        sent.map_err(|e| format!("cannot answer its preload library: {e}"))
    }

    /// The worker is ready: reads what it sent before it answered (haproxy binds every
    /// listener before it serves), ends the conversation (its later binds are its own) and
    /// returns its listening sockets. Fails if the library never said HELLO: the worker did
    /// not load it, so it bound every port for itself, next to the held sockets.
    pub fn finish(mut self, library: &str, binary: &str) -> Result<Finished, String> {
        // Bounded by what the worker queued: it sends nothing unasked after its last listen(),
        // and never more than MAX_SOCKETS NEWs.
        self.step(MAX_SOCKETS + 16)?;
        if self.hello.is_none() {
            return Err(not_loaded(library, binary));
        }
        if !self.closed {
            if let Err(e) = self.channel.send(&Message::End, None) {
                // Its binds after this are its own either way; the library fails closed.
                log::debug!("preload channel: END not sent: {e}");
            }
        }
        Ok(Finished {
            sockets: self.collected,
            adopted: self.adopted,
            held: self.held,
        })
    }
}

impl std::fmt::Debug for PreloadSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreloadSession")
            .field("held", &self.held.len())
            .field("hello", &self.hello)
            .field("collected", &self.collected.len())
            .field("adopted", &self.adopted)
            .field("closed", &self.closed)
            .finish()
    }
}

/// Why a worker that never spoke through the library (or whose binding image did not) cannot
/// be made ready.
pub fn not_loaded(library: &str, binary: &str) -> String {
    format!(
        "its {binary} did not load hapmaster's preload library {library} (LD_PRELOAD): a static \
         haproxy, file capabilities, setuid, an SELinux transition, a wrapper that clears \
         LD_PRELOAD or a noexec runtime directory make the loader skip it. Without it haproxy \
         before 1.8 binds the held ports a second time and no reload is seamless; run haproxy \
         1.8 or later, or a dynamically linked build without file capabilities"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preload::socket_key::describe;
    use std::net::TcpListener;
    use std::os::fd::{AsFd, OwnedFd};

    fn ino(fd: BorrowedFd<'_>) -> u64 {
        nix::sys::stat::fstat(fd).unwrap().st_ino
    }

    fn record() -> Record {
        Record {
            namespace: Vec::new(),
            interface: Vec::new(),
            options: [0; 4],
        }
    }

    /// A session holding one listener, and the library's end of its channel.
    fn session() -> (PreloadSession, PreloadChannel, Bind, u64) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let bind = describe(listener.as_fd()).unwrap();
        let inode = ino(listener.as_fd());
        let held =
            HeldSet::from_received([(OwnedFd::from(listener), record())], |_| false).unwrap();
        let (channel, worker_end) = PreloadChannel::open().unwrap();
        let session = PreloadSession::new(channel, Rc::new(held));
        (
            session,
            PreloadChannel::worker_side(worker_end),
            bind,
            inode,
        )
    }

    fn answer(worker: &PreloadChannel) -> (Message, Option<OwnedFd>) {
        match worker.receive().unwrap() {
            Incoming::Message(m, fd) => (m, fd),
            other => panic!("no answer: {other:?}"),
        }
    }

    #[test]
    fn a_held_socket_is_handed_out_once_and_what_the_worker_listens_on_is_collected() {
        let (mut session, worker, bind, inode) = session();
        worker.send(&Message::Hello { pid: 7 }, None).unwrap();
        worker.send(&Message::Adopt(bind.clone()), None).unwrap();
        session.step(64).unwrap();
        let (m, fd) = answer(&worker);
        assert_eq!(m, Message::Fd);
        let adopted = fd.unwrap();
        assert_eq!(ino(adopted.as_fd()), inode, "not the held socket");
        // The same address again (a second bind line for it): the worker binds for itself.
        worker.send(&Message::Adopt(bind), None).unwrap();
        session.step(64).unwrap();
        assert!(matches!(answer(&worker), (Message::None, None)));

        let own = TcpListener::bind("127.0.0.1:0").unwrap();
        let own_bind = describe(own.as_fd()).unwrap();
        let own_inode = ino(own.as_fd());
        let adopted_bind = describe(adopted.as_fd()).unwrap();
        worker
            .send(&Message::New(adopted_bind), Some(adopted.as_fd()))
            .unwrap();
        worker
            .send(&Message::New(own_bind), Some(own.as_fd()))
            .unwrap();
        // Not stepped: finish reads what the worker sent before it answered its probe.
        let finished = session.finish("lib.so", "haproxy 1.7.14").unwrap();
        assert_eq!(finished.adopted, 1);
        let slots: Vec<Option<u64>> = finished
            .sockets
            .iter()
            .map(|s| match &s.slot {
                Slot::Known(i) => {
                    assert_eq!(*i, 0);
                    None
                }
                Slot::Fresh(fd) => Some(ino(fd.as_fd())),
            })
            .collect();
        assert_eq!(slots, [None, Some(own_inode)]);
        assert!(matches!(answer(&worker), (Message::End, None)));
    }

    #[test]
    fn a_worker_that_never_said_hello_is_refused() {
        let (mut session, worker, bind, _) = session();
        worker.send(&Message::Adopt(bind), None).unwrap();
        session.step(64).unwrap();
        let _ = answer(&worker);
        let err = session
            .finish("/run/hm/preload-x.so", "haproxy 1.7.14")
            .unwrap_err();
        assert!(err.contains("did not load hapmaster's preload library /run/hm/preload-x.so"));
        assert!(err.contains("haproxy 1.7.14"), "{err}");
    }

    #[test]
    fn a_message_only_the_master_sends_is_a_protocol_error() {
        let (mut session, worker, _, _) = session();
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        worker.send(&Message::Fd, Some(tcp.as_fd())).unwrap();
        let err = session.step(64).unwrap_err();
        assert!(err.contains("which a worker never sends"), "{err}");
    }

    #[test]
    fn a_turn_reads_at_most_its_budget() {
        let (mut session, worker, _, _) = session();
        for pid in 1..=5 {
            worker.send(&Message::Hello { pid }, None).unwrap();
        }
        session.step(2).unwrap();
        assert_eq!(session.hello, Some(2));
        session.step(64).unwrap();
        assert_eq!(session.hello, Some(5));
        // The worker's end closed: nothing more to poll.
        drop(worker);
        session.step(64).unwrap();
        assert!(session.poll_fd().is_none());
    }
}
