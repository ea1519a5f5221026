//! systemd's fd store kept in step with the held listening sockets: each one is stored under a
//! name of its own (`FDSTORE=1`, `FDNAME=sock-<inode>`), and removed (`FDSTOREREMOVE=1`) when the
//! master closes it. If the master itself dies, systemd keeps them and passes them back to the
//! restarted master (`LISTEN_FDS`), so the ports are never closed.
//!
//! Never waits for systemd: a sync stops at a full receiver queue and goes on once the notify
//! socket has room (the event loop polls it), so a service manager that does not read costs no
//! time per socket, at start or at any reload.

use rustc_hash::FxHashSet;

use crate::handoff::listeners::HeldSet;
use crate::notify::Notifier;

/// `FDNAME=` of a held socket: its inode names it across reloads (the same socket keeps it) and
/// across master restarts (systemd hands the name back in `LISTEN_FDNAMES`).
pub fn fd_name(inode: u64) -> String {
    format!("sock-{inode}")
}

/// The messages that bring a store holding `stored` to `wanted` (inodes, in the held order):
/// store the new ones, in `wanted`'s order, at most `room` more than `stored` keeps, and remove
/// the gone ones. Pure, so the bookkeeping is testable without systemd. Linear: it runs at every
/// reload, over tens of thousands of listeners.
pub fn plan(stored: &FxHashSet<u64>, wanted: &[u64], room: Option<usize>) -> (Vec<u64>, Vec<u64>) {
    let wanted_set: FxHashSet<u64> = wanted.iter().copied().collect();
    let mut remove: Vec<u64> = stored
        .iter()
        .copied()
        .filter(|i| !wanted_set.contains(i))
        .collect();
    remove.sort_unstable();
    let kept = stored.len() - remove.len();
    let room = room.map_or(usize::MAX, |r| r.saturating_sub(kept));
    let mut seen = FxHashSet::default();
    let add = wanted
        .iter()
        .copied()
        .filter(|i| !stored.contains(i) && seen.insert(*i))
        .take(room)
        .collect();
    (add, remove)
}

#[derive(Debug, Default)]
pub struct FdStore {
    /// Inodes systemd holds for us, as far as we know.
    stored: FxHashSet<u64>,
    /// `$FDSTORE` (systemd 254+): how many fds the unit may store; None on older systemd,
    /// which does not say (it discards them if `FileDescriptorStoreMax=` is 0).
    limit: Option<usize>,
    warned: bool,
    /// The receiver's queue was full: sync again once the notify socket has room.
    waiting: bool,
}

impl FdStore {
    /// `passed`: inodes systemd passed back at start (they are in the store already).
    pub fn new(passed: impl IntoIterator<Item = u64>) -> FdStore {
        let limit = std::env::var("FDSTORE")
            .ok()
            .and_then(|v| v.trim().parse().ok());
        FdStore {
            stored: passed.into_iter().collect(),
            limit,
            warned: false,
            waiting: false,
        }
    }

    /// True when a sync stopped at a full receiver queue: call [`FdStore::sync`] again once the
    /// notify socket is writable.
    pub fn waiting(&self) -> bool {
        self.waiting
    }

    /// Sends what brings systemd's store to `held`, never waiting: it stops at the first
    /// datagram that cannot go. A full queue is resumed when the socket has room; any other
    /// error is one warning, and the rest is tried once more at the next sync (the next
    /// reload), not once per socket.
    pub fn sync(&mut self, notifier: &Notifier, held: &HeldSet) {
        self.waiting = false;
        if self.limit == Some(0) {
            return;
        }
        let wanted = held.inodes();
        if let Some(limit) = self.limit.filter(|l| wanted.len() > *l && !self.warned) {
            self.warned = true;
            log::warn!(
                "{} listening sockets but FileDescriptorStoreMax={limit}: {} are not kept if \
                 the master dies; raise FileDescriptorStoreMax= to at least {}",
                wanted.len(),
                wanted.len() - limit,
                wanted.len()
            );
        }
        let (add, remove) = plan(&self.stored, &wanted, self.limit);
        let changes = add.len() + remove.len();
        let mut done = 0;
        let mut failed = None;
        for inode in remove {
            let msg = format!("FDSTOREREMOVE=1\nFDNAME={}", fd_name(inode));
            if let Err(e) = notifier.send_with_fds(&msg, &[]) {
                failed = Some(e);
                break;
            }
            self.stored.remove(&inode);
            done += 1;
        }
        let add: FxHashSet<u64> = add.into_iter().collect();
        for h in held.iter().filter(|h| add.contains(&h.info.inode)) {
            if failed.is_some() {
                break;
            }
            let msg = format!("FDSTORE=1\nFDNAME={}", fd_name(h.info.inode));
            if let Err(e) = notifier.send_with_fds(&msg, &[std::os::fd::AsFd::as_fd(&h.fd)]) {
                failed = Some(e);
                break;
            }
            self.stored.insert(h.info.inode);
            done += 1;
        }
        match failed {
            None => {}
            Some(e) if e.kind() == std::io::ErrorKind::WouldBlock => self.waiting = true,
            Some(e) => log::warn!(
                "systemd's fd store: {} of {changes} changes not sent: {e}; the sockets not \
                 stored are not kept if the master dies; tried again at the next reload",
                changes - done
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_adds_new_and_removes_gone() {
        let stored: FxHashSet<u64> = [1, 2, 3].into_iter().collect();
        let wanted = [5, 2, 3, 4];
        assert_eq!(plan(&stored, &wanted, None), (vec![5, 4], vec![1]));
        let all: FxHashSet<u64> = wanted.into_iter().collect();
        assert_eq!(plan(&all, &wanted, None), (vec![], vec![]));
    }

    /// systemd refuses fds beyond `FileDescriptorStoreMax=`: the plan stops at the limit,
    /// counting what stays stored, and still removes what is gone.
    #[test]
    fn plan_stays_within_the_store_limit() {
        let stored: FxHashSet<u64> = [1, 2, 3].into_iter().collect();
        let wanted = [2, 3, 4, 5, 6];
        assert_eq!(plan(&stored, &wanted, Some(3)), (vec![4], vec![1]));
        assert_eq!(plan(&stored, &wanted, Some(2)), (vec![], vec![1]));
        assert_eq!(
            plan(&FxHashSet::default(), &wanted, Some(2)),
            (vec![2, 3], vec![])
        );
    }

    #[test]
    fn names_are_stable_and_valid() {
        let n = fd_name(123456);
        assert_eq!(n, "sock-123456");
        assert!(n.len() <= 255 && !n.contains(':'));
    }
}
