//! The watchdog process: `hapmaster __watchdog <master pid> [-q|-V]`, with a pidfd of the master
//! on fd 3 and the runtime directory on fd 4.
//!
//! It waits for the master's death in poll(2) on the pidfd, without a deadline: watching for as
//! long as the master lives is the job, and it costs no CPU. Then it acts once, bounded: one
//! look at the lock, one scan of /proc, one signal per worker found, and exits.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::ExitCode;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{signal, SigHandler, Signal};
use nix::sys::stat::Mode;

use super::{DIRFD, PIDFD};
use crate::orphans::process::{find_workers, DirId};
use crate::runtime_dir::LOCK_FILE;
use crate::supervisor::upgrade::adopt_fd;

/// Runs the watchdog; `args` follow the subcommand.
pub fn main(args: &[OsString]) -> ExitCode {
    let Some((master, level)) = parse_args(args) else {
        eprintln!(
            "hapmaster {}: an internal subcommand, started by the master with its fds; not \
             for use by hand",
            super::SUBCOMMAND
        );
        return ExitCode::from(2);
    };
    crate::logging::init(level);
    // A terminal's hangup and Ctrl-C reach the whole process group: the master handles them
    // (SIGHUP is a reload), and the watchdog must go on watching.
    for sig in [Signal::SIGHUP, Signal::SIGINT] {
        // SAFETY: SIG_IGN installs no handler code.
        if let Err(e) = unsafe { signal(sig, SigHandler::SigIgn) } {
            log::warn!("watchdog: cannot ignore {}: {e}", sig.as_str());
        }
    }
    let (pidfd, dir) = match (adopt_fd(PIDFD), adopt_fd(DIRFD)) {
        (Ok(p), Ok(d)) => (p, d),
        (Err(e), _) | (_, Err(e)) => {
            log::error!(
                "watchdog of master pid {master}: {e}; the master's workers are not stopped if \
                 it dies"
            );
            return ExitCode::from(1);
        }
    };
    if let Err(e) = wait_for_exit(pidfd.as_fd()) {
        log::error!(
            "watchdog of master pid {master}: cannot wait for its exit: {e}; its workers are \
             not stopped if it dies"
        );
        return ExitCode::from(1);
    }
    drop(pidfd);
    stop_workers(master, dir);
    ExitCode::SUCCESS
}

/// `<master pid> [-q|-V]`.
fn parse_args(args: &[OsString]) -> Option<(u32, log::LevelFilter)> {
    let master = args.first()?.to_str()?.parse().ok()?;
    let level = match args.get(1).and_then(|a| a.to_str()) {
        None => log::LevelFilter::Info,
        Some("-q") => log::LevelFilter::Warn,
        Some("-V") => log::LevelFilter::Debug,
        Some(_) => return None,
    };
    (args.len() <= 2).then_some((master, level))
}

/// Blocks until the process behind `pidfd` has exited.
fn wait_for_exit(pidfd: BorrowedFd<'_>) -> io::Result<()> {
    loop {
        let mut fds = [PollFd::new(pidfd, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(n) if n > 0 => return Ok(()),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The master is gone. If it stopped normally it removed its lock file with its workers gone;
/// if a new master holds the lock, that one stops what is left (`orphans::sweep`). Otherwise
/// the master died: soft-stop every worker of its runtime directory, holding the lock meanwhile
/// so that no new master starts a worker that this scan would take for one of the dead master's.
fn stop_workers(master: u32, dir: OwnedFd) {
    let lock = match nix::fcntl::openat(
        dir.as_fd(),
        LOCK_FILE,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => {
            log::debug!("master pid {master} stopped and removed its lock file: nothing to do");
            return;
        }
        Err(e) => {
            log::warn!(
                "master pid {master} exited, but its lock file {LOCK_FILE} cannot be opened \
                 ({e}): its workers, if any, are left to the next master on its runtime \
                 directory"
            );
            return;
        }
    };
    let lock = match Flock::lock(File::from(lock), FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((_, Errno::EWOULDBLOCK)) => {
            log::debug!(
                "master pid {master} exited; a new master holds its runtime directory and stops \
                 what is left"
            );
            return;
        }
        Err((_, e)) => {
            log::warn!(
                "master pid {master} exited, but its lock file {LOCK_FILE} cannot be locked \
                 ({e}): its workers, if any, are left to the next master on its runtime \
                 directory"
            );
            return;
        }
    };
    if !is_linked(&lock, dir.as_fd()) {
        log::debug!("master pid {master} exited and removed its lock file: nothing to do");
        return;
    }
    let id = match DirId::of_fd(dir.as_fd()) {
        Ok(id) => id,
        Err(e) => {
            log::warn!("master pid {master} exited, but its runtime directory cannot be read: {e}");
            return;
        }
    };
    let workers = find_workers(&id);
    if workers.is_empty() {
        log::debug!("master pid {master} exited; none of its workers is left");
    }
    for w in workers {
        match w.signal(&id, Signal::SIGUSR1) {
            Ok(true) => log::warn!(
                "master pid {master} died: soft-stopping its worker pid {} (generation {})",
                w.pid,
                w.generation
            ),
            Ok(false) => {}
            Err(e) => log::error!(
                "master pid {master} died, but its worker pid {} (generation {}) cannot be \
                 soft-stopped: {e}; stop it by hand: kill -USR1 {}",
                w.pid,
                w.generation,
                w.pid
            ),
        }
    }
    drop(lock);
}

/// The locked file is still the directory's lock file: a master's cleanup unlinks it (while
/// holding the lock) and a new master may have created another since.
// dev_t and ino_t are u64 on Linux today, but not by definition.
#[allow(clippy::unnecessary_cast)]
fn is_linked(lock: &File, dir: BorrowedFd<'_>) -> bool {
    let at = nix::sys::stat::fstatat(dir, LOCK_FILE, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW);
    match (nix::sys::stat::fstat(lock), at) {
        (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn arguments() {
        assert_eq!(
            parse_args(&args(&["12"])),
            Some((12, log::LevelFilter::Info))
        );
        assert_eq!(
            parse_args(&args(&["12", "-q"])),
            Some((12, log::LevelFilter::Warn))
        );
        assert_eq!(
            parse_args(&args(&["12", "-V"])),
            Some((12, log::LevelFilter::Debug))
        );
        for bad in [&[][..], &["x"], &["12", "-x"], &["12", "-q", "-V"], &["-1"]] {
            assert_eq!(parse_args(&args(bad)), None, "{bad:?}");
        }
    }
}
