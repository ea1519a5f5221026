//! Plumbing of bounded exchanges on unix stream sockets, shared by both sides of `_getsocks`
//! (handoff::fetch_task, handoff::serve) and the control client: a peer's name for errors, a
//! connect and sends and receives that cannot hang or raise SIGPIPE, and the poll() the blocking
//! drivers of the `_getsocks` tasks wait in.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};

/// Both sides of the protocol use a 1 s socket timeout per operation, as haproxy does.
pub(crate) const OPERATION_TIMEOUT: Duration = Duration::from_secs(1);

/// A human-readable name of one end of a unix stream socket, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint(String);

impl Endpoint {
    pub fn path(path: &Path) -> Endpoint {
        Endpoint(path.display().to_string())
    }

    /// The peer's bound name: for a connection to a listener, the listener's path.
    pub fn peer_of(stream: &UnixStream) -> Endpoint {
        Endpoint::from_addr(stream.peer_addr())
    }

    pub fn local_of(stream: &UnixStream) -> Endpoint {
        Endpoint::from_addr(stream.local_addr())
    }

    fn from_addr(addr: io::Result<std::os::unix::net::SocketAddr>) -> Endpoint {
        let Ok(addr) = addr else {
            return Endpoint("unix socket of unknown name".to_string());
        };
        if let Some(path) = addr.as_pathname() {
            Endpoint::path(path)
        } else if let Some(name) = addr.as_abstract_name() {
            Endpoint(format!("@{}", name.escape_ascii()))
        } else {
            Endpoint("unnamed unix socket".to_string())
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A unix stream connect that never waits: the connection is queued on the listener at once, or
/// the listener's queue is full (EAGAIN), which is reported.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let addr = UnixAddr::new(path)?;
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    loop {
        match socket::connect(fd.as_raw_fd(), &addr) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "its stats socket's accept queue is full (the worker is not accepting)",
                ))
            }
            Err(errno) => return Err(errno.into()),
            Ok(()) => return Ok(UnixStream::from(fd)),
        }
    }
}

/// A unix stream connect bounded by `timeout`: Linux bounds a connect() that waits for backlog
/// room by SO_SNDTIMEO (and reports EAGAIN when it runs out: an `ErrorKind::TimedOut` here).
/// The stream is blocking and close-on-exec; its write timeout is left at `timeout`.
pub fn connect_unix(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let addr = UnixAddr::new(path)?;
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let stream = UnixStream::from(fd);
    stream.set_write_timeout(Some(timeout.max(Duration::from_millis(1))))?;
    loop {
        match socket::connect(stream.as_raw_fd(), &addr) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => return Err(timed_out()),
            Err(errno) => return Err(errno.into()),
            Ok(()) => return Ok(stream),
        }
    }
}

pub(crate) fn timed_out() -> io::Error {
    io::Error::from(io::ErrorKind::TimedOut)
}

/// `send` with MSG_NOSIGNAL so that a vanished peer is an EPIPE, not a SIGPIPE.
pub(crate) fn send_nosignal(sock: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<usize> {
    loop {
        match socket::send(sock.as_raw_fd(), bytes, MsgFlags::MSG_NOSIGNAL) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(errno) => return Err(errno.into()),
            Ok(n) => return Ok(n),
        }
    }
}

/// `send` that never waits (MSG_DONTWAIT, whatever the socket's mode) and never raises SIGPIPE.
pub(crate) fn send_dontwait(sock: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<usize> {
    loop {
        let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
        match socket::send(sock.as_raw_fd(), bytes, flags) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

/// `recv` that never waits (MSG_DONTWAIT, whatever the socket's mode).
pub(crate) fn recv_dontwait(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match socket::recv(sock.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

pub(crate) fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Waits in poll() until `sock` is ready for `flags` or `until` has come (EINTR is a wake-up
/// too): how the blocking drivers of the resumable `_getsocks` tasks wait between steps.
pub(crate) fn wait_ready(sock: BorrowedFd<'_>, flags: PollFlags, until: Instant) -> io::Result<()> {
    let left = until.saturating_duration_since(Instant::now());
    let ms = i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
    let mut fds = [PollFd::new(sock, flags)];
    match nix::poll::poll(
        &mut fds,
        PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
    ) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
        Err(errno) => Err(errno.into()),
    }
}

/// A socket timeout ran out (SO_RCVTIMEO/SO_SNDTIMEO report EAGAIN).
pub(crate) fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The peer went away.
pub(crate) fn is_disconnect(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}
