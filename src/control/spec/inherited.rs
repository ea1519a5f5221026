//! `-S fd@<n>`: a master CLI socket the caller bound, listens on and passes as an open fd (as
//! haproxy accepts it, and its test driver uses it). It carries no new exposure: whoever passed
//! it chose its address and its permissions, so hapmaster binds nothing and sets nothing on it;
//! it checks that it is a listening stream socket, and keeps it across an upgrade in place at
//! the same number (`inherited_fd_numbers`).

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::socket::{getsockopt, sockopt, SockType};
use nix::sys::stat::{fstat, SFlag};

use super::SpecError;

/// The `-S` prefix of an inherited fd.
const PREFIX: &str = "fd@";

/// The fd number of a `fd@<n>[,...]` argument; None for any other address. Options are checked
/// by [`parse_fd`].
pub fn fd_number(arg: &str) -> Option<Result<RawFd, SpecError>> {
    let (address, _) = arg.split_once(',').unwrap_or((arg, ""));
    let number = address.trim().strip_prefix(PREFIX)?;
    Some(match number.parse::<RawFd>() {
        Ok(fd) if fd > 2 => Ok(fd),
        _ => Err(SpecError::BadFd {
            arg: address.trim().to_string(),
        }),
    })
}

/// The fd of a `-S fd@<n>` argument, None for another address. The path options have nothing
/// to act on: hapmaster did not create the socket's file, if it has one.
pub fn parse_fd(arg: &str) -> Option<Result<RawFd, SpecError>> {
    let fd = fd_number(arg)?;
    // Options come as `,key,value`; only `level` applies (its value is `level_of`'s).
    for key in arg.split(',').skip(1).step_by(2) {
        match key {
            "level" => {}
            "mode" | "uid" | "gid" | "user" | "group" => {
                return Some(Err(SpecError::OptionOnFd {
                    key: key.to_string(),
                }))
            }
            _ => {
                return Some(Err(SpecError::UnknownKey {
                    key: key.to_string(),
                }))
            }
        }
    }
    if let Err(e) = super::level_of(arg) {
        return Some(Err(e));
    }
    Some(fd)
}

/// The `fd@<n>` numbers among these `-S` arguments: fds the master holds, never a worker's, and
/// hands to the next image of an upgrade in place at the same number (the argument names it).
pub fn inherited_fd_numbers(args: &[String]) -> Vec<RawFd> {
    args.iter().filter_map(|a| fd_number(a)?.ok()).collect()
}

/// What an inherited listener is, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Family {
    /// A unix socket: its path (`@name` for an abstract one, empty for an unnamed one).
    Unix(String),
    /// `ip:port`.
    Inet(String),
    Other(i32),
}

impl Family {
    /// Unix peers have credentials (SO_PEERCRED): the uid rule applies. Others have none.
    pub fn has_peer_credentials(&self) -> bool {
        matches!(self, Family::Unix(_))
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Family::Unix(p) if p.is_empty() => f.write_str("unix (unnamed)"),
            Family::Unix(p) => write!(f, "unix {p}"),
            Family::Inet(a) => write!(f, "inet {a}"),
            Family::Other(n) => write!(f, "address family {n}"),
        }
    }
}

/// Takes fd `fd` over as a master CLI listener: it must be an open, listening stream socket.
/// Made nonblocking and close-on-exec. Called once per number (`run` refuses a number given
/// twice before this).
pub fn adopt(fd: RawFd) -> Result<(UnixListener, Family), SpecError> {
    let err = |what: String| SpecError::NotAListener { fd, what };
    // SAFETY: F_GETFD on any number only reads its flags; EBADF means it is not open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(err(
            "it is not open (pass the socket to hapmaster as this fd)".into(),
        ));
    }
    // SAFETY: the fd is open and named by the -S argument as the master's to take: nothing
    // else in this process knows its number (`main` only marked it close-on-exec).
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let stat = fstat(owned.as_fd()).map_err(|e| err(format!("fstat failed: {e}")))?;
    let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
    if kind != SFlag::S_IFSOCK {
        let what = match kind {
            SFlag::S_IFIFO => "a pipe",
            SFlag::S_IFREG => "a regular file",
            SFlag::S_IFCHR => "a character device",
            SFlag::S_IFDIR => "a directory",
            _ => "not a socket",
        };
        return Err(err(format!("it is {what}, not a socket")));
    }
    match getsockopt(&owned, sockopt::SockType) {
        Ok(SockType::Stream) => {}
        Ok(other) => return Err(err(format!("it is a {other:?} socket, not a stream one"))),
        Err(e) => return Err(err(format!("cannot read its type: {e}"))),
    }
    match getsockopt(&owned, sockopt::AcceptConn) {
        Ok(true) => {}
        Ok(false) => {
            return Err(err(
                "it is not listening (call listen(2) on it before passing it)".into(),
            ))
        }
        Err(e) => return Err(err(format!("cannot tell whether it listens: {e}"))),
    }
    let family = family_of(&owned);
    let flags = fcntl(owned.as_fd(), FcntlArg::F_GETFL)
        .map_err(|e| err(format!("cannot read its flags: {e}")))?;
    fcntl(
        owned.as_fd(),
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .map_err(|e| err(format!("cannot make it nonblocking: {e}")))?;
    fcntl(owned.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map_err(|e| err(format!("cannot make it close-on-exec: {e}")))?;
    // A UnixListener for the event loop's type; connections are accepted with accept4(2)
    // (`accept_any`), which works for every family.
    Ok((UnixListener::from(owned), family))
}

fn family_of(fd: &OwnedFd) -> Family {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getsockname writes at most `len` bytes into `storage`, which is that large.
    let rc = unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            std::ptr::addr_of_mut!(storage).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Family::Other(-1);
    }
    let at = std::ptr::addr_of!(storage);
    match i32::from(storage.ss_family) {
        libc::AF_UNIX => {
            // SAFETY: the family says the storage holds a sockaddr_un.
            let un = unsafe { &*at.cast::<libc::sockaddr_un>() };
            let offset = std::mem::size_of::<libc::sa_family_t>();
            let n = (len as usize).saturating_sub(offset).min(un.sun_path.len());
            let path: Vec<u8> = un.sun_path[..n].iter().map(|c| *c as u8).collect();
            Family::Unix(match path.split_first() {
                None => String::new(),
                // Abstract: a leading NUL, then the name (not NUL-terminated).
                Some((0, name)) => format!("@{}", String::from_utf8_lossy(name)),
                Some(_) => {
                    let end = path.iter().position(|b| *b == 0).unwrap_or(path.len());
                    String::from_utf8_lossy(&path[..end]).into_owned()
                }
            })
        }
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a = unsafe { &*at.cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Family::Inet(SocketAddrV4::new(ip, u16::from_be(a.sin_port)).to_string())
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a = unsafe { &*at.cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Family::Inet(SocketAddrV6::new(ip, u16::from_be(a.sin6_port), 0, 0).to_string())
        }
        other => Family::Other(other),
    }
}

/// Accepts one connection on a master CLI listener of any family, nonblocking and
/// close-on-exec. (std's `UnixListener::accept` refuses a peer address that is not a unix one.)
pub fn accept_any(listener: &UnixListener) -> std::io::Result<std::os::unix::net::UnixStream> {
    let fd = nix::sys::socket::accept4(
        listener.as_raw_fd(),
        nix::sys::socket::SockFlag::SOCK_CLOEXEC | nix::sys::socket::SockFlag::SOCK_NONBLOCK,
    )
    .map_err(std::io::Error::from)?;
    // SAFETY: accept4 returned a new fd that nothing else owns. A stream socket of another
    // family behaves as a unix stream for what the sessions do with it (read, write, shutdown).
    Ok(unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::os::fd::IntoRawFd;

    #[test]
    fn arguments() {
        assert!(fd_number("/run/m.sock").is_none());
        assert_eq!(fd_number("fd@3").unwrap().unwrap(), 3);
        assert_eq!(parse_fd("fd@17").unwrap().unwrap(), 17);
        for bad in ["fd@", "fd@x", "fd@-1", "fd@0", "fd@2"] {
            assert!(
                matches!(parse_fd(bad), Some(Err(SpecError::BadFd { .. }))),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_fd("fd@3,mode,600"),
            Some(Err(SpecError::OptionOnFd { .. }))
        ));
        assert!(matches!(
            parse_fd("fd@3,user,haproxy"),
            Some(Err(SpecError::OptionOnFd { .. }))
        ));
        assert_eq!(parse_fd("fd@3,level,user").map(Result::ok), Some(Some(3)));
        assert!(matches!(
            parse_fd("fd@3,level,root"),
            Some(Err(SpecError::BadLevel { .. }))
        ));
        assert!(matches!(
            parse_fd("fd@3,level,user,mode,600"),
            Some(Err(SpecError::OptionOnFd { .. }))
        ));
        assert!(matches!(
            parse_fd("fd@3,color,red"),
            Some(Err(SpecError::UnknownKey { .. }))
        ));
        assert_eq!(
            inherited_fd_numbers(&["fd@5".into(), "/x".into(), "fd@y".into()]),
            vec![5]
        );
    }

    #[test]
    fn adopts_a_listener_and_says_what_it_is() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (listener, family) = adopt(l.into_raw_fd()).unwrap();
        assert_eq!(family, Family::Inet(addr.to_string()));
        assert!(!family.has_peer_credentials());
        let fd = listener.as_raw_fd();
        // SAFETY: fcntl on an fd we own.
        let (fdflags, flflags) = unsafe {
            (
                libc::fcntl(fd, libc::F_GETFD),
                libc::fcntl(fd, libc::F_GETFL),
            )
        };
        assert_ne!(fdflags & libc::FD_CLOEXEC, 0);
        assert_ne!(flflags & libc::O_NONBLOCK, 0);
        let _client = std::net::TcpStream::connect(addr).unwrap();
        accept_any(&listener).unwrap();
    }
}
