//! The keys of a socket the master holds, read from the socket the way the preload library
//! reads a worker's (shim.c `describe`), so that [`SocketKey`]s of both sides compare.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::matcher::SocketKey;
use super::wire::{Bind, ADDR_MAX, FLAG_TRANSPARENT, FLAG_V6ONLY, IFACE_LEN};

/// `ioctl` asking for the socket's network namespace (linux/sockios.h, Linux 4.9).
const SIOCGSKNS: libc::c_ulong = 0x894C;

/// The keys of `fd` as a [`Bind`] from process 0: its bound address, interface, v6only,
/// transparent and network namespace.
pub fn describe(fd: BorrowedFd<'_>) -> io::Result<Bind> {
    let raw = fd.as_raw_fd();
    // SAFETY: sockaddr_storage is plain data.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: valid fd, out pointer and its length.
    if unsafe { libc::getsockname(raw, std::ptr::addr_of_mut!(ss).cast(), &mut len) } < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("getsockname on fd {raw}: {e}"),
        ));
    }
    // SAFETY: ss is at least `len` (≤ its size) initialised bytes.
    let bytes =
        unsafe { std::slice::from_raw_parts(std::ptr::addr_of!(ss).cast::<u8>(), len as usize) };
    let addr = bytes[..bytes.len().min(ADDR_MAX)].to_vec();
    let mut iface = [0u8; IFACE_LEN];
    let mut ilen = (IFACE_LEN - 1) as libc::socklen_t;
    // SAFETY: valid fd; iface holds ilen bytes.
    let got = unsafe {
        libc::getsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            iface.as_mut_ptr().cast(),
            &mut ilen,
        )
    };
    let iface = if got == 0 {
        let end = iface.iter().position(|&b| b == 0).unwrap_or(IFACE_LEN - 1);
        iface[..end].to_vec()
    } else {
        Vec::new()
    };
    let on = |level, name| int_option(fd, level, name) != 0;
    let family = i32::from(ss.ss_family);
    let mut flags = 0;
    if family == libc::AF_INET6 {
        if on(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY) {
            flags |= FLAG_V6ONLY;
        }
        if on(libc::IPPROTO_IPV6, libc::IPV6_TRANSPARENT)
            || on(libc::IPPROTO_IPV6, libc::IPV6_FREEBIND)
        {
            flags |= FLAG_TRANSPARENT;
        }
    } else if family == libc::AF_INET
        && (on(libc::IPPROTO_IP, libc::IP_TRANSPARENT) || on(libc::IPPROTO_IP, libc::IP_FREEBIND))
    {
        flags |= FLAG_TRANSPARENT;
    }
    Ok(Bind {
        pid: 0,
        addr,
        iface,
        flags,
        netns: netns_inode(fd),
    })
}

/// The keys of `fd`, `None` for a socket no worker could ask about (see [`SocketKey::from_bind`]).
pub fn socket_key(fd: BorrowedFd<'_>) -> io::Result<Option<SocketKey>> {
    describe(fd).map(|b| SocketKey::from_bind(&b))
}

fn int_option(fd: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int) -> libc::c_int {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid fd, out pointer and length.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::addr_of_mut!(v).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        v
    } else {
        0
    }
}

/// 0 where the kernel cannot say (before 4.9, or without CAP_NET_ADMIN), as the library sends.
/// The master and a worker binding its listeners run as the same user, so they agree.
fn netns_inode(fd: BorrowedFd<'_>) -> u64 {
    // SAFETY: SIOCGSKNS takes no argument and returns a new fd or -1.
    let ns = unsafe { libc::ioctl(fd.as_raw_fd(), SIOCGSKNS as _) };
    if ns < 0 {
        return 0;
    }
    // SAFETY: a fresh fd that nothing else owns.
    let ns = unsafe { OwnedFd::from_raw_fd(ns) };
    nix::sys::stat::fstat(&ns).map_or(0, |st| st.st_ino)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preload::matcher::{Address, Adoptions};
    use std::os::fd::AsFd;

    #[test]
    fn a_held_socket_answers_a_bind_at_its_address_only() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let key = socket_key(tcp.as_fd()).unwrap().unwrap();
        assert_eq!(
            key.address,
            Address::Inet(match tcp.local_addr().unwrap() {
                std::net::SocketAddr::V4(a) => a,
                a => panic!("{a}"),
            })
        );
        // SIOCGSKNS needs CAP_NET_ADMIN: without it both sides say 0, and still compare.
        let root = nix::unistd::geteuid().is_root();
        assert!(!root || key.netns != 0, "SIOCGSKNS fails as root");
        let other_key = socket_key(other.as_fd()).unwrap().unwrap();
        let held = [key.clone()];
        let mut adoptions = Adoptions::new(&held);
        assert_eq!(adoptions.answer(&other_key), None);
        assert_eq!(adoptions.answer(&key), Some(0));
    }

    #[test]
    fn v6only_is_read_from_the_socket() {
        let v6 = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).unwrap();
        v6.set_only_v6(true).unwrap();
        v6.bind(&"[::1]:0".parse::<std::net::SocketAddr>().unwrap().into())
            .unwrap();
        let key = socket_key(v6.as_fd()).unwrap().unwrap();
        assert!(key.v6only && !key.transparent);
    }
}
