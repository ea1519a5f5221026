//! The client side of `_getsocks` as a resumable state machine ([`FetchTask`]): each step does
//! what the socket allows without waiting (MSG_DONTWAIT) and says what to poll for, so that the
//! master's loop takes a new worker's sockets among everything else. The blocking
//! [`fetch_sockets`](super::fetch::fetch_sockets) drives the same task with poll(): one
//! implementation of the protocol.
//!
//! Bounds as haproxy's own client: each operation waits at most [`OPERATION_TIMEOUT`], the whole
//! conversation at most the caller's timeout.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::PollFlags;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};

use super::fetch::{
    is_text_byte, recv_with_fds, ControlBuffer, FetchError, FetchStage, FetchedSocket, Received,
    GETSOCKS_COMMAND, MAX_ANNOUNCED_FDS, MAX_TEXT_ANSWER,
};
use super::known::{KnownSockets, Slot};
use super::wire::{complete_prefix, decode_records, MAX_FDS_ACCEPTED_PER_MESSAGE, MAX_RECORD_LEN};
use crate::unix_stream::{
    is_disconnect, send_dontwait, timed_out, would_block, Endpoint, OPERATION_TIMEOUT,
};

/// How often a connect whose listener's backlog is full is tried again (a unix connect that would
/// wait cannot be polled for: it fails with EAGAIN).
const CONNECT_RETRY: Duration = Duration::from_millis(10);

/// What a step leaves to do.
pub enum FetchProgress {
    /// Step again when the stream is ready for these, or at [`FetchTask::wakeup`].
    Wants(PollFlags),
    Done(Result<Vec<FetchedSocket>, FetchError>),
}

/// Where a conversation stands.
enum Stage {
    /// The listener's backlog was full: connect again at `retry`.
    Connect {
        addr: UnixAddr,
        retry: Instant,
    },
    SendCommand {
        written: usize,
    },
    ReadCount {
        count: [u8; 4],
        got: usize,
    },
    /// The peer answered with text: the rest of it, for the error.
    TextAnswer {
        text: Vec<u8>,
    },
    ReceiveBatch,
    /// The ack of the read that brought `before` fds, `written` bytes of it out.
    SendAck {
        ack: [u8; 4],
        written: usize,
    },
}

/// What has arrived so far of the batches.
struct Batches {
    announced: usize,
    /// One per fd received, in order: records are decoded at the end and pair up by position.
    fds: Vec<Slot>,
    data: Vec<u8>,
    /// Complete records at the front of `data`, and the bytes they span.
    records: usize,
    record_bytes: usize,
}

impl Batches {
    fn complete(&self) -> bool {
        self.fds.len() == self.announced && self.records >= self.announced
    }

    fn add_data(&mut self, bytes: &[u8]) {
        self.data.extend_from_slice(bytes);
        let (records, len) = complete_prefix(&self.data[self.record_bytes..]);
        self.records += records;
        self.record_bytes += len;
    }
}

/// One `_getsocks` conversation as a client that never waits: [`step`](FetchTask::step) it when
/// its stream is ready for what it wants, or at its wakeup (which gives up on a stalled peer).
/// Every fd received is owned (close-on-exec) from the moment it arrives: dropping the task, or
/// any error, closes them all. A task that [knows](FetchTask::knowing) the held sockets closes
/// each copy of one as its batch arrives.
pub struct FetchTask {
    stream: UnixStream,
    peer: Endpoint,
    /// The connect's path, for its error.
    path: Option<PathBuf>,
    stage: Stage,
    batches: Batches,
    buf: Vec<u8>,
    control: ControlBuffer,
    /// The whole conversation's end, and its length.
    end: Instant,
    total: Duration,
    /// The last progress: an operation that waits longer than OPERATION_TIMEOUT fails.
    progress: Instant,
    known: Option<KnownSockets>,
}

impl FetchTask {
    /// Starts a conversation with the process listening on `path` (a haproxy `stats socket ...
    /// expose-fd listeners`, or a hapmaster control socket). A connect that fails at once is an
    /// error here; one that would wait for backlog room is retried by the steps.
    pub fn connect(path: &Path, timeout: Duration, now: Instant) -> Result<FetchTask, FetchError> {
        let connect_error = |source: io::Error| FetchError::Connect {
            path: path.to_path_buf(),
            source,
        };
        let addr = UnixAddr::new(path).map_err(|e| connect_error(e.into()))?;
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(|e| connect_error(e.into()))?;
        let mut task = FetchTask::new(UnixStream::from(fd), Endpoint::path(path), timeout, now);
        task.path = Some(path.to_path_buf());
        task.stage = Stage::Connect { addr, retry: now };
        match task.try_connect(now) {
            Err(source) => Err(connect_error(source)),
            Ok(_) => Ok(task),
        }
    }

    /// Starts a conversation on a stream already connected to the peer (a haproxy's `-x
    /// sockpair@N` end). Its mode is left as it is: every operation is MSG_DONTWAIT.
    pub fn on_stream(stream: UnixStream, timeout: Duration, now: Instant) -> FetchTask {
        let peer = Endpoint::peer_of(&stream);
        FetchTask::new(stream, peer, timeout, now)
    }

    fn new(stream: UnixStream, peer: Endpoint, timeout: Duration, now: Instant) -> FetchTask {
        FetchTask {
            stream,
            peer,
            path: None,
            stage: Stage::SendCommand { written: 0 },
            batches: Batches {
                announced: 0,
                fds: Vec::new(),
                data: Vec::new(),
                records: 0,
                record_bytes: 0,
            },
            buf: Vec::new(),
            control: ControlBuffer::new(),
            end: now + timeout,
            total: timeout,
            progress: now,
            known: None,
        }
    }

    /// Copies of these sockets are closed as they arrive (their owner must keep them open until
    /// the task ends): the process then holds one batch of copies at most, not all of them.
    pub fn knowing(mut self, known: KnownSockets) -> FetchTask {
        self.known = Some(known);
        self
    }

    /// The fd to poll for what [`step`](FetchTask::step) last wanted.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// The peer, for messages.
    pub fn peer(&self) -> &Endpoint {
        &self.peer
    }

    /// When the conversation gives up if the peer does nothing: step it then.
    pub fn wakeup(&self) -> Instant {
        let give_up = self.end.min(self.progress + OPERATION_TIMEOUT);
        match &self.stage {
            Stage::Connect { retry, .. } => give_up.min(*retry),
            _ => give_up,
        }
    }

    /// The step of the conversation it is at (for a caller's message when it is cut short).
    pub fn stage(&self) -> FetchStage {
        match self.stage {
            Stage::Connect { .. } | Stage::SendCommand { .. } => FetchStage::SendCommand,
            Stage::ReadCount { .. } | Stage::TextAnswer { .. } => FetchStage::ReadCount,
            Stage::ReceiveBatch => FetchStage::ReceiveBatch,
            Stage::SendAck { .. } => FetchStage::SendAck,
        }
    }

    /// Goes as far as the stream allows without waiting.
    pub fn step(&mut self, now: Instant) -> FetchProgress {
        loop {
            match self.advance(now) {
                Ok(Advance::Progress) => self.progress = now,
                Ok(Advance::Finished) => return FetchProgress::Done(self.take_sockets()),
                Ok(Advance::Blocked(flags)) => {
                    if now < self.wakeup() {
                        return FetchProgress::Wants(flags);
                    }
                    return FetchProgress::Done(Err(self.gave_up(now)));
                }
                Err(e) => return FetchProgress::Done(Err(e)),
            }
        }
    }

    /// The peer did nothing in time: a timeout, or for a connect or text answer their own error.
    fn gave_up(&mut self, now: Instant) -> FetchError {
        let waited = if now >= self.end {
            self.total
        } else {
            OPERATION_TIMEOUT
        };
        match &mut self.stage {
            Stage::Connect { .. } => FetchError::Connect {
                path: self.path.clone().unwrap_or_default(),
                source: timed_out(),
            },
            Stage::TextAnswer { text } => {
                let text = std::mem::take(text);
                self.text_answer(text)
            }
            _ => FetchError::Timeout {
                peer: self.peer.clone(),
                stage: self.stage(),
                timeout: waited,
            },
        }
    }

    /// Every fd and its record, in the sender's order; a bad record closes them all.
    fn take_sockets(&mut self) -> Result<Vec<FetchedSocket>, FetchError> {
        let fds = std::mem::take(&mut self.batches.fds);
        let records =
            decode_records(&self.batches.data, self.batches.announced).map_err(|source| {
                FetchError::Records {
                    peer: self.peer.clone(),
                    source,
                }
            })?;
        Ok(fds
            .into_iter()
            .zip(records)
            .map(|(slot, record)| FetchedSocket { slot, record })
            .collect())
    }

    /// A connect attempt: Ok(true) connected, Ok(false) the backlog is full (retry later).
    fn try_connect(&mut self, now: Instant) -> io::Result<bool> {
        let Stage::Connect { addr, retry } = &mut self.stage else {
            return Ok(true);
        };
        loop {
            match socket::connect(self.stream.as_raw_fd(), addr) {
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => {
                    *retry = now + CONNECT_RETRY;
                    return Ok(false);
                }
                Err(errno) => return Err(errno.into()),
                Ok(()) => {
                    self.stage = Stage::SendCommand { written: 0 };
                    return Ok(true);
                }
            }
        }
    }

    /// One operation of the conversation.
    fn advance(&mut self, now: Instant) -> Result<Advance, FetchError> {
        match &mut self.stage {
            Stage::Connect { retry, .. } => {
                if now < *retry {
                    return Ok(Advance::Blocked(PollFlags::empty()));
                }
                match self.try_connect(now) {
                    Ok(true) => Ok(Advance::Progress),
                    Ok(false) => Ok(Advance::Blocked(PollFlags::empty())),
                    Err(source) => Err(FetchError::Connect {
                        path: self.path.clone().unwrap_or_default(),
                        source,
                    }),
                }
            }
            Stage::SendCommand { written } => {
                match send_dontwait(self.stream.as_fd(), &GETSOCKS_COMMAND[*written..]) {
                    Err(e) if would_block(&e) => Ok(Advance::Blocked(PollFlags::POLLOUT)),
                    Err(e) => Err(self.io(e)),
                    Ok(n) => {
                        *written += n;
                        if *written == GETSOCKS_COMMAND.len() {
                            self.stage = Stage::ReadCount {
                                count: [0; 4],
                                got: 0,
                            };
                        }
                        Ok(Advance::Progress)
                    }
                }
            }
            Stage::ReadCount { count, got } => {
                // A 4-byte buffer keeps the first batch, which may follow at once, out of this
                // read.
                let received =
                    match recv_with_fds(self.stream.as_fd(), &mut count[*got..], &mut self.control)
                    {
                        Err(e) if would_block(&e) => {
                            return Ok(Advance::Blocked(PollFlags::POLLIN))
                        }
                        Err(e) => return Err(self.io(e)),
                        Ok(received) => received,
                    };
                let bytes = received.bytes;
                let (count, got_before) = (*count, *got);
                self.check_control(&received, 0)?;
                if !received.fds.is_empty() {
                    return Err(FetchError::FdsWithCount {
                        peer: self.peer.clone(),
                        fds: received.fds.len(),
                    });
                }
                if bytes == 0 {
                    return Err(self.eof_in_count(got_before));
                }
                let got = got_before + bytes;
                if got < count.len() {
                    self.stage = Stage::ReadCount { count, got };
                    return Ok(Advance::Progress);
                }
                self.counted(count)
            }
            Stage::TextAnswer { text } => {
                let mut chunk = [0u8; 512];
                // Any fd that came along is closed when the answer drops.
                let more = match recv_with_fds(self.stream.as_fd(), &mut chunk, &mut self.control) {
                    Err(e) if would_block(&e) => return Ok(Advance::Blocked(PollFlags::POLLIN)),
                    Ok(received) => received.bytes,
                    Err(_) => 0,
                };
                text.extend_from_slice(&chunk[..more]);
                if more > 0 && text.len() < MAX_TEXT_ANSWER {
                    return Ok(Advance::Progress);
                }
                let text = std::mem::take(text);
                Err(self.text_answer(text))
            }
            Stage::ReceiveBatch => {
                if self.buf.is_empty() {
                    self.buf = vec![0u8; MAX_FDS_ACCEPTED_PER_MESSAGE * MAX_RECORD_LEN];
                }
                let received =
                    match recv_with_fds(self.stream.as_fd(), &mut self.buf, &mut self.control) {
                        Err(e) if would_block(&e) => {
                            return Ok(Advance::Blocked(PollFlags::POLLIN))
                        }
                        Err(e) => return Err(self.io(e)),
                        Ok(received) => received,
                    };
                if received.bytes == 0 && received.fds.is_empty() {
                    return self.eof_in_batches();
                }
                let before = self.batches.fds.len();
                self.accept_message(received)?;
                self.stage = Stage::SendAck {
                    ack: i32::try_from(before).unwrap_or(i32::MAX).to_ne_bytes(),
                    written: 0,
                };
                Ok(Advance::Progress)
            }
            // haproxy's client acks every read with the number of fds it had before that read.
            Stage::SendAck { ack, written } => {
                let last = self.batches.complete();
                match send_dontwait(self.stream.as_fd(), &ack[*written..]) {
                    Err(e) if would_block(&e) => Ok(Advance::Blocked(PollFlags::POLLOUT)),
                    // 1.8, 2.0 and 2.6 close right after the last batch without reading it.
                    Err(e) if last && is_disconnect(&e) => Ok(Advance::Finished),
                    Err(e) => Err(self.io(e)),
                    Ok(n) => {
                        *written += n;
                        if *written < ack.len() {
                            return Ok(Advance::Progress);
                        }
                        if last {
                            return Ok(Advance::Finished);
                        }
                        self.stage = Stage::ReceiveBatch;
                        Ok(Advance::Progress)
                    }
                }
            }
        }
    }

    /// The count is in: what to do next.
    fn counted(&mut self, count: [u8; 4]) -> Result<Advance, FetchError> {
        let value = i32::from_ne_bytes(count);
        match usize::try_from(value) {
            // haproxy's own client takes a count of 0 as success with nothing to adopt.
            Ok(0) => Ok(Advance::Finished),
            Ok(n) if n <= MAX_ANNOUNCED_FDS => {
                self.batches.announced = n;
                self.batches
                    .fds
                    .reserve(n.min(MAX_FDS_ACCEPTED_PER_MESSAGE));
                self.stage = Stage::ReceiveBatch;
                Ok(Advance::Progress)
            }
            // No count in range has four text bytes (its high byte is 0): a CLI's answer, such
            // as a refusal, instead of the protocol.
            _ if count.iter().all(|b| is_text_byte(*b)) => {
                self.stage = Stage::TextAnswer {
                    text: count.to_vec(),
                };
                Ok(Advance::Progress)
            }
            _ => Err(FetchError::BadCount {
                peer: self.peer.clone(),
                count: value,
            }),
        }
    }

    fn text_answer(&self, mut text: Vec<u8>) -> FetchError {
        text.truncate(MAX_TEXT_ANSWER);
        FetchError::TextAnswer {
            peer: self.peer.clone(),
            text: String::from_utf8_lossy(&text).into_owned(),
        }
    }

    fn io(&self, source: io::Error) -> FetchError {
        FetchError::Io {
            peer: self.peer.clone(),
            stage: self.stage(),
            source,
        }
    }

    fn eof_in_count(&self, bytes: usize) -> FetchError {
        let peer = self.peer.clone();
        if bytes == 0 {
            FetchError::NothingExported { peer }
        } else {
            FetchError::TruncatedCount { peer, bytes }
        }
    }

    fn check_control(&self, received: &Received, before: usize) -> Result<(), FetchError> {
        if received.truncated {
            return Err(FetchError::ControlTruncated {
                peer: self.peer.clone(),
                announced: self.batches.announced,
                received: before + received.fds.len(),
            });
        }
        if let Some((level, kind)) = received.foreign {
            return Err(FetchError::ForeignControlMessage {
                peer: self.peer.clone(),
                level,
                kind,
            });
        }
        Ok(())
    }

    fn accept_message(&mut self, received: Received) -> Result<(), FetchError> {
        let before = self.batches.fds.len();
        self.check_control(&received, before)?;
        // Data without fds is only the tail of a large batch the kernel split into several skbs.
        if received.fds.is_empty() && self.batches.records >= before {
            return Err(FetchError::DataWithoutFds {
                peer: self.peer.clone(),
                received: before,
                bytes: received.bytes,
            });
        }
        let slots = received.fds.into_iter().map(|fd| match &self.known {
            Some(known) => known.classify(fd),
            None => Slot::Fresh(fd),
        });
        self.batches.fds.extend(slots);
        if self.batches.fds.len() > self.batches.announced {
            return Err(FetchError::TooManyFds {
                peer: self.peer.clone(),
                announced: self.batches.announced,
                received: self.batches.fds.len(),
            });
        }
        let bytes = received.bytes;
        let data = std::mem::take(&mut self.buf);
        self.batches.add_data(&data[..bytes]);
        self.buf = data;
        Ok(())
    }

    fn eof_in_batches(&self) -> Result<Advance, FetchError> {
        if self.batches.fds.len() < self.batches.announced {
            return Err(FetchError::MissingFds {
                peer: self.peer.clone(),
                announced: self.batches.announced,
                received: self.batches.fds.len(),
            });
        }
        // All fds are here but their records are not: let the decoder say where they stop.
        match decode_records(&self.batches.data, self.batches.announced) {
            Err(source) => Err(FetchError::Records {
                peer: self.peer.clone(),
                source,
            }),
            Ok(_) => Ok(Advance::Finished),
        }
    }
}

enum Advance {
    Progress,
    Finished,
    Blocked(PollFlags),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{IoSlice, Read, Write};

    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

    use crate::handoff::wire::{encode_record, Record};

    /// `fds` and their empty records as one message, as a server's batch.
    fn send_batch(server: &UnixStream, fds: &[BorrowedFd<'_>]) {
        let raw: Vec<i32> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        let mut data = Vec::new();
        for _ in fds {
            encode_record(&Record::default(), &mut data).unwrap();
        }
        let iov = [IoSlice::new(&data)];
        let rights = [ControlMessage::ScmRights(&raw)];
        sendmsg::<UnixAddr>(server.as_raw_fd(), &iov, &rights, MsgFlags::empty(), None).unwrap();
    }

    fn wants(progress: FetchProgress) -> PollFlags {
        match progress {
            FetchProgress::Wants(flags) => flags,
            FetchProgress::Done(Ok(got)) => panic!("done with {} sockets", got.len()),
            FetchProgress::Done(Err(e)) => panic!("{e}"),
        }
    }

    /// A silent server leaves the task waiting, without blocking its caller; each step takes
    /// what has come and acks it.
    #[test]
    fn steps_never_wait_for_the_server() {
        let (client, mut server) = UnixStream::pair().unwrap();
        let start = Instant::now();
        let mut task = FetchTask::on_stream(client, Duration::from_secs(5), start);
        assert_eq!(wants(task.step(start)), PollFlags::POLLIN);
        let mut command = [0u8; 10];
        server.read_exact(&mut command).unwrap();
        assert_eq!(&command, GETSOCKS_COMMAND);
        server.write_all(&1i32.to_ne_bytes()).unwrap();
        assert_eq!(wants(task.step(start)), PollFlags::POLLIN);
        assert_eq!(task.stage(), FetchStage::ReceiveBatch);
        let (held, _peer) = UnixStream::pair().unwrap();
        send_batch(&server, &[held.as_fd()]);
        match task.step(start) {
            FetchProgress::Done(Ok(got)) => assert_eq!(got.len(), 1),
            FetchProgress::Done(Err(e)) => panic!("{e}"),
            FetchProgress::Wants(flags) => panic!("still waiting for {flags:?}"),
        }
        let mut ack = [0u8; 4];
        server.read_exact(&mut ack).unwrap();
        assert_eq!(i32::from_ne_bytes(ack), 0);
    }

    /// A task that knows the held sockets keeps a held one's copy as its index, in its place
    /// among the batches, and counts it in its acks like any fd.
    #[test]
    fn copies_of_known_sockets_keep_their_place() {
        let (held, _held_peer) = UnixStream::pair().unwrap();
        let (other, _other_peer) = UnixStream::pair().unwrap();
        let (client, mut server) = UnixStream::pair().unwrap();
        let start = Instant::now();
        let held_set = crate::handoff::listeners::HeldSet::from_received(
            vec![(
                std::os::fd::OwnedFd::from(held.try_clone().unwrap()),
                Record::default(),
            )],
            |_| false,
        )
        .unwrap();
        let mut task =
            FetchTask::on_stream(client, Duration::from_secs(5), start).knowing(held_set.known());
        server.write_all(&3i32.to_ne_bytes()).unwrap();
        send_batch(&server, &[other.as_fd(), held.as_fd()]);
        assert_eq!(wants(task.step(start)), PollFlags::POLLIN);
        send_batch(&server, &[held.as_fd()]);
        let got = match task.step(start) {
            FetchProgress::Done(Ok(got)) => got,
            FetchProgress::Done(Err(e)) => panic!("{e}"),
            FetchProgress::Wants(flags) => panic!("still waiting for {flags:?}"),
        };
        let slots: Vec<Option<usize>> = got
            .iter()
            .map(|s| match s.slot {
                Slot::Known(n) => Some(n),
                Slot::Fresh(_) => None,
            })
            .collect();
        assert_eq!(slots, vec![None, Some(0), Some(0)]);
        let mut command = [0u8; 10];
        server.read_exact(&mut command).unwrap();
        let mut acks = [0u8; 8];
        server.read_exact(&mut acks).unwrap();
        assert_eq!(acks, [0i32.to_ne_bytes(), 2i32.to_ne_bytes()].concat()[..]);
    }

    /// A server that stalls mid-transfer is given up at the wakeup, and the fds already received
    /// are closed.
    #[test]
    fn a_stall_mid_transfer_is_a_timeout_that_closes_what_came() {
        let (client, mut server) = UnixStream::pair().unwrap();
        let start = Instant::now();
        let mut task = FetchTask::on_stream(client, Duration::from_secs(5), start);
        server.write_all(&2i32.to_ne_bytes()).unwrap();
        let (held, peer) = UnixStream::pair().unwrap();
        send_batch(&server, &[held.as_fd()]);
        drop(held);
        assert_eq!(wants(task.step(start)), PollFlags::POLLIN);
        assert_eq!(task.wakeup(), start + OPERATION_TIMEOUT);
        match task.step(task.wakeup()) {
            FetchProgress::Done(Err(FetchError::Timeout {
                stage: FetchStage::ReceiveBatch,
                timeout,
                ..
            })) => assert_eq!(timeout, OPERATION_TIMEOUT),
            FetchProgress::Done(Err(e)) => panic!("{e}"),
            FetchProgress::Done(Ok(_)) => panic!("done"),
            FetchProgress::Wants(flags) => panic!("still waiting for {flags:?}"),
        }
        drop(task);
        // The only other copy of `held` was the task's: its peer reads EOF.
        assert_eq!((&peer).read(&mut [0u8; 1]).unwrap(), 0);
    }

    #[test]
    fn a_refused_connect_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nothing.sock");
        match FetchTask::connect(&path, Duration::from_secs(5), Instant::now()) {
            Err(FetchError::Connect { path: p, .. }) => assert_eq!(p, path),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("connected to nothing"),
        }
    }
}
