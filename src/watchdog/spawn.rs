//! The master's side: start the watchdog, once, before the first worker.
//!
//! A double fork, so that the watchdog is not the master's child: the intermediate child forks
//! the watchdog, reports its pid on a pipe and exits at once; the master reaps it right away.
//! The watchdog then places the master's pidfd on fd 3 and the runtime directory on fd 4, closes
//! every other fd but the report pipe (close-on-exec), and executes this very program
//! (`/proc/self/exe`: the image the master runs, even if a package upgrade replaced the file).
//! A failed exec writes its errno on the pipe; a successful one closes the pipe, so the master
//! knows the outcome when it reads end of file.
//!
//! Between fork and exec the children only make async-signal-safe calls, with everything they
//! need (argv, fds) prepared before the fork.

use std::ffi::CString;
use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use log::LevelFilter;

use super::{DIRFD, PIDFD, SUBCOMMAND};

/// Where the report pipe's write end sits in the watchdog until its exec closes it.
const REPORT_FD: RawFd = 5;
/// Report records: a tag byte and an `i32`, one `write` each (atomic on a pipe).
const TAG_PID: u8 = b'P';
const TAG_FORK: u8 = b'F';
const TAG_EXEC: u8 = b'E';
const TAG_SETUP: u8 = b'S';
const RECORD: usize = 5;

#[derive(Debug)]
pub enum WatchdogError {
    /// pidfd_open: Linux before 5.3, or a seccomp filter.
    Pidfd(io::Error),
    RuntimeDir {
        path: PathBuf,
        source: io::Error,
    },
    Pipe(io::Error),
    Fork(io::Error),
    /// Placing its fds before the exec.
    Setup(io::Error),
    Exec(io::Error),
    /// The intermediate child died without saying anything.
    NoReport,
}

impl fmt::Display for WatchdogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WatchdogError::Pidfd(e) => write!(f, "pidfd_open: {e} (Linux 5.3 or later needed)"),
            WatchdogError::RuntimeDir { path, source } => {
                write!(
                    f,
                    "cannot open runtime directory {}: {source}",
                    path.display()
                )
            }
            WatchdogError::Pipe(e) => write!(f, "pipe: {e}"),
            WatchdogError::Fork(e) => write!(f, "fork: {e}"),
            WatchdogError::Setup(e) => write!(f, "cannot pass it its fds: {e}"),
            WatchdogError::Exec(e) => write!(f, "cannot execute /proc/self/exe: {e}"),
            WatchdogError::NoReport => write!(f, "its first fork died without a word"),
        }
    }
}

impl std::error::Error for WatchdogError {}

/// Starts the watchdog of this process (the master) for `runtime_dir`; returns its pid. Call it
/// once at start: not for an upgrade in place (the running watchdog watches the same process),
/// and while the master is still single-threaded and has no SIGCHLD handler (it reaps the
/// intermediate child itself).
pub fn start(runtime_dir: &Path, level: LevelFilter) -> Result<u32, WatchdogError> {
    let master = std::process::id();
    // Both close-on-exec: only the watchdog gets them, placed on 3 and 4.
    let pidfd = crate::pidfd::open(master).map_err(WatchdogError::Pidfd)?;
    let dirfd: OwnedFd = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(runtime_dir)
        .map_err(|source| WatchdogError::RuntimeDir {
            path: runtime_dir.to_path_buf(),
            source,
        })?
        .into();
    let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| WatchdogError::Pipe(e.into()))?;
    let level_flag = match level {
        LevelFilter::Off | LevelFilter::Error | LevelFilter::Warn => "-q",
        LevelFilter::Info => "",
        LevelFilter::Debug | LevelFilter::Trace => "-V",
    };
    // argv[0] is a bare name: no path of the master's (or a test's) on the command line.
    let args: Vec<CString> = ["hapmaster", SUBCOMMAND, &master.to_string(), level_flag]
        .into_iter()
        .filter(|a| !a.is_empty())
        .map(|a| CString::new(a).map_err(|e| WatchdogError::Setup(io::Error::other(e))))
        .collect::<Result<_, _>>()?;
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let plan = Plan {
        exe: c"/proc/self/exe".as_ptr(),
        argv: argv.as_ptr(),
        pidfd: pidfd.as_raw_fd(),
        dirfd: dirfd.as_raw_fd(),
        report: report_w.as_raw_fd(),
    };
    // SAFETY: the master is single-threaded here, and the child runs only `plan.intermediate`,
    // which makes async-signal-safe calls on data prepared above and never returns.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(WatchdogError::Fork(io::Error::last_os_error()));
    }
    if child == 0 {
        // SAFETY: in the forked child, see above.
        unsafe { plan.intermediate() }
    }
    drop(report_w);
    reap(child);
    // The fds stay open until here: `plan` lent their numbers to the children.
    drop((pidfd, dirfd));
    outcome(&read_reports(report_r))
}

/// What the children need, as raw values: they must not allocate or drop anything.
struct Plan {
    exe: *const libc::c_char,
    argv: *const *const libc::c_char,
    pidfd: RawFd,
    dirfd: RawFd,
    report: RawFd,
}

impl Plan {
    /// The intermediate child: forks the watchdog, reports its pid, exits.
    unsafe fn intermediate(&self) -> ! {
        let pid = libc::fork();
        if pid == 0 {
            self.watchdog();
        }
        if pid < 0 {
            report(self.report, TAG_FORK, errno());
            libc::_exit(1);
        }
        report(self.report, TAG_PID, pid);
        libc::_exit(0);
    }

    /// The watchdog before its exec: fds in place, signal mask cleared, exec.
    unsafe fn watchdog(&self) -> ! {
        // Copies above 9 first, so that placing 3, 4 and 5 cannot overwrite one of the three.
        let pidfd = libc::fcntl(self.pidfd, libc::F_DUPFD_CLOEXEC, 10);
        let dirfd = libc::fcntl(self.dirfd, libc::F_DUPFD_CLOEXEC, 10);
        let report_fd = libc::fcntl(self.report, libc::F_DUPFD_CLOEXEC, 10);
        if pidfd < 0 || dirfd < 0 || report_fd < 0 {
            report(self.report, TAG_SETUP, errno());
            libc::_exit(127);
        }
        // dup2 leaves the new fd without close-on-exec: the two the watchdog inherits.
        if libc::dup2(pidfd, PIDFD) != PIDFD
            || libc::dup2(dirfd, DIRFD) != DIRFD
            || libc::dup3(report_fd, REPORT_FD, libc::O_CLOEXEC) != REPORT_FD
        {
            report(report_fd, TAG_SETUP, errno());
            libc::_exit(127);
        }
        close_from(REPORT_FD + 1);
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::execv(self.exe, self.argv);
        report(REPORT_FD, TAG_EXEC, errno());
        libc::_exit(127);
    }
}

/// Linux's default ceiling on fd numbers (`fs.nr_open`): where the fallback stops.
const MAX_FDS: libc::rlim_t = 1 << 20;

/// Closes every fd from `first` up: the watchdog holds nothing of the master's (no listening
/// socket, no lock, no worker pipe).
unsafe fn close_from(first: RawFd) {
    if libc::syscall(
        libc::SYS_close_range,
        first as libc::c_uint,
        libc::c_uint::MAX,
        0,
    ) == 0
    {
        return;
    }
    // Before Linux 5.9: every number up to the open-file limit.
    let mut limit: libc::rlimit = std::mem::zeroed();
    let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
        RawFd::try_from(limit.rlim_cur.min(MAX_FDS)).unwrap_or(RawFd::MAX)
    } else {
        MAX_FDS as RawFd
    };
    for fd in first..max {
        libc::close(fd);
    }
}

unsafe fn errno() -> i32 {
    *libc::__errno_location()
}

unsafe fn report(fd: RawFd, tag: u8, value: i32) {
    let v = value.to_ne_bytes();
    let record: [u8; RECORD] = [tag, v[0], v[1], v[2], v[3]];
    libc::write(fd, record.as_ptr().cast(), RECORD);
}

/// Reaps the intermediate child, which exits right after its fork.
fn reap(child: libc::pid_t) {
    let pid = nix::unistd::Pid::from_raw(child);
    loop {
        match nix::sys::wait::waitpid(pid, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) | Err(_) => return,
        }
    }
}

/// Every record until end of file: when the intermediate child has exited and the watchdog has
/// executed (or died). Bounded: neither keeps the pipe longer than that.
fn read_reports(reader: OwnedFd) -> Vec<(u8, i32)> {
    let mut bytes = Vec::new();
    let _ = std::fs::File::from(reader).read_to_end(&mut bytes);
    bytes
        .chunks_exact(RECORD)
        .map(|r| (r[0], i32::from_ne_bytes([r[1], r[2], r[3], r[4]])))
        .collect()
}

fn outcome(reports: &[(u8, i32)]) -> Result<u32, WatchdogError> {
    let mut pid = None;
    for (tag, value) in reports {
        match *tag {
            TAG_FORK => return Err(WatchdogError::Fork(io::Error::from_raw_os_error(*value))),
            TAG_EXEC => return Err(WatchdogError::Exec(io::Error::from_raw_os_error(*value))),
            TAG_SETUP => return Err(WatchdogError::Setup(io::Error::from_raw_os_error(*value))),
            TAG_PID => pid = u32::try_from(*value).ok(),
            _ => {}
        }
    }
    pid.ok_or(WatchdogError::NoReport)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes() {
        assert_eq!(outcome(&[(TAG_PID, 42)]).unwrap(), 42);
        // The watchdog's exec may fail before the intermediate child reports its pid.
        assert!(matches!(
            outcome(&[(TAG_EXEC, libc::ENOENT), (TAG_PID, 42)]),
            Err(WatchdogError::Exec(e)) if e.raw_os_error() == Some(libc::ENOENT)
        ));
        assert!(matches!(
            outcome(&[(TAG_FORK, libc::EAGAIN)]),
            Err(WatchdogError::Fork(_))
        ));
        assert!(matches!(outcome(&[]), Err(WatchdogError::NoReport)));
    }
}
