//! The held set: one owned copy of every listening socket of the current worker.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

use nix::sys::stat::{fstat, SFlag};
use rustc_hash::{FxHashMap, FxHashSet};
use socket2::{SockAddr, SockRef};

use super::fetch::FetchedSocket;
use super::known::{KnownSockets, Slot};
use super::serve::ServeList;
use super::wire::Record;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Inet,
    Inet6,
    Unix,
    Other(i32),
}

/// What a socket is, read from the socket itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketInfo {
    pub family: Family,
    /// `SOCK_STREAM`, `SOCK_DGRAM`, ...
    pub sock_type: i32,
    /// `127.0.0.1:8080`, `[::1]:8080`, a unix path, or `@name` for an abstract name. haproxy's
    /// unix listeners report the name they were bound under, `<path>.<pid>.tmp`.
    pub local: String,
    /// Set for unix sockets bound to a filesystem path.
    pub unix_path: Option<PathBuf>,
    pub dev: u64,
    pub inode: u64,
}

impl SocketInfo {
    /// Describes `fd`, which must be a socket.
    pub fn of(fd: BorrowedFd<'_>) -> io::Result<SocketInfo> {
        let raw = fd.as_raw_fd();
        let stat = fstat(fd).map_err(|e| annotate(raw, "fstat", e.into()))?;
        if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("fd {raw} is not a socket (st_mode {:o})", stat.st_mode),
            ));
        }
        let sock = SockRef::from(&fd);
        let address = sock
            .local_addr()
            .map_err(|e| annotate(raw, "getsockname", e))?;
        let (family, local, unix_path) = describe(&address);
        let sock_type = sock
            .r#type()
            .map_err(|e| annotate(raw, "getsockopt(SO_TYPE)", e))?;
        Ok(SocketInfo {
            family,
            sock_type: sock_type.into(),
            local,
            unix_path,
            dev: stat.st_dev,
            inode: stat.st_ino,
        })
    }

    fn identity(&self) -> (u64, u64) {
        (self.dev, self.inode)
    }
}

impl fmt::Display for SocketInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.sock_type {
            libc::SOCK_STREAM => "stream",
            libc::SOCK_DGRAM => "dgram",
            libc::SOCK_SEQPACKET => "seqpacket",
            _ => "socket",
        };
        write!(f, "{kind} {} (inode {})", self.local, self.inode)
    }
}

fn annotate(fd: i32, call: &str, err: io::Error) -> io::Error {
    io::Error::new(err.kind(), format!("{call} on fd {fd}: {err}"))
}

fn describe(addr: &SockAddr) -> (Family, String, Option<PathBuf>) {
    let family = i32::from(addr.family());
    match family {
        libc::AF_INET | libc::AF_INET6 => match addr.as_socket() {
            Some(inet @ SocketAddr::V4(_)) => (Family::Inet, inet.to_string(), None),
            Some(inet @ SocketAddr::V6(_)) => (Family::Inet6, inet.to_string(), None),
            None => (Family::Other(family), format!("family {family}"), None),
        },
        libc::AF_UNIX => match (addr.as_abstract_namespace(), addr.as_pathname()) {
            (Some(name), _) => (Family::Unix, abstract_name(name), None),
            (None, Some(path)) => describe_path(path.as_os_str().as_bytes()),
            (None, None) => (Family::Unix, String::new(), None),
        },
        other => (Family::Other(other), format!("family {other}"), None),
    }
}

/// A bound path, up to its first NUL.
fn describe_path(sun_path: &[u8]) -> (Family, String, Option<PathBuf>) {
    let end = sun_path
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(sun_path.len());
    let path = PathBuf::from(std::ffi::OsStr::from_bytes(&sun_path[..end]));
    (Family::Unix, path.display().to_string(), Some(path))
}

/// haproxy binds `abns@` names with the whole `sun_path`, so they come back NUL-padded.
fn abstract_name(name: &[u8]) -> String {
    let end = name.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    format!("@{}", name[..end].escape_ascii())
}

/// One held socket: the master's copy, what it was received with, and what it is.
#[derive(Debug)]
pub struct HeldSocket {
    /// Shared by the sets that hold this socket (the current one, the next one while it is
    /// built, and sets still being served): one fd, closed when the last of them lets go. (Arc,
    /// not Rc: a set stays Sync, for a blocking server on another thread.)
    pub fd: Arc<OwnedFd>,
    pub record: Record,
    /// Shared like `fd`: a reload copies no address for a socket it keeps.
    pub info: Arc<SocketInfo>,
}

/// The sockets the master holds, at most one copy of each.
#[derive(Debug, Default)]
pub struct HeldSet {
    sockets: Vec<HeldSocket>,
}

impl HeldSet {
    /// Builds the set from (fd, record) pairs, in the order received (a fetch's
    /// `ReceivedSocket`s convert into such pairs), as [`HeldSet::from_fetched`] with nothing
    /// held before.
    pub fn from_received<S: Into<(OwnedFd, Record)>>(
        received: impl IntoIterator<Item = S>,
        drop_if: impl Fn(&SocketInfo) -> bool,
    ) -> io::Result<HeldSet> {
        let fetched = received.into_iter().map(|s| {
            let (fd, record) = s.into();
            FetchedSocket {
                slot: Slot::Fresh(fd),
                record,
            }
        });
        HeldSet::default().from_fetched(fetched, drop_if)
    }

    /// The next set, from what a fetch that [knew](HeldSet::known) `self` took, in that order:
    /// a known slot shares `self`'s fd (no copy), a fresh one is described from its socket.
    ///
    /// Keeps the first of several copies of one socket (same dev and inode) and closes every
    /// socket for which `drop_if` is true (a worker's private stats socket).
    ///
    /// Fails, closing everything received, if an fd is not a socket or cannot be described: a
    /// peer that sends such a thing is broken, and a set built from the rest would silently miss
    /// listeners (committing it would close the master's copies of them).
    pub fn from_fetched(
        &self,
        fetched: impl IntoIterator<Item = FetchedSocket>,
        drop_if: impl Fn(&SocketInfo) -> bool,
    ) -> io::Result<HeldSet> {
        let mut set = HeldSet::default();
        let mut seen = FxHashSet::default();
        for (index, FetchedSocket { slot, record }) in fetched.into_iter().enumerate() {
            let (fd, info) = match slot {
                Slot::Known(held) => {
                    let held = self.sockets.get(held).ok_or_else(|| {
                        io::Error::other(format!(
                            "received socket {index}: held socket {held} of {} is gone",
                            self.sockets.len()
                        ))
                    })?;
                    (Arc::clone(&held.fd), Arc::clone(&held.info))
                }
                Slot::Fresh(fd) => {
                    let info = SocketInfo::of(fd.as_fd()).map_err(|e| {
                        io::Error::new(e.kind(), format!("received socket {index}: {e}"))
                    })?;
                    (Arc::new(fd), Arc::new(info))
                }
            };
            if drop_if(&info) {
                log::debug!("closing received {info}: not held by the master");
                continue;
            }
            if !seen.insert(info.identity()) {
                log::debug!("closing a second copy of {info}");
                continue;
            }
            set.sockets.push(HeldSocket { fd, record, info });
        }
        Ok(set)
    }

    /// What a fetch closes the copies of as they arrive (see [`HeldSet::from_fetched`]).
    pub fn known(&self) -> KnownSockets {
        KnownSockets::new(self.sockets.iter().map(|s| s.info.identity()))
    }

    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// The socket at `index` of the held order (what a fetch's known slots and the preload
    /// matcher's answers name).
    pub fn get(&self, index: usize) -> Option<&HeldSocket> {
        self.sockets.get(index)
    }

    pub fn iter(&self) -> impl Iterator<Item = &HeldSocket> {
        self.sockets.iter()
    }

    /// What [`serve_getsocks`](super::serve::serve_getsocks) takes, as a list: the held
    /// sockets in the order served (see the [`ServeList`] impl).
    pub fn as_serve_list(&self) -> Vec<(BorrowedFd<'_>, &Record)> {
        (0..self.count()).map(|i| self.entry(i)).collect()
    }

    /// This set in `earlier`'s order: the sockets `earlier` holds too at their places there,
    /// then the others in this set's order. A worker that was served the set numbers its
    /// sockets in the order served, reversed from the held order; without this, every reload
    /// would flip the order and the next haproxy would adopt in the slow order.
    pub fn ordered_as(mut self, earlier: &HeldSet) -> HeldSet {
        let place: FxHashMap<(u64, u64), usize> = earlier
            .sockets
            .iter()
            .enumerate()
            .map(|(i, s)| (s.info.identity(), i))
            .collect();
        // Stable: the new sockets keep their order after the known ones.
        self.sockets
            .sort_by_key(|s| place.get(&s.info.identity()).copied().unwrap_or(usize::MAX));
        self
    }

    pub fn inodes(&self) -> Vec<u64> {
        self.sockets.iter().map(|s| s.info.inode).collect()
    }

    /// Lets go of every held socket for which `keep` is false, e.g. those a new worker did not
    /// take: each is closed unless another set shares it.
    pub fn retain(&mut self, keep: impl FnMut(&HeldSocket) -> bool) {
        self.sockets.retain(keep);
    }

    pub fn into_sockets(self) -> Vec<HeldSocket> {
        self.sockets
    }

    /// Sockets of `self` that `newer` holds a *different* socket for, at the same address and
    /// type: the new process bound afresh instead of taking the one it was handed, so connections
    /// queued on the old one are lost when the old process closes it.
    /// Linear in both sets: it runs at every reload, over tens of thousands of listeners.
    pub fn rebound_in<'a>(&'a self, newer: &HeldSet) -> Vec<&'a SocketInfo> {
        let sockets: FxHashSet<(u64, u64)> =
            newer.sockets.iter().map(|n| n.info.identity()).collect();
        let addresses: FxHashSet<(&str, i32)> = newer
            .sockets
            .iter()
            .map(|n| (n.info.local.as_str(), n.info.sock_type))
            .collect();
        self.sockets
            .iter()
            .map(|s| &*s.info)
            .filter(|old| {
                !sockets.contains(&old.identity())
                    && addresses.contains(&(old.local.as_str(), old.sock_type))
            })
            .collect()
    }
}

/// The held sockets, last first. haproxy puts each socket it receives at the head of its list,
/// then looks each listener of its configuration up from the head (sock.c:
/// `sock_get_old_sockets`, `sock_find_compatible_fd`); the set is kept in the first worker's
/// order, which is its configuration's, so served last first, every lookup matches at the head:
/// adopting N listeners costs N comparisons instead of N²/2.
impl ServeList for HeldSet {
    fn count(&self) -> usize {
        self.sockets.len()
    }

    fn entry(&self, index: usize) -> (BorrowedFd<'_>, &Record) {
        let s = &self.sockets[self.sockets.len() - 1 - index];
        (s.fd.as_fd(), &s.record)
    }
}

/// Whether `info` is a unix socket whose bound name is `path` or haproxy's temporary bind name
/// for it, `<path>.<pid>.tmp`.
pub fn is_unix_listener_of(info: &SocketInfo, path: &std::path::Path) -> bool {
    let Some(bound) = &info.unix_path else {
        return false;
    };
    let bound = bound.as_os_str().as_bytes();
    let path = path.as_os_str().as_bytes();
    if bound == path {
        return true;
    }
    let Some(suffix) = bound.strip_prefix(path).and_then(|s| s.strip_prefix(b".")) else {
        return false;
    };
    let Some(pid) = suffix.strip_suffix(b".tmp") else {
        return false;
    };
    !pid.is_empty() && pid.iter().all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, UdpSocket};
    use std::os::unix::net::{UnixDatagram, UnixListener};

    fn received(fd: OwnedFd, tag: u8) -> (OwnedFd, Record) {
        let record = Record {
            options: [tag, 0, 0, 0],
            ..Record::default()
        };
        (fd, record)
    }

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("hapmaster-listeners-{}-{name}", std::process::id()))
    }

    #[test]
    fn a_socket_bound_afresh_at_a_held_address_is_rebound() {
        let path = temp_path("rebound.sock");
        let _ = std::fs::remove_file(&path);
        let unix = UnixListener::bind(&path).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let dup = |fd: BorrowedFd<'_>| fd.try_clone_to_owned().unwrap();
        let old = HeldSet::from_received(
            [
                received(dup(unix.as_fd()), 0),
                received(dup(tcp.as_fd()), 1),
            ],
            |_| false,
        )
        .unwrap();
        // The same sockets: nothing rebound.
        let same = HeldSet::from_received(
            [
                received(dup(tcp.as_fd()), 1),
                received(dup(unix.as_fd()), 0),
            ],
            |_| false,
        )
        .unwrap();
        assert!(old.rebound_in(&same).is_empty());
        // The unix listener gone from the newer set: not rebound either, only not taken.
        let fewer = HeldSet::from_received([received(dup(tcp.as_fd()), 1)], |_| false).unwrap();
        assert!(old.rebound_in(&fewer).is_empty());
        // Another socket at the unix listener's path.
        std::fs::remove_file(&path).unwrap();
        let again = UnixListener::bind(&path).unwrap();
        let newer = HeldSet::from_received(
            [
                received(dup(tcp.as_fd()), 1),
                received(dup(again.as_fd()), 0),
            ],
            |_| false,
        )
        .unwrap();
        let rebound = old.rebound_in(&newer);
        assert_eq!(rebound.len(), 1);
        assert_eq!(rebound[0].unix_path.as_deref(), Some(path.as_path()));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn describes_inet_sockets() {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let info = SocketInfo::of(tcp.as_fd()).unwrap();
        assert_eq!(info.family, Family::Inet);
        assert_eq!(info.sock_type, libc::SOCK_STREAM);
        assert_eq!(info.local, tcp.local_addr().unwrap().to_string());
        assert_eq!(info.unix_path, None);

        let udp = UdpSocket::bind("[::1]:0").unwrap();
        let info = SocketInfo::of(udp.as_fd()).unwrap();
        assert_eq!(info.family, Family::Inet6);
        assert_eq!(info.sock_type, libc::SOCK_DGRAM);
        let port = udp.local_addr().unwrap().port();
        assert_eq!(info.local, format!("[::1]:{port}"));
    }

    #[test]
    fn describes_unix_sockets() {
        let path = temp_path("fe.sock.123.tmp");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let info = SocketInfo::of(listener.as_fd()).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(info.family, Family::Unix);
        assert_eq!(info.unix_path.as_deref(), Some(path.as_path()));
        assert_eq!(info.local, path.display().to_string());
        let fe = temp_path("fe.sock");
        assert!(is_unix_listener_of(&info, &fe));
        assert!(!is_unix_listener_of(&info, &temp_path("fe")));
        assert!(!is_unix_listener_of(&info, &temp_path("other.sock")));
    }

    #[test]
    fn describes_abstract_and_unnamed_unix_sockets() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("hapmaster-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
        let abstract_sock = UnixDatagram::bind_addr(&addr).unwrap();
        let info = SocketInfo::of(abstract_sock.as_fd()).unwrap();
        assert_eq!(info.local, format!("@{name}"));
        assert_eq!(info.unix_path, None);
        assert_eq!(info.sock_type, libc::SOCK_DGRAM);

        let (a, _b) = UnixDatagram::pair().unwrap();
        let info = SocketInfo::of(a.as_fd()).unwrap();
        assert_eq!((info.family, info.local.as_str()), (Family::Unix, ""));
    }

    #[test]
    fn nul_padded_abstract_names_are_trimmed() {
        assert_eq!(abstract_name(b"name\0\0\0"), "@name");
        assert_eq!(abstract_name(b"a\0b\0"), "@a\\x00b");
    }

    #[test]
    fn non_socket_is_an_error_naming_the_fd() {
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let fd = OwnedFd::from(file);
        let err = SocketInfo::of(fd.as_fd()).unwrap_err();
        assert!(
            err.to_string().contains(&format!("fd {}", fd.as_raw_fd())),
            "{err}"
        );
    }

    #[test]
    fn held_set_dedups_and_drops() {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let copy = first.try_clone().unwrap();
        let dropped = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dropped_port = dropped.local_addr().unwrap().to_string();
        let other = UdpSocket::bind("127.0.0.1:0").unwrap();
        let set = HeldSet::from_received(
            vec![
                received(first.into(), 1),
                received(copy.into(), 3),
                received(dropped.into(), 4),
                received(other.into(), 5),
            ],
            |info| info.local == dropped_port,
        )
        .unwrap();
        let tags: Vec<u8> = set.iter().map(|s| s.record.options[0]).collect();
        assert_eq!(tags, vec![1, 5]);
        assert_eq!(set.len(), 2);
        assert!(!set.is_empty());
        let inodes = set.inodes();
        assert_eq!(inodes.len(), 2);
        assert_ne!(inodes[0], inodes[1]);
        // Served last first.
        let list = set.as_serve_list();
        let served: Vec<u8> = list.iter().map(|(_, r)| r.options[0]).collect();
        assert_eq!(served, vec![5, 1]);
    }

    #[test]
    fn a_set_keeps_the_order_of_the_one_before() {
        let sockets: Vec<TcpListener> = (0..4)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let set = |order: &[usize]| {
            HeldSet::from_received(
                order.iter().map(|&i| {
                    let fd = sockets[i].as_fd().try_clone_to_owned().unwrap();
                    received(fd, i as u8)
                }),
                |_| false,
            )
            .unwrap()
        };
        let tags = |s: &HeldSet| s.iter().map(|s| s.record.options[0]).collect::<Vec<u8>>();
        let first = set(&[0, 1, 2]);
        // What a worker served [2, 1, 0] hands back, with a socket it bound itself (3).
        let fetched = set(&[2, 1, 3, 0]);
        let next = fetched.ordered_as(&first);
        assert_eq!(tags(&next), vec![0, 1, 2, 3]);
        let served: Vec<u8> = next
            .as_serve_list()
            .iter()
            .map(|(_, r)| r.options[0])
            .collect();
        assert_eq!(served, vec![3, 2, 1, 0]);
    }

    #[test]
    fn held_set_refuses_a_non_socket() {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let file = OwnedFd::from(std::fs::File::open("/proc/self/status").unwrap());
        let err =
            HeldSet::from_received(vec![received(tcp.into(), 1), received(file, 2)], |_| false)
                .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("received socket 1") && text.contains("not a socket"),
            "{text}"
        );
    }

    /// The next set shares the held fds it took (no copy), keeps the new worker's order and
    /// records, and dropping the previous set closes only what the next one did not take.
    #[test]
    fn next_set_shares_what_it_took_and_the_rest_closes() {
        use crate::handoff::fetch::FetchedSocket;
        use crate::handoff::known::Slot;
        use std::io::Read;
        use std::os::unix::net::UnixStream;

        let (kept, kept_peer) = UnixStream::pair().unwrap();
        let (gone, gone_peer) = UnixStream::pair().unwrap();
        let old = HeldSet::from_received(
            vec![received(kept.into(), 1), received(gone.into(), 2)],
            |_| false,
        )
        .unwrap();
        let fresh = TcpListener::bind("127.0.0.1:0").unwrap();
        let fresh_local = fresh.local_addr().unwrap().to_string();
        let slot = |slot, tag| FetchedSocket {
            slot,
            record: received(fresh.try_clone().unwrap().into(), tag).1,
        };
        let next = old
            .from_fetched(
                vec![
                    slot(Slot::Fresh(fresh.try_clone().unwrap().into()), 7),
                    slot(Slot::Known(0), 8),
                    slot(Slot::Known(0), 9),
                ],
                |_| false,
            )
            .unwrap();
        let tags: Vec<u8> = next.iter().map(|s| s.record.options[0]).collect();
        assert_eq!(tags, vec![7, 8]);
        assert_eq!(next.iter().next().unwrap().info.local, fresh_local);
        let taken = next.iter().nth(1).unwrap();
        assert_eq!(
            taken.fd.as_raw_fd(),
            old.iter().next().unwrap().fd.as_raw_fd()
        );
        assert_eq!(taken.info, old.iter().next().unwrap().info);
        assert!(old
            .from_fetched(vec![slot(Slot::Known(2), 1)], |_| false)
            .is_err());

        drop(old);
        for peer in [&kept_peer, &gone_peer] {
            peer.set_nonblocking(true).unwrap();
        }
        // The socket the next set did not take is closed: its peer reads EOF.
        assert_eq!((&gone_peer).read(&mut [0u8; 1]).unwrap(), 0);
        // The one it took is still open: its peer has nothing to read yet.
        let still_open = (&kept_peer).read(&mut [0u8; 1]).unwrap_err();
        assert_eq!(still_open.kind(), io::ErrorKind::WouldBlock);
        drop(next);
        assert_eq!((&kept_peer).read(&mut [0u8; 1]).unwrap(), 0);
    }

    #[test]
    fn retain_closes_the_rest() {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let b = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut set =
            HeldSet::from_received(vec![received(a.into(), 1), received(b.into(), 2)], |_| {
                false
            })
            .unwrap();
        let keep = set.inodes()[1];
        set.retain(|s| s.info.inode == keep);
        assert_eq!(set.inodes(), vec![keep]);
        assert!(HeldSet::default().is_empty());
    }
}
