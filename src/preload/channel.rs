//! The master's end of one worker's preload channel (see `wire.rs`): a SOCK_SEQPACKET
//! socketpair made at spawn, the worker's end inherited at the fd named by `HAPMASTER_PRELOAD_FD`.
//! Non-blocking: the event loop polls [`PreloadChannel::poll_fd`] and takes one message a turn.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockType, UnixAddr};

use super::wire::{decode, encode, Message, MSG_LEN};
use crate::handoff::fetch::{recv_with_fds, ControlBuffer};
use crate::handoff::sockpair::worker_pair;

pub struct PreloadChannel {
    master_end: OwnedFd,
}

/// What one look at the channel found.
#[derive(Debug)]
pub enum Incoming {
    /// Nothing yet.
    Pending,
    /// A message, with its socket for NEW.
    Message(Message, Option<OwnedFd>),
    /// The worker's end is closed (every process holding it exited).
    Closed,
}

impl PreloadChannel {
    /// The channel and the worker's end, which the spawn hands down (CLOEXEC cleared in the
    /// child only) and the master closes right after.
    pub fn open() -> io::Result<(PreloadChannel, OwnedFd)> {
        let (master_end, worker_end) = worker_pair(SockType::SeqPacket)?;
        Ok((PreloadChannel { master_end }, worker_end))
    }

    /// The worker's side of a channel, for tests that play the library.
    #[cfg(test)]
    pub(crate) fn worker_side(worker_end: OwnedFd) -> PreloadChannel {
        PreloadChannel {
            master_end: worker_end,
        }
    }

    pub fn poll_fd(&self) -> BorrowedFd<'_> {
        self.master_end.as_fd()
    }

    /// Non-blocking. A malformed message, or one with the wrong number of fds, is an
    /// `InvalidData` error (its fds closed): the worker does not run this master's library.
    pub fn receive(&self) -> io::Result<Incoming> {
        // One byte more than a message: a longer datagram shows as too long, not cut to size.
        let mut data = [0u8; MSG_LEN + 1];
        let mut control = ControlBuffer::new();
        let received = match recv_with_fds(self.master_end.as_fd(), &mut data, &mut control) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Incoming::Pending),
            // A SOCK_SEQPACKET peer that exited with an answer of ours unread.
            Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => return Ok(Incoming::Closed),
            Err(e) => return Err(e),
        };
        let mut fds = received.fds;
        if received.bytes == 0 && fds.is_empty() {
            return Ok(Incoming::Closed);
        }
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        let message = decode(&data[..received.bytes])
            .map_err(|e| invalid(format!("preload channel: {e}")))?;
        if fds.len() != usize::from(message.carries_fd()) || received.truncated {
            return Err(invalid(format!(
                "preload channel: {message:?} came with {} fds{}",
                fds.len(),
                if received.truncated {
                    " (truncated)"
                } else {
                    ""
                }
            )));
        }
        Ok(Incoming::Message(message, fds.pop()))
    }

    /// Sends an answer (FD with the held socket, NONE) or END. Never waits: the worker has read
    /// everything before it asks, so its end has room for one message.
    pub fn send(&self, message: &Message, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        if fd.is_some() != message.carries_fd() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("preload channel: {message:?} must carry exactly one fd or none"),
            ));
        }
        let bytes = encode(message);
        let iov = [io::IoSlice::new(&bytes)];
        let raw: Vec<i32> = fd.iter().map(|f| f.as_raw_fd()).collect();
        let rights = [ControlMessage::ScmRights(&raw)];
        let cmsgs = if raw.is_empty() { &[][..] } else { &rights[..] };
        let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
        let sent = sendmsg::<UnixAddr>(self.master_end.as_raw_fd(), &iov, cmsgs, flags, None)?;
        if sent != MSG_LEN {
            return Err(io::Error::other(format!(
                "preload channel: sent {sent} of {MSG_LEN} bytes"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preload::wire::Bind;

    fn peer(worker_end: &OwnedFd) -> PreloadChannel {
        PreloadChannel {
            master_end: worker_end.try_clone().unwrap(),
        }
    }

    #[test]
    fn messages_and_their_fds_cross_and_eof_ends() {
        let (master, worker_end) = PreloadChannel::open().unwrap();
        assert!(worker_end.as_raw_fd() >= 3);
        assert!(matches!(master.receive().unwrap(), Incoming::Pending));
        let worker = peer(&worker_end);
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let bind = Bind {
            pid: 7,
            addr: vec![2, 0],
            iface: Vec::new(),
            flags: 0,
            netns: 0,
        };
        worker
            .send(&Message::New(bind.clone()), Some(tcp.as_fd()))
            .unwrap();
        let Incoming::Message(Message::New(got), Some(fd)) = master.receive().unwrap() else {
            panic!("no NEW with its socket");
        };
        assert_eq!(got, bind);
        let ino = |f: BorrowedFd<'_>| nix::sys::stat::fstat(f).unwrap().st_ino;
        assert_eq!(ino(fd.as_fd()), ino(tcp.as_fd()));
        master.send(&Message::None, None).unwrap();
        assert!(matches!(
            worker.receive().unwrap(),
            Incoming::Message(Message::None, None)
        ));
        drop((worker, worker_end));
        assert!(matches!(master.receive().unwrap(), Incoming::Closed));
    }

    #[test]
    fn an_fd_where_none_belongs_is_refused_both_ways() {
        let (master, worker_end) = PreloadChannel::open().unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(master.send(&Message::End, Some(tcp.as_fd())).is_err());
        assert!(master.send(&Message::Fd, None).is_err());
        // A HELLO with an fd, sent raw.
        let bytes = encode(&Message::Hello { pid: 1 });
        let raw = [tcp.as_raw_fd()];
        let rights = [ControlMessage::ScmRights(&raw)];
        let iov = [io::IoSlice::new(&bytes)];
        sendmsg::<UnixAddr>(
            worker_end.as_raw_fd(),
            &iov,
            &rights,
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let err = master.receive().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("1 fds"), "{err}");
    }
}
