//! The new worker's own handoff channel (haproxy 2.6 and later): a socketpair made at spawn, the
//! worker's end given as `-x sockpair@N`. The new haproxy sends one connected socket over it
//! (two data bytes and one SCM_RIGHTS fd) and then speaks `_getsocks` on that socket, as it
//! would on a connection to a `-x <path>`. Nobody but the master and that worker ever holds an
//! end, so no CLI client can occupy, delay or impersonate the handoff.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use super::channel::Received;
use super::fetch::{recv_with_fds, ControlBuffer};

/// The master's end, kept non-blocking in the worker's record until the worker sent its socket.
pub struct HandoffChannel {
    master_end: OwnedFd,
}

impl HandoffChannel {
    /// A socketpair; returns the channel and the worker's end, which the spawn hands down
    /// (CLOEXEC cleared in the child only) and the master closes right after.
    pub fn open() -> io::Result<(HandoffChannel, OwnedFd)> {
        let (master_end, worker_end) = worker_pair(SockType::Stream)?;
        Ok((HandoffChannel { master_end }, worker_end))
    }

    pub fn poll_fd(&self) -> BorrowedFd<'_> {
        self.master_end.as_fd()
    }

    /// Non-blocking: the socket the worker sent, if it sent one.
    pub fn receive(&self) -> Received {
        let mut data = [0u8; 16];
        let mut control = ControlBuffer::new();
        let received = match recv_with_fds(self.master_end.as_fd(), &mut data, &mut control) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Received::Pending,
            Err(e) => return Received::Closed(format!("reading the handoff channel failed: {e}")),
        };
        let mut fds = received.fds;
        if received.bytes == 0 && fds.is_empty() {
            return Received::Closed("the worker closed its handoff channel".into());
        }
        if fds.len() == 1 && !received.truncated {
            if let Some(fd) = fds.pop() {
                return Received::Connection(UnixStream::from(fd));
            }
        }
        // Every fd received is closed when `fds` is dropped.
        Received::Closed(format!(
            "the worker sent {} bytes and {} fds{} on its handoff channel instead of one socket",
            received.bytes,
            fds.len(),
            if received.truncated {
                " (truncated)"
            } else {
                ""
            }
        ))
    }
}

/// A socketpair for a worker: the master's end non-blocking, the worker's end blocking and at 3
/// or above, both CLOEXEC (the spawn clears it on the worker's end in the child only).
pub(crate) fn worker_pair(kind: SockType) -> io::Result<(OwnedFd, OwnedFd)> {
    let (master_end, worker_end) = socketpair(
        AddressFamily::Unix,
        kind,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )?;
    // Only the master's end is non-blocking: the worker's side (haproxy's sendmsg, the preload
    // library's receive with a timeout) expects its end to block, and O_NONBLOCK belongs to each
    // end's open file description.
    fcntl(&worker_end, FcntlArg::F_SETFL(OFlag::empty()))?;
    // Below 3 (a master started with stdin closed), std's stdio set-up in the child would
    // overwrite it.
    let worker_end = if worker_end.as_raw_fd() < 3 {
        let raw = fcntl(&worker_end, FcntlArg::F_DUPFD_CLOEXEC(3))?;
        // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
        unsafe { std::os::fd::FromRawFd::from_raw_fd(raw) }
    } else {
        worker_end
    };
    Ok((master_end, worker_end))
}

/// `-x` for a worker whose end of the channel is `fd` in the child.
pub fn argument(worker_end: BorrowedFd<'_>) -> String {
    format!("sockpair@{}", worker_end.as_raw_fd())
}

/// Clears CLOEXEC on `fd`; for the forked child only, before exec.
///
/// # Safety
/// Async-signal-safe (one fcntl): may run in a pre_exec closure.
pub unsafe fn inherit_in_child(fd: libc::c_int) -> io::Result<()> {
    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::IoSlice;

    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};

    /// What haproxy's `send_fd_uxst` does: two data bytes and one fd.
    fn send_fd(on: BorrowedFd<'_>, fd: BorrowedFd<'_>) {
        let raw = [fd.as_raw_fd()];
        let rights = [ControlMessage::ScmRights(&raw)];
        let iov = [IoSlice::new(&[0, 0])];
        sendmsg::<UnixAddr>(on.as_raw_fd(), &iov, &rights, MsgFlags::empty(), None).unwrap();
    }

    #[test]
    fn the_socket_sent_by_the_worker_end_arrives_connected() {
        let (channel, worker_end) = HandoffChannel::open().unwrap();
        assert!(worker_end.as_raw_fd() >= 3);
        assert!(matches!(channel.receive(), Received::Pending));
        let (ours, theirs) = UnixStream::pair().unwrap();
        send_fd(worker_end.as_fd(), ours.as_fd());
        drop(ours);
        let Received::Connection(stream) = channel.receive() else {
            panic!("no connection received");
        };
        use std::io::{Read, Write};
        (&theirs).write_all(b"_getsocks\n").unwrap();
        let mut line = [0u8; 10];
        (&stream).read_exact(&mut line).unwrap();
        assert_eq!(&line, b"_getsocks\n");
    }

    #[test]
    fn a_worker_that_closes_its_end_ends_the_channel() {
        let (channel, worker_end) = HandoffChannel::open().unwrap();
        drop(worker_end);
        assert!(matches!(channel.receive(), Received::Closed(_)));
    }

    #[test]
    fn data_without_a_socket_is_refused() {
        let (channel, worker_end) = HandoffChannel::open().unwrap();
        nix::unistd::write(&worker_end, b"_getsocks\n").unwrap();
        assert!(matches!(channel.receive(), Received::Closed(_)));
    }
}
