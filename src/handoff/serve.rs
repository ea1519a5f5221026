//! Server side of `_getsocks`: hand the held sockets to a new haproxy started with `-x`.

use std::fmt;
use std::io::{self, IoSlice, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use nix::sys::socket::{self, ControlMessage, MsgFlags, UnixAddr};

use super::wire::{batch_ranges, encode_record, Record, WireError};
use crate::unix_stream::{is_disconnect, is_timeout, send_nosignal, Deadline, Endpoint};

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
/// `timeout` bounds the whole conversation; each operation waits at most 1 s of it. Changes the
/// stream's read and write timeouts.
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
    sockets: &[(BorrowedFd<'_>, &Record)],
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
    sockets: &[(BorrowedFd<'_>, &Record)],
    timeout: Duration,
) -> Result<ServeOutcome, ServeError> {
    serve(stream, sockets, timeout, false)
}

fn serve(
    stream: &UnixStream,
    sockets: &[(BorrowedFd<'_>, &Record)],
    timeout: Duration,
    read_command: bool,
) -> Result<ServeOutcome, ServeError> {
    if sockets.is_empty() {
        return Err(ServeError::NothingToServe);
    }
    let count = i32::try_from(sockets.len()).map_err(|_| ServeError::TooManySockets {
        count: sockets.len(),
    })?;
    // Encode everything first, so that a bad record never leaves a client with half a transfer.
    let batches = encode_batches(sockets)?;
    let serve = Serve {
        stream,
        at: Endpoint::local_of(stream),
        deadline: Deadline::after(timeout),
        sent: 0,
    };
    serve.run(count, &batches, read_command)
}

struct Batch<'a> {
    fds: Vec<BorrowedFd<'a>>,
    data: Vec<u8>,
}

fn encode_batches<'a>(sockets: &[(BorrowedFd<'a>, &Record)]) -> Result<Vec<Batch<'a>>, ServeError> {
    let mut batches = Vec::new();
    for range in batch_ranges(sockets.len()) {
        let mut batch = Batch {
            fds: Vec::with_capacity(range.len()),
            data: Vec::new(),
        };
        for index in range {
            let (fd, record) = sockets[index];
            encode_record(record, &mut batch.data)
                .map_err(|source| ServeError::Record { index, source })?;
            batch.fds.push(fd);
        }
        batches.push(batch);
    }
    Ok(batches)
}

struct Serve<'a> {
    stream: &'a UnixStream,
    at: Endpoint,
    deadline: Deadline,
    sent: usize,
}

impl Serve<'_> {
    fn run(
        mut self,
        count: i32,
        batches: &[Batch<'_>],
        read_command: bool,
    ) -> Result<ServeOutcome, ServeError> {
        if read_command {
            self.read_command()?;
        }
        self.send_count(count)?;
        for (i, batch) in batches.iter().enumerate() {
            self.send_batch(batch)?;
            self.read_ack(i + 1 == batches.len())?;
        }
        Ok(ServeOutcome { sent: self.sent })
    }

    fn arm(&self, stage: ServeStage) -> Result<(), ServeError> {
        match self.deadline.arm(self.stream) {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.timeout(stage, self.deadline.total())),
            Err(source) => Err(self.io(stage, source)),
        }
    }

    /// `waited`: the whole conversation's budget when it ran out, else the one operation's.
    fn timeout(&self, stage: ServeStage, waited: Duration) -> ServeError {
        ServeError::Timeout {
            at: self.at.clone(),
            stage,
            sent: self.sent,
            timeout: waited,
        }
    }

    fn closed(&self, stage: ServeStage) -> ServeError {
        ServeError::ClientClosed {
            at: self.at.clone(),
            stage,
            sent: self.sent,
        }
    }

    fn io(&self, stage: ServeStage, source: io::Error) -> ServeError {
        if is_timeout(&source) {
            return self.timeout(stage, self.deadline.operation_waited());
        }
        if is_disconnect(&source) {
            return self.closed(stage);
        }
        ServeError::Io {
            at: self.at.clone(),
            stage,
            sent: self.sent,
            source,
        }
    }

    fn short_write(&self, stage: ServeStage, written: usize, expected: usize) -> ServeError {
        ServeError::ShortWrite {
            at: self.at.clone(),
            stage,
            written,
            expected,
        }
    }

    fn read_command(&self) -> Result<(), ServeError> {
        let stage = ServeStage::ReadCommand;
        let mut line = [0u8; MAX_COMMAND_LEN];
        let mut len = 0;
        while !line[..len].contains(&b'\n') && len < line.len() {
            self.arm(stage)?;
            match (&*self.stream).read(&mut line[len..]) {
                Ok(0) if len == 0 => return Err(self.closed(stage)),
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io(stage, e)),
            }
        }
        match &line[..len] {
            b"_getsocks\n" | b"_getsocks\r\n" => Ok(()),
            other => Err(ServeError::UnexpectedCommand {
                at: self.at.clone(),
                received: other.to_vec(),
            }),
        }
    }

    fn send_count(&self, count: i32) -> Result<(), ServeError> {
        let stage = ServeStage::SendCount;
        self.arm(stage)?;
        let bytes = count.to_ne_bytes();
        match send_nosignal(self.stream.as_fd(), &bytes) {
            Ok(n) if n == bytes.len() => Ok(()),
            Ok(n) => Err(self.short_write(stage, n, bytes.len())),
            Err(e) => Err(self.io(stage, e)),
        }
    }

    /// One sendmsg: the fds as one SCM_RIGHTS message, exactly their records as data.
    fn send_batch(&mut self, batch: &Batch<'_>) -> Result<(), ServeError> {
        let stage = ServeStage::SendBatch;
        self.arm(stage)?;
        let raw: Vec<RawFd> = batch.fds.iter().map(|fd| fd.as_raw_fd()).collect();
        let rights = [ControlMessage::ScmRights(&raw)];
        let iov = [IoSlice::new(&batch.data)];
        let written = loop {
            let flags = MsgFlags::MSG_NOSIGNAL;
            match socket::sendmsg::<UnixAddr>(self.stream.as_raw_fd(), &iov, &rights, flags, None) {
                Err(nix::errno::Errno::EINTR) => continue,
                Err(errno) => return Err(self.io(stage, errno.into())),
                Ok(n) => break n,
            }
        };
        // A large batch that stalled was cut after `written` bytes, with the fds already on the
        // wire. The rest follows as plain data, as when the kernel splits a batch itself.
        self.send_rest(&batch.data[written..])?;
        self.sent += batch.fds.len();
        Ok(())
    }

    fn send_rest(&self, mut rest: &[u8]) -> Result<(), ServeError> {
        let stage = ServeStage::SendBatch;
        while !rest.is_empty() {
            self.arm(stage)?;
            match send_nosignal(self.stream.as_fd(), rest) {
                Ok(0) => return Err(self.closed(stage)),
                Ok(n) => rest = &rest[n..],
                Err(e) => return Err(self.io(stage, e)),
            }
        }
        Ok(())
    }

    fn read_ack(&self, last: bool) -> Result<(), ServeError> {
        let stage = ServeStage::ReadAck;
        match self.read_exact_ack(stage) {
            Ok(()) => Ok(()),
            // 1.8, 2.0 and 2.6 clients may close before or instead of the final ack.
            Err(e) if last && self.tolerated_after_last(&e) => {
                log::debug!("no final _getsocks ack on {}: {e}", self.at);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn tolerated_after_last(&self, err: &ServeError) -> bool {
        matches!(
            err,
            ServeError::ClientClosed { .. } | ServeError::Timeout { .. }
        )
    }

    fn read_exact_ack(&self, stage: ServeStage) -> Result<(), ServeError> {
        let mut ack = [0u8; 4];
        let mut got = 0;
        while got < ack.len() {
            self.arm(stage)?;
            match (&*self.stream).read(&mut ack[got..]) {
                Ok(0) => return Err(self.closed(stage)),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io(stage, e)),
            }
        }
        Ok(())
    }
}
