//! The `-p` pid file, and the write-then-rename helper other files of ours use.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The pid file; removed when dropped.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Writes "<pid>\n" to `path` so that a reader never sees an empty or partial file.
    pub fn write(path: &Path, pid: u32) -> io::Result<PidFile> {
        // Absolute, so that removal still works after a daemonizing chdir("/").
        let path = std::path::absolute(path).map_err(|e| with_path(e, "write pid file", path))?;
        write_atomic(&path, format!("{pid}\n").as_bytes(), 0o644)
            .map_err(|e| with_path(e, "write pid file", &path))?;
        Ok(PidFile { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the file now (also done on drop).
    pub fn remove(self) {}
}

impl Drop for PidFile {
    fn drop(&mut self) {
        remove_quietly(&self.path, "pid file");
    }
}

/// Removes `path`; a missing file is what we wanted, anything else is worth a warning.
pub fn remove_quietly(path: &Path, what: &str) {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            log::warn!("cannot remove {what} {}: {e}", path.display());
        }
        _ => {}
    }
}

/// Adds what we were doing and the path to an error, keeping its kind.
pub fn with_path(e: io::Error, doing: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("cannot {doing} {}: {e}", path.display()))
}

/// The temp name used while writing `path`: hidden, in the same directory (so that rename(2) is
/// atomic), and unique to this process.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Writes `contents` to `path` with exactly `mode` (not reduced by the umask): temp file, then
/// rename. Errors are plain io errors; callers add the path.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let tmp = temp_path(path);
    let result = write_new(&tmp, contents, mode).and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_new(tmp: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let open = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            // std adds O_CLOEXEC; O_NOFOLLOW refuses a planted symlink.
            .custom_flags(libc::O_NOFOLLOW)
            .open(tmp)
    };
    let mut file = match open() {
        // Only a crashed earlier process with our pid leaves this behind.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::remove_file(tmp)?;
            open()?
        }
        other => other?,
    };
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    // No fsync: readers need the rename's atomicity, not durability (a pidfile or a worker's
    // fragment means nothing after a power loss), and an fsync on a busy disk stalled the event
    // loop for seconds at every reload (found by the benchmark).
    file.write_all(contents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let p = std::env::temp_dir()
                .join(format!("hapmaster-pidfile-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir(&p).unwrap();
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_pid_with_newline_and_mode_0644() {
        let dir = TempDir::new("write");
        let path = dir.0.join("haproxy.pid");
        let pf = PidFile::write(&path, 1234).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "1234\n");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o644);
        assert_eq!(entries(&dir.0), vec!["haproxy.pid"]);
        assert_eq!(pf.path(), path);
        pf.remove();
        assert!(!path.exists());
    }

    #[test]
    fn replaces_an_existing_file_and_drop_removes() {
        let dir = TempDir::new("replace");
        let path = dir.0.join("p");
        fs::write(&path, "999999\n").unwrap();
        {
            let _pf = PidFile::write(&path, 7).unwrap();
            assert_eq!(fs::read_to_string(&path).unwrap(), "7\n");
        }
        assert!(!path.exists());
    }

    #[test]
    fn removing_an_already_removed_file_is_fine() {
        let dir = TempDir::new("gone");
        let path = dir.0.join("p");
        let pf = PidFile::write(&path, 7).unwrap();
        fs::remove_file(&path).unwrap();
        pf.remove();
    }

    #[test]
    fn stale_temp_file_is_replaced() {
        let dir = TempDir::new("stale");
        let path = dir.0.join("p");
        fs::write(temp_path(&path), "junk").unwrap();
        let _pf = PidFile::write(&path, 8).unwrap();
        assert_eq!(entries(&dir.0), vec!["p"]);
    }

    #[test]
    fn error_names_the_path() {
        let path = Path::new("/nonexistent-hapmaster-dir/haproxy.pid");
        let e = PidFile::write(path, 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(
            e.to_string()
                .contains("/nonexistent-hapmaster-dir/haproxy.pid"),
            "{e}"
        );
    }

    #[test]
    fn relative_path_is_made_absolute() {
        let dir = TempDir::new("rel");
        let path = dir.0.join("p");
        // Not changing the cwd (tests share it): a relative path that resolves to `path`.
        let cwd = std::env::current_dir().unwrap();
        let rel: PathBuf = cwd
            .components()
            .skip(1)
            .map(|_| "..")
            .collect::<PathBuf>()
            .join(path.strip_prefix("/").unwrap());
        let pf = PidFile::write(&rel, 9).unwrap();
        assert!(pf.path().is_absolute());
        assert_eq!(fs::read_to_string(&path).unwrap(), "9\n");
    }

    #[test]
    fn write_atomic_sets_exact_mode() {
        let dir = TempDir::new("mode");
        let path = dir.0.join("f");
        write_atomic(&path, b"abc", 0o600).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::read(&path).unwrap(), b"abc");
    }
}
