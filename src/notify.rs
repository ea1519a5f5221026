//! sd_notify(3): tell systemd when we are ready, reloading or stopping, without ever waiting.
//!
//! The socket is non-blocking and connected to `NOTIFY_SOCKET`. Connected, because for a unix
//! datagram socket poll's POLLOUT then says whether the *receiver's* queue has room; unconnected,
//! it reports only our own send buffer, always looks writable, and a retry would spin. A
//! receiver that does not read (its queue holds `net.unix.max_dgram_qlen` datagrams: 10 by
//! default, 512 with systemd's sysctl) costs the master nothing:
//! - a state message (READY=1, RELOADING=1, STATUS=, STOPPING=1) that cannot go at once waits,
//!   in order, in a queue of at most [`QUEUE`] messages, sent when the event loop sees POLLOUT;
//!   when the queue is full the oldest is dropped and the caller warns, once for that message;
//! - an fd store message (it carries fds) is never queued: [`Notifier::send_with_fds`] says
//!   `WouldBlock`, and `crate::fdstore` goes on where it stopped once the socket has room;
//! - a receiver gone (ECONNREFUSED: the socket was bound anew, as after some systemd
//!   daemon-reexecs) gets one new connect and one more try;
//! - any other error drops the datagram; the caller warns once for it.
//!
//! Hand-written rather than the `sd-notify` crate (0.5): that crate reads `NOTIFY_SOCKET` on every
//! call, so it cannot send anything once we unset the variable for our children; it does not
//! handle `@abstract` addresses; it sends blocking; and fd passing needs its extra `sendfd`
//! dependency.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;

use nix::errno::Errno;
use nix::sys::socket::{connect, sendmsg, ControlMessage, MsgFlags, UnixAddr};

pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// State messages that wait for a receiver that does not read; beyond, the oldest is dropped.
pub const QUEUE: usize = 32;

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
    /// Non-blocking; connected at the first send, and again after ECONNREFUSED.
    socket: UnixDatagram,
    addr: UnixAddr,
    connected: Cell<bool>,
    /// State messages waiting for room in the receiver's queue, oldest first.
    queue: RefCell<VecDeque<String>>,
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

    /// A notifier for an explicit `NOTIFY_SOCKET` value. Nothing is connected yet: the
    /// receiver need not exist before the first message.
    pub fn new(value: &OsStr) -> Result<Notifier, NotifyError> {
        let addr = parse_address(value)?;
        // std creates it with SOCK_CLOEXEC.
        let socket = UnixDatagram::unbound().map_err(NotifyError::Socket)?;
        socket.set_nonblocking(true).map_err(NotifyError::Socket)?;
        Ok(Notifier {
            socket,
            addr,
            connected: Cell::new(false),
            queue: RefCell::new(VecDeque::new()),
            value: value.to_os_string(),
        })
    }

    /// The `NOTIFY_SOCKET` value this notifier was made from.
    pub fn address(&self) -> &OsStr {
        &self.value
    }

    /// What the event loop polls for POLLOUT while [`Notifier::wants_writable`].
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// State messages wait for room in the receiver's queue.
    pub fn wants_writable(&self) -> bool {
        !self.queue.borrow().is_empty()
    }

    /// Sends one state message now, or queues it behind those waiting. `Err` when it (or, the
    /// queue being full, the oldest waiting message) is dropped: the caller warns once.
    pub fn send(&self, msg: &str) -> io::Result<()> {
        self.flush();
        if self.wants_writable() {
            return self.enqueue(msg);
        }
        match self.try_send(msg, &[]) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.enqueue(msg),
            other => other,
        }
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

    /// One datagram carrying `fds` as SCM_RIGHTS (for `FDSTORE=1`), now or not at all: never
    /// queued, `WouldBlock` while state messages wait or the receiver's queue is full.
    pub fn send_with_fds(&self, msg: &str, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        self.flush();
        if self.wants_writable() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.try_send(msg, fds)
    }

    /// Sends what waits, until the receiver's queue is full again.
    pub fn flush(&self) {
        loop {
            let Some(msg) = self.queue.borrow().front().cloned() else {
                return;
            };
            match self.try_send(&msg, &[]) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Ok(()) => {
                    self.queue.borrow_mut().pop_front();
                }
                Err(e) => {
                    self.queue.borrow_mut().pop_front();
                    log::warn!("sd_notify: dropped {}: {e}", first_line(&msg));
                }
            }
        }
    }

    fn enqueue(&self, msg: &str) -> io::Result<()> {
        let mut queue = self.queue.borrow_mut();
        let dropped = (queue.len() >= QUEUE).then(|| queue.pop_front()).flatten();
        queue.push_back(msg.to_string());
        match dropped {
            None => Ok(()),
            Some(old) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "the service manager does not read {}: {QUEUE} messages wait, the oldest \
                     ({}) is dropped",
                    self.value.to_string_lossy(),
                    first_line(&old)
                ),
            )),
        }
    }

    /// One non-blocking send on the connected socket; one new connect if the receiver is gone.
    fn try_send(&self, msg: &str, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        let rights = [ControlMessage::ScmRights(&raw)];
        // An SCM_RIGHTS message with no fds is rejected by the kernel.
        let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
        let iov = [io::IoSlice::new(msg.as_bytes())];
        let mut retried = false;
        loop {
            if !self.connected.get() {
                connect(self.socket.as_raw_fd(), &self.addr)?;
                self.connected.set(true);
            }
            let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
            match sendmsg::<UnixAddr>(self.socket.as_raw_fd(), &iov, cmsgs, flags, None) {
                Ok(sent) if sent == msg.len() => return Ok(()),
                Ok(sent) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!(
                            "sd_notify datagram truncated: {sent} of {} bytes",
                            msg.len()
                        ),
                    ))
                }
                Err(Errno::ECONNREFUSED | Errno::ENOTCONN) if !retried => {
                    retried = true;
                    self.connected.set(false);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn first_line(msg: &str) -> &str {
    msg.split('\n').next().unwrap_or(msg)
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

    fn receiver_at_path() -> (tempfile::TempDir, PathBuf, UnixDatagram) {
        let dir = crate::test_dir::temp_dir("notify");
        let path = dir.path().join("notify.sock");
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

    /// Datagrams waiting in `rx`, without waiting for more.
    fn recv_all(rx: &UnixDatagram) -> Vec<String> {
        rx.set_nonblocking(true).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = rx.recv(&mut buf) {
            out.push(String::from_utf8(buf[..n].to_vec()).unwrap());
        }
        rx.set_nonblocking(false).unwrap();
        out
    }

    fn writable(n: &Notifier) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = [PollFd::new(n.fd(), PollFlags::POLLOUT)];
        poll(&mut fds, PollTimeout::ZERO).unwrap() == 1
    }

    #[test]
    fn a_receiver_that_does_not_read_costs_no_wait_and_gets_the_messages_later() {
        let (_dir, path, rx) = receiver_at_path();
        let n = Notifier::new(path.as_os_str()).unwrap();
        // Until the receiver's queue is full (net.unix.max_dgram_qlen), datagrams go at once;
        // the first that does not is queued.
        let mut sent = 0;
        loop {
            n.status(&format!("s{sent}")).unwrap();
            if n.wants_writable() {
                break;
            }
            sent += 1;
            assert!(sent < 10_000, "the receiver's queue never filled");
        }
        // Full: the socket does not poll writable (no spinning), fds are refused at once, and
        // the queue keeps the newest QUEUE messages.
        assert!(!writable(&n));
        let (pipe_r, _pipe_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let e = n
            .send_with_fds("FDSTORE=1\nFDNAME=x", &[pipe_r.as_fd()])
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        let mut dropped = 0;
        for i in 0..QUEUE + 2 {
            if let Err(e) = n.status(&format!("q{i}")) {
                assert!(e.to_string().contains("does not read"), "{e}");
                dropped += 1;
            }
        }
        // s{sent} (queued first), q0, q1.
        assert_eq!(dropped, 3);

        // The receiver reads: the socket is writable, and what waited goes, in order.
        let first = recv_all(&rx);
        assert_eq!(first.len(), sent);
        assert_eq!(first[0], "STATUS=s0");
        assert!(writable(&n));
        let mut later = Vec::new();
        while n.wants_writable() {
            n.flush();
            later.extend(recv_all(&rx));
        }
        later.extend(recv_all(&rx));
        let want: Vec<String> = (2..QUEUE + 2).map(|i| format!("STATUS=q{i}")).collect();
        assert_eq!(later, want);
    }

    #[test]
    fn a_receiver_bound_anew_is_connected_again() {
        let (_dir, path, rx) = receiver_at_path();
        let n = Notifier::new(path.as_os_str()).unwrap();
        n.status("one").unwrap();
        assert_eq!(recv(&rx), "STATUS=one");
        drop(rx);
        std::fs::remove_file(&path).unwrap();
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        n.status("two").unwrap();
        assert_eq!(recv(&rx), "STATUS=two");
    }

    #[test]
    fn sending_to_a_missing_socket_is_an_error_not_a_panic() {
        let n = Notifier::new(OsStr::new("/nonexistent/hapmaster/notify")).unwrap();
        assert!(n.ready("x", None).is_err());
    }
}
