//! Who holds a socket: the kernel's answer.

use std::collections::BTreeSet;
use std::fs;
use std::net::{SocketAddr, TcpStream};

use super::*;

/// Inodes of the sockets `pid` has open (its `/proc/PID/fd` links `socket:[N]`).
pub fn socket_inodes(pid: u32) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    let Ok(rd) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(target) = fs::read_link(e.path()) else {
            continue;
        };
        let t = target.to_string_lossy();
        if let Some(n) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
            if let Ok(ino) = n.parse() {
                out.insert(ino);
            }
        }
    }
    out
}

/// `/proc/net/tcp`'s form of an IPv4 address and port: the address's bytes as a native-endian
/// 32-bit number, then the port, both in upper-case hex.
fn proc_net_tcp_addr(a: std::net::SocketAddrV4) -> String {
    format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(a.ip().octets()),
        a.port()
    )
}

/// The inode of the accepted (server) end of the IPv4 TCP connection whose client end is `client`,
/// once a process has accepted it. `None` while it waits in the listening socket's accept queue:
/// the kernel gives the socket an inode only when `accept()` makes it a file.
pub fn accepted_inode(client: &TcpStream) -> Option<u64> {
    let (SocketAddr::V4(mine), SocketAddr::V4(server)) =
        (client.local_addr().ok()?, client.peer_addr().ok()?)
    else {
        panic!("accepted_inode: IPv4 connections only");
    };
    let (local, remote) = (proc_net_tcp_addr(server), proc_net_tcp_addr(mine));
    let text = fs::read_to_string("/proc/net/tcp").ok()?;
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() >= 10 && f[1] == local && f[2] == remote)
            .then(|| f[9].parse::<u64>().ok())
            .flatten()
            .filter(|ino| *ino != 0)
    })
}

/// Which of `pids` holds the accepted end of `client`'s connection, by their fd tables; `None` if
/// no process has accepted it yet (or one outside `pids` did).
pub fn conn_holder(client: &TcpStream, pids: &[u32]) -> Option<u32> {
    let ino = accepted_inode(client)?;
    pids.iter()
        .copied()
        .find(|p| socket_inodes(*p).contains(&ino))
}

/// The processes among `pids` that hold one of the TCP sockets listening on `port`: the only
/// ones that can accept a new connection to it.
pub fn listen_holders(port: u16, pids: &[u32]) -> Vec<u32> {
    let listening = tcp_listen_inodes(port);
    pids.iter()
        .copied()
        .filter(|p| !socket_inodes(*p).is_disjoint(&listening))
        .collect()
}
