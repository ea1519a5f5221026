//! Binding the control socket a [`ControlSpec`] describes, safely in a directory others may
//! write.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixListener;

use nix::sys::socket::Backlog;

use super::{ControlSpec, SpecError, SUN_PATH_MAX};
use crate::fs_at::{BindError, Dir, Placed};

/// Pending connections the kernel queues for a control socket.
const BACKLOG: i32 = 16;

/// Binds the control socket of `spec`: nonblocking, close-on-exec, listening, its mode and owner
/// set before its name appears (see `fs_at`: never by a path someone else could swap, since the
/// socket's directory may be writable by others, e.g. Debian's /run/haproxy for the haproxy
/// group). `staging`: a directory only we can write (the runtime directory), used to make the
/// socket in when it is on the same filesystem. Returns the listener and the placed file, to
/// remove at exit only if still ours.
///
/// A socket file left by a dead process (nothing accepts on it) is replaced. A live socket, or a
/// file that is not a socket, is left alone and reported.
pub fn bind(
    spec: &ControlSpec,
    staging: Option<&Dir>,
) -> Result<(UnixListener, Placed), SpecError> {
    let path = spec.path.as_path();
    let len = path.as_os_str().as_bytes().len();
    if len > SUN_PATH_MAX {
        return Err(SpecError::TooLong {
            path: path.to_path_buf(),
            len,
        });
    }
    let (dir, name) = Dir::parent_of(path).map_err(|source| SpecError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    let backlog = Backlog::new(BACKLOG).unwrap_or(Backlog::MAXCONN);
    let (fd, id) = dir
        .bind_unix(
            &name,
            spec.mode,
            (spec.uid, spec.gid),
            backlog.into(),
            staging,
        )
        .map_err(|e| spec_error(spec, e))?;
    Ok((UnixListener::from(fd), Placed { dir, name, id }))
}

fn spec_error(spec: &ControlSpec, e: BindError) -> SpecError {
    let path = spec.path.clone();
    match e {
        BindError::Inspect(source) => SpecError::Inspect { path, source },
        BindError::InUse => SpecError::InUse { path },
        BindError::NotASocket => SpecError::NotASocket { path },
        // Something that is not a socket took the name while we bound ours.
        BindError::Place(source)
            if matches!(source.raw_os_error(), Some(libc::EISDIR | libc::ENOTDIR)) =>
        {
            SpecError::NotASocket { path }
        }
        BindError::Bind(source) | BindError::Place(source) => SpecError::Bind { path, source },
        BindError::Chmod(source) => SpecError::Chmod {
            path,
            mode: spec.mode,
            source,
        },
        BindError::Chown(source) => SpecError::Chown {
            path,
            uid: spec.uid,
            gid: spec.gid,
            source,
        },
        BindError::Listen(source) => SpecError::Listen { path, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::os::unix::net::UnixStream;
    use std::path::PathBuf;

    use crate::test_dir::temp_dir;

    fn flags(fd: i32) -> (i32, i32) {
        // SAFETY: fcntl on an fd we own, no pointers.
        unsafe {
            (
                libc::fcntl(fd, libc::F_GETFD),
                libc::fcntl(fd, libc::F_GETFL),
            )
        }
    }

    #[test]
    fn binds_with_mode_nonblocking_cloexec() {
        let dir = temp_dir("bind");
        let mut spec = ControlSpec::new(dir.path().join("m.sock"));
        spec.mode = 0o640;
        let (listener, _placed) = bind(&spec, None).unwrap();
        let meta = std::fs::symlink_metadata(&spec.path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o7777, 0o640);
        let (fd_flags, fl_flags) = flags(listener.as_raw_fd());
        assert_ne!(fd_flags & libc::FD_CLOEXEC, 0);
        assert_ne!(fl_flags & libc::O_NONBLOCK, 0);
        // It listens.
        let _client = UnixStream::connect(&spec.path).unwrap();
        assert!(listener.accept().is_ok());

        // A second bind while it listens: refused, the file stays.
        let err = bind(&spec, None).unwrap_err();
        assert!(matches!(err, SpecError::InUse { .. }), "{err}");
        assert!(err.to_string().starts_with(&format!(
            "another process is listening on {}",
            spec.path.display()
        )));
        assert!(spec.path.exists());

        // Once the listener is gone the file is stale and replaced.
        drop(listener);
        assert!(spec.path.exists());
        let again = bind(&spec, None).unwrap();
        assert!(UnixStream::connect(&spec.path).is_ok());
        drop(again);
    }

    #[test]
    fn chown_when_root() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = temp_dir("chown");
        let spec = ControlSpec {
            path: dir.path().join("m.sock"),
            mode: 0o660,
            uid: Some(65534),
            gid: Some(65534),
            ..ControlSpec::new(Default::default())
        };
        let _l = bind(&spec, None).unwrap();
        let meta = std::fs::symlink_metadata(&spec.path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
        assert_eq!(meta.mode() & 0o777, 0o660);
    }

    #[test]
    fn refuses_non_socket_and_long_paths() {
        let dir = temp_dir("refuse");
        let file = dir.path().join("plain");
        std::fs::write(&file, "keep me").unwrap();
        let err = bind(&ControlSpec::new(file.clone()), None).unwrap_err();
        assert!(matches!(err, SpecError::NotASocket { .. }), "{err}");
        assert!(err.to_string().contains("is not a socket"));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");

        let long = PathBuf::from(format!("/tmp/{}", "a".repeat(SUN_PATH_MAX)));
        let err = bind(&ControlSpec::new(long), None).unwrap_err();
        assert!(matches!(err, SpecError::TooLong { .. }), "{err}");
        assert!(err.to_string().contains("107 bytes"), "{err}");

        let missing = dir.path().join("no/such/m.sock");
        let err = bind(&ControlSpec::new(missing), None).unwrap_err();
        assert!(matches!(err, SpecError::Bind { .. }), "{err}");
        assert!(err.to_string().contains("no/such/m.sock"), "{err}");
    }

    #[test]
    fn longest_allowed_path_binds() {
        let dir = temp_dir("len");
        let base = dir.path().as_os_str().len() + 1;
        if base >= SUN_PATH_MAX {
            return;
        }
        let path = dir.path().join("s".repeat(SUN_PATH_MAX - base));
        assert_eq!(path.as_os_str().len(), SUN_PATH_MAX);
        let _l = bind(&ControlSpec::new(path.clone()), None).unwrap();
        assert!(UnixStream::connect(&path).is_ok());
    }
}
