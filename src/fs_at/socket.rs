//! Binding a unix socket at a name in a directory others may write, with its mode and owner set
//! before the name appears.
//!
//! A socket's file cannot be fixed through the socket's fd, so it is made where nobody else can
//! reach it, then renamed into place:
//! - in a staging directory only we can write, on the same filesystem and mount (the runtime
//!   directory: ours, 0700, with no ancestor others can write), under a random name; or, when
//!   there is none (or the rename meets a mount boundary, EXDEV),
//! - in a fresh private directory made next to the final name, entered only through its fd: it
//!   is checked to be ours, private and empty before anything is done in it, since a user who can
//!   write the parent can rename another directory to its name between mkdir and open.
//!
//! The rename is atomic and never replaces a live socket: `RENAME_NOREPLACE` when the name was
//! free; for a stale socket (nothing accepts on it) `RENAME_EXCHANGE`, keeping the swap only if
//! what came back is that stale socket. In a setgid directory (Debian's /run/haproxy) the socket
//! gets the directory's group, as a socket bound there directly would.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{cstr, cvt, random_name, Dir, FileId, NAME_TRIES};

/// `sizeof(sun_path)`: a socket path must be shorter.
const SUN_PATH_LEN: usize = 108;

#[derive(Debug)]
pub enum BindError {
    /// The name cannot be inspected.
    Inspect(io::Error),
    /// A live socket is there: something accepts on it (or one appeared while we bound ours).
    InUse,
    /// A file that is not a socket is there.
    NotASocket,
    Bind(io::Error),
    Chmod(io::Error),
    Chown(io::Error),
    Listen(io::Error),
    /// Moving the finished socket to its name failed.
    Place(io::Error),
}

impl BindError {
    /// The error as a plain io error with a word on what failed, for callers with one error kind.
    pub fn into_io(self) -> io::Error {
        let with = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
        match self {
            BindError::Inspect(e) => with("cannot inspect the existing entry", e),
            BindError::InUse => io::Error::new(
                io::ErrorKind::AddrInUse,
                "another process is listening on it",
            ),
            BindError::NotASocket => io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            ),
            BindError::Bind(e) => with("bind", e),
            BindError::Chmod(e) => with("chmod", e),
            BindError::Chown(e) => with("chown", e),
            BindError::Listen(e) => with("listen", e),
            BindError::Place(e) => with("rename into place", e),
        }
    }
}

/// What is at the final name before we bind.
#[derive(Clone, Copy)]
enum AtName {
    Free,
    Stale(FileId),
}

impl Dir {
    /// Binds a unix stream socket at `name` with `mode` and, if given, `uid`/`gid` (else, in a
    /// setgid directory, the directory's group), all set before the name appears, and returns it
    /// listening with its identity. `staging`: a directory only we can write, used when it is on
    /// the same filesystem. A stale socket at `name` is replaced; anything else is an error.
    pub fn bind_unix(
        &self,
        name: &OsStr,
        mode: u32,
        (uid, gid): (Option<u32>, Option<u32>),
        backlog: i32,
        staging: Option<&Dir>,
    ) -> Result<(OwnedFd, FileId), BindError> {
        let at_name = match self.stat(name).map_err(BindError::Inspect)? {
            None => AtName::Free,
            Some(st) if st.st_mode & libc::S_IFMT != libc::S_IFSOCK => {
                return Err(BindError::NotASocket)
            }
            Some(_) if self.accepts(name).map_err(BindError::Inspect)? => {
                return Err(BindError::InUse)
            }
            Some(st) => AtName::Stale(FileId::of(&st)),
        };
        let here = fstat(self.fd.as_raw_fd()).map_err(BindError::Inspect)?;
        // The directory's group, as bind(2) in a setgid directory would give it.
        let gid = gid.or((here.st_mode & libc::S_ISGID != 0).then_some(here.st_gid));
        let what = (mode, uid, gid, backlog);
        if let Some(staging) = staging {
            if fstat(staging.fd.as_raw_fd()).is_ok_and(|st| st.st_dev == here.st_dev) {
                match self.bind_via_staging(staging, name, at_name, what) {
                    // Same filesystem but another mount (systemd's RuntimeDirectory= under
                    // ProtectSystem=, a bind mount): rename(2) cannot cross it.
                    Err(BindError::Place(e)) if e.raw_os_error() == Some(libc::EXDEV) => {}
                    other => return other,
                }
            }
        }
        let private = PrivateDir::create(self).map_err(BindError::Bind)?;
        let result = private
            .dir
            .make_and_place(self, (OsStr::new("s"), true), name, at_name, what);
        private.remove(self);
        result
    }

    fn bind_via_staging(
        &self,
        staging: &Dir,
        name: &OsStr,
        at_name: AtName,
        what: (u32, Option<u32>, Option<u32>, i32),
    ) -> Result<(OwnedFd, FileId), BindError> {
        for _ in 0..NAME_TRIES {
            let tmp = random_name("hapmaster-bind");
            match staging.make_and_place(self, (&tmp, false), name, at_name, what) {
                Err(BindError::Bind(e)) if e.raw_os_error() == Some(libc::EADDRINUSE) => continue,
                other => return other,
            }
        }
        Err(BindError::Bind(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "{}: {NAME_TRIES} random temporary names were all taken",
                staging.path.display()
            ),
        )))
    }

    /// In `self` (a directory only we can write): binds `tmp`, sets mode and owner, listens,
    /// then moves it to `name` in `dest`. Whatever it made and did not move is removed.
    fn make_and_place(
        &self,
        dest: &Dir,
        (tmp, through_fd): (&OsStr, bool),
        name: &OsStr,
        at_name: AtName,
        (mode, uid, gid, backlog): (u32, Option<u32>, Option<u32>, i32),
    ) -> Result<(OwnedFd, FileId), BindError> {
        let sock = unix_socket().map_err(BindError::Bind)?;
        let path = if through_fd {
            // A private directory next to the final name: only through our fd, so through the
            // directory we checked, even if someone renamed it meanwhile. No /proc, no bind.
            let p = PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd())).join(tmp);
            if !Path::new("/proc/self/fd").is_dir() {
                return Err(BindError::Bind(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "/proc is not mounted: cannot bind safely in a directory others can write; \
                     mount /proc, or put the socket on the runtime directory's filesystem",
                )));
            }
            p
        } else {
            // The staging directory and its ancestors are writable by no one else.
            self.path.join(tmp)
        };
        bind(&sock, &path).map_err(BindError::Bind)?;
        let id = match self.stat(tmp) {
            Ok(Some(st)) if st.st_mode & libc::S_IFMT == libc::S_IFSOCK => FileId::of(&st),
            _ => {
                return Err(BindError::Bind(io::Error::other(format!(
                    "the socket bound at {} is not where it was bound",
                    path.display()
                ))))
            }
        };
        let result = self.finish(dest, tmp, name, at_name, (mode, uid, gid), &sock, backlog);
        // Ours and not moved (an error, or the stale socket that came back): gone.
        if let Ok(Some(st)) = self.stat(tmp) {
            let back = FileId::of(&st);
            if back == id || matches!(at_name, AtName::Stale(stale) if stale == back) {
                let _ = self.remove_if(tmp, back);
            }
        }
        result.map(|()| (sock, id))
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        dest: &Dir,
        tmp: &OsStr,
        name: &OsStr,
        at_name: AtName,
        (mode, uid, gid): (u32, Option<u32>, Option<u32>),
        sock: &OwnedFd,
        backlog: i32,
    ) -> Result<(), BindError> {
        let c = cstr(tmp).map_err(BindError::Bind)?;
        // Nobody else can write this directory, so `tmp` is the socket we bound.
        // SAFETY: valid dirfd and name.
        cvt(unsafe { libc::fchmodat(self.fd.as_raw_fd(), c.as_ptr(), mode, 0) })
            .map_err(BindError::Chmod)?;
        if uid.is_some() || gid.is_some() {
            let (u, g) = (uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX));
            // SAFETY: valid dirfd and name; -1 (u32::MAX) leaves that id unchanged.
            cvt(unsafe {
                libc::fchownat(
                    self.fd.as_raw_fd(),
                    c.as_ptr(),
                    u,
                    g,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            })
            .map_err(BindError::Chown)?;
        }
        // Listening before the name appears: a client never meets a socket that refuses.
        // SAFETY: valid socket fd.
        cvt(unsafe { libc::listen(sock.as_raw_fd(), backlog) }).map_err(BindError::Listen)?;
        match at_name {
            AtName::Free => match rename2(self, tmp, dest, name, libc::RENAME_NOREPLACE) {
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Err(BindError::InUse),
                other => other.map_err(BindError::Place),
            },
            AtName::Stale(stale) => {
                rename2(self, tmp, dest, name, libc::RENAME_EXCHANGE).map_err(BindError::Place)?;
                match self.stat(tmp) {
                    Ok(Some(st)) if FileId::of(&st) == stale => Ok(()),
                    // Not the stale socket we probed: someone put theirs there meanwhile.
                    // Give it its name back.
                    _ => {
                        let _ = rename2(self, tmp, dest, name, libc::RENAME_EXCHANGE);
                        Err(BindError::InUse)
                    }
                }
            }
        }
    }

    /// Whether something accepts connections on the socket `name`: a nonblocking connect
    /// (a full backlog, EAGAIN, counts as accepting rather than making us wait).
    fn accepts(&self, name: &OsStr) -> io::Result<bool> {
        let sock = unix_socket()?;
        // Through our fd where it fits; the plain path otherwise (the name was a socket a
        // moment ago; a link swapped in only makes us report "in use").
        let mut path = PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd())).join(name);
        if path.as_os_str().len() >= SUN_PATH_LEN || !Path::new("/proc/self/fd").is_dir() {
            path = self.path.join(name);
        }
        match connect(&sock, &path) {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINPROGRESS)) => {
                Ok(true)
            }
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// renameat2(2). Filesystems without the flag (EINVAL) get a plain rename for NOREPLACE and
/// EXCHANGE alike: the old behaviour, with its small window.
fn rename2(
    from: &Dir,
    from_name: &OsStr,
    to: &Dir,
    to_name: &OsStr,
    flags: libc::c_uint,
) -> io::Result<()> {
    let (f, t) = (cstr(from_name)?, cstr(to_name)?);
    // SAFETY: valid dirfds and names.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            from.fd.as_raw_fd(),
            f.as_ptr(),
            to.fd.as_raw_fd(),
            t.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) {
        // SAFETY: as above.
        return cvt(unsafe {
            libc::renameat(
                from.fd.as_raw_fd(),
                f.as_ptr(),
                to.fd.as_raw_fd(),
                t.as_ptr(),
            )
        })
        .map(drop);
    }
    Err(e)
}

fn fstat(fd: libc::c_int) -> io::Result<libc::stat> {
    // SAFETY: stat is plain data filled by the kernel; valid fd and out pointer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

/// A directory only we can enter, made next to the final name (same filesystem, so rename(2) can
/// move the finished socket out of it).
struct PrivateDir {
    name: OsString,
    dir: Dir,
    id: FileId,
}

impl PrivateDir {
    fn create(parent: &Dir) -> io::Result<PrivateDir> {
        for _ in 0..NAME_TRIES {
            let name = random_name("hapmaster-bind");
            let c = cstr(&name)?;
            // SAFETY: valid dirfd and name.
            match cvt(unsafe { libc::mkdirat(parent.fd.as_raw_fd(), c.as_ptr(), 0o700) }) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
                Err(e) => return Err(e),
            }
            // SAFETY: valid dirfd and name; the fd is checked and owned at once.
            let opened = cvt(unsafe {
                libc::openat(
                    parent.fd.as_raw_fd(),
                    c.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                )
            });
            let fd = match opened {
                // SAFETY: a fresh fd that nothing else owns.
                Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
                Err(e) => {
                    // rmdir removes only an empty directory: ours, or nothing of value.
                    // SAFETY: valid dirfd and name.
                    unsafe {
                        libc::unlinkat(parent.fd.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR)
                    };
                    return Err(e);
                }
            };
            let st = fstat(fd.as_raw_fd())?;
            // Between mkdirat and openat, whoever can write the parent can rename another
            // directory (even root's) to this name: touch nothing that is not what we made,
            // which is ours, without group or other bits (mkdir's 0700 less the umask), and empty.
            let ours = st.st_uid == nix::unistd::geteuid().as_raw()
                && st.st_mode & 0o077 == 0
                && is_empty_dir(&fd)?;
            if !ours {
                return Err(io::Error::other(format!(
                    "{} was replaced by another directory before it could be used; someone is \
                     tampering with {}",
                    parent.path.join(&name).display(),
                    parent.path.display()
                )));
            }
            if st.st_mode & 0o700 != 0o700 {
                // A umask took bits we need (only our own directory reaches this).
                cvt(unsafe { libc::fchmod(fd.as_raw_fd(), 0o700) })?;
            }
            return Ok(PrivateDir {
                dir: Dir {
                    fd,
                    path: parent.path.join(&name),
                },
                name,
                id: FileId::of(&st),
            });
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{}: {NAME_TRIES} random directory names were all taken",
                parent.path.display()
            ),
        ))
    }

    /// Removes the (by now empty) directory while its name is still ours.
    fn remove(self, parent: &Dir) {
        if let Err(e) = parent.remove_if(&self.name, self.id) {
            log::warn!(
                "cannot remove the temporary directory {}: {e}",
                self.dir.path.display()
            );
        }
    }
}

/// True when the directory has no entry but `.` and `..`.
fn is_empty_dir(fd: &OwnedFd) -> io::Result<bool> {
    // A second fd for the listing (it moves the position; closedir closes it).
    // SAFETY: valid dirfd; "." is NUL-terminated.
    let dup = cvt(unsafe {
        libc::openat(
            fd.as_raw_fd(),
            c".".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: dup is a fresh directory fd; fdopendir takes it over (closedir closes it).
    let dir = unsafe { libc::fdopendir(dup) };
    if dir.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so dup is still ours to close.
        unsafe { libc::close(dup) };
        return Err(e);
    }
    let mut empty = true;
    loop {
        // SAFETY: dir is a valid DIR*; the entry is read before the next readdir.
        let entry = unsafe { libc::readdir(dir) };
        if entry.is_null() {
            break;
        }
        // SAFETY: d_name is NUL-terminated within the entry.
        let name = unsafe { std::ffi::CStr::from_ptr((*entry).d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            empty = false;
            break;
        }
    }
    // SAFETY: dir is valid and closed once.
    unsafe { libc::closedir(dir) };
    Ok(empty)
}

fn unix_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is checked and owned at once.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("unix socket path too long: {}", path.display()),
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

fn bind(sock: &OwnedFd, path: &Path) -> io::Result<()> {
    let (addr, len) = sockaddr(path)?;
    // SAFETY: addr is a valid sockaddr_un of length len.
    cvt(unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    })
    .map(drop)
}

fn connect(sock: &OwnedFd, path: &Path) -> io::Result<()> {
    let (addr, len) = sockaddr(path)?;
    loop {
        // SAFETY: addr is a valid sockaddr_un of length len.
        let rc = unsafe {
            libc::connect(
                sock.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                len,
            )
        };
        match cvt(rc) {
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            other => return other.map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    use crate::test_dir::temp_dir;

    use crate::test_dir::names;

    /// Both ways: through a private directory (no staging), and through a staging directory.
    #[test]
    fn bind_sets_mode_before_the_name_appears_replaces_stale_and_cleans_up() {
        let t = temp_dir("bind");
        let stage_path = t.path().join("stage");
        std::fs::create_dir(&stage_path).unwrap();
        let stage = Dir::open(&stage_path).unwrap();
        for (i, staging) in [None, Some(&stage)].into_iter().enumerate() {
            let sock = t.path().join(format!("m{i}.sock"));
            let (dir, name) = Dir::parent_of(&sock).unwrap();
            let (fd, id) = dir
                .bind_unix(&name, 0o640, (None, None), 16, staging)
                .unwrap();
            let meta = std::fs::symlink_metadata(&sock).unwrap();
            assert!(meta.file_type().is_socket());
            assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
            assert_eq!((meta.dev(), meta.ino()), (id.dev, id.ino));
            std::os::unix::net::UnixStream::connect(&sock).unwrap();
            assert!(matches!(
                dir.bind_unix(&name, 0o600, (None, None), 16, staging),
                Err(BindError::InUse)
            ));
            drop(fd);
            let (_fd, id2) = dir
                .bind_unix(&name, 0o600, (None, None), 16, staging)
                .unwrap();
            assert_ne!(id, id2);
            std::os::unix::net::UnixStream::connect(&sock).unwrap();
        }
        assert_eq!(names(t.path()), ["m0.sock", "m1.sock", "stage"]);
        assert!(names(&stage_path).is_empty(), "{:?}", names(&stage_path));
    }

    #[test]
    fn refuses_a_file_that_is_not_a_socket() {
        let t = temp_dir("notsock");
        std::fs::write(t.path().join("m.sock"), "x").unwrap();
        let (dir, name) = Dir::parent_of(&t.path().join("m.sock")).unwrap();
        assert!(matches!(
            dir.bind_unix(&name, 0o600, (None, None), 16, None),
            Err(BindError::NotASocket)
        ));
        assert_eq!(
            std::fs::read_to_string(t.path().join("m.sock")).unwrap(),
            "x"
        );
        assert_eq!(names(t.path()), ["m.sock"]);
    }

    #[test]
    fn a_setgid_directory_gives_its_group() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let t = temp_dir("setgid");
        std::os::unix::fs::chown(t.path(), None, Some(65534)).unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o2775)).unwrap();
        let (dir, name) = Dir::parent_of(&t.path().join("m.sock")).unwrap();
        let _s = dir.bind_unix(&name, 0o660, (None, None), 16, None).unwrap();
        assert_eq!(
            std::fs::metadata(t.path().join("m.sock")).unwrap().gid(),
            65534
        );
    }

    #[test]
    fn a_symlinked_parent_is_followed() {
        let t = temp_dir("link");
        std::fs::create_dir(t.path().join("real")).unwrap();
        std::os::unix::fs::symlink(t.path().join("real"), t.path().join("run")).unwrap();
        let (dir, name) = Dir::parent_of(&t.path().join("run/m.sock")).unwrap();
        let _s = dir.bind_unix(&name, 0o600, (None, None), 16, None).unwrap();
        assert!(t.path().join("real/m.sock").exists());
    }
}
