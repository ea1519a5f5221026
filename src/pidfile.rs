//! The `-p` pid file, and the write-then-rename helper other files of ours use.
//!
//! The pid file's directory may be writable by others (a shared run directory): it is written and
//! removed through `fs_at`, never by a path that could follow a planted link or hit a swapped file.

use std::io;
use std::path::{Path, PathBuf};

use crate::fs_at::{Dir, Placed};

/// The pid file; removed when dropped, if it is still ours.
#[derive(Debug)]
pub struct PidFile {
    placed: Placed,
}

impl PidFile {
    /// Writes "<pid>\n" to `path` so that a reader never sees an empty or partial file.
    pub fn write(path: &Path, pid: u32) -> io::Result<PidFile> {
        // Absolute, so that messages name the file the operator means after a daemonizing
        // chdir("/") (the directory itself is held open).
        let path = std::path::absolute(path).map_err(|e| with_path(e, "write pid file", path))?;
        let (dir, name) =
            Dir::parent_of(&path).map_err(|e| with_path(e, "write pid file", &path))?;
        let id = dir
            .write_file(&name, format!("{pid}\n").as_bytes(), 0o644)
            .map_err(|e| with_path(e, "write pid file", &path))?;
        Ok(PidFile {
            placed: Placed { dir, name, id },
        })
    }

    pub fn path(&self) -> PathBuf {
        self.placed.path()
    }

    /// Removes the file now (also done on drop).
    pub fn remove(self) {}
}

impl Drop for PidFile {
    fn drop(&mut self) {
        self.placed.remove("pid file");
    }
}

/// Removes `path`; a missing file is what we wanted, anything else is worth a warning. Only for
/// files in a directory no one else can write (the runtime directory).
pub fn remove_quietly(path: &Path, what: &str) {
    match std::fs::remove_file(path) {
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

/// Writes `contents` to `path` with exactly `mode` (not reduced by the umask): a new file under a
/// random name in the same directory, then rename (see `fs_at::Dir::write_file`). Errors are plain
/// io errors; callers add the path.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let (dir, name) = Dir::parent_of(path)?;
    dir.write_file(&name, contents, mode).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    use crate::test_dir::TempDir;

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
    fn a_file_swapped_in_after_writing_is_not_removed() {
        let dir = TempDir::new("swapped");
        let path = dir.0.join("p");
        let pf = PidFile::write(&path, 8).unwrap();
        fs::write(dir.0.join("other"), "not ours").unwrap();
        fs::rename(dir.0.join("other"), &path).unwrap();
        pf.remove();
        assert_eq!(fs::read_to_string(&path).unwrap(), "not ours");
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
