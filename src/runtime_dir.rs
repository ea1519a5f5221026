//! The master's private directory: workers' stats sockets and config fragments, the master CLI
//! socket, and the lock that keeps two masters from sharing it.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::pidfile::{remove_quietly, write_atomic};

pub const LOCK_FILE: &str = "hapmaster.lock";
pub const MASTER_SOCKET: &str = "master.sock";
const RUNTIME_DIRECTORY: &str = "RUNTIME_DIRECTORY";

/// `sizeof(sun_path) - 1`: the longest unix socket path the kernel accepts.
pub const SUN_PATH_MAX: usize = 107;

/// The longest file name a worker's stats socket can have in the directory: haproxy binds
/// `<sock>.<pid>.tmp` first, then renames it, so that name must fit too. Largest generation,
/// largest pid Linux allows (`PID_MAX_LIMIT`).
fn longest_socket_name() -> String {
    format!("worker-{}.sock.{}.tmp", u64::MAX, 4_194_304)
}

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

/// A locked runtime directory. The lock is held until this is dropped (or the process dies:
/// flock(2) locks vanish with the process, unlike a pid file left by a crash).
#[derive(Debug)]
pub struct RuntimeDir {
    path: PathBuf,
    created: bool,
    /// systemd's `RuntimeDirectory=`: systemd creates and removes it, we only empty it.
    systemd_owned: bool,
    lock: Flock<File>,
}

impl RuntimeDir {
    /// Chooses: explicit (--runtime-dir) > $RUNTIME_DIRECTORY (first of several) > /run/hapmaster
    /// as root > $XDG_RUNTIME_DIR/hapmaster > /tmp/hapmaster-<euid>.
    pub fn choose(explicit: Option<&Path>) -> PathBuf {
        choose_from(
            explicit,
            |name| std::env::var_os(name),
            nix::unistd::geteuid().as_raw(),
        )
    }

    /// Creates (0700) or checks the directory, locks it, and removes a crashed predecessor's
    /// sockets and fragments.
    pub fn acquire(path: PathBuf) -> Result<RuntimeDir, RuntimeDirError> {
        let dir = RuntimeDir::acquire_keeping_files(path)?;
        dir.remove_stale_files();
        Ok(dir)
    }

    /// `acquire` without removing anything: a crashed predecessor's workers may still run (see
    /// `orphans`), and their files stay until they are stopped. Then call `remove_stale_files`.
    pub fn acquire_keeping_files(path: PathBuf) -> Result<RuntimeDir, RuntimeDirError> {
        let systemd_dir = first_runtime_directory(std::env::var_os(RUNTIME_DIRECTORY));
        acquire_with(path, systemd_dir.as_deref())
    }

    /// Removes what a crashed master (or its workers) left: sockets, fragments, temp files.
    pub fn remove_stale_files(&self) {
        self.remove_matching("stale file", is_stale_file_name);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn worker_socket(&self, generation: u64) -> PathBuf {
        self.path.join(format!("worker-{generation}.sock"))
    }

    pub fn worker_fragment(&self, generation: u64) -> PathBuf {
        self.path.join(format!("worker-{generation}.cfg"))
    }

    pub fn master_socket(&self) -> PathBuf {
        self.path.join(MASTER_SOCKET)
    }

    /// True for a worker's stats socket in this directory, under its final name or the temp name
    /// haproxy binds first (`<sock>.<pid>.tmp`, which is what getsockname(2) then reports).
    pub fn is_worker_socket_name(&self, unix_path: &Path) -> bool {
        unix_path.parent() == Some(self.path.as_path())
            && unix_path
                .file_name()
                .is_some_and(|n| is_worker_socket_file_name(n.as_bytes()))
    }

    /// Writes the worker's private config fragment (0600: it grants admin on the socket).
    pub fn write_fragment(&self, generation: u64) -> Result<PathBuf, RuntimeDirError> {
        let path = self.worker_fragment(generation);
        let contents = fragment_contents(generation, &self.worker_socket(generation));
        write_atomic(&path, contents.as_bytes(), 0o600).map_err(|source| {
            RuntimeDirError::WriteFragment {
                path: path.clone(),
                source,
            }
        })?;
        Ok(path)
    }

    /// Removes a generation's fragment, socket and haproxy's temp leftovers of that socket.
    pub fn remove_worker_files(&self, generation: u64) {
        remove_quietly(&self.worker_fragment(generation), "worker config fragment");
        remove_quietly(&self.worker_socket(generation), "worker socket");
        let prefix = format!("worker-{generation}.sock.");
        self.remove_matching("worker socket leftover", |name| {
            name.strip_prefix(prefix.as_bytes())
                .is_some_and(is_haproxy_temp_suffix)
        });
    }

    /// Where the copy of the configuration files worker `generation` was started with is kept
    /// (see `config_copy`): a crash replacement starts from it.
    pub fn config_copy_dir(&self, generation: u64) -> PathBuf {
        self.path.join(format!("config-{generation}"))
    }

    /// Removes a generation's configuration copy, if it has one.
    pub fn remove_config_copy(&self, generation: u64) {
        let dir = self.config_copy_dir(generation);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => log::warn!(
                "cannot remove the configuration copy {}: {e}; remove it by hand",
                dir.display()
            ),
            _ => {}
        }
    }

    /// The generations that have a configuration copy in the directory, in ascending order.
    pub fn config_copy_generations(&self) -> Vec<u64> {
        let entries = match fs::read_dir(&self.path) {
            Ok(entries) => entries,
            Err(e) => {
                log::warn!("cannot list {}: {e}", self.path.display());
                return Vec::new();
            }
        };
        let mut generations: Vec<u64> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let digits = name.as_bytes().strip_prefix(b"config-")?;
                if !is_digits(digits) {
                    return None;
                }
                std::str::from_utf8(digits).ok()?.parse().ok()
            })
            .collect();
        generations.sort_unstable();
        generations
    }

    /// The locked lock file, for a master that re-executes itself (upgrade in place) and keeps it.
    pub fn lock_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.lock.as_fd()
    }

    /// Whether this master created the directory (and so removes it at exit).
    pub fn created(&self) -> bool {
        self.created
    }

    /// Takes the directory over from this process's previous image after an upgrade in place:
    /// the lock stays held through the inherited `lock` fd, and the live workers' files stay.
    pub fn resume(
        path: PathBuf,
        lock: std::os::fd::OwnedFd,
        created: bool,
    ) -> Result<RuntimeDir, RuntimeDirError> {
        let systemd_dir = first_runtime_directory(std::env::var_os(RUNTIME_DIRECTORY));
        let lock_err = |source| RuntimeDirError::Lock {
            path: path.join(LOCK_FILE),
            source,
        };
        // Re-locking the open file description that already holds the lock succeeds at once.
        let lock = Flock::lock(File::from(lock), FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| lock_err(errno.into()))?;
        nix::fcntl::fcntl(
            &*lock,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .map_err(|e| lock_err(e.into()))?;
        Ok(RuntimeDir {
            systemd_owned: systemd_dir.as_deref() == Some(path.as_path()),
            path,
            created,
            lock,
        })
    }

    /// Rewrites the pid in the lock file, e.g. after daemonizing changed our pid.
    pub fn record_pid(&self, pid: u32) -> io::Result<()> {
        write_lock_pid(&self.lock, pid)
    }

    /// Removes master.sock, the lock file, and the directory if we created it.
    pub fn cleanup(self) {
        remove_quietly(&self.master_socket(), "master socket");
        // Removed while still locked; a new master that opened the old file re-checks the
        // inode after locking (see `lock`).
        remove_quietly(&self.path.join(LOCK_FILE), "lock file");
        let remove_dir = self.created && !self.systemd_owned;
        let path = self.path.clone();
        drop(self);
        if remove_dir {
            if let Err(e) = fs::remove_dir(&path) {
                log::warn!("cannot remove runtime directory {}: {e}", path.display());
            }
        }
    }

    fn remove_matching(&self, what: &str, matches: impl Fn(&[u8]) -> bool) {
        let entries = match fs::read_dir(&self.path) {
            Ok(entries) => entries,
            Err(e) => {
                log::warn!("cannot list {}: {e}", self.path.display());
                return;
            }
        };
        for entry in entries.flatten() {
            if matches(entry.file_name().as_bytes()) {
                remove_quietly(&entry.path(), what);
            }
        }
    }
}

/// `choose` with its inputs given, for tests.
pub fn choose_from(
    explicit: Option<&Path>,
    env: impl Fn(&str) -> Option<OsString>,
    euid: u32,
) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Some(p) = first_runtime_directory(env(RUNTIME_DIRECTORY)) {
        return p;
    }
    if euid == 0 {
        return PathBuf::from("/run/hapmaster");
    }
    // The XDG spec says a relative value must be ignored.
    match env("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(xdg) if xdg.is_absolute() => xdg.join("hapmaster"),
        _ => PathBuf::from(format!("/tmp/hapmaster-{euid}")),
    }
}

/// systemd sets one absolute path per `RuntimeDirectory=` entry, separated by ':'.
fn first_runtime_directory(value: Option<OsString>) -> Option<PathBuf> {
    let value = value?;
    let first = value.as_bytes().split(|&b| b == b':').next()?;
    let path = PathBuf::from(std::ffi::OsStr::from_bytes(first));
    path.is_absolute().then_some(path)
}

fn acquire_with(path: PathBuf, systemd_dir: Option<&Path>) -> Result<RuntimeDir, RuntimeDirError> {
    // Absolute: haproxy's -C may change the workers' directory before they read the fragment.
    let path = std::path::absolute(&path).map_err(|source| RuntimeDirError::Inspect {
        path: path.clone(),
        source,
    })?;
    check_path(&path)?;
    let created = ensure_dir(&path)?;
    let lock = lock(&path)?;
    Ok(RuntimeDir {
        systemd_owned: systemd_dir == Some(path.as_path()),
        path,
        created,
        lock,
    })
}

/// Rejects paths that cannot hold our sockets or be written into a haproxy config unquoted.
fn check_path(path: &Path) -> Result<(), RuntimeDirError> {
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
fn ensure_dir(path: &Path) -> Result<bool, RuntimeDirError> {
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

/// Takes the exclusive lock on `<dir>/hapmaster.lock` and writes our pid into it.
fn lock(dir: &Path) -> Result<Flock<File>, RuntimeDirError> {
    let path = dir.join(LOCK_FILE);
    let lock_err = |source| RuntimeDirError::Lock {
        path: path.clone(),
        source,
    };
    // A predecessor's cleanup may unlink the file we just locked; a lock on an unlinked file
    // protects nothing, so start over (a couple of times at most: cleanup happens once).
    for _ in 0..3 {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            // std adds O_CLOEXEC: a worker holding the lock would block the next master.
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(lock_err)?;
        let locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(RuntimeDirError::AlreadyRunning {
                    path: dir.to_path_buf(),
                    pid: read_pid(&mut file),
                })
            }
            Err((_, errno)) => return Err(lock_err(errno.into())),
        };
        if still_linked(&locked, &path) {
            write_lock_pid(&locked, std::process::id()).map_err(lock_err)?;
            return Ok(locked);
        }
    }
    Err(lock_err(io::Error::other(
        "the lock file keeps being replaced; is another hapmaster starting or stopping?",
    )))
}

fn still_linked(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn write_lock_pid(file: &File, pid: u32) -> io::Result<()> {
    file.set_len(0)?;
    file.write_all_at(format!("{pid}\n").as_bytes(), 0)
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut s = String::new();
    file.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

/// The fragment that gives a worker a private admin socket the master can fetch listeners from.
pub fn fragment_contents(generation: u64, socket: &Path) -> String {
    format!(
        "# written by hapmaster for worker generation {generation}; removed when the worker \
         exits\nglobal\n    stats socket {} mode 600 level admin expose-fd listeners\n",
        socket.display()
    )
}

/// "worker-<digits>" followed by the returned rest.
fn strip_worker_prefix(name: &[u8]) -> Option<&[u8]> {
    let rest = name.strip_prefix(b"worker-")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    (digits > 0).then(|| &rest[digits..])
}

fn is_digits(b: &[u8]) -> bool {
    !b.is_empty() && b.iter().all(u8::is_ascii_digit)
}

/// "<pid>.tmp" or "<pid>.bak": the names haproxy uses next to a unix socket while binding it.
fn is_haproxy_temp_suffix(rest: &[u8]) -> bool {
    let Some(pid) = rest
        .strip_suffix(b".tmp")
        .or_else(|| rest.strip_suffix(b".bak"))
    else {
        return false;
    };
    is_digits(pid)
}

fn is_worker_socket_file_name(name: &[u8]) -> bool {
    match strip_worker_prefix(name) {
        Some(b".sock") => true,
        Some(rest) => rest
            .strip_prefix(b".sock.")
            .and_then(|r| r.strip_suffix(b".tmp"))
            .is_some_and(is_digits),
        None => false,
    }
}

/// What a crashed master (or its workers) may have left: never anything else of the directory.
fn is_stale_file_name(name: &[u8]) -> bool {
    // Our temporary files and sockets (fs_at), left by a crash mid-write or mid-bind.
    if name == MASTER_SOCKET.as_bytes() || crate::fs_at::is_temp_name(name) {
        return true;
    }
    // write_atomic's temp files: ".worker-<gen>.cfg.<pid>.tmp".
    if let Some(rest) = name.strip_prefix(b".").and_then(strip_worker_prefix) {
        return rest
            .strip_prefix(b".cfg.")
            .and_then(|r| r.strip_suffix(b".tmp"))
            .is_some_and(is_digits);
    }
    match strip_worker_prefix(name) {
        Some(b".sock") | Some(b".cfg") => true,
        Some(rest) => rest
            .strip_prefix(b".sock.")
            .is_some_and(is_haproxy_temp_suffix),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    use crate::test_dir::TempDir;

    use crate::test_dir::names;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn choice_order() {
        let all = [
            ("RUNTIME_DIRECTORY", "/run/haproxy:/run/other"),
            ("XDG_RUNTIME_DIR", "/run/user/1000"),
        ];
        let explicit = Path::new("/srv/hm");
        assert_eq!(choose_from(Some(explicit), env(&all), 0), explicit);
        assert_eq!(
            choose_from(None, env(&all), 1000),
            Path::new("/run/haproxy")
        );
        assert_eq!(
            choose_from(None, env(&all[1..]), 0),
            Path::new("/run/hapmaster")
        );
        assert_eq!(
            choose_from(None, env(&all[1..]), 1000),
            Path::new("/run/user/1000/hapmaster")
        );
        assert_eq!(
            choose_from(None, env(&[]), 1000),
            Path::new("/tmp/hapmaster-1000")
        );
        let odd = [("RUNTIME_DIRECTORY", ""), ("XDG_RUNTIME_DIR", "relative")];
        assert_eq!(
            choose_from(None, env(&odd), 1000),
            Path::new("/tmp/hapmaster-1000")
        );
    }

    #[test]
    fn acquire_creates_locks_and_cleans_up() {
        let parent = TempDir::new("create");
        let path = parent.0.join("rt");
        let rd = RuntimeDir::acquire(path.clone()).unwrap();
        assert_eq!(rd.path(), path);
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o700);
        assert_eq!(
            fs::read_to_string(path.join(LOCK_FILE)).unwrap(),
            format!("{}\n", std::process::id())
        );
        let fd_flags = nix::fcntl::fcntl(&*rd.lock, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(fd_flags & libc::FD_CLOEXEC, 0);
        assert!(rd.lock.as_raw_fd() >= 0);

        fs::write(rd.master_socket(), "").unwrap();
        rd.cleanup();
        assert!(!path.exists());
    }

    #[test]
    fn second_acquire_reports_the_holder() {
        let parent = TempDir::new("busy");
        let path = parent.0.join("rt");
        let first = RuntimeDir::acquire(path.clone()).unwrap();
        let err = RuntimeDir::acquire(path.clone()).unwrap_err();
        match &err {
            RuntimeDirError::AlreadyRunning { path: p, pid } => {
                assert_eq!(p, &path);
                assert_eq!(*pid, Some(std::process::id()));
            }
            other => panic!("{other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.starts_with("another hapmaster is running with runtime directory"));
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        first.cleanup();
        // Free again once the first is gone.
        RuntimeDir::acquire(path).unwrap().cleanup();
    }

    #[test]
    fn existing_dir_is_kept_and_stale_files_removed() {
        let parent = TempDir::new("stale");
        let path = parent.0.join("rt");
        fs::create_dir(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        let stale = [
            "worker-1.sock",
            "worker-22.cfg",
            "master.sock",
            "worker-3.sock.123.tmp",
            "worker-3.sock.123.bak",
            ".worker-4.cfg.99.tmp",
            ".hapmaster.0123456789abcdef",
            ".hapmaster-bind.0123456789abcdef",
        ];
        let kept = [
            "notes.txt",
            "worker-x.sock",
            "worker-1.sock.tmp",
            "worker-.cfg",
        ];
        for n in stale.iter().chain(&kept) {
            fs::write(path.join(n), "").unwrap();
        }
        let rd = RuntimeDir::acquire(path.clone()).unwrap();
        let mut expected: Vec<String> = kept.iter().map(|s| s.to_string()).collect();
        expected.push(LOCK_FILE.to_string());
        expected.sort();
        assert_eq!(names(&path), expected);
        rd.cleanup();
        // Not ours to remove: it existed before.
        assert!(path.is_dir());
        assert!(!path.join(LOCK_FILE).exists());
    }

    #[test]
    fn systemd_runtime_directory_is_left_in_place() {
        let parent = TempDir::new("systemd");
        let path = parent.0.join("rt");
        // Even if we created it: systemd owns RuntimeDirectory=.
        let rd = acquire_with(path.clone(), Some(&path)).unwrap();
        assert!(rd.created && rd.systemd_owned);
        rd.cleanup();
        assert!(path.is_dir());
        assert!(names(&path).is_empty());
    }

    #[test]
    fn refuses_symlink_insecure_and_non_dir() {
        let parent = TempDir::new("refuse");
        let real = parent.0.join("real");
        fs::create_dir(&real).unwrap();
        let link = parent.0.join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(
            RuntimeDir::acquire(link),
            Err(RuntimeDirError::Symlink { .. })
        ));

        fs::set_permissions(&real, fs::Permissions::from_mode(0o777)).unwrap();
        let err = RuntimeDir::acquire(real.clone()).unwrap_err();
        assert!(matches!(
            err,
            RuntimeDirError::InsecureMode { mode: 0o777, .. }
        ));
        assert!(err.to_string().contains("chmod go-w"), "{err}");
        assert!(!real.join(LOCK_FILE).exists());

        let file = parent.0.join("file");
        fs::write(&file, "").unwrap();
        assert!(matches!(
            RuntimeDir::acquire(file),
            Err(RuntimeDirError::NotADirectory { .. })
        ));

        let missing_parent = parent.0.join("no/such/dir");
        assert!(matches!(
            RuntimeDir::acquire(missing_parent),
            Err(RuntimeDirError::Create { .. })
        ));
    }

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
    fn wrong_owner_on_disk_when_root() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let parent = TempDir::new("owner");
        let path = parent.0.join("rt");
        fs::create_dir(&path).unwrap();
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        assert!(matches!(
            RuntimeDir::acquire(path),
            Err(RuntimeDirError::WrongOwner { owner: 65534, .. })
        ));
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

    #[test]
    fn names_and_fragment() {
        let parent = TempDir::new("frag");
        let path = parent.0.join("rt");
        let rd = RuntimeDir::acquire(path.clone()).unwrap();
        assert_eq!(rd.worker_socket(7), path.join("worker-7.sock"));
        assert_eq!(rd.worker_fragment(7), path.join("worker-7.cfg"));
        assert_eq!(rd.master_socket(), path.join("master.sock"));

        assert!(rd.is_worker_socket_name(&path.join("worker-7.sock")));
        assert!(rd.is_worker_socket_name(&path.join("worker-7.sock.4242.tmp")));
        assert!(!rd.is_worker_socket_name(&path.join("worker-7.sock.4242.bak")));
        assert!(!rd.is_worker_socket_name(&path.join("worker-7.cfg")));
        assert!(!rd.is_worker_socket_name(&path.join("worker-.sock")));
        assert!(!rd.is_worker_socket_name(&path.join("worker-7.sock.x.tmp")));
        assert!(!rd.is_worker_socket_name(&path.join("master.sock")));
        assert!(!rd.is_worker_socket_name(Path::new("/elsewhere/worker-7.sock")));

        let frag = rd.write_fragment(7).unwrap();
        assert_eq!(frag, rd.worker_fragment(7));
        assert_eq!(fs::metadata(&frag).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            fs::read_to_string(&frag).unwrap(),
            format!(
                "# written by hapmaster for worker generation 7; removed when the worker \
                 exits\nglobal\n    stats socket {}/worker-7.sock mode 600 level admin \
                 expose-fd listeners\n",
                path.display()
            )
        );

        for n in [
            "worker-7.sock",
            "worker-7.sock.11.tmp",
            "worker-7.sock.12.bak",
            "worker-8.sock",
        ] {
            fs::write(path.join(n), "").unwrap();
        }
        rd.remove_worker_files(7);
        rd.remove_worker_files(9); // nothing there: no error
        assert_eq!(names(&path), vec![LOCK_FILE, "worker-8.sock"]);
        rd.remove_worker_files(8);
        rd.cleanup();
        assert!(!path.exists());
    }

    #[test]
    fn config_copies_are_listed_and_removed() {
        let parent = TempDir::new("copies");
        let path = parent.0.join("rt");
        let rd = RuntimeDir::acquire(path.clone()).unwrap();
        assert_eq!(rd.config_copy_dir(12), path.join("config-12"));
        for g in [12, 3] {
            fs::create_dir(rd.config_copy_dir(g)).unwrap();
            fs::write(rd.config_copy_dir(g).join("0000-a.cfg"), "").unwrap();
        }
        for other in ["config-", "config-x", "config-1.cfg"] {
            fs::write(path.join(other), "").unwrap();
        }
        assert_eq!(rd.config_copy_generations(), vec![3, 12]);
        rd.remove_config_copy(12);
        rd.remove_config_copy(99); // nothing there: no error
        assert_eq!(rd.config_copy_generations(), vec![3]);
        rd.remove_config_copy(3);
        for other in ["config-", "config-x", "config-1.cfg"] {
            fs::remove_file(path.join(other)).unwrap();
        }
        rd.cleanup();
        assert!(!path.exists());
    }

    #[test]
    fn fragment_is_accepted_by_haproxy() {
        // Needs the haproxy binary; skipped where it is not installed.
        let haproxy = Path::new("/usr/sbin/haproxy");
        if !haproxy.exists() {
            eprintln!("skipped: {} not installed", haproxy.display());
            return;
        }
        let parent = TempDir::new("hacheck");
        let rd = RuntimeDir::acquire(parent.0.join("rt")).unwrap();
        let frag = rd.write_fragment(1).unwrap();
        let main = parent.0.join("main.cfg");
        fs::write(
            &main,
            "defaults\n    mode http\n    timeout client 1s\n    timeout server 1s\n    \
             timeout connect 1s\n",
        )
        .unwrap();
        let out = std::process::Command::new(haproxy)
            .arg("-c")
            .arg("-f")
            .arg(&main)
            .arg("-f")
            .arg(&frag)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        rd.remove_worker_files(1);
        rd.cleanup();
    }

    #[test]
    fn record_pid_rewrites_lock_file() {
        let parent = TempDir::new("repid");
        let rd = RuntimeDir::acquire(parent.0.join("rt")).unwrap();
        rd.record_pid(5).unwrap();
        assert_eq!(
            fs::read_to_string(rd.path().join(LOCK_FILE)).unwrap(),
            "5\n"
        );
        rd.cleanup();
    }

    #[test]
    fn relative_path_is_made_absolute() {
        let rel = Path::new("hm-rd-relative-test-dir");
        let expected = std::env::current_dir().unwrap().join(rel);
        let _ = fs::remove_dir_all(&expected);
        let rd = RuntimeDir::acquire(rel.to_path_buf()).unwrap();
        assert_eq!(rd.path(), expected);
        rd.cleanup();
        assert!(!expected.exists());
    }
}
