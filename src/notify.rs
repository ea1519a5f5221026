//! sd_notify(3): tell systemd when we are ready, reloading or stopping.
//!
//! Hand-written rather than the `sd-notify` crate (0.5): that crate reads `NOTIFY_SOCKET` on every
//! call, so it cannot send anything once we unset the variable for our children; it does not
//! handle `@abstract` addresses; and fd passing needs its extra `sendfd` dependency.

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};

pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// How long one datagram may wait for room in the receiver's queue.
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug)]
pub enum NotifyError {
    /// `NOTIFY_SOCKET` is neither an absolute path nor `@name`.
    InvalidAddress { value: String, reason: &'static str },
    /// The sending socket could not be created.
    Socket(io::Error),
}

impl fmt::Display for NotifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidAddress { value, reason } => write!(
                f,
                "NOTIFY_SOCKET={value:?} is not usable ({reason}); expected an absolute path or \
                 @name: systemd will not learn that hapmaster is ready"
            ),
            Self::Socket(e) => write!(f, "cannot create the sd_notify socket: {e}"),
        }
    }
}

impl std::error::Error for NotifyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Socket(e) => Some(e),
            Self::InvalidAddress { .. } => None,
        }
    }
}

/// Sends notifications to the service manager.
#[derive(Debug)]
pub struct Notifier {
    // Unbound and unconnected: the address is given on each send so that a systemd
    // daemon-reexec, which re-creates its notify socket, does not leave us talking to a dead one.
    socket: UnixDatagram,
    addr: UnixAddr,
    /// The `NOTIFY_SOCKET` value, handed on across an upgrade in place.
    value: std::ffi::OsString,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and removes it from the environment, so that no haproxy worker
    /// ever sees it (a worker started with `-Ws` semantics would notify systemd itself and
    /// confuse it about the main pid). Call once at startup, before any thread exists.
    pub fn from_env() -> Option<Notifier> {
        let value = std::env::var_os(NOTIFY_SOCKET)?;
        std::env::remove_var(NOTIFY_SOCKET);
        if value.is_empty() {
            return None;
        }
        match Notifier::new(&value) {
            Ok(n) => Some(n),
            Err(e) => {
                log::warn!("{e}");
                None
            }
        }
    }

    /// A notifier for an explicit `NOTIFY_SOCKET` value.
    pub fn new(value: &OsStr) -> Result<Notifier, NotifyError> {
        let addr = parse_address(value)?;
        // std creates it with SOCK_CLOEXEC.
        let socket = UnixDatagram::unbound().map_err(NotifyError::Socket)?;
        // A receiver's queue holds only net.unix.max_dgram_qlen (10) datagrams: a burst (the fd
        // store of many sockets) must wait for systemd to read, but never hang the master on a
        // receiver that stopped reading.
        socket
            .set_write_timeout(Some(SEND_TIMEOUT))
            .map_err(NotifyError::Socket)?;
        Ok(Notifier {
            socket,
            addr,
            value: value.to_os_string(),
        })
    }

    /// The `NOTIFY_SOCKET` value this notifier was made from.
    pub fn address(&self) -> &OsStr {
        &self.value
    }

    /// Sends one datagram.
    pub fn send(&self, msg: &str) -> io::Result<()> {
        self.send_with_fds(msg, &[])
    }

    pub fn ready(&self, status: &str, mainpid: Option<u32>) -> io::Result<()> {
        self.send(&ready_message(status, mainpid))
    }

    /// RELOADING with its MONOTONIC_USEC in the same datagram: systemd (Type=notify-reload)
    /// discards a RELOADING=1 whose timestamp it cannot pair.
    pub fn reloading(&self, status: &str) -> io::Result<()> {
        self.send(&reloading_message(status, monotonic_usec()))
    }

    pub fn status(&self, status: &str) -> io::Result<()> {
        self.send(&status_message(status))
    }

    pub fn stopping(&self, status: &str) -> io::Result<()> {
        self.send(&stopping_message(status))
    }

    /// One datagram carrying `fds` as SCM_RIGHTS (for `FDSTORE=1`).
    pub fn send_with_fds(&self, msg: &str, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        let rights = [ControlMessage::ScmRights(&raw)];
        // An SCM_RIGHTS message with no fds is rejected by the kernel.
        let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
        let iov = [io::IoSlice::new(msg.as_bytes())];
        let sent = sendmsg(
            self.socket.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            Some(&self.addr),
        )?;
        if sent != msg.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!(
                    "sd_notify datagram truncated: {sent} of {} bytes",
                    msg.len()
                ),
            ));
        }
        Ok(())
    }
}

/// `/absolute/path`, or `@name` for the abstract namespace (the `@` is not part of the name).
fn parse_address(value: &OsStr) -> Result<UnixAddr, NotifyError> {
    let invalid = |reason| NotifyError::InvalidAddress {
        value: value.to_string_lossy().into_owned(),
        reason,
    };
    match value.as_bytes() {
        [b'/', ..] => UnixAddr::new(value).map_err(|_| invalid("path too long for a unix socket")),
        [b'@'] => Err(invalid("empty abstract socket name")),
        [b'@', name @ ..] => {
            UnixAddr::new_abstract(name).map_err(|_| invalid("abstract name too long"))
        }
        _ => Err(invalid("not an absolute path or @name")),
    }
}

/// STATUS is one line of the protocol; a newline would start a bogus assignment.
fn one_line(status: &str) -> String {
    status.replace('\n', " ")
}

pub fn ready_message(status: &str, mainpid: Option<u32>) -> String {
    let mut msg = format!("READY=1\nSTATUS={}", one_line(status));
    if let Some(pid) = mainpid {
        msg.push_str(&format!("\nMAINPID={pid}"));
    }
    msg
}

pub fn reloading_message(status: &str, monotonic_usec: u64) -> String {
    format!(
        "RELOADING=1\nMONOTONIC_USEC={monotonic_usec}\nSTATUS={}",
        one_line(status)
    )
}

pub fn status_message(status: &str) -> String {
    format!("STATUS={}", one_line(status))
}

pub fn stopping_message(status: &str) -> String {
    format!("STOPPING=1\nSTATUS={}", one_line(status))
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd compares MONOTONIC_USEC with. 0 if the
/// clock cannot be read, which Linux never does for CLOCK_MONOTONIC.
pub fn monotonic_usec() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .ok()
        .and_then(|ts| {
            let secs = u64::try_from(ts.tv_sec()).ok()?;
            let nanos = u64::try_from(ts.tv_nsec()).ok()?;
            secs.checked_mul(1_000_000)?.checked_add(nanos / 1_000)
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::SocketAddr;
    use std::path::PathBuf;
    use std::time::Duration;

    fn unique(tag: &str) -> String {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        format!(
            "hapmaster-notify-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    struct TempDir(PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn receiver_at_path() -> (TempDir, PathBuf, UnixDatagram) {
        let dir = TempDir(std::env::temp_dir().join(unique("dir")));
        std::fs::create_dir(&dir.0).unwrap();
        let path = dir.0.join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (dir, path, rx)
    }

    fn recv(rx: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = rx.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    fn raw_monotonic_usec() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        assert_eq!(
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) },
            0
        );
        ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
    }

    #[test]
    fn messages() {
        assert_eq!(ready_message("Ready.", None), "READY=1\nSTATUS=Ready.");
        assert_eq!(
            ready_message("Ready.", Some(42)),
            "READY=1\nSTATUS=Ready.\nMAINPID=42"
        );
        assert_eq!(
            reloading_message("Reloading", 123),
            "RELOADING=1\nMONOTONIC_USEC=123\nSTATUS=Reloading"
        );
        assert_eq!(status_message("a\nb"), "STATUS=a b");
        assert_eq!(stopping_message("Bye"), "STOPPING=1\nSTATUS=Bye");
    }

    #[test]
    fn path_socket_gets_exact_datagrams() {
        let (_dir, path, rx) = receiver_at_path();
        let n = Notifier::new(path.as_os_str()).unwrap();
        n.ready("Ready: 1 worker", Some(4242)).unwrap();
        assert_eq!(recv(&rx), "READY=1\nSTATUS=Ready: 1 worker\nMAINPID=4242");
        n.status("Reload failed").unwrap();
        assert_eq!(recv(&rx), "STATUS=Reload failed");
        n.stopping("Stopping").unwrap();
        assert_eq!(recv(&rx), "STOPPING=1\nSTATUS=Stopping");
        n.send("WATCHDOG=1").unwrap();
        assert_eq!(recv(&rx), "WATCHDOG=1");
    }

    #[test]
    fn abstract_socket_and_reloading_timestamp() {
        let name = unique("abstract");
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier::new(OsStr::new(&format!("@{name}"))).unwrap();
        let before = raw_monotonic_usec();
        n.reloading("Reloading").unwrap();
        let after = raw_monotonic_usec();
        let msg = recv(&rx);
        let lines: Vec<&str> = msg.split('\n').collect();
        assert_eq!(lines.len(), 3, "{msg}");
        assert_eq!(lines[0], "RELOADING=1");
        assert_eq!(lines[2], "STATUS=Reloading");
        let usec: u64 = lines[1]
            .strip_prefix("MONOTONIC_USEC=")
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            before <= usec && usec <= after,
            "{before} <= {usec} <= {after}"
        );
    }

    #[test]
    fn fds_are_passed() {
        let (_dir, path, rx) = receiver_at_path();
        let n = Notifier::new(path.as_os_str()).unwrap();
        let (pipe_r, pipe_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        n.send_with_fds("FDSTORE=1\nFDNAME=test", &[pipe_r.as_fd()])
            .unwrap();

        let mut buf = [0u8; 256];
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!([RawFd; 4]);
        let msg = nix::sys::socket::recvmsg::<()>(
            rx.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .unwrap();
        let mut received = Vec::new();
        for c in msg.cmsgs().unwrap() {
            if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
                received.extend(
                    fds.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        let len = msg.bytes;
        assert_eq!(&buf[..len], b"FDSTORE=1\nFDNAME=test");
        assert_eq!(received.len(), 1);
        // The received fd is the same pipe: what goes into our write end comes out of it.
        nix::unistd::write(&pipe_w, b"x").unwrap();
        let mut one = [0u8; 1];
        assert_eq!(nix::unistd::read(&received[0], &mut one).unwrap(), 1);
        assert_eq!(&one, b"x");
    }

    #[test]
    fn socket_is_cloexec() {
        let n = Notifier::new(OsStr::new("/run/does-not-matter")).unwrap();
        let flags = nix::fcntl::fcntl(&n.socket, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
    }

    #[test]
    fn invalid_addresses() {
        let long = format!("/{}", "x".repeat(200));
        for bad in ["relative/path", "vsock:2:1", "@", "", long.as_str()] {
            let e = Notifier::new(OsStr::new(bad)).unwrap_err();
            assert!(matches!(e, NotifyError::InvalidAddress { .. }), "{bad}");
            assert!(e.to_string().contains("NOTIFY_SOCKET"), "{e}");
        }
    }

    #[test]
    fn sending_to_a_missing_socket_is_an_error_not_a_panic() {
        let n = Notifier::new(OsStr::new("/nonexistent/hapmaster/notify")).unwrap();
        assert!(n.ready("x", None).is_err());
    }
}
