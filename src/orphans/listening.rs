//! Whether a process still holds a listening socket: the kernel's answer, not a guess from
//! timing. The socket inodes in its fd table (/proc/PID/fd links `socket:[N]`) against the
//! listening sockets of its network namespace (/proc/PID/net/tcp and tcp6 in LISTEN state,
//! /proc/PID/net/unix with the accepting-connections flag).

use std::collections::HashSet;
use std::fs;
use std::io;

/// `TCP_LISTEN` in the `st` column of /proc/net/tcp.
const TCP_LISTEN: &str = "0A";
/// `__SO_ACCEPTCON` in the `Flags` column of /proc/net/unix: the socket listens.
const UNIX_ACCEPTCON: u32 = 0x0001_0000;

/// True while `pid` has an fd on a listening TCP or unix socket. An error means the kernel did
/// not say (e.g. no permission to read /proc/PID/fd of a process that switched user, without
/// CAP_SYS_PTRACE), or that the process is gone (`NotFound`).
pub fn holds_listener(pid: u32) -> io::Result<bool> {
    let held = socket_inodes(pid)?;
    if held.is_empty() {
        return Ok(false);
    }
    let mut listening = HashSet::new();
    for table in ["tcp", "tcp6"] {
        if let Some(text) = read_table(pid, table)? {
            listening.extend(tcp_listen_inodes(&text));
        }
    }
    if let Some(text) = read_table(pid, "unix")? {
        listening.extend(unix_listen_inodes(&text));
    }
    Ok(!held.is_disjoint(&listening))
}

/// A /proc/PID/net table; `None` if the kernel has none (no IPv6).
fn read_table(pid: u32, name: &str) -> io::Result<Option<String>> {
    match fs::read(format!("/proc/{pid}/net/{name}")) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn socket_inodes(pid: u32) -> io::Result<HashSet<u64>> {
    let mut inodes = HashSet::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd"))? {
        // An fd closed while we list them is simply not there any more.
        let Ok(target) = fs::read_link(entry?.path()) else {
            continue;
        };
        if let Some(inode) = socket_inode(&target.to_string_lossy()) {
            inodes.insert(inode);
        }
    }
    Ok(inodes)
}

/// `socket:[12345]` → 12345.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Inodes of the LISTEN entries of /proc/net/tcp or tcp6:
/// `sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...`
fn tcp_listen_inodes(text: &str) -> impl Iterator<Item = u64> + '_ {
    text.lines().skip(1).filter_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 9 && f[3] == TCP_LISTEN)
            .then(|| f[9].parse().ok())
            .flatten()
    })
}

/// Inodes of the listening entries of /proc/net/unix:
/// `Num RefCount Protocol Flags Type St Inode [Path]`
fn unix_listen_inodes(text: &str) -> impl Iterator<Item = u64> + '_ {
    text.lines().skip(1).filter_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
        (flags & UNIX_ACCEPTCON != 0)
            .then(|| f.get(6)?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn tables() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5001 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 5002 1 0000000000000000 20 4 30 10 -1\n\
   2: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 0 1\n";
        // An established connection is not a listener; inode 0 (a socket being torn down) is
        // no fd's.
        assert_eq!(tcp_listen_inodes(tcp).collect::<Vec<_>>(), vec![5001, 0]);
        let unix = "Num       RefCount Protocol Flags    Type St Inode Path\n\
0000000000000000: 00000002 00000000 00010000 0001 01 6001 /run/hapmaster/worker-1.sock\n\
0000000000000000: 00000003 00000000 00000000 0001 03 6002 /run/hapmaster/worker-1.sock\n\
0000000000000000: 00000002 00000000 00010000 0005 01 6003\n\
0000000000000000: 00000002 00000000 00000000 0002 01 6004\n";
        assert_eq!(
            unix_listen_inodes(unix).collect::<Vec<_>>(),
            vec![6001, 6003]
        );
        assert_eq!(socket_inode("socket:[42]"), Some(42));
        assert_eq!(socket_inode("pipe:[42]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }

    #[test]
    fn a_listener_of_this_process() {
        let me = std::process::id();
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(holds_listener(me).unwrap());
        drop(tcp);
        let path = std::env::temp_dir().join(format!("hm-listening-{me}.sock"));
        let _ = fs::remove_file(&path);
        let unix = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(holds_listener(me).unwrap());
        drop(unix);
        fs::remove_file(&path).unwrap();
        assert!(holds_listener(u32::MAX / 2).is_err());
    }
}
