//! Client side of `_getsocks`: take the listening sockets of a haproxy (or a hapmaster).
//!
//! The peer is a `stats socket ... expose-fd listeners` of an old worker. That worker answers on
//! its traffic thread and blocks up to 1 s per ack, so this side reads and acks without delay.
//! The conversation itself is [`FetchTask`] (fetch_task.rs); this file has its errors, the
//! blocking drivers, and the `recvmsg` that takes fds.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use super::fetch_task::{FetchProgress, FetchTask};
use super::known::Slot;
use super::wire::{Record, WireError, MAX_FDS_ACCEPTED_PER_MESSAGE};
use crate::unix_stream::{wait_ready, Endpoint};

/// The command line a client sends, in one write.
pub const GETSOCKS_COMMAND: &[u8] = b"_getsocks\n";

/// Counts above this are taken for garbage rather than a configuration: haproxy itself is bound
/// by its fd limit, and accepting any `int` would let a broken peer make us wait for 2^31 fds.
pub const MAX_ANNOUNCED_FDS: usize = 1_000_000;

/// How much of a text answer (instead of a socket count) is kept for the error.
pub(crate) const MAX_TEXT_ANSWER: usize = 4096;

/// A socket received from the peer, with the metadata record that came with it.
#[derive(Debug)]
pub struct ReceivedSocket {
    pub fd: OwnedFd,
    pub record: Record,
}

/// A socket as a [`FetchTask`] that knows the held sockets takes it: a copy of a held one is
/// closed as it arrives and only its position is kept.
#[derive(Debug)]
pub struct FetchedSocket {
    pub slot: Slot,
    pub record: Record,
}

impl FetchedSocket {
    /// The socket itself, unless it was a held one's copy (a plain fetch has none).
    fn into_received(self) -> Option<ReceivedSocket> {
        match self.slot {
            Slot::Fresh(fd) => Some(ReceivedSocket {
                fd,
                record: self.record,
            }),
            Slot::Known(_) => None,
        }
    }
}

/// What the held set is built from (`HeldSet::from_received`).
impl From<ReceivedSocket> for (OwnedFd, Record) {
    fn from(socket: ReceivedSocket) -> (OwnedFd, Record) {
        (socket.fd, socket.record)
    }
}

/// The step of the conversation an error happened in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchStage {
    SendCommand,
    ReadCount,
    ReceiveBatch,
    SendAck,
}

impl fmt::Display for FetchStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FetchStage::SendCommand => "sending _getsocks",
            FetchStage::ReadCount => "reading the socket count",
            FetchStage::ReceiveBatch => "receiving sockets",
            FetchStage::SendAck => "acknowledging received sockets",
        })
    }
}

#[derive(Debug)]
pub enum FetchError {
    Connect {
        path: PathBuf,
        source: io::Error,
    },
    /// EOF before the count: the socket lacks `expose-fd listeners`, or nothing to export.
    NothingExported {
        peer: Endpoint,
    },
    Io {
        peer: Endpoint,
        stage: FetchStage,
        source: io::Error,
    },
    Timeout {
        peer: Endpoint,
        stage: FetchStage,
        timeout: Duration,
    },
    /// EOF after 1 – 3 bytes of the count.
    TruncatedCount {
        peer: Endpoint,
        bytes: usize,
    },
    BadCount {
        peer: Endpoint,
        count: i32,
    },
    /// Text instead of the count: a CLI that answered `_getsocks` with a sentence, such as
    /// "Permission denied" or "Unknown command" (at most 4 KiB of it).
    TextAnswer {
        peer: Endpoint,
        text: String,
    },
    /// Fds arrived with the count, which haproxy always sends alone.
    FdsWithCount {
        peer: Endpoint,
        fds: usize,
    },
    TooManyFds {
        peer: Endpoint,
        announced: usize,
        received: usize,
    },
    MissingFds {
        peer: Endpoint,
        announced: usize,
        received: usize,
    },
    /// Data arrived without fds where no batch's records were still incomplete.
    DataWithoutFds {
        peer: Endpoint,
        received: usize,
        bytes: usize,
    },
    /// The kernel dropped fds (MSG_CTRUNC), typically because our fd limit was reached.
    ControlTruncated {
        peer: Endpoint,
        announced: usize,
        received: usize,
    },
    ForeignControlMessage {
        peer: Endpoint,
        level: i32,
        kind: i32,
    },
    Records {
        peer: Endpoint,
        source: WireError,
    },
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Connect { path, source } => write!(
                f,
                "cannot connect to {}: {source}; check that haproxy runs and that this is the \
                 path of its `stats socket ... expose-fd listeners`",
                path.display()
            ),
            FetchError::NothingExported { peer } => write!(
                f,
                "{peer} closed the connection without announcing any socket: add \
                 `expose-fd listeners` to that `stats socket` line, or the process has no \
                 listener to hand over"
            ),
            FetchError::Io {
                peer,
                stage,
                source,
            } => write!(
                f,
                "{stage} on {peer} failed: {source}; the process behind it may have exited \
                 during the transfer, retry the reload"
            ),
            FetchError::Timeout {
                peer,
                stage,
                timeout,
            } => write!(
                f,
                "{stage} on {peer}: no progress within {timeout:?}; the process behind it is \
                 stuck or overloaded, retry the reload"
            ),
            FetchError::TruncatedCount { peer, bytes } => write!(
                f,
                "{peer} closed after {bytes} of the 4 bytes of the socket count; it does not \
                 speak haproxy's _getsocks protocol"
            ),
            FetchError::BadCount { peer, count } => write!(
                f,
                "{peer} announced {count} sockets, outside 0..={MAX_ANNOUNCED_FDS}; it does not \
                 speak haproxy's _getsocks protocol"
            ),
            FetchError::TextAnswer { peer, text } => write!(
                f,
                "{peer} answered _getsocks with text instead of a socket count: \"{}\"; it is a \
                 CLI socket that does not hand sockets out",
                first_line(text)
            ),
            FetchError::FdsWithCount { peer, fds } => write!(
                f,
                "{peer} sent {fds} fds along with the socket count; it does not speak haproxy's \
                 _getsocks protocol"
            ),
            FetchError::TooManyFds {
                peer,
                announced,
                received,
            } => write!(
                f,
                "{peer} announced {announced} sockets but sent at least {received}; all were \
                 closed, retry the reload"
            ),
            FetchError::MissingFds {
                peer,
                announced,
                received,
            } => write!(
                f,
                "{peer} announced {announced} sockets but closed after {received}; all were \
                 closed, retry the reload"
            ),
            FetchError::DataWithoutFds {
                peer,
                received,
                bytes,
            } => write!(
                f,
                "{peer} sent {bytes} bytes without fds after {received} sockets; it does not \
                 speak haproxy's _getsocks protocol"
            ),
            FetchError::ControlTruncated {
                peer,
                announced,
                received,
            } => write!(
                f,
                "the kernel dropped sockets sent by {peer} after {received} of {announced} \
                 (MSG_CTRUNC), most likely because this process reached its open file limit \
                 (ulimit -n, systemd's LimitNOFILE=)"
            ),
            FetchError::ForeignControlMessage { peer, level, kind } => write!(
                f,
                "{peer} sent an unexpected control message (level {level}, type {kind}); it \
                 does not speak haproxy's _getsocks protocol"
            ),
            FetchError::Records { peer, source } => {
                write!(f, "bad socket metadata from {peer}: {source}")
            }
        }
    }
}

impl std::error::Error for FetchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FetchError::Connect { source, .. } | FetchError::Io { source, .. } => Some(source),
            FetchError::Records { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Connects to `path` and takes every socket the process behind it exports.
///
/// `path` is a haproxy `stats socket ... expose-fd listeners` or a hapmaster control socket.
/// `timeout` bounds the whole conversation, connect included. Each socket comes back as an
/// [`OwnedFd`] (close-on-exec) with the metadata record sent with it, in the sender's order;
/// dropping it closes this copy and leaves the sender's listener untouched.
///
/// [`FetchError::NothingExported`] means the peer closed without a count: the stats socket
/// lacks `expose-fd listeners`, or the process has nothing to hand over.
///
/// This drives a [`FetchTask`] to its end, waiting in poll(); a caller that must not block steps
/// the task itself.
///
/// ```no_run
/// use std::os::fd::AsFd;
/// use std::path::Path;
/// use std::time::Duration;
///
/// use hapmaster::handoff::fetch::fetch_sockets;
/// use hapmaster::handoff::listeners::SocketInfo;
///
/// let sockets = fetch_sockets(Path::new("/run/haproxy/admin.sock"), Duration::from_secs(5))?;
/// for socket in &sockets {
///     let info = SocketInfo::of(socket.fd.as_fd())?;
///     println!("{info}, options {:#x}", socket.record.options_u32());
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn fetch_sockets(path: &Path, timeout: Duration) -> Result<Vec<ReceivedSocket>, FetchError> {
    drive(FetchTask::connect(path, timeout, Instant::now())?)
}

/// Runs the client side of `_getsocks` on an already connected stream (a copy of it: the
/// stream's mode and timeouts are left as they are).
pub fn fetch_from_stream(
    stream: &UnixStream,
    timeout: Duration,
) -> Result<Vec<ReceivedSocket>, FetchError> {
    let copy = stream.try_clone().map_err(|source| FetchError::Io {
        peer: Endpoint::peer_of(stream),
        stage: FetchStage::SendCommand,
        source,
    })?;
    drive(FetchTask::on_stream(copy, timeout, Instant::now()))
}

/// Steps `task` to its end, waiting in poll() for what it needs.
fn drive(mut task: FetchTask) -> Result<Vec<ReceivedSocket>, FetchError> {
    loop {
        let flags = match task.step(Instant::now()) {
            // No held socket is known to this task: every slot is fresh.
            FetchProgress::Done(result) => {
                return result.map(|sockets| {
                    sockets
                        .into_iter()
                        .filter_map(FetchedSocket::into_received)
                        .collect()
                })
            }
            FetchProgress::Wants(flags) => flags,
        };
        wait_ready(task.fd(), flags, task.wakeup()).map_err(|source| FetchError::Io {
            peer: task.peer().clone(),
            stage: task.stage(),
            source,
        })?;
    }
}

/// What one `recvmsg` brought. The fds are owned from the moment the call returned.
pub(crate) struct Received {
    pub(crate) bytes: usize,
    pub(crate) fds: Vec<OwnedFd>,
    pub(crate) truncated: bool,
    pub(crate) foreign: Option<(i32, i32)>,
}

/// A control buffer aligned for `cmsghdr` and large enough for the biggest batch any haproxy
/// sends, so that MSG_CTRUNC only happens when the kernel itself drops fds.
pub(crate) struct ControlBuffer(Vec<u64>);

impl ControlBuffer {
    pub(crate) fn new() -> ControlBuffer {
        let fd_bytes = (MAX_FDS_ACCEPTED_PER_MESSAGE * std::mem::size_of::<libc::c_int>()) as u32;
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(fd_bytes) } as usize;
        ControlBuffer(vec![0u64; space.div_ceil(8)])
    }

    fn len(&self) -> usize {
        self.0.len() * 8
    }
}

/// `recvmsg` with MSG_CMSG_CLOEXEC that never waits (MSG_DONTWAIT), retrying EINTR; every fd received is wrapped at once.
pub(crate) fn recv_with_fds(
    sock: BorrowedFd<'_>,
    data: &mut [u8],
    control: &mut ControlBuffer,
) -> io::Result<Received> {
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = control.len() as _;
    let bytes = loop {
        // SAFETY: msg describes buffers we own for the duration of the call.
        let flags = libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT;
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags) };
        if n >= 0 {
            break n as usize;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    };
    // SAFETY: the kernel filled msg's control area; it is parsed before anything else happens.
    let (fds, foreign) = unsafe { take_fds(&msg) };
    Ok(Received {
        bytes,
        fds,
        // Linux also reports MSG_CMSG_CLOEXEC in msg_flags: test only the truncation bit.
        truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
        foreign,
    })
}

/// Takes ownership of every fd in every SCM_RIGHTS message of `msg`.
///
/// # Safety
/// `msg` must be the header of a `recvmsg` that just returned successfully.
unsafe fn take_fds(msg: &libc::msghdr) -> (Vec<OwnedFd>, Option<(i32, i32)>) {
    let mut fds = Vec::new();
    let mut foreign = None;
    let mut cmsg = libc::CMSG_FIRSTHDR(msg);
    while !cmsg.is_null() {
        let header = std::ptr::read_unaligned(cmsg);
        if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
            let payload = (header.cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
            let first = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
            for i in 0..payload / std::mem::size_of::<libc::c_int>() {
                let raw = std::ptr::read_unaligned(first.add(i));
                fds.push(OwnedFd::from_raw_fd(raw));
            }
        } else {
            foreign = Some((header.cmsg_level, header.cmsg_type));
        }
        cmsg = libc::CMSG_NXTHDR(msg, cmsg);
    }
    (fds, foreign)
}

/// The first line of `text`, at most 120 characters of it and no control character, for an
/// error message.
fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("");
    line.chars()
        .take(120)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Printable ASCII and the whitespace a CLI answer contains.
pub(crate) fn is_text_byte(b: u8) -> bool {
    b.is_ascii_graphic() || matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}
