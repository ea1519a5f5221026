//! The lock that keeps two masters from sharing a runtime directory: flock(2) on
//! `hapmaster.lock`, which holds the holder's pid for the error the next one reports.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use super::{RuntimeDirError, LOCK_FILE};

/// Takes the exclusive lock on `<dir>/hapmaster.lock` and writes our pid into it.
pub(super) fn lock(dir: &Path) -> Result<Flock<File>, RuntimeDirError> {
    let path = dir.join(LOCK_FILE);
    let lock_err = |source| RuntimeDirError::Lock {
        path: path.clone(),
        source,
    };
    // A predecessor's cleanup may unlink the file we just locked; a lock on an unlinked file
    // protects nothing, so start over (a couple of times at most: cleanup happens once).
    for _ in 0..3 {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            // std adds O_CLOEXEC: a worker holding the lock would block the next master.
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(lock_err)?;
        let locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(RuntimeDirError::AlreadyRunning {
                    path: dir.to_path_buf(),
                    pid: read_pid(&mut file),
                })
            }
            Err((_, errno)) => return Err(lock_err(errno.into())),
        };
        if still_linked(&locked, &path) {
            write_lock_pid(&locked, std::process::id()).map_err(lock_err)?;
            return Ok(locked);
        }
    }
    Err(lock_err(io::Error::other(
        "the lock file keeps being replaced; is another hapmaster starting or stopping?",
    )))
}

fn still_linked(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

pub(super) fn write_lock_pid(file: &File, pid: u32) -> io::Result<()> {
    file.set_len(0)?;
    file.write_all_at(format!("{pid}\n").as_bytes(), 0)
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut s = String::new();
    file.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}
