//! Sockets the master already holds, recognised as a new worker's copies of them arrive: such a
//! copy is closed at once and only its position is kept ([`Slot::Known`]), so that a reload
//! holds each listener once plus one batch of copies instead of twice.
//!
//! Matching on (dev, inode) is safe while the held copy stays open: it pins the inode, so no
//! other socket can get that number during the fetch.

use std::os::fd::{AsFd, OwnedFd};

use nix::sys::stat::fstat;
use rustc_hash::FxHashMap;

/// A received socket: a new one, or the copy of held socket `n` (already closed).
#[derive(Debug)]
pub enum Slot {
    Fresh(OwnedFd),
    Known(usize),
}

/// The held sockets by identity (dev, inode), to their index in the held set.
#[derive(Debug, Default)]
pub struct KnownSockets {
    by_identity: FxHashMap<(u64, u64), usize>,
}

impl KnownSockets {
    pub fn new(identities: impl IntoIterator<Item = (u64, u64)>) -> KnownSockets {
        let mut by_identity = FxHashMap::default();
        for (index, identity) in identities.into_iter().enumerate() {
            by_identity.entry(identity).or_insert(index);
        }
        KnownSockets { by_identity }
    }

    /// Closes `fd` if it is a copy of a held socket. An fd that cannot be described stays
    /// fresh: describing it later fails with the reason.
    pub fn classify(&self, fd: OwnedFd) -> Slot {
        let Ok(stat) = fstat(fd.as_fd()) else {
            return Slot::Fresh(fd);
        };
        match self.by_identity.get(&(stat.st_dev, stat.st_ino)) {
            Some(&index) => Slot::Known(index),
            None => Slot::Fresh(fd),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    fn identity(fd: &OwnedFd) -> (u64, u64) {
        let stat = fstat(fd.as_fd()).unwrap();
        (stat.st_dev, stat.st_ino)
    }

    /// A copy of a held socket is closed at once and named by its index; another stays open.
    #[test]
    fn copies_of_held_sockets_close_and_keep_their_index() {
        let (a, _a_peer) = UnixStream::pair().unwrap();
        let (b, b_peer) = UnixStream::pair().unwrap();
        let (c, _c_peer) = UnixStream::pair().unwrap();
        let held: Vec<OwnedFd> = vec![a.into(), b.into()];
        let known = KnownSockets::new(held.iter().map(identity));
        let copy = held[1].try_clone().unwrap();
        assert!(matches!(known.classify(copy), Slot::Known(1)));
        let fresh: OwnedFd = c.into();
        let fresh_identity = identity(&fresh);
        match known.classify(fresh) {
            Slot::Fresh(fd) => assert_eq!(identity(&fd), fresh_identity),
            Slot::Known(n) => panic!("a new socket taken for held socket {n}"),
        }
        // The copy is closed: dropping the held one leaves no other, and its peer reads EOF.
        drop(held);
        b_peer
            .set_read_timeout(Some(std::time::Duration::from_secs(60)))
            .unwrap();
        assert_eq!((&b_peer).read(&mut [0u8; 1]).unwrap(), 0);
    }
}
