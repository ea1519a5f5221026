//! Which held socket answers a worker's ADOPT: the keys haproxy 1.8's `-x` compares
//! (`sock_find_compatible_fd`): the address, the interface, v6only, transparent and the network
//! namespace, and each held socket handed out at most once per worker.
//!
//! Pure: keys come from the wire ([`SocketKey::from_bind`]) or from a held socket through
//! `socket_key::describe`, which reads what the library reads.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use super::wire::{Bind, FLAG_TRANSPARENT, FLAG_V6ONLY};

/// Where a socket is bound.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Address {
    Inet(SocketAddrV4),
    /// Flow info is not part of an address; the scope id is (a link-local address per link).
    Inet6(SocketAddrV6),
    /// A unix socket bound to a path. haproxy binds `<path>.<pid>.tmp` and renames it over
    /// `<path>`; `path` is `<path>` in both cases, and `haproxy_tmp` says which name it was.
    UnixPath {
        path: Vec<u8>,
        haproxy_tmp: bool,
    },
    /// An abstract unix name (`abns@`), as bound: haproxy pads it with NULs to the whole field.
    UnixAbstract(Vec<u8>),
}

/// The keys of a listening socket.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SocketKey {
    pub address: Address,
    pub iface: Vec<u8>,
    pub v6only: bool,
    pub transparent: bool,
    /// Inode of the network namespace, 0 if unknown (then it matches only 0).
    pub netns: u64,
}

const SUN_PATH_AT: usize = 2;

impl SocketKey {
    /// The keys of a bind the library describes; `None` for an address family or length no
    /// listener has (never adopted: the library binds such for real).
    pub fn from_bind(b: &Bind) -> Option<SocketKey> {
        let address = address_of(&b.addr)?;
        let inet6 = matches!(address, Address::Inet6(_));
        Some(SocketKey {
            address,
            iface: b.iface.clone(),
            v6only: inet6 && b.flags & FLAG_V6ONLY != 0,
            transparent: b.flags & FLAG_TRANSPARENT != 0,
            netns: b.netns,
        })
    }

    /// The keys a held socket and a bind must share: a unix path without whether it was
    /// haproxy's temporary name (a held socket still reports the name it was bound at).
    fn lookup(&self) -> SocketKey {
        let mut key = self.clone();
        if let Address::UnixPath { haproxy_tmp, .. } = &mut key.address {
            *haproxy_tmp = false;
        }
        key
    }
}

/// The address in a raw `struct sockaddr` (host byte order family, network order port).
fn address_of(raw: &[u8]) -> Option<Address> {
    let family = i32::from(u16::from_ne_bytes(raw.get(..2)?.try_into().ok()?));
    let port = || u16::from_be_bytes([raw[2], raw[3]]);
    match family {
        libc::AF_INET if raw.len() >= 16 => {
            let ip = Ipv4Addr::new(raw[4], raw[5], raw[6], raw[7]);
            Some(Address::Inet(SocketAddrV4::new(ip, port())))
        }
        libc::AF_INET6 if raw.len() >= 28 => {
            let ip: [u8; 16] = raw[8..24].try_into().ok()?;
            let scope = u32::from_ne_bytes(raw[24..28].try_into().ok()?);
            let ip = Ipv6Addr::from(ip);
            Some(Address::Inet6(SocketAddrV6::new(ip, port(), 0, scope)))
        }
        libc::AF_UNIX if raw.len() > SUN_PATH_AT => {
            let name = &raw[SUN_PATH_AT..];
            if let Some(abstract_name) = name.strip_prefix(b"\0") {
                return Some(Address::UnixAbstract(abstract_name.to_vec()));
            }
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            Some(match haproxy_tmp_base(name) {
                Some(base) => Address::UnixPath {
                    path: base.to_vec(),
                    haproxy_tmp: true,
                },
                None => Address::UnixPath {
                    path: name.to_vec(),
                    haproxy_tmp: false,
                },
            })
        }
        _ => None,
    }
}

/// `<path>` of haproxy's temporary bind name `<path>.<pid>.tmp`.
fn haproxy_tmp_base(name: &[u8]) -> Option<&[u8]> {
    let rest = name.strip_suffix(b".tmp")?;
    let digits = rest.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    let base = rest[..rest.len() - digits].strip_suffix(b".")?;
    (digits > 0 && !base.is_empty()).then_some(base)
}

/// One worker's adoptions: the held sockets by their keys, less those it was already given.
/// A lookup costs one hash, whatever the number of held sockets (a worker with N listeners asks
/// N times).
#[derive(Debug)]
pub struct Adoptions {
    /// Per lookup key, the indexes in `held` not given yet, last first (popped lowest first).
    left: HashMap<SocketKey, Vec<usize>>,
}

impl Adoptions {
    pub fn new(held: &[SocketKey]) -> Adoptions {
        let mut left: HashMap<SocketKey, Vec<usize>> = HashMap::new();
        for (index, key) in held.iter().enumerate().rev() {
            left.entry(key.lookup()).or_default().push(index);
        }
        Adoptions { left }
    }

    /// The index in `held` of the socket that answers `wanted`, now given to this worker; `None`
    /// if no socket not given yet matches (the worker binds for itself).
    pub fn answer(&mut self, wanted: &SocketKey) -> Option<usize> {
        // Only haproxy's own temporary bind adopts a unix socket, never a bind at the final name.
        if matches!(
            wanted.address,
            Address::UnixPath {
                haproxy_tmp: false,
                ..
            }
        ) {
            return None;
        }
        self.left.get_mut(&wanted.lookup())?.pop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inet(port: u16) -> SocketKey {
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        SocketKey {
            address: Address::Inet(addr),
            iface: Vec::new(),
            v6only: false,
            transparent: false,
            netns: 7,
        }
    }

    fn sockaddr_un(name: &[u8]) -> Vec<u8> {
        let mut raw = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        raw.extend_from_slice(name);
        raw
    }

    fn unix(name: &[u8]) -> SocketKey {
        let bind = Bind {
            pid: 1,
            addr: sockaddr_un(name),
            iface: Vec::new(),
            flags: 0,
            netns: 7,
        };
        SocketKey::from_bind(&bind).unwrap()
    }

    #[test]
    fn each_key_must_match() {
        let held = [inet(80)];
        let mut adoptions = Adoptions::new(&held);
        for differ in [
            |k: &mut SocketKey| k.address = inet(81).address,
            |k: &mut SocketKey| k.iface = b"lo".to_vec(),
            |k: &mut SocketKey| k.v6only = true,
            |k: &mut SocketKey| k.transparent = true,
            |k: &mut SocketKey| k.netns = 8,
        ] {
            let mut wanted = inet(80);
            differ(&mut wanted);
            assert_eq!(adoptions.answer(&wanted), None, "{wanted:?}");
        }
        assert_eq!(adoptions.answer(&inet(80)), Some(0));
    }

    #[test]
    fn a_held_socket_is_given_once_per_worker() {
        let held = [inet(80), inet(81), inet(80)];
        let mut first = Adoptions::new(&held);
        assert_eq!(first.answer(&inet(80)), Some(0));
        assert_eq!(first.answer(&inet(80)), Some(2));
        assert_eq!(first.answer(&inet(80)), None);
        let mut next = Adoptions::new(&held);
        assert_eq!(next.answer(&inet(80)), Some(0));
    }

    #[test]
    fn unix_adopts_only_haproxy_temporary_names() {
        let held = [unix(b"/run/fe.sock"), unix(b"/run/be.sock.41.tmp")];
        let mut adoptions = Adoptions::new(&held);
        for not_tmp in [
            &b"/run/fe.sock\0"[..],
            b"/run/fe.sock.tmp",
            b"/run/fe.sock.x1.tmp",
            b"/run/fe.sock..tmp",
            b"/run/fe.socket.12.tmp",
        ] {
            assert_eq!(adoptions.answer(&unix(not_tmp)), None);
        }
        assert_eq!(adoptions.answer(&unix(b"/run/be.sock.42.tmp")), Some(1));
        assert_eq!(adoptions.answer(&unix(b"/run/fe.sock.42.tmp\0\0")), Some(0));
    }

    #[test]
    fn abstract_names_match_exactly() {
        let held = [unix(b"\0name\0\0")];
        let mut adoptions = Adoptions::new(&held);
        assert_eq!(adoptions.answer(&unix(b"\0name")), None);
        assert_eq!(adoptions.answer(&unix(b"\0name\0\0")), Some(0));
    }

    #[test]
    fn inet6_keys_and_odd_families() {
        let mut raw = vec![0u8; 28];
        raw[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        raw[2..4].copy_from_slice(&8080u16.to_be_bytes());
        raw[23] = 1;
        let mut bind = Bind {
            pid: 1,
            addr: raw,
            iface: Vec::new(),
            flags: FLAG_V6ONLY,
            netns: 0,
        };
        let key = SocketKey::from_bind(&bind).unwrap();
        assert_eq!(key.address, Address::Inet6("[::1]:8080".parse().unwrap()));
        assert!(key.v6only);
        bind.addr.truncate(27);
        assert_eq!(SocketKey::from_bind(&bind), None);
        bind.addr = (libc::AF_PACKET as u16).to_ne_bytes().to_vec();
        assert_eq!(SocketKey::from_bind(&bind), None);
    }
}
