//! fds the master inherited from whatever started it (a shell's `exec 9<file`, a supervisor's
//! pipe) would otherwise reach every worker, which then holds them for its whole life (a pipe
//! never sees EOF, a deleted file's space is never freed). At start they are marked close-on-exec.
//!
//! Marked, not closed: the master itself may be expected to hold them (a supervisor's readiness
//! pipe); the workers never are. The fds the master takes over on purpose (`LISTEN_FDS`, the
//! upgrade-in-place state) are its own and never meant for a worker either, so they are marked too;
//! they are only left out of the report.

use std::os::fd::RawFd;

/// Marks every open fd above 2 close-on-exec and returns the ones that were inheritable and are
/// not in `known`, with what they point at (for the log).
pub fn seal(known: &[RawFd]) -> Vec<(RawFd, String)> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        // No /proc (an unusual sandbox): mark them all in one call, with nothing to report.
        // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes fd flags.
        unsafe {
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        };
        return Vec::new();
    };
    let fds: Vec<RawFd> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    let mut stray = Vec::new();
    for fd in fds {
        // SAFETY: F_GETFD on a number that may no longer be open (the directory's own fd) is
        // harmless: EBADF.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags < 0 || flags & libc::FD_CLOEXEC != 0 {
            continue;
        }
        // SAFETY: only the close-on-exec flag changes.
        unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
        if !known.contains(&fd) {
            let what = std::fs::read_link(format!("/proc/self/fd/{fd}"))
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "?".into());
            stray.push((fd, what));
        }
    }
    stray
}

/// The log line for [`seal`]'s report, if there is anything to say.
pub fn describe(stray: &[(RawFd, String)]) -> Option<String> {
    if stray.is_empty() {
        return None;
    }
    let list: Vec<String> = stray
        .iter()
        .map(|(fd, what)| format!("{fd} ({what})"))
        .collect();
    Some(format!(
        "fds inherited from the parent process, kept from the workers (close-on-exec): {}",
        list.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn cloexec(fd: RawFd) -> bool {
        unsafe { libc::fcntl(fd, libc::F_GETFD) & libc::FD_CLOEXEC != 0 }
    }

    #[test]
    fn marks_inheritable_fds_and_reports_only_unknown_ones() {
        let (r, w) = nix::unistd::pipe().unwrap();
        for fd in [r.as_raw_fd(), w.as_raw_fd()] {
            unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        }
        let stray = seal(&[w.as_raw_fd()]);
        assert!(cloexec(r.as_raw_fd()) && cloexec(w.as_raw_fd()));
        assert!(stray
            .iter()
            .any(|(fd, what)| *fd == r.as_raw_fd() && what.starts_with("pipe:")));
        assert!(!stray.iter().any(|(fd, _)| *fd == w.as_raw_fd()));
        let line = describe(&stray).unwrap();
        assert!(
            line.contains(&format!("{} (pipe:", r.as_raw_fd())),
            "{line}"
        );
        assert_eq!(describe(&[]), None);
    }
}
