//! Listening sockets.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn tcp_table_listen_inodes(table: &str, port: u16) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    let Ok(text) = fs::read_to_string(table) else {
        return out;
    };
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[3] != "0A" {
            continue;
        }
        let Some((_, hexport)) = f[1].rsplit_once(':') else {
            continue;
        };
        if u16::from_str_radix(hexport, 16).ok() == Some(port) {
            if let Ok(ino) = f[9].parse::<u64>() {
                out.insert(ino);
            }
        }
    }
    out
}

/// Inodes of the IPv4 TCP sockets in LISTEN state on `port` (any local address).
pub fn tcp4_listen_inodes(port: u16) -> BTreeSet<u64> {
    tcp_table_listen_inodes("/proc/net/tcp", port)
}

/// Inodes of the IPv6 TCP sockets in LISTEN state on `port` (any local address).
pub fn tcp6_listen_inodes(port: u16) -> BTreeSet<u64> {
    tcp_table_listen_inodes("/proc/net/tcp6", port)
}

/// Inodes of all TCP sockets (v4 and v6) in LISTEN state on `port`.
pub fn tcp_listen_inodes(port: u16) -> BTreeSet<u64> {
    let mut s = tcp4_listen_inodes(port);
    s.extend(tcp6_listen_inodes(port));
    s
}

/// Inodes of the listening unix stream sockets whose bound name starts with `prefix`. haproxy binds
/// `<path>.<pid>.tmp` and renames it to `<path>`, so /proc/net/unix shows the temporary name: pass the
/// configured path, it is a prefix of that name.
pub fn unix_listen_inodes(prefix: &Path) -> BTreeSet<u64> {
    // /proc/net/unix walks a hash table that unix sockets under load keep changing, and such a
    // walk can skip entries: the union of a few reads does not miss a socket that exists (and a
    // replaced one still shows as an extra inode).
    (0..3)
        .flat_map(|_| unix_listen_inodes_once(prefix))
        .collect()
}

fn unix_listen_inodes_once(prefix: &Path) -> BTreeSet<u64> {
    let prefix = prefix.as_os_str().as_bytes();
    let mut out = BTreeSet::new();
    let Ok(text) = fs::read("/proc/net/unix") else {
        return out;
    };
    for line in text.split(|b| *b == b'\n').skip(1) {
        let line = String::from_utf8_lossy(line);
        // Num RefCount Protocol Flags Type St Inode [Path]
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let flags = u32::from_str_radix(f[3], 16).unwrap_or(0);
        let listening = flags & 0x0001_0000 != 0; // __SO_ACCEPTCON
        if listening && f[7].as_bytes().starts_with(prefix) {
            if let Ok(ino) = f[6].parse::<u64>() {
                out.insert(ino);
            }
        }
    }
    out
}
