//! Files the master creates in directories that other users may be able to write: the `-S`
//! control sockets, the `-p` pid file (and, for uniformity, the files of the runtime directory).
//! Sockets are in `socket.rs`.
//!
//! In such a directory a path is not a file: between two calls someone can rename a symlink or
//! another file over the name. So nothing here chmods, chowns or unlinks by a path that could
//! follow a link or reach a file swapped in after we made ours:
//! - the directory is opened once (`O_PATH`) and every call is relative to that fd, with the final
//!   name only, never following a symlink there;
//! - a file is made complete (mode, owner, contents) where nobody else can reach it, then renamed
//!   into place: a new regular file under a random name created with `O_EXCL | O_NOFOLLOW` and
//!   fixed through its own fd; a socket in a directory only we can write (see `socket.rs`), since
//!   a socket's file cannot be changed through the socket's fd;
//! - we remove a name only while it still is the file we made (same device and inode).
//!
//! What is left is the window between that check and the unlink, in which a user who can write the
//! directory could put another entry at the name; we would remove that entry, which the same user
//! could have removed anyway (and in a sticky directory such as /tmp nobody can replace our entry).

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Identity of a file: what a name must still point at before we act on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(st: &libc::stat) -> FileId {
        FileId {
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }
}

/// A directory held open, to create, inspect and remove entries relative to it.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// A file we made in a [`Dir`]: removed only while the name still points at it.
#[derive(Debug)]
pub struct Placed {
    pub dir: Dir,
    pub name: OsString,
    pub id: FileId,
}

impl Placed {
    /// The full path, for messages and for others to find the file.
    pub fn path(&self) -> PathBuf {
        self.dir.path.join(&self.name)
    }

    /// Removes the file if the name is still ours. Quiet when it is already gone; a warning when
    /// someone replaced it (then it is left alone).
    pub fn remove(&self, what: &str) {
        match self.dir.remove_if(&self.name, self.id) {
            Ok(Removal::Removed | Removal::Missing) => {}
            Ok(Removal::NotOurs) => log::warn!(
                "{what} {} was replaced by another file: left alone",
                self.path().display()
            ),
            Err(e) => log::warn!("cannot remove {what} {}: {e}", self.path().display()),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Removal {
    Removed,
    Missing,
    NotOurs,
}

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("file name {name:?} contains a NUL byte"),
        )
    })
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

mod socket;
pub use socket::BindError;

/// A name no one can guess, for our temporary entries: a guessed name only makes us retry, but
/// then a user could keep us retrying. Starts with `.hapmaster` (see [`is_temp_name`]).
fn random_name(prefix: &str) -> OsString {
    let mut buf = [0u8; 8];
    // SAFETY: getrandom writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        // Never fails on Linux ≥ 3.17 for 8 bytes; fall back to something unique to us.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        buf = (t ^ u64::from(std::process::id()) << 32).to_ne_bytes();
    }
    let hex: String = buf.iter().map(|b| format!("{b:02x}")).collect();
    OsString::from(format!(".{prefix}.{hex}"))
}

/// Whether `name` is one of our temporary names: in a directory only we write (the runtime
/// directory), one left behind is a crashed predecessor's.
pub fn is_temp_name(name: &[u8]) -> bool {
    name.starts_with(b".hapmaster.") || name.starts_with(b".hapmaster-bind.")
}

/// How many random names to try before giving up (each clash is someone else's entry).
const NAME_TRIES: usize = 16;

impl Dir {
    /// Opens the directory that holds `path` and returns it with `path`'s final name. The final
    /// name must be a plain name (not `..`, not empty). Symlinks on the way are followed (e.g.
    /// Debian's /var/run -> /run): what counts is that later calls use this fd, not the path.
    pub fn parent_of(path: &Path) -> io::Result<(Dir, OsString)> {
        let name = match path.file_name() {
            Some(n) => n.to_os_string(),
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} does not end in a file name", path.display()),
                ))
            }
        };
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        Ok((Dir::open_with(parent, 0)?, name))
    }

    /// Opens `path` itself as a directory (not following a symlink in its last component).
    pub fn open(path: &Path) -> io::Result<Dir> {
        Dir::open_with(path, libc::O_NOFOLLOW)
    }

    fn open_with(path: &Path, flags: libc::c_int) -> io::Result<Dir> {
        let c = cstr(path.as_os_str())?;
        // SAFETY: c is a valid NUL-terminated string; the fd is checked and owned at once.
        let fd = cvt(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC | flags,
            )
        })?;
        Ok(Dir {
            // SAFETY: a fresh fd that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            path: std::path::absolute(path)?,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn stat(&self, name: &OsStr) -> io::Result<Option<libc::stat>> {
        let c = cstr(name)?;
        // SAFETY: stat is plain data filled by the kernel.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid dirfd, NUL-terminated name, st a valid out pointer.
        let rc = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        match cvt(rc) {
            Ok(_) => Ok(Some(st)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes `name` if it is still the file `id`.
    pub fn remove_if(&self, name: &OsStr, id: FileId) -> io::Result<Removal> {
        let dir_flag = match self.stat(name)? {
            None => return Ok(Removal::Missing),
            Some(st) if FileId::of(&st) != id => return Ok(Removal::NotOurs),
            Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => libc::AT_REMOVEDIR,
            Some(_) => 0,
        };
        let c = cstr(name)?;
        // SAFETY: valid dirfd and name.
        match cvt(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), dir_flag) }) {
            Ok(_) => Ok(Removal::Removed),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(Removal::Missing),
            Err(e) => Err(e),
        }
    }

    /// Reads at most `max` bytes of `name`, with its identity; `None` if there is no such entry.
    /// Never follows a symlink at `name` nor blocks on a FIFO there: what is not a regular file
    /// is returned with no contents (it is not one of ours either).
    pub fn read_file(&self, name: &OsStr, max: u64) -> io::Result<Option<(FileId, Vec<u8>)>> {
        let c = cstr(name)?;
        // SAFETY: valid dirfd and name; the fd is checked and owned at once.
        let rc = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDONLY
                    | libc::O_NOFOLLOW
                    | libc::O_NONBLOCK
                    | libc::O_NOCTTY
                    | libc::O_CLOEXEC,
            )
        };
        let fd = match cvt(rc) {
            // SAFETY: a fresh fd that nothing else owns.
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            // A symlink at `name`.
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Ok(self.stat(name)?.map(|st| (FileId::of(&st), Vec::new())))
            }
            Err(e) => return Err(e),
        };
        // SAFETY: stat is plain data filled by the kernel.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd and out pointer.
        cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
        let mut contents = Vec::new();
        if st.st_mode & libc::S_IFMT == libc::S_IFREG {
            use std::io::Read;
            std::fs::File::from(fd)
                .take(max)
                .read_to_end(&mut contents)?;
        }
        Ok(Some((FileId::of(&st), contents)))
    }

    /// Whether `name` is a directory (not following a symlink there); false if it is missing.
    pub fn is_dir(&self, name: &OsStr) -> io::Result<bool> {
        Ok(self
            .stat(name)?
            .is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR))
    }

    /// Fails unless this process may create entries in the directory (checked with its
    /// effective ids, as the later writes are).
    pub fn check_writable(&self) -> io::Result<()> {
        // SAFETY: valid dirfd, a NUL-terminated name.
        cvt(unsafe {
            libc::faccessat(
                self.fd.as_raw_fd(),
                c".".as_ptr(),
                libc::W_OK | libc::X_OK,
                libc::AT_EACCESS,
            )
        })
        .map(drop)
    }

    fn rename_from(&self, from_dir: BorrowedFd<'_>, from: &OsStr, to: &OsStr) -> io::Result<()> {
        let (f, t) = (cstr(from)?, cstr(to)?);
        // SAFETY: valid dirfds and names. rename(2) replaces `to` atomically and never follows
        // a symlink at `to`: it replaces the link itself.
        cvt(unsafe {
            libc::renameat(
                from_dir.as_raw_fd(),
                f.as_ptr(),
                self.fd.as_raw_fd(),
                t.as_ptr(),
            )
        })
        .map(drop)
    }

    /// Writes `contents` to `name` with exactly `mode` (the umask does not apply): a new file
    /// under a random name, fixed through its fd, then renamed over `name`. Returns its identity.
    pub fn write_file(&self, name: &OsStr, contents: &[u8], mode: u32) -> io::Result<FileId> {
        let (tmp, file) = self.create_temp(mode)?;
        let result = (|| {
            use std::io::Write;
            let mut file = std::fs::File::from(file);
            // No fsync: readers need the rename's atomicity, not durability (a pidfile means
            // nothing after a power loss), and an fsync on a busy disk stalled the event loop
            // for seconds at every reload (found by the benchmark).
            file.write_all(contents)?;
            let id = fstat_id(file.as_fd())?;
            self.rename_from(self.fd.as_fd(), &tmp, name)?;
            // rename(2) does nothing when both names are links to one file (someone linked
            // ours to `name`): then the temporary name is still there.
            let _ = self.remove_if(&tmp, id);
            Ok(id)
        })();
        if result.is_err() {
            self.remove_temp(&tmp);
        }
        result
    }

    /// A new regular file under a random name, `mode` set through its fd.
    fn create_temp(&self, mode: u32) -> io::Result<(OsString, OwnedFd)> {
        for _ in 0..NAME_TRIES {
            let name = random_name("hapmaster");
            let c = cstr(&name)?;
            // SAFETY: valid dirfd and name; the fd is checked and owned at once.
            let rc = unsafe {
                libc::openat(
                    self.fd.as_raw_fd(),
                    c.as_ptr(),
                    libc::O_WRONLY
                        | libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_NOFOLLOW
                        | libc::O_CLOEXEC,
                    0o600 as libc::c_uint,
                )
            };
            match cvt(rc) {
                Ok(fd) => {
                    // SAFETY: a fresh fd that nothing else owns.
                    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                    let fixed = cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode) });
                    if let Err(e) = fixed {
                        drop(fd);
                        self.remove_temp(&name);
                        return Err(e);
                    }
                    return Ok((name, fd));
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{}: {NAME_TRIES} random temporary names were all taken",
                self.path.display()
            ),
        ))
    }

    /// Removes a temporary entry of ours after a failure (quietly: the failure is what matters).
    fn remove_temp(&self, name: &OsStr) {
        if let Ok(c) = cstr(name) {
            // SAFETY: valid dirfd and name.
            unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) };
        }
    }
}

fn fstat_id(fd: BorrowedFd<'_>) -> io::Result<FileId> {
    // SAFETY: stat is plain data filled by the kernel.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and out pointer.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(FileId::of(&st))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use crate::test_dir::temp_dir;

    use crate::test_dir::names;

    #[test]
    fn write_file_has_the_mode_and_leaves_no_temp() {
        let t = temp_dir("write");
        let (dir, name) = Dir::parent_of(&t.path().join("x.pid")).unwrap();
        let id = dir.write_file(&name, b"42\n", 0o644).unwrap();
        let meta = std::fs::metadata(t.path().join("x.pid")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o644);
        assert_eq!((meta.dev(), meta.ino()), (id.dev, id.ino));
        assert_eq!(
            std::fs::read_to_string(t.path().join("x.pid")).unwrap(),
            "42\n"
        );
        assert_eq!(names(t.path()), ["x.pid"]);
    }

    #[test]
    fn write_file_replaces_a_planted_symlink_not_its_target() {
        let t = temp_dir("symlink");
        let target = t.path().join("precious");
        std::fs::write(&target, "keep").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&target, t.path().join("x.pid")).unwrap();
        let (dir, name) = Dir::parent_of(&t.path().join("x.pid")).unwrap();
        dir.write_file(&name, b"1\n", 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        let m = std::fs::metadata(&target).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o600);
        assert!(!std::fs::symlink_metadata(t.path().join("x.pid"))
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn remove_if_leaves_a_replaced_file() {
        let t = temp_dir("remove");
        let (dir, name) = Dir::parent_of(&t.path().join("f")).unwrap();
        let id = dir.write_file(&name, b"a", 0o600).unwrap();
        // Someone renames another file over ours.
        std::fs::write(t.path().join("other"), "b").unwrap();
        std::fs::rename(t.path().join("other"), t.path().join("f")).unwrap();
        assert_eq!(dir.remove_if(&name, id).unwrap(), Removal::NotOurs);
        assert_eq!(std::fs::read_to_string(t.path().join("f")).unwrap(), "b");
        let id2 = dir.stat(&name).unwrap().map(|st| FileId::of(&st)).unwrap();
        assert_eq!(dir.remove_if(&name, id2).unwrap(), Removal::Removed);
        assert_eq!(dir.remove_if(&name, id2).unwrap(), Removal::Missing);
    }

    #[test]
    fn read_file_reads_a_regular_file_and_only_names_others() {
        let t = temp_dir("read");
        let (dir, name) = Dir::parent_of(&t.path().join("f")).unwrap();
        assert_eq!(dir.read_file(&name, 64).unwrap(), None);
        let id = dir.write_file(&name, b"1234\n", 0o644).unwrap();
        assert_eq!(
            dir.read_file(&name, 64).unwrap(),
            Some((id, b"1234\n".to_vec()))
        );
        assert_eq!(dir.read_file(&name, 2).unwrap().unwrap().1, b"12");
        // A link is not followed, a FIFO not opened for a read that would block.
        std::fs::write(t.path().join("target"), "secret").unwrap();
        std::os::unix::fs::symlink(t.path().join("target"), t.path().join("link")).unwrap();
        let (_, link) = dir.read_file(OsStr::new("link"), 64).unwrap().unwrap();
        assert!(link.is_empty());
        nix::unistd::mkfifo(&t.path().join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let (_, fifo) = dir.read_file(OsStr::new("fifo"), 64).unwrap().unwrap();
        assert!(fifo.is_empty());
    }

    #[test]
    fn check_writable_passes_for_our_own_directory() {
        let t = temp_dir("writable");
        Dir::open(t.path()).unwrap().check_writable().unwrap();
    }
}
