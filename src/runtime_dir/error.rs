//! What can go wrong with the runtime directory, and what the operator can do about it.

use std::fmt;
use std::io;
use std::path::PathBuf;

use super::{LOCK_FILE, SUN_PATH_MAX};

#[derive(Debug)]
pub enum RuntimeDirError {
    TooLong {
        path: PathBuf,
        max_dir_len: usize,
    },
    /// Characters that the haproxy config parser would split on, quote or expand.
    UnsafePath {
        path: PathBuf,
    },
    Create {
        path: PathBuf,
        source: io::Error,
    },
    Inspect {
        path: PathBuf,
        source: io::Error,
    },
    Symlink {
        path: PathBuf,
    },
    NotADirectory {
        path: PathBuf,
    },
    WrongOwner {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    InsecureMode {
        path: PathBuf,
        mode: u32,
    },
    /// Someone else can rename entries of the parent: the directory could be swapped.
    InsecureParent {
        path: PathBuf,
        parent: PathBuf,
        mode: u32,
        owner: u32,
    },
    Lock {
        path: PathBuf,
        source: io::Error,
    },
    AlreadyRunning {
        path: PathBuf,
        pid: Option<u32>,
    },
    WriteFragment {
        path: PathBuf,
        source: io::Error,
    },
}

impl fmt::Display for RuntimeDirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use RuntimeDirError::*;
        match self {
            TooLong { path, max_dir_len } => write!(
                f,
                "runtime directory {} is too long ({} bytes): the unix sockets inside it must fit \
                 in {SUN_PATH_MAX} bytes; choose one of at most {max_dir_len} bytes with \
                 --runtime-dir",
                path.display(),
                path.as_os_str().len()
            ),
            UnsafePath { path } => write!(
                f,
                "runtime directory {} cannot be written into a haproxy configuration (it must be \
                 UTF-8 without spaces, quotes, backslashes, '#' or '$'); choose another with \
                 --runtime-dir",
                path.display()
            ),
            Create { path, source } => write!(
                f,
                "cannot create runtime directory {}: {source}; create it (mode 0700) or choose \
                 another with --runtime-dir",
                path.display()
            ),
            Inspect { path, source } => {
                write!(
                    f,
                    "cannot inspect runtime directory {}: {source}",
                    path.display()
                )
            }
            Symlink { path } => write!(
                f,
                "runtime directory {} is a symbolic link, which hapmaster refuses (it could \
                 point anywhere); give the real directory with --runtime-dir",
                path.display()
            ),
            NotADirectory { path } => write!(
                f,
                "runtime directory {} exists but is not a directory; remove it or choose \
                 another with --runtime-dir",
                path.display()
            ),
            WrongOwner { path, owner, euid } => write!(
                f,
                "runtime directory {} is owned by uid {owner}, not by uid {euid} that hapmaster \
                 runs as: someone else made it, so nothing in it can be trusted (never take it \
                 over with chown); remove it (`rm -r {}`, as root if need be) so that hapmaster \
                 makes its own, or choose another with --runtime-dir",
                path.display(),
                path.display()
            ),
            InsecureMode { path, mode } => write!(
                f,
                "runtime directory {} is writable by group or others (mode {mode:04o}), so \
                 someone else could plant sockets there; run `chmod go-w {}` or choose another \
                 with --runtime-dir",
                path.display(),
                path.display()
            ),
            InsecureParent {
                path,
                parent,
                mode,
                owner,
            } => write!(
                f,
                "runtime directory {}: the directory {} above it can be written by other users \
                 (mode {mode:04o}, owner uid {owner}), who could swap the runtime directory for \
                 their own; choose a runtime directory under directories only root or this \
                 user can write (a sticky one like /tmp is fine) with --runtime-dir",
                path.display(),
                parent.display()
            ),
            Lock { path, source } => {
                write!(f, "cannot lock {}: {source}", path.display())
            }
            AlreadyRunning { path, pid } => {
                write!(
                    f,
                    "another hapmaster is running with runtime directory {}",
                    path.display()
                )?;
                if let Some(pid) = pid {
                    write!(f, " (pid {pid} from {})", path.join(LOCK_FILE).display())?;
                }
                write!(
                    f,
                    "; stop it first, or give this one its own directory with --runtime-dir"
                )
            }
            WriteFragment { path, source } => {
                write!(
                    f,
                    "cannot write worker config fragment {}: {source}",
                    path.display()
                )
            }
        }
    }
}

impl std::error::Error for RuntimeDirError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        use RuntimeDirError::*;
        match self {
            Create { source, .. }
            | Inspect { source, .. }
            | Lock { source, .. }
            | WriteFragment { source, .. } => Some(source),
            _ => None,
        }
    }
}
