//! A new worker's own channel for the socket handoff, so that no CLI client can occupy it: a
//! socketpair (`-x sockpair@N`, haproxy 2.6 and later) or a socket named for its generation and
//! served only to its pid (1.8 to 2.5). Held in the worker's record and polled by the loop.

use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;

use super::named::NamedChannel;
use super::sockpair::HandoffChannel;

pub enum Channel {
    Pair(HandoffChannel),
    Named(NamedChannel),
}

/// What one look at a channel found.
pub enum Received {
    /// Nothing yet (the worker is still parsing its configuration).
    Pending,
    /// The connection to serve `_getsocks` on.
    Connection(UnixStream),
    /// The channel is over without a connection: the worker closed its end (it failed or exited
    /// before asking) or sent something else; the reason says which.
    Closed(String),
}

impl Channel {
    pub fn poll_fd(&self) -> BorrowedFd<'_> {
        match self {
            Channel::Pair(c) => c.poll_fd(),
            Channel::Named(c) => c.poll_fd(),
        }
    }

    /// Non-blocking; `pid`: the worker the channel was made for.
    pub fn receive(&self, pid: i32) -> Received {
        match self {
            Channel::Pair(c) => c.receive(),
            Channel::Named(c) => c.receive(pid),
        }
    }
}
