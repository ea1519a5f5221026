//! The variables haproxy's master sets for its workers, set by hapmaster for its own: a
//! configuration written for haproxy's master-worker mode may test `.if defined(HAPROXY_MWORKER)`
//! or use `${HAPROXY_MASTER_CLI}`. haproxy itself only sets them (no version reads them back:
//! 1.8 to 3.4), so a worker run without `-W` is not changed by them.
//!
//! They are put in the master's own environment, which workers inherit as it is: editing a
//! `Command`'s environment would make Rust's std pass it sorted by name, where haproxy's
//! workers see their master's order.

use std::os::fd::BorrowedFd;
use std::path::Path;

use nix::sys::socket::{getsockname, SockaddrStorage};

use crate::haproxy_version::Version;

/// `HAPROXY_MASTER_CLI` as haproxy's `listeners_setenv` writes it: each master CLI socket's
/// address (`unix@PATH`, `abns@NAME`, `ipv4@A:P`, `ipv6@[A]:P`), `;` between, the last bound
/// first (haproxy adds each listener at the head of its list). A socket is named by the path it
/// was placed at when there is one (bound under a temporary name, then renamed, its own address
/// is that name), else by its address (an inherited `fd@N`).
pub fn master_cli_value(sockets: &[(Option<&Path>, BorrowedFd<'_>)]) -> String {
    sockets
        .iter()
        .rev()
        .filter_map(|(path, fd)| match path {
            Some(p) => Some(format!("unix@{}", p.display())),
            None => address(*fd),
        })
        .collect::<Vec<_>>()
        .join(";")
}

fn address(fd: BorrowedFd<'_>) -> Option<String> {
    use std::os::fd::AsRawFd;
    let addr: SockaddrStorage = getsockname(fd.as_raw_fd()).ok()?;
    if let Some(un) = addr.as_unix_addr() {
        if let Some(path) = un.path() {
            return Some(format!("unix@{}", path.display()));
        }
        let name = un.as_abstract()?;
        return Some(format!("abns@{}", String::from_utf8_lossy(name)));
    }
    // An inet socket's address through std (nix's inet addresses need its `net` feature):
    // borrowed, never closed here.
    // SAFETY: fd is open for the whole call (BorrowedFd) and ManuallyDrop never closes it.
    let std = std::mem::ManuallyDrop::new(unsafe {
        <std::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(fd.as_raw_fd())
    });
    match std.local_addr().ok()? {
        std::net::SocketAddr::V4(a) => Some(format!("ipv4@{}:{}", a.ip(), a.port())),
        std::net::SocketAddr::V6(a) => Some(format!("ipv6@[{}]:{}", a.ip(), a.port())),
    }
}

/// Sets `HAPROXY_MWORKER=1` and, for haproxy before 3.1, `HAPROXY_MASTER_CLI` in the master's
/// environment, for every worker started from now on: from 3.1 on (mworker V3) haproxy's worker
/// restores the environment its master started with, so only `HAPROXY_MWORKER` reaches the
/// configuration. `version`: the binary's, None when it did not say (as the newest). Called from
/// the single-threaded master before its first worker.
pub fn export(version: Option<&Version>, master_cli: &str) {
    std::env::set_var("HAPROXY_MWORKER", "1");
    if version.is_some_and(|v| (v.major, v.minor) < (3, 1)) {
        std::env::set_var("HAPROXY_MASTER_CLI", master_cli);
    } else {
        std::env::remove_var("HAPROXY_MASTER_CLI");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixListener;

    #[test]
    fn addresses_as_haproxy_lists_them() {
        let dir = tempfile::tempdir().unwrap();
        let a = UnixListener::bind(dir.path().join("a.sock")).unwrap();
        let b = UnixListener::bind(dir.path().join("b.sock")).unwrap();
        let t = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = t.local_addr().unwrap().port();
        let placed = dir.path().join("placed.sock");
        let fds = [
            (Some(placed.as_path()), a.as_fd()),
            (None, b.as_fd()),
            (None, t.as_fd()),
        ];
        let d = dir.path().display();
        assert_eq!(
            master_cli_value(&fds),
            format!("ipv4@127.0.0.1:{port};unix@{d}/b.sock;unix@{d}/placed.sock")
        );
        let none: [(Option<&Path>, BorrowedFd<'_>); 0] = [];
        assert_eq!(master_cli_value(&none), "");
    }
}
