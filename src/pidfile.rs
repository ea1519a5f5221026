//! The `-p` pid file, and the write-then-rename helper other files of ours use.
//!
//! The pid file's directory may be writable by others (a shared run directory): it is written and
//! removed through `fs_at`, never by a path that could follow a planted link or hit a swapped file.
//!
//! Its directory is checked at start, but the file is written only once the first worker is ready
//! (`PidPath::write`): a pid file means "this master serves", and a start that fails must not
//! have replaced the one of a master that does. At exit it is removed only if it is still the file
//! this process wrote and still names it.

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};

use crate::fs_at::{Dir, FileId, Placed};

/// More than any "<pid>\n" we would accept.
const MAX_PID_FILE: u64 = 64;

/// Where the pid file goes: its directory held open and checked writable, nothing written yet.
#[derive(Debug)]
pub struct PidPath {
    dir: Dir,
    name: OsString,
}

impl PidPath {
    /// Opens the directory of `path` and checks that we may write there, so that a pid file that
    /// cannot be written fails the start before anything runs (as haproxy's does).
    pub fn open(path: &Path) -> io::Result<PidPath> {
        // Absolute, so that messages name the file the operator means after a daemonizing
        // chdir("/") (the directory itself is held open).
        let path = std::path::absolute(path).map_err(|e| with_path(e, "write pid file", path))?;
        let (dir, name) =
            Dir::parent_of(&path).map_err(|e| with_path(e, "write pid file", &path))?;
        dir.check_writable()
            .map_err(|e| with_path(e, "write pid file", &path))?;
        // A file cannot be renamed over it: found now, not once a worker serves.
        if dir
            .is_dir(&name)
            .map_err(|e| with_path(e, "write pid file", &path))?
        {
            return Err(io::Error::new(
                io::Error::from_raw_os_error(libc::EISDIR).kind(),
                format!(
                    "cannot write pid file {}: it is a directory; give -p a file's path",
                    path.display()
                ),
            ));
        }
        Ok(PidPath { dir, name })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join(&self.name)
    }

    /// Writes "<pid>\n" so that a reader never sees an empty or partial file.
    pub fn write(self, pid: u32) -> io::Result<PidFile> {
        if let Some(other) = self.names_another_live_process(pid) {
            log::warn!(
                "pid file {} named pid {other}, which is still running: replaced (do two masters \
                 share this -p?)",
                self.path().display()
            );
        }
        let id = self
            .dir
            .write_file(&self.name, format!("{pid}\n").as_bytes(), 0o644)
            .map_err(|e| with_path(e, "write pid file", &self.path()))?;
        Ok(PidFile {
            placed: Placed {
                dir: self.dir,
                name: self.name,
                id,
            },
            pid,
        })
    }

    fn names_another_live_process(&self, pid: u32) -> Option<u32> {
        let other = named_pid(&self.dir, &self.name)
            .ok()??
            .1
            .filter(|p| *p != pid && *p != 0)?;
        let alive = matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(other).ok()?), None),
            Ok(()) | Err(nix::errno::Errno::EPERM)
        );
        alive.then_some(other)
    }
}

/// The pid file this process wrote; removed when dropped, if it is still ours.
#[derive(Debug)]
pub struct PidFile {
    placed: Placed,
    pid: u32,
}

impl PidFile {
    /// Checks the directory and writes the file at once (see [`PidPath`]).
    pub fn write(path: &Path, pid: u32) -> io::Result<PidFile> {
        PidPath::open(path)?.write(pid)
    }

    /// The pid file a previous image of this very process wrote (an upgrade in place keeps the
    /// pid): ours if it names `pid`. `None` if it does not (or cannot be read): then it is not
    /// this process's to remove.
    pub fn adopt(path: &Path, pid: u32) -> Option<PidFile> {
        let at = match PidPath::open(path) {
            Ok(at) => at,
            Err(e) => {
                log::warn!("after the upgrade in place: {e}");
                return None;
            }
        };
        match named_pid(&at.dir, &at.name) {
            Ok(Some((id, Some(named)))) if named == pid => Some(PidFile {
                placed: Placed {
                    dir: at.dir,
                    name: at.name,
                    id,
                },
                pid,
            }),
            Ok(_) => {
                log::debug!(
                    "pid file {} does not name pid {pid}: left to whoever wrote it",
                    at.path().display()
                );
                None
            }
            Err(e) => {
                log::warn!(
                    "after the upgrade in place: cannot read pid file {}: {e}; left as it is",
                    at.path().display()
                );
                None
            }
        }
    }

    pub fn path(&self) -> PathBuf {
        self.placed.path()
    }

    /// Removes the file now (also done on drop).
    pub fn remove(self) {}
}

impl Drop for PidFile {
    fn drop(&mut self) {
        match named_pid(&self.placed.dir, &self.placed.name) {
            Ok(None) => {}
            Ok(Some((id, named))) if id == self.placed.id && named == Some(self.pid) => {
                self.placed.remove("pid file")
            }
            Ok(Some((id, _))) if id != self.placed.id => log::warn!(
                "pid file {} was replaced by another file: left alone",
                self.path().display()
            ),
            Ok(Some(_)) => log::warn!(
                "pid file {} no longer names pid {}: left alone",
                self.path().display(),
                self.pid
            ),
            Err(e) => log::warn!(
                "cannot read back pid file {}: {e}; left alone",
                self.path().display()
            ),
        }
    }
}

/// What the file `name` holds now: its identity and the pid it names, if any.
fn named_pid(dir: &Dir, name: &OsStr) -> io::Result<Option<(FileId, Option<u32>)>> {
    let read = dir.read_file(name, MAX_PID_FILE)?;
    Ok(read.map(|(id, bytes)| (id, parse_pid(&bytes))))
}

/// The pid in "<pid>\n" (surrounding blanks allowed, as other tools write them).
fn parse_pid(bytes: &[u8]) -> Option<u32> {
    std::str::from_utf8(bytes).ok()?.trim().parse().ok()
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

    use crate::test_dir::temp_dir;

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
        let dir = temp_dir("write");
        let path = dir.path().join("haproxy.pid");
        let pf = PidFile::write(&path, 1234).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "1234\n");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o644);
        assert_eq!(entries(dir.path()), vec!["haproxy.pid"]);
        assert_eq!(pf.path(), path);
        pf.remove();
        assert!(!path.exists());
    }

    #[test]
    fn replaces_an_existing_file_and_drop_removes() {
        let dir = temp_dir("replace");
        let path = dir.path().join("p");
        fs::write(&path, "999999\n").unwrap();
        {
            let _pf = PidFile::write(&path, 7).unwrap();
            assert_eq!(fs::read_to_string(&path).unwrap(), "7\n");
        }
        assert!(!path.exists());
    }

    #[test]
    fn removing_an_already_removed_file_is_fine() {
        let dir = temp_dir("gone");
        let path = dir.path().join("p");
        let pf = PidFile::write(&path, 7).unwrap();
        fs::remove_file(&path).unwrap();
        pf.remove();
    }

    #[test]
    fn a_file_swapped_in_after_writing_is_not_removed() {
        let dir = temp_dir("swapped");
        let path = dir.path().join("p");
        let pf = PidFile::write(&path, 8).unwrap();
        fs::write(dir.path().join("other"), "not ours").unwrap();
        fs::rename(dir.path().join("other"), &path).unwrap();
        pf.remove();
        assert_eq!(fs::read_to_string(&path).unwrap(), "not ours");
    }

    #[test]
    fn a_file_rewritten_in_place_with_another_pid_is_not_removed() {
        let dir = temp_dir("rewritten");
        let path = dir.path().join("p");
        let pf = PidFile::write(&path, 8).unwrap();
        // Same inode, someone else's pid: no longer ours to remove.
        fs::write(&path, "9\n").unwrap();
        pf.remove();
        assert_eq!(fs::read_to_string(&path).unwrap(), "9\n");
    }

    #[test]
    fn nothing_is_written_until_write() {
        let dir = temp_dir("deferred");
        let path = dir.path().join("p");
        fs::write(&path, "77\n").unwrap();
        let at = PidPath::open(&path).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "77\n");
        drop(at);
        assert_eq!(fs::read_to_string(&path).unwrap(), "77\n");
    }

    #[test]
    fn adopt_takes_only_a_file_naming_our_pid() {
        let dir = temp_dir("adopt");
        let path = dir.path().join("p");
        assert!(PidFile::adopt(&path, 5).is_none());
        fs::write(&path, "6\n").unwrap();
        assert!(PidFile::adopt(&path, 5).is_none());
        fs::write(&path, "5\n").unwrap();
        let pf = PidFile::adopt(&path, 5).unwrap();
        pf.remove();
        assert!(!path.exists());
    }

    /// `-p` naming a directory fails at start, before any worker runs, not once the first
    /// worker serves (where the rename over it fails with EISDIR and the start is undone).
    #[test]
    fn a_directory_at_the_path_is_refused_at_open() {
        let dir = temp_dir("isdir");
        let path = dir.path().join("h.pid");
        fs::create_dir(&path).unwrap();
        let e = PidPath::open(&path).unwrap_err();
        assert!(e.to_string().contains(path.to_str().unwrap()), "{e}");
        assert!(e.to_string().contains("directory"), "{e}");
        // A symlink to a directory is replaced by the rename, not written through: fine.
        let link = dir.path().join("link.pid");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        PidPath::open(&link).unwrap();
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
        let dir = temp_dir("rel");
        let path = dir.path().join("p");
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
        let dir = temp_dir("mode");
        let path = dir.path().join("f");
        write_atomic(&path, b"abc", 0o600).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::read(&path).unwrap(), b"abc");
    }
}
