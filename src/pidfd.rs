//! pidfds (Linux 5.3+): a file descriptor that names one process, not a pid number that the
//! kernel may hand to another process once it is reaped. It polls readable when that process
//! exits, and signals sent through it never reach a successor that reused the number.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `pidfd_open(pid, 0)`; the fd is close-on-exec (always, by the kernel).
pub fn open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; nothing is borrowed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("pidfd_open returned no fd"))?;
    // SAFETY: the kernel just returned this fd to us, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `pidfd_send_signal(fd, sig, NULL, 0)`: ESRCH once the process has exited.
pub fn send_signal(fd: BorrowedFd<'_>, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: a valid fd, a signal number, no siginfo, no flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn polls_readable_when_the_process_exits() {
        let Ok(me) = open(std::process::id()) else {
            eprintln!("skipped: pidfd_open not available");
            return;
        };
        let flags = nix::fcntl::fcntl(&me, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0, "pidfd without CLOEXEC");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let fd = open(child.id()).unwrap();
        let mut fds = [nix::poll::PollFd::new(
            fd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let n = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(60_000u16)).unwrap();
        assert_eq!(n, 1, "no POLLIN on the pidfd of an exited child");
        child.wait().unwrap();
        // Reaped: the pidfd still names the dead process, never a successor.
        let err = send_signal(fd.as_fd(), 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
        send_signal(me.as_fd(), 0).unwrap();
    }
}
