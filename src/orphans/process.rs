//! The workers of one runtime directory among all processes, found by their command line in
//! /proc, and a handle that signals one of them without ever hitting a process that reused its
//! pid.

use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::argv::worker_fragment_arg;
use crate::proc_stat::Stat;

/// A runtime directory by device and inode: the watchdog knows its directory by an fd (the path
/// may be gone, or name a new directory), and an orphan's command line may spell the path
/// through another symlink than ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirId {
    dev: u64,
    ino: u64,
}

impl DirId {
    pub fn of_path(path: &Path) -> io::Result<DirId> {
        let meta = fs::metadata(path)?;
        Ok(DirId {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    // dev_t and ino_t are u64 on Linux today, but not by definition.
    #[allow(clippy::unnecessary_cast)]
    pub fn of_fd(fd: BorrowedFd<'_>) -> io::Result<DirId> {
        let st = nix::sys::stat::fstat(fd)?;
        Ok(DirId {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
        })
    }

    fn is(&self, path: &Path) -> bool {
        DirId::of_path(path).is_ok_and(|other| other == *self)
    }
}

/// A live worker of the runtime directory, as found by [`find_workers`].
#[derive(Debug)]
pub struct WorkerProcess {
    pub pid: u32,
    pub generation: u64,
    /// Clock ticks since boot (field 22 of /proc/PID/stat): with the pid, names the process.
    starttime: u64,
    /// `None` where pidfd_open is not available (before Linux 5.3).
    pidfd: Option<OwnedFd>,
}

/// Every process (other than this one) whose command line is a worker's of the directory
/// `dir`: one scan of /proc. Processes that exit meanwhile, or whose files cannot be read, are
/// left out.
pub fn find_workers(dir: &DirId) -> Vec<WorkerProcess> {
    let me = std::process::id();
    let entries = match fs::read_dir("/proc") {
        Ok(e) => e,
        Err(e) => {
            log::warn!("cannot list /proc to look for workers of a dead master: {e}");
            return Vec::new();
        }
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me || identify(pid, dir).is_none() {
            continue;
        }
        // Taken before the identity is read again, so the pidfd names the process that was
        // checked (or one already dead, which no signal reaches).
        let pidfd = match crate::pidfd::open(pid) {
            Ok(fd) => Some(fd),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => continue,
            Err(_) => None,
        };
        if let Some((generation, starttime)) = identify(pid, dir) {
            found.push(WorkerProcess {
                pid,
                generation,
                starttime,
                pidfd,
            });
        }
    }
    found.sort_by_key(|w| (w.generation, w.pid));
    found
}

/// The generation and start time of `pid` if it is a live worker of `dir`.
fn identify(pid: u32, dir: &DirId) -> Option<(u64, u64)> {
    let stat = Stat::of(pid as i32)?;
    if stat.is_dead() {
        return None;
    }
    let arg = worker_fragment_arg(&fs::read(format!("/proc/{pid}/cmdline")).ok()?)?;
    dir.is(&arg.dir).then_some((arg.generation, stat.starttime))
}

impl WorkerProcess {
    /// Still the same live process, still a worker of `dir`.
    pub fn is_still_it(&self, dir: &DirId) -> bool {
        identify(self.pid, dir) == Some((self.generation, self.starttime))
    }

    /// Exited (a zombie counts: its fds are closed), or its pid names another process now.
    pub fn is_gone(&self) -> bool {
        match Stat::of(self.pid as i32) {
            Some(stat) => stat.is_dead() || stat.starttime != self.starttime,
            None => true,
        }
    }

    /// Sends `sig` after checking, right before, that the process is still this worker of
    /// `dir`. `Ok(false)`: it is gone, nothing was sent.
    pub fn signal(&self, dir: &DirId, sig: nix::sys::signal::Signal) -> io::Result<bool> {
        if !self.is_still_it(dir) {
            return Ok(false);
        }
        let sent = match &self.pidfd {
            Some(fd) => crate::pidfd::send_signal(fd.as_fd(), sig as libc::c_int),
            None => {
                let pid = libc::pid_t::try_from(self.pid)
                    .map_err(|_| io::Error::other("pid out of range"))?;
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
                    .map_err(io::Error::from)
            }
        };
        match sent {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Polls readable once the process has exited.
    pub fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(AsFd::as_fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_worker_by_its_fragment_and_not_others() {
        let base = crate::test_dir::temp_dir("orphans-find");
        let ours = base.path().join("rt");
        let other = base.path().join("other");
        fs::create_dir_all(&ours).unwrap();
        fs::create_dir_all(&other).unwrap();
        // `sh -c 'read x' -db -f <dir>/worker-G.cfg` has a worker's command line as far as the
        // matcher cares (it never looks at argv[0]), and waits on its stdin until killed.
        let start = |dir: &Path, generation: u64| {
            std::process::Command::new("sh")
                .arg("-c")
                .arg("read x")
                .arg("-db")
                .arg("-f")
                .arg(dir.join(format!("worker-{generation}.cfg")))
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let mut a = start(&ours, 7);
        let mut b = start(&other, 8);
        let id = DirId::of_path(&ours).unwrap();
        let found = find_workers(&id);
        assert_eq!(
            found
                .iter()
                .map(|w| (w.pid, w.generation))
                .collect::<Vec<_>>(),
            vec![(a.id(), 7)]
        );
        let w = &found[0];
        assert!(w.is_still_it(&id) && !w.is_gone());
        assert!(!w.is_still_it(&DirId::of_path(&other).unwrap()));
        assert!(w.signal(&id, nix::sys::signal::Signal::SIGTERM).unwrap());
        a.wait().unwrap();
        assert!(w.is_gone() && !w.is_still_it(&id));
        assert!(!w.signal(&id, nix::sys::signal::Signal::SIGTERM).unwrap());
        b.kill().unwrap();
        b.wait().unwrap();
    }
}
