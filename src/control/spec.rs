//! `-S <path>[,mode,<octal>][,uid,<n>][,gid,<n>][,user,<name>][,group,<name>]`: where a control
//! socket is bound and who may connect to it, and binding it safely.
//!
//! Only unix sockets: an unauthenticated admin socket on the network is not offered.

use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use nix::sys::socket::Backlog;
use nix::unistd::{Group, User};

use crate::fs_at::{BindError, Dir, Placed};

use crate::runtime_dir::SUN_PATH_MAX;

/// The mode a control socket gets unless `mode,<octal>` says otherwise.
pub const DEFAULT_MODE: u32 = 0o600;

/// Pending connections the kernel queues for a control socket.
const BACKLOG: i32 = 16;

/// Where to bind one control socket, and its owner and permissions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlSpec {
    pub path: PathBuf,
    /// Permission bits of the socket file; connecting needs write permission on it.
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl ControlSpec {
    /// A socket at `path` with the default mode (0600) and owner.
    pub fn new(path: PathBuf) -> ControlSpec {
        ControlSpec {
            path,
            mode: DEFAULT_MODE,
            uid: None,
            gid: None,
        }
    }
}

#[derive(Debug)]
pub enum SpecError {
    Empty,
    /// A network address (`ipv4@`, `ipv6@`, `host:port`, ...).
    NetworkAddress {
        arg: String,
    },
    /// `abns@name`: an abstract socket has no file permissions to protect it.
    AbstractSocket {
        arg: String,
    },
    RelativePath {
        path: String,
    },
    /// A key without its value: options come in `key,value` pairs.
    MissingValue {
        key: String,
    },
    UnknownKey {
        key: String,
    },
    /// `uid` and `user` (or `gid` and `group`, or a key twice) set the same thing.
    Duplicate {
        key: String,
        earlier: String,
    },
    BadMode {
        value: String,
    },
    BadId {
        key: String,
        value: String,
    },
    UnknownUser {
        name: String,
    },
    UnknownGroup {
        name: String,
    },
    Lookup {
        key: String,
        name: String,
        source: io::Error,
    },
    TooLong {
        path: PathBuf,
        len: usize,
    },
    NotASocket {
        path: PathBuf,
    },
    InUse {
        path: PathBuf,
    },
    Inspect {
        path: PathBuf,
        source: io::Error,
    },
    Bind {
        path: PathBuf,
        source: io::Error,
    },
    Chmod {
        path: PathBuf,
        mode: u32,
        source: io::Error,
    },
    Chown {
        path: PathBuf,
        uid: Option<u32>,
        gid: Option<u32>,
        source: io::Error,
    },
    Listen {
        path: PathBuf,
        source: io::Error,
    },
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use SpecError::*;
        match self {
            Empty => f.write_str("-S needs a socket path, e.g. -S /run/haproxy-master.sock"),
            NetworkAddress { arg } => write!(
                f,
                "-S {arg}: only unix sockets are supported (an admin socket on the network would \
                 have no authentication); give an absolute path, e.g. -S /run/haproxy-master.sock"
            ),
            AbstractSocket { arg } => write!(
                f,
                "-S {arg}: abstract unix sockets have no file permissions to restrict who \
                 connects; give an absolute path instead"
            ),
            RelativePath { path } => write!(
                f,
                "-S {path}: the socket path must be absolute (start with '/')"
            ),
            MissingValue { key } => write!(
                f,
                "-S option '{key}' has no value: options come in pairs, e.g. ,mode,600 or ,user,haproxy"
            ),
            UnknownKey { key } => write!(
                f,
                "-S option '{key}' is not supported; use mode, uid, gid, user or group"
            ),
            Duplicate { key, earlier } => write!(
                f,
                "-S option '{key}' sets what '{earlier}' already set; give it once"
            ),
            BadMode { value } => write!(
                f,
                "-S mode '{value}' is not an octal permission between 0 and 777, e.g. 600 or 660"
            ),
            BadId { key, value } => write!(
                f,
                "-S {key} '{value}' is not a number; use {key},<number> or {},<name>",
                if key == "uid" { "user" } else { "group" }
            ),
            UnknownUser { name } => write!(f, "-S user '{name}': no such user"),
            UnknownGroup { name } => write!(f, "-S group '{name}': no such group"),
            Lookup { key, name, source } => {
                write!(f, "-S {key} '{name}': cannot look it up: {source}")
            }
            TooLong { path, len } => write!(
                f,
                "control socket path {} is {len} bytes long, more than the {SUN_PATH_MAX} bytes a \
                 unix socket path may have; choose a shorter one",
                path.display()
            ),
            NotASocket { path } => write!(
                f,
                "{} exists and is not a socket; hapmaster will not remove it: remove it yourself \
                 or choose another control socket path",
                path.display()
            ),
            InUse { path } => write!(
                f,
                "another process is listening on {}; stop it (another hapmaster or haproxy -S?) \
                 or choose another control socket path",
                path.display()
            ),
            Inspect { path, source } => {
                write!(f, "cannot inspect {}: {source}", path.display())
            }
            Bind { path, source } => write!(
                f,
                "cannot bind the control socket {}: {source}; check that its directory exists \
                 and is writable",
                path.display()
            ),
            Chmod { path, mode, source } => write!(
                f,
                "cannot set mode {mode:o} on {}: {source}",
                path.display()
            ),
            Chown {
                path,
                uid,
                gid,
                source,
            } => write!(
                f,
                "cannot give {} to uid {} gid {}: {source}; only root may give a file away",
                path.display(),
                uid.map_or("-".to_string(), |u| u.to_string()),
                gid.map_or("-".to_string(), |g| g.to_string()),
            ),
            Listen { path, source } => {
                write!(f, "cannot listen on {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for SpecError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        use SpecError::*;
        match self {
            Lookup { source, .. }
            | Inspect { source, .. }
            | Bind { source, .. }
            | Chmod { source, .. }
            | Chown { source, .. }
            | Listen { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Parses one `-S` argument: `<path>[,mode,<octal>][,uid,<n>][,gid,<n>][,user,<name>][,group,<name>]`.
///
/// The path may carry haproxy's `unix@` prefix. User and group names are resolved now, so a typo
/// fails at startup rather than at bind time.
pub fn parse_spec(arg: &str) -> Result<ControlSpec, SpecError> {
    parse_spec_with(arg, lookup_user, lookup_group)
}

type Lookup = fn(&str) -> Result<Option<u32>, io::Error>;

fn lookup_user(name: &str) -> Result<Option<u32>, io::Error> {
    User::from_name(name)
        .map(|u| u.map(|u| u.uid.as_raw()))
        .map_err(io::Error::from)
}

fn lookup_group(name: &str) -> Result<Option<u32>, io::Error> {
    Group::from_name(name)
        .map(|g| g.map(|g| g.gid.as_raw()))
        .map_err(io::Error::from)
}

fn parse_spec_with(arg: &str, user: Lookup, group: Lookup) -> Result<ControlSpec, SpecError> {
    let mut parts = arg.split(',');
    let address = parts.next().unwrap_or_default().trim();
    let mut spec = ControlSpec::new(parse_address(address)?);
    // Which key set mode, uid and gid, to refuse a second setting.
    let mut set_by: [Option<&str>; 3] = [None; 3];
    while let Some(key) = parts.next() {
        let value = parts.next().ok_or_else(|| SpecError::MissingValue {
            key: key.to_string(),
        })?;
        let slot = match key {
            "mode" => 0,
            "uid" | "user" => 1,
            "gid" | "group" => 2,
            _ => {
                return Err(SpecError::UnknownKey {
                    key: key.to_string(),
                })
            }
        };
        if let Some(earlier) = set_by[slot] {
            return Err(SpecError::Duplicate {
                key: key.to_string(),
                earlier: earlier.to_string(),
            });
        }
        set_by[slot] = Some(key);
        match key {
            "mode" => spec.mode = parse_mode(value)?,
            "uid" | "gid" => {
                let id = value.parse::<u32>().map_err(|_| SpecError::BadId {
                    key: key.to_string(),
                    value: value.to_string(),
                })?;
                if key == "uid" {
                    spec.uid = Some(id);
                } else {
                    spec.gid = Some(id);
                }
            }
            "user" => spec.uid = Some(resolve(key, value, user)?),
            _ => spec.gid = Some(resolve(key, value, group)?),
        }
    }
    Ok(spec)
}

fn parse_address(address: &str) -> Result<PathBuf, SpecError> {
    if address.is_empty() {
        return Err(SpecError::Empty);
    }
    if address.starts_with("abns@") {
        return Err(SpecError::AbstractSocket {
            arg: address.to_string(),
        });
    }
    let path = address.strip_prefix("unix@").unwrap_or(address);
    if path.starts_with('/') {
        return Ok(PathBuf::from(path));
    }
    let network_prefixes = [
        "ipv4@",
        "ipv6@",
        "tcp@",
        "tcp4@",
        "tcp6@",
        "udp@",
        "udp4@",
        "udp6@",
        "quic4@",
        "quic6@",
        "fd@",
        "sockpair@",
    ];
    if network_prefixes.iter().any(|p| address.starts_with(p)) || address.contains(':') {
        return Err(SpecError::NetworkAddress {
            arg: address.to_string(),
        });
    }
    Err(SpecError::RelativePath {
        path: path.to_string(),
    })
}

fn parse_mode(value: &str) -> Result<u32, SpecError> {
    let bad = || SpecError::BadMode {
        value: value.to_string(),
    };
    if value.is_empty() || !value.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(bad());
    }
    match u32::from_str_radix(value, 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(bad()),
    }
}

fn resolve(key: &str, name: &str, lookup: Lookup) -> Result<u32, SpecError> {
    match lookup(name) {
        Ok(Some(id)) => Ok(id),
        Ok(None) if key == "user" => Err(SpecError::UnknownUser {
            name: name.to_string(),
        }),
        Ok(None) => Err(SpecError::UnknownGroup {
            name: name.to_string(),
        }),
        Err(source) => Err(SpecError::Lookup {
            key: key.to_string(),
            name: name.to_string(),
            source,
        }),
    }
}

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
    use std::path::Path;

    fn no_lookup(_: &str) -> Result<Option<u32>, io::Error> {
        Ok(None)
    }

    fn fake_lookup(name: &str) -> Result<Option<u32>, io::Error> {
        match name {
            "haproxy" => Ok(Some(108)),
            "broken" => Err(io::Error::other("nss down")),
            _ => Ok(None),
        }
    }

    fn parse(arg: &str) -> Result<ControlSpec, SpecError> {
        parse_spec_with(arg, fake_lookup, fake_lookup)
    }

    #[test]
    fn plain_and_prefixed_paths() {
        assert_eq!(
            parse("/run/m.sock").unwrap(),
            ControlSpec::new("/run/m.sock".into())
        );
        assert_eq!(
            parse("unix@/run/m.sock").unwrap().path,
            Path::new("/run/m.sock")
        );
        assert_eq!(parse("/run/m.sock").unwrap().mode, 0o600);
    }

    #[test]
    fn all_options() {
        let s = parse("/run/m.sock,mode,660,uid,0,gid,108").unwrap();
        assert_eq!(
            s,
            ControlSpec {
                path: "/run/m.sock".into(),
                mode: 0o660,
                uid: Some(0),
                gid: Some(108)
            }
        );
        let s = parse("/run/m.sock,user,haproxy,group,haproxy").unwrap();
        assert_eq!((s.uid, s.gid), (Some(108), Some(108)));
        assert_eq!(parse("/x,mode,0").unwrap().mode, 0);
        assert_eq!(parse("/x,mode,0777").unwrap().mode, 0o777);
    }

    #[test]
    fn real_name_lookup() {
        let s = parse_spec("/run/m.sock,user,root,group,root").unwrap();
        assert_eq!((s.uid, s.gid), (Some(0), Some(0)));
        let e = parse_spec("/run/m.sock,user,no-such-user-hm").unwrap_err();
        assert!(matches!(e, SpecError::UnknownUser { .. }), "{e}");
        assert!(e.to_string().contains("no-such-user-hm"), "{e}");
    }

    #[test]
    fn errors_name_the_offending_part() {
        let cases: &[(&str, &str)] = &[
            ("", "needs a socket path"),
            ("127.0.0.1:9999", "127.0.0.1:9999: only unix sockets"),
            ("ipv4@127.0.0.1:9999", "ipv4@127.0.0.1:9999: only unix"),
            ("ipv6@::1:9999", "only unix sockets"),
            (":9999", "only unix sockets"),
            ("abns@master", "abstract"),
            ("run/m.sock", "run/m.sock: the socket path must be absolute"),
            ("unix@m.sock", "m.sock: the socket path must be absolute"),
            ("/x,mode", "'mode' has no value"),
            ("/x,mode,600,uid", "'uid' has no value"),
            ("/x,level,admin", "'level' is not supported"),
            ("/x,mode,9", "mode '9'"),
            ("/x,mode,", "mode ''"),
            ("/x,mode,1000", "mode '1000'"),
            ("/x,mode,-1", "mode '-1'"),
            ("/x,mode,0x1ff", "mode '0x1ff'"),
            (
                "/x,uid,abc",
                "uid 'abc' is not a number; use uid,<number> or user,<name>",
            ),
            (
                "/x,gid,-5",
                "gid '-5' is not a number; use gid,<number> or group,<name>",
            ),
            ("/x,user,nobody-here", "user 'nobody-here': no such user"),
            ("/x,group,nobody-here", "group 'nobody-here': no such group"),
            (
                "/x,user,broken",
                "user 'broken': cannot look it up: nss down",
            ),
            (
                "/x,uid,1,user,haproxy",
                "'user' sets what 'uid' already set",
            ),
            (
                "/x,mode,600,mode,644",
                "'mode' sets what 'mode' already set",
            ),
        ];
        for (arg, want) in cases {
            let msg = match parse(arg) {
                Ok(s) => panic!("{arg:?} parsed as {s:?}"),
                Err(e) => e.to_string(),
            };
            assert!(msg.contains(want), "{arg:?}: {msg:?} lacks {want:?}");
        }
        assert!(parse_spec_with("/x,user,a", no_lookup, no_lookup).is_err());
    }

    use crate::test_dir::TempDir;

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
        let dir = TempDir::new("bind");
        let mut spec = ControlSpec::new(dir.0.join("m.sock"));
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
        let dir = TempDir::new("chown");
        let spec = ControlSpec {
            path: dir.0.join("m.sock"),
            mode: 0o660,
            uid: Some(65534),
            gid: Some(65534),
        };
        let _l = bind(&spec, None).unwrap();
        let meta = std::fs::symlink_metadata(&spec.path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
        assert_eq!(meta.mode() & 0o777, 0o660);
    }

    #[test]
    fn refuses_non_socket_and_long_paths() {
        let dir = TempDir::new("refuse");
        let file = dir.0.join("plain");
        std::fs::write(&file, "keep me").unwrap();
        let err = bind(&ControlSpec::new(file.clone()), None).unwrap_err();
        assert!(matches!(err, SpecError::NotASocket { .. }), "{err}");
        assert!(err.to_string().contains("is not a socket"));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");

        let long = PathBuf::from(format!("/tmp/{}", "a".repeat(SUN_PATH_MAX)));
        let err = bind(&ControlSpec::new(long), None).unwrap_err();
        assert!(matches!(err, SpecError::TooLong { .. }), "{err}");
        assert!(err.to_string().contains("107 bytes"), "{err}");

        let missing = dir.0.join("no/such/m.sock");
        let err = bind(&ControlSpec::new(missing), None).unwrap_err();
        assert!(matches!(err, SpecError::Bind { .. }), "{err}");
        assert!(err.to_string().contains("no/such/m.sock"), "{err}");
    }

    #[test]
    fn longest_allowed_path_binds() {
        let dir = TempDir::new("len");
        let base = dir.0.as_os_str().len() + 1;
        if base >= SUN_PATH_MAX {
            return;
        }
        let path = dir.0.join("s".repeat(SUN_PATH_MAX - base));
        assert_eq!(path.as_os_str().len(), SUN_PATH_MAX);
        let _l = bind(&ControlSpec::new(path.clone()), None).unwrap();
        assert!(UnixStream::connect(&path).is_ok());
    }
}
