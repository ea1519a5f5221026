//! `-S <path>[,mode,<octal>][,uid,<n>][,gid,<n>][,user,<name>][,group,<name>][,level,<level>]`:
//! where a control socket is bound and who may connect to it, and binding it safely; or
//! `-S fd@<n>[,level,<level>]`, a listening socket the caller passes (`inherited`). `level` is
//! haproxy's: the access level its sessions start at (`user`, `operator`, `admin`, the default).
//!
//! hapmaster binds only unix sockets: an unauthenticated admin socket on the network is not
//! offered. A passed socket may be of any family: whoever passed it chose its address.

mod bind;
mod inherited;
mod parse;

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::control::levels::Level;
use crate::runtime_dir::SUN_PATH_MAX;
pub use bind::bind;
pub use inherited::{accept_any, adopt, inherited_fd_numbers, parse_fd, Family};
pub use parse::{level_of, parse_spec};

/// The mode a control socket gets unless `mode,<octal>` says otherwise.
pub const DEFAULT_MODE: u32 = 0o600;

/// Where to bind one control socket, and its owner and permissions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlSpec {
    pub path: PathBuf,
    /// Permission bits of the socket file; connecting needs write permission on it.
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// The level its sessions start at.
    pub level: Level,
}

impl ControlSpec {
    /// A socket at `path` with the default mode (0600) and owner.
    pub fn new(path: PathBuf) -> ControlSpec {
        ControlSpec {
            path,
            mode: DEFAULT_MODE,
            uid: None,
            gid: None,
            level: Level::Admin,
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
    BadLevel {
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
    /// `fd@` without a number above 2.
    BadFd {
        arg: String,
    },
    /// `mode`, `user`, ... on `fd@<n>`: hapmaster did not create the socket.
    OptionOnFd {
        key: String,
    },
    /// `fd@<n>` that is not an open listening stream socket, or given twice.
    NotAListener {
        fd: i32,
        what: String,
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
                "-S option '{key}' is not supported; use mode, uid, gid, user, group or level"
            ),
            Duplicate { key, earlier } => write!(
                f,
                "-S option '{key}' sets what '{earlier}' already set; give it once"
            ),
            BadMode { value } => write!(
                f,
                "-S mode '{value}' is not an octal permission between 0 and 777, e.g. 600 or 660"
            ),
            BadLevel { value } => write!(
                f,
                "-S level '{value}' is not a level: use user, operator or admin (the default)"
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
            BadFd { arg } => write!(
                f,
                "-S {arg}: give the number of an fd hapmaster inherits, 3 or above (0 to 2 are \
                 stdin, stdout and stderr), e.g. -S fd@3"
            ),
            OptionOnFd { key } => write!(
                f,
                "-S option '{key}' does not apply to an fd@ socket: hapmaster did not create it; \
                 set its permissions where it is bound"
            ),
            NotAListener { fd, what } => write!(
                f,
                "-S fd@{fd}: {what}; pass a listening stream socket (bound, then listen(2)) as \
                 this fd"
            ),
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
