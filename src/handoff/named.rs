//! The new worker's own handoff channel for haproxy 1.8 to 2.5, which only take `-x <path>`: a
//! socket per generation, `<runtime dir>/handoff-<G>.sock` (0600 in the 0700 directory), that
//! serves only the spawned worker's pid. hapmaster runs haproxy in the foreground, so the
//! process that connects is the one it forked. Any other peer (root or the master's uid, given
//! the modes) is closed at once and logged; it can neither occupy nor delay the worker's turn.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixListener;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use super::channel::Received;
use crate::fs_at::{Dir, FileId};

/// Connections waiting beyond the one being looked at: the worker's own, plus a stray one.
const BACKLOG: i32 = 4;

pub struct NamedChannel {
    listener: UnixListener,
    dir: Dir,
    name: OsString,
    id: FileId,
}

impl NamedChannel {
    /// Binds `name` in `dir`, non-blocking.
    pub fn bind(dir: Dir, name: &OsStr) -> io::Result<NamedChannel> {
        let (fd, id) = dir
            .bind_unix(name, 0o600, (None, None), BACKLOG, Some(&dir))
            .map_err(|e| e.into_io())?;
        let listener = UnixListener::from(fd);
        listener.set_nonblocking(true)?;
        Ok(NamedChannel {
            listener,
            dir,
            name: name.to_os_string(),
            id,
        })
    }

    pub fn poll_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// Non-blocking: the connection of the worker `pid`, if it connected. Others are refused.
    pub fn receive(&self, pid: i32) -> Received {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Received::Pending,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Received::Closed(format!(
                        "accepting on {} failed: {e}",
                        self.dir.path().join(&self.name).display()
                    ))
                }
            };
            match getsockopt(&stream, PeerCredentials) {
                Ok(cred) if cred.pid() == pid => return Received::Connection(stream),
                Ok(cred) => log::warn!(
                    "refused a connection to {} from pid {} (uid {}): only worker pid {pid} \
                     takes its sockets there",
                    self.dir.path().join(&self.name).display(),
                    cred.pid(),
                    cred.uid()
                ),
                Err(e) => log::warn!(
                    "refused a connection to {} whose peer is unknown: {e}",
                    self.dir.path().join(&self.name).display()
                ),
            }
        }
    }
}

impl Drop for NamedChannel {
    fn drop(&mut self) {
        if let Err(e) = self.dir.remove_if(&self.name, self.id) {
            log::warn!(
                "cannot remove {}: {e}",
                self.dir.path().join(&self.name).display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn only_the_expected_pid_gets_through_and_the_file_goes_with_the_channel() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::open(tmp.path()).unwrap();
        let channel = NamedChannel::bind(dir, OsStr::new("handoff-3.sock")).unwrap();
        let path = tmp.path().join("handoff-3.sock");
        assert!(matches!(channel.receive(1), Received::Pending));
        // This process is not pid 1: refused, closed, and nothing is left pending.
        let stranger = UnixStream::connect(&path).unwrap();
        assert!(matches!(channel.receive(1), Received::Pending));
        let mut buf = [0u8; 1];
        assert_eq!(std::io::Read::read(&mut &stranger, &mut buf).unwrap(), 0);
        // The expected pid is served.
        let _worker = UnixStream::connect(&path).unwrap();
        let me = std::process::id() as i32;
        assert!(matches!(channel.receive(me), Received::Connection(_)));
        drop(channel);
        assert!(!path.exists());
    }
}
