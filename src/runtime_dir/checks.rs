//! Checks that the runtime directory and every directory above it are ours alone, before
//! anything is put in it.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::names::longest_socket_name;
use super::{RuntimeDirError, SUN_PATH_MAX};

/// Rejects paths that cannot hold our sockets or be written into a haproxy config unquoted.
pub(super) fn check_path(path: &Path) -> Result<(), RuntimeDirError> {
    let max_dir_len = SUN_PATH_MAX - 1 - longest_socket_name().len();
    if path.as_os_str().len() > max_dir_len {
        return Err(RuntimeDirError::TooLong {
            path: path.to_path_buf(),
            max_dir_len,
        });
    }
    let safe = path.to_str().is_some_and(|s| {
        !s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || "\"'\\#$".contains(c))
    });
    if !safe {
        return Err(RuntimeDirError::UnsafePath {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Creates the directory if missing; returns whether we created it. It is checked and fixed through
/// an fd opened without following a link, never by its path (a path is not a file).
pub(super) fn ensure_dir(path: &Path) -> Result<bool, RuntimeDirError> {
    check_parent(path)?;
    let created = match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(source) => {
            return Err(RuntimeDirError::Create {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let inspect = |source| RuntimeDirError::Inspect {
        path: path.to_path_buf(),
        source,
    };
    let euid = nix::unistd::geteuid().as_raw();
    let dir = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(dir) => dir,
        // O_NOFOLLOW | O_DIRECTORY on a link gives ELOOP or ENOTDIR: say which it is.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
            let path = path.to_path_buf();
            return Err(match fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_symlink() => RuntimeDirError::Symlink { path },
                _ => RuntimeDirError::NotADirectory { path },
            });
        }
        Err(e) => return Err(inspect(e)),
    };
    let mut meta = dir.metadata().map_err(inspect)?;
    if created && meta.uid() == euid {
        // The umask may have taken bits we need; it cannot have added any.
        dir.set_permissions(fs::Permissions::from_mode(0o700))
            .map_err(inspect)?;
        meta = dir.metadata().map_err(inspect)?;
    }
    check_dir(
        path,
        DirFacts {
            is_symlink: false,
            is_dir: meta.is_dir(),
            owner: meta.uid(),
            mode: meta.mode() & 0o7777,
        },
        euid,
    )?;
    Ok(created)
}

/// No directory above the runtime directory may let another user rename entries in it, or the
/// workers (which find their sockets and fragments by path) could be pointed elsewhere: each must
/// be owned by root or us and writable by no one else unless sticky (as /tmp is, where others
/// cannot rename what is ours). Both the directories named in the path and those its symlinks
/// lead to are checked.
fn check_parent(path: &Path) -> Result<(), RuntimeDirError> {
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    let canonical = match fs::canonicalize(parent) {
        Ok(c) => c,
        // Creating the directory will say so.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(RuntimeDirError::Inspect {
                path: parent.to_path_buf(),
                source,
            })
        }
    };
    let euid = nix::unistd::geteuid().as_raw();
    for dir in parent.ancestors().chain(canonical.ancestors()) {
        if dir.as_os_str().is_empty() {
            continue;
        }
        let meta = fs::metadata(dir).map_err(|source| RuntimeDirError::Inspect {
            path: dir.to_path_buf(),
            source,
        })?;
        let (mode, owner) = (meta.mode() & 0o7777, meta.uid());
        let sticky = mode & 0o1000 != 0;
        if !((owner == 0 || owner == euid) && (sticky || mode & 0o022 == 0)) {
            return Err(RuntimeDirError::InsecureParent {
                path: path.to_path_buf(),
                parent: dir.to_path_buf(),
                mode,
                owner,
            });
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct DirFacts {
    is_symlink: bool,
    is_dir: bool,
    owner: u32,
    mode: u32,
}

fn check_dir(path: &Path, facts: DirFacts, euid: u32) -> Result<(), RuntimeDirError> {
    let path = path.to_path_buf();
    if facts.is_symlink {
        Err(RuntimeDirError::Symlink { path })
    } else if !facts.is_dir {
        Err(RuntimeDirError::NotADirectory { path })
    } else if facts.owner != euid {
        Err(RuntimeDirError::WrongOwner {
            path,
            owner: facts.owner,
            euid,
        })
    } else if facts.mode & 0o022 != 0 {
        Err(RuntimeDirError::InsecureMode {
            path,
            mode: facts.mode,
        })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn wrong_owner() {
        let facts = DirFacts {
            is_symlink: false,
            is_dir: true,
            owner: 1000,
            mode: 0o700,
        };
        let err = check_dir(Path::new("/run/x"), facts, 0).unwrap_err();
        assert!(matches!(
            err,
            RuntimeDirError::WrongOwner {
                owner: 1000,
                euid: 0,
                ..
            }
        ));
        // Someone else's directory is removed, never adopted.
        let text = err.to_string();
        assert!(text.contains("remove it (`rm -r /run/x`"), "{text}");
        assert!(text.contains("--runtime-dir"), "{text}");
        assert!(!text.contains("chown 0"), "{text}");
        assert!(check_dir(Path::new("/run/x"), facts, 1000).is_ok());
    }

    #[test]
    fn path_checks() {
        let max = SUN_PATH_MAX - 1 - longest_socket_name().len();
        let ok = PathBuf::from(format!("/{}", "a".repeat(max - 1)));
        assert!(check_path(&ok).is_ok());
        // The longest socket haproxy may bind in it fits sun_path exactly.
        assert_eq!(
            ok.join(longest_socket_name()).as_os_str().len(),
            SUN_PATH_MAX
        );
        let long = PathBuf::from(format!("/{}", "a".repeat(max)));
        let err = check_path(&long).unwrap_err();
        assert!(matches!(err, RuntimeDirError::TooLong { .. }));
        assert!(err.to_string().contains("--runtime-dir"));
        for bad in [
            "/run/my dir",
            "/run/a#b",
            "/run/$X",
            "/run/a\"b",
            "/run/a'b",
        ] {
            assert!(
                matches!(
                    check_path(Path::new(bad)),
                    Err(RuntimeDirError::UnsafePath { .. })
                ),
                "{bad}"
            );
        }
    }
}
