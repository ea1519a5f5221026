//! Server side of `_getsocks`: hand the held sockets to a new haproxy started with `-x`.
//!
//! The conversation is a resumable state machine ([`ServeTask`]): each step does what the socket
//! allows without waiting (MSG_DONTWAIT, whatever the stream's mode) and says what to poll for,
//! so that the master's loop serves a client among everything else. [`serve_getsocks`] drives it
//! to the end with poll() for callers that may block.

use std::fmt;
use std::io::{self, IoSlice};
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::PollFlags;
use nix::sys::socket::{self, ControlMessage, MsgFlags, UnixAddr};

use super::wire::{batch_ranges, encode_record, Record, WireError};
use crate::unix_stream::{
    is_disconnect, recv_dontwait as recv, send_dontwait as send, wait_ready, would_block, Endpoint,
    OPERATION_TIMEOUT,
};

/// Longest command line we read; `_getsocks\r\n` is 11 bytes.
const MAX_COMMAND_LEN: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServeOutcome {
    /// Sockets handed over.
    pub sent: usize,
}

/// The step of the conversation an error happened in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServeStage {
    ReadCommand,
    SendCount,
    SendBatch,
    ReadAck,
}

impl fmt::Display for ServeStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServeStage::ReadCommand => "reading the command",
            ServeStage::SendCount => "sending the socket count",
            ServeStage::SendBatch => "sending sockets",
            ServeStage::ReadAck => "waiting for the client's ack",
        })
    }
}

#[derive(Debug)]
pub enum ServeError {
    /// An empty set must never be announced: some haproxy versions fail on a count of 0.
    NothingToServe,
    TooManySockets {
        count: usize,
    },
    Record {
        index: usize,
        source: WireError,
    },
    UnexpectedCommand {
        at: Endpoint,
        received: Vec<u8>,
    },
    ClientClosed {
        at: Endpoint,
        stage: ServeStage,
        sent: usize,
    },
    Io {
        at: Endpoint,
        stage: ServeStage,
        sent: usize,
        source: io::Error,
    },
    Timeout {
        at: Endpoint,
        stage: ServeStage,
        sent: usize,
        timeout: Duration,
    },
    ShortWrite {
        at: Endpoint,
        stage: ServeStage,
        written: usize,
        expected: usize,
    },
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::NothingToServe => f.write_str(
                "no socket to hand over; start the worker without -x instead of announcing 0",
            ),
            ServeError::TooManySockets { count } => write!(
                f,
                "{count} sockets do not fit the protocol's int count; reduce the listeners"
            ),
            ServeError::Record { index, source } => {
                write!(f, "cannot describe held socket {index}: {source}")
            }
            ServeError::UnexpectedCommand { at, received } => write!(
                f,
                "a client of {at} sent {:?} instead of \"_getsocks\\n\"; only haproxy's -x \
                 belongs on this socket",
                received.escape_ascii().to_string()
            ),
            ServeError::ClientClosed { at, stage, sent } => write!(
                f,
                "the client of {at} went away while {stage}, after {sent} sockets; the new \
                 haproxy most likely failed, see its output"
            ),
            ServeError::Io {
                at,
                stage,
                sent,
                source,
            } => write!(
                f,
                "{stage} on {at} failed after {sent} sockets: {source}; see the new haproxy's \
                 output"
            ),
            ServeError::Timeout {
                at,
                stage,
                sent,
                timeout,
            } => write!(
                f,
                "{stage} on {at}: no progress within {timeout:?}, after {sent} sockets; the new \
                 haproxy is stuck or overloaded"
            ),
            ServeError::ShortWrite {
                at,
                stage,
                written,
                expected,
            } => write!(
                f,
                "{stage} on {at}: the kernel took {written} of {expected} bytes before timing \
                 out; the new haproxy stopped reading"
            ),
        }
    }
}

impl std::error::Error for ServeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServeError::Record { source, .. } => Some(source),
            ServeError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Answers one `_getsocks` on `stream` with `sockets`, in order.
///
/// `stream` is an accepted connection whose client (a haproxy started with `-x`, or
/// [`fetch_sockets`](super::fetch::fetch_sockets)) is about to send `_getsocks\n`: this reads
/// that command, sends the count, then the sockets in batches with their records, waiting for
/// the client's acks. The caller keeps its own copies of the sockets. An empty list is refused
/// ([`ServeError::NothingToServe`]): some haproxy versions fail on a count of 0.
///
/// `timeout` bounds the whole conversation; each operation waits at most 1 s of it.
///
/// ```no_run
/// use std::os::fd::AsFd;
/// use std::os::unix::net::UnixListener;
/// use std::path::Path;
/// use std::time::Duration;
///
/// use hapmaster::handoff::fetch::fetch_sockets;
/// use hapmaster::handoff::serve::serve_getsocks;
///
/// // Take the sockets of a running haproxy, then hand them to a new one started with
/// // `haproxy -x /tmp/handoff.sock ...`.
/// let held = fetch_sockets(Path::new("/run/haproxy/admin.sock"), Duration::from_secs(5))?;
/// let listener = UnixListener::bind("/tmp/handoff.sock")?;
/// let (stream, _) = listener.accept()?;
/// let list: Vec<_> = held.iter().map(|s| (s.fd.as_fd(), &s.record)).collect();
/// let outcome = serve_getsocks(&stream, &list, Duration::from_secs(5))?;
/// println!("handed over {} sockets", outcome.sent);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn serve_getsocks(
    stream: &UnixStream,
    sockets: &(impl ServeList + ?Sized),
    timeout: Duration,
) -> Result<ServeOutcome, ServeError> {
    serve(stream, sockets, timeout, true)
}

/// Like [`serve_getsocks`], for a caller that has already read the `_getsocks` line itself (a
/// CLI session that parses commands): starts with the count.
///
/// Nothing of the client's may remain unread on `stream` but what follows the command line
/// (haproxy's clients send nothing more until the first ack).
pub fn serve_getsocks_after_command(
    stream: &UnixStream,
    sockets: &(impl ServeList + ?Sized),
    timeout: Duration,
) -> Result<ServeOutcome, ServeError> {
    serve(stream, sockets, timeout, false)
}

/// Drives a [`ServeTask`] to its end, waiting in poll() for what it needs.
fn serve(
    stream: &UnixStream,
    sockets: &(impl ServeList + ?Sized),
    timeout: Duration,
    read_command: bool,
) -> Result<ServeOutcome, ServeError> {
    let mut task = ServeTask::new(stream, sockets, timeout, read_command, Instant::now())?;
    loop {
        let flags = match task.step(stream, sockets, Instant::now()) {
            ServeProgress::Done(result) => return result,
            ServeProgress::Wants(flags) => flags,
        };
        wait_ready(stream.as_fd(), flags, task.wakeup()).map_err(|source| ServeError::Io {
            at: task.at.clone(),
            stage: task.stage(),
            sent: task.sent,
            source,
        })?;
    }
}

/// What a `_getsocks` answer is made of, in the order sent. The held set is one
/// (`HeldSet`), so the master serves its sockets without building a list of them at every step
/// of a conversation (a reload of 19 000 listeners has 76).
pub trait ServeList {
    fn count(&self) -> usize;
    /// Socket `index` in the order sent, with its record.
    fn entry(&self, index: usize) -> (BorrowedFd<'_>, &Record);
}

impl ServeList for [(BorrowedFd<'_>, &Record)] {
    fn count(&self) -> usize {
        self.len()
    }

    fn entry(&self, index: usize) -> (BorrowedFd<'_>, &Record) {
        self[index]
    }
}

impl<const N: usize> ServeList for [(BorrowedFd<'_>, &Record); N] {
    fn count(&self) -> usize {
        N
    }

    fn entry(&self, index: usize) -> (BorrowedFd<'_>, &Record) {
        self[index]
    }
}

impl ServeList for Vec<(BorrowedFd<'_>, &Record)> {
    fn count(&self) -> usize {
        self.len()
    }

    fn entry(&self, index: usize) -> (BorrowedFd<'_>, &Record) {
        self[index]
    }
}

/// The sockets of one sendmsg (a range of the list) and their encoded records.
struct Batch {
    range: Range<usize>,
    data: Vec<u8>,
}

fn encode_batches(sockets: &(impl ServeList + ?Sized)) -> Result<Vec<Batch>, ServeError> {
    let mut batches = Vec::new();
    for range in batch_ranges(sockets.count()) {
        let mut data = Vec::new();
        for index in range.clone() {
            encode_record(sockets.entry(index).1, &mut data)
                .map_err(|source| ServeError::Record { index, source })?;
        }
        batches.push(Batch { range, data });
    }
    Ok(batches)
}

/// Where a conversation stands.
enum Stage {
    ReadCommand {
        line: [u8; MAX_COMMAND_LEN],
        len: usize,
    },
    SendCount,
    /// Batch `index`: `written` bytes of its data are out (None: its sendmsg has not gone yet).
    SendBatch {
        index: usize,
        written: Option<usize>,
    },
    ReadAck {
        index: usize,
        got: usize,
    },
}

/// What a step leaves to do.
pub enum ServeProgress {
    /// Step again when the stream is ready for these, or at [`ServeTask::wakeup`].
    Wants(PollFlags),
    Done(Result<ServeOutcome, ServeError>),
}

/// One `_getsocks` conversation that never waits: [`step`](ServeTask::step) it when the stream
/// is ready for what it wants, or at its wakeup (which gives up on a stalled client).
///
/// Every step takes the same `sockets` as [`new`](ServeTask::new): the caller keeps them open
/// until the conversation ends.
pub struct ServeTask {
    at: Endpoint,
    count: i32,
    batches: Vec<Batch>,
    stage: Stage,
    sent: usize,
    /// The whole conversation's end, and its length.
    end: Instant,
    total: Duration,
    /// The last progress: an operation that waits longer than OPERATION_TIMEOUT fails.
    progress: Instant,
}

impl ServeTask {
    /// Checks and encodes everything first, so that a bad record never leaves a client with half
    /// a transfer. `read_command`: whether the `_getsocks` line is still to be read.
    pub fn new(
        stream: &UnixStream,
        sockets: &(impl ServeList + ?Sized),
        timeout: Duration,
        read_command: bool,
        now: Instant,
    ) -> Result<ServeTask, ServeError> {
        if sockets.count() == 0 {
            return Err(ServeError::NothingToServe);
        }
        let count = i32::try_from(sockets.count()).map_err(|_| ServeError::TooManySockets {
            count: sockets.count(),
        })?;
        let batches = encode_batches(sockets)?;
        Ok(ServeTask {
            at: Endpoint::local_of(stream),
            count,
            batches,
            stage: if read_command {
                Stage::ReadCommand {
                    line: [0; MAX_COMMAND_LEN],
                    len: 0,
                }
            } else {
                Stage::SendCount
            },
            sent: 0,
            end: now + timeout,
            total: timeout,
            progress: now,
        })
    }

    /// When the conversation gives up if the client does nothing: step it then.
    pub fn wakeup(&self) -> Instant {
        self.end.min(self.progress + OPERATION_TIMEOUT)
    }

    /// Sockets handed over so far.
    pub fn sent(&self) -> usize {
        self.sent
    }

    fn stage(&self) -> ServeStage {
        match self.stage {
            Stage::ReadCommand { .. } => ServeStage::ReadCommand,
            Stage::SendCount => ServeStage::SendCount,
            Stage::SendBatch { .. } => ServeStage::SendBatch,
            Stage::ReadAck { .. } => ServeStage::ReadAck,
        }
    }

    /// Goes as far as `stream` allows without waiting.
    pub fn step(
        &mut self,
        stream: &UnixStream,
        sockets: &(impl ServeList + ?Sized),
        now: Instant,
    ) -> ServeProgress {
        debug_assert_eq!(
            sockets.count(),
            self.batches.last().map_or(0, |b| b.range.end),
            "a _getsocks conversation's sockets changed under it"
        );
        loop {
            match self.advance(stream, sockets) {
                Ok(Advance::Progress) => self.progress = now,
                Ok(Advance::Finished) => {
                    return ServeProgress::Done(Ok(ServeOutcome { sent: self.sent }))
                }
                Ok(Advance::Blocked(flags)) => {
                    if now < self.wakeup() {
                        return ServeProgress::Wants(flags);
                    }
                    let waited = if now >= self.end {
                        self.total
                    } else {
                        OPERATION_TIMEOUT
                    };
                    return ServeProgress::Done(self.tolerate(self.timeout(waited)));
                }
                Err(e) => return ServeProgress::Done(self.tolerate(e)),
            }
        }
    }

    /// 1.8, 2.0 and 2.6 clients may close before or instead of the final ack.
    fn tolerate(&self, err: ServeError) -> Result<ServeOutcome, ServeError> {
        let last_ack =
            matches!(self.stage, Stage::ReadAck { index, .. } if index + 1 == self.batches.len());
        let tolerated = matches!(
            err,
            ServeError::ClientClosed { .. } | ServeError::Timeout { .. }
        );
        if last_ack && tolerated {
            log::debug!("no final _getsocks ack on {}: {err}", self.at);
            return Ok(ServeOutcome { sent: self.sent });
        }
        Err(err)
    }

    /// One operation of the conversation.
    fn advance(
        &mut self,
        stream: &UnixStream,
        sockets: &(impl ServeList + ?Sized),
    ) -> Result<Advance, ServeError> {
        let fd = stream.as_fd();
        match &mut self.stage {
            Stage::ReadCommand { line, len } => {
                let n = match recv(fd, &mut line[*len..]) {
                    Err(e) if would_block(&e) => return Ok(Advance::Blocked(PollFlags::POLLIN)),
                    Err(e) => return Err(self.io(e)),
                    Ok(0) if *len == 0 => return Err(self.closed()),
                    Ok(n) => n,
                };
                *len += n;
                if n > 0 && !line[..*len].contains(&b'\n') && *len < line.len() {
                    return Ok(Advance::Progress);
                }
                match &line[..*len] {
                    b"_getsocks\n" | b"_getsocks\r\n" => {
                        self.stage = Stage::SendCount;
                        Ok(Advance::Progress)
                    }
                    other => Err(ServeError::UnexpectedCommand {
                        at: self.at.clone(),
                        received: other.to_vec(),
                    }),
                }
            }
            Stage::SendCount => {
                let bytes = self.count.to_ne_bytes();
                match send(fd, &bytes) {
                    Err(e) if would_block(&e) => Ok(Advance::Blocked(PollFlags::POLLOUT)),
                    Err(e) => Err(self.io(e)),
                    Ok(n) if n == bytes.len() => {
                        self.stage = Stage::SendBatch {
                            index: 0,
                            written: None,
                        };
                        Ok(Advance::Progress)
                    }
                    Ok(n) => Err(ServeError::ShortWrite {
                        at: self.at.clone(),
                        stage: ServeStage::SendCount,
                        written: n,
                        expected: bytes.len(),
                    }),
                }
            }
            Stage::SendBatch { index, written } => {
                let index = *index;
                let batch = &self.batches[index];
                let result = match *written {
                    // One sendmsg: the fds as one SCM_RIGHTS message, exactly their records as
                    // data.
                    None => send_with_fds(fd, sockets, batch.range.clone(), &batch.data),
                    // A large batch that stalled was cut after `written` bytes, with the fds
                    // already on the wire. The rest follows as plain data, as when the kernel
                    // splits a batch itself.
                    Some(done) if done < batch.data.len() => match send(fd, &batch.data[done..]) {
                        Ok(0) => return Err(self.closed()),
                        other => other,
                    },
                    Some(_) => {
                        self.sent += batch.range.len();
                        self.stage = Stage::ReadAck { index, got: 0 };
                        return Ok(Advance::Progress);
                    }
                };
                match result {
                    Err(e) if would_block(&e) => Ok(Advance::Blocked(PollFlags::POLLOUT)),
                    Err(e) => Err(self.io(e)),
                    Ok(n) => {
                        *written = Some(written.unwrap_or(0) + n);
                        Ok(Advance::Progress)
                    }
                }
            }
            Stage::ReadAck { index, got } => {
                let mut ack = [0u8; 4];
                let n = match recv(fd, &mut ack[*got..]) {
                    Err(e) if would_block(&e) => return Ok(Advance::Blocked(PollFlags::POLLIN)),
                    Err(e) => return Err(self.io(e)),
                    Ok(0) => return Err(self.closed()),
                    Ok(n) => n,
                };
                *got += n;
                if *got < ack.len() {
                    return Ok(Advance::Progress);
                }
                let next = *index + 1;
                if next == self.batches.len() {
                    return Ok(Advance::Finished);
                }
                self.stage = Stage::SendBatch {
                    index: next,
                    written: None,
                };
                Ok(Advance::Progress)
            }
        }
    }

    /// `waited`: the whole conversation's budget when it ran out, else the one operation's.
    fn timeout(&self, waited: Duration) -> ServeError {
        ServeError::Timeout {
            at: self.at.clone(),
            stage: self.stage(),
            sent: self.sent,
            timeout: waited,
        }
    }

    fn closed(&self) -> ServeError {
        ServeError::ClientClosed {
            at: self.at.clone(),
            stage: self.stage(),
            sent: self.sent,
        }
    }

    fn io(&self, source: io::Error) -> ServeError {
        if is_disconnect(&source) {
            return self.closed();
        }
        ServeError::Io {
            at: self.at.clone(),
            stage: self.stage(),
            sent: self.sent,
            source,
        }
    }
}

enum Advance {
    Progress,
    Finished,
    Blocked(PollFlags),
}

fn send_with_fds(
    fd: BorrowedFd<'_>,
    sockets: &(impl ServeList + ?Sized),
    range: Range<usize>,
    data: &[u8],
) -> io::Result<usize> {
    let raw: Vec<RawFd> = range.map(|i| sockets.entry(i).0.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let iov = [IoSlice::new(data)];
    loop {
        let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
        match socket::sendmsg::<UnixAddr>(fd.as_raw_fd(), &iov, &rights, flags, None) {
            Err(Errno::EINTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A client that is silent leaves the task waiting, without blocking its caller, until it
    /// acks; a stall past the operation timeout then ends the conversation.
    #[test]
    fn steps_never_wait_for_the_client() {
        let (server, mut client) = UnixStream::pair().unwrap();
        let (held, _peer) = UnixStream::pair().unwrap();
        let record = Record::default();
        let list = [(held.as_fd(), &record)];
        let start = Instant::now();
        let mut task = ServeTask::new(&server, &list, Duration::from_secs(5), true, start).unwrap();
        // Nothing sent yet: the command is awaited.
        assert!(matches!(
            task.step(&server, &list, start),
            ServeProgress::Wants(PollFlags::POLLIN)
        ));
        client.write_all(b"_getsocks\n").unwrap();
        // Count and batch go out; the ack is awaited.
        assert!(matches!(
            task.step(&server, &list, start),
            ServeProgress::Wants(PollFlags::POLLIN)
        ));
        assert_eq!(task.sent(), 1);
        let mut count = [0u8; 4];
        client.read_exact(&mut count).unwrap();
        assert_eq!(i32::from_ne_bytes(count), 1);
        assert_eq!(task.wakeup(), start + OPERATION_TIMEOUT);
        // The last ack is optional: a stalled client past the wakeup ends it, successfully.
        match task.step(&server, &list, task.wakeup()) {
            ServeProgress::Done(Ok(outcome)) => assert_eq!(outcome.sent, 1),
            ServeProgress::Done(Err(e)) => panic!("{e}"),
            ServeProgress::Wants(flags) => panic!("still waiting for {flags:?}"),
        }
    }

    #[test]
    fn a_stall_before_the_last_ack_is_a_timeout() {
        let (server, mut client) = UnixStream::pair().unwrap();
        let start = Instant::now();
        let (held, _peer) = UnixStream::pair().unwrap();
        let record = Record::default();
        let list = [(held.as_fd(), &record)];
        let mut task = ServeTask::new(&server, &list, Duration::from_secs(5), true, start).unwrap();
        client.write_all(b"_get").unwrap();
        assert!(matches!(
            task.step(&server, &list, start),
            ServeProgress::Wants(PollFlags::POLLIN)
        ));
        match task.step(&server, &list, start + OPERATION_TIMEOUT) {
            ServeProgress::Done(Err(ServeError::Timeout {
                stage: ServeStage::ReadCommand,
                timeout,
                ..
            })) => assert_eq!(timeout, OPERATION_TIMEOUT),
            ServeProgress::Done(other) => panic!("{other:?}"),
            ServeProgress::Wants(flags) => panic!("still waiting for {flags:?}"),
        }
    }
}
