//! The master's private directory: workers' stats sockets and config fragments, the master CLI
//! socket, and the lock that keeps two masters from sharing it.

mod checks;
mod error;
mod lock;
mod names;

use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::haproxy_version::ListenerHandoff;
use crate::pidfile::{remove_quietly, write_atomic};
use checks::{check_path, ensure_dir};
pub use error::RuntimeDirError;
use lock::{lock, write_lock_pid};
pub use names::{
    choose_from, fragment_contents, handoff_socket_name, LOCK_FILE, MASTER_SOCKET, SUN_PATH_MAX,
};
use names::{
    first_runtime_directory, is_digits, is_haproxy_temp_suffix, is_stale_file_name,
    is_worker_socket_file_name, RUNTIME_DIRECTORY,
};

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

    /// A new worker's own `-x` socket (haproxy 1.8 to 2.5).
    pub fn handoff_socket(&self, generation: u64) -> PathBuf {
        self.path.join(handoff_socket_name(generation))
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

    /// Writes the worker's private config fragment (0600: it grants admin on the socket), for a
    /// worker that takes the listening sockets as `handoff` says.
    pub fn write_fragment(
        &self,
        generation: u64,
        handoff: ListenerHandoff,
    ) -> Result<PathBuf, RuntimeDirError> {
        let path = self.worker_fragment(generation);
        let contents = fragment_contents(generation, &self.worker_socket(generation), handoff);
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
        // Workers that still run keep it mapped; a new master writes it again.
        self.remove_matching("preload library", names::is_preload_library_name);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use crate::test_dir::temp_dir;

    use crate::test_dir::names;

    #[test]
    fn acquire_creates_locks_and_cleans_up() {
        let parent = temp_dir("create");
        let path = parent.path().join("rt");
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
        let parent = temp_dir("busy");
        let path = parent.path().join("rt");
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
        let parent = temp_dir("stale");
        let path = parent.path().join("rt");
        fs::create_dir(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        let stale = [
            "worker-1.sock",
            "worker-22.cfg",
            "master.sock",
            "worker-3.sock.123.tmp",
            "worker-3.sock.123.bak",
            "handoff-5.sock",
            ".worker-4.cfg.99.tmp",
            ".hapmaster.0123456789abcdef",
            ".hapmaster-bind.0123456789abcdef",
        ];
        let kept = [
            "notes.txt",
            "worker-x.sock",
            "worker-1.sock.tmp",
            "worker-.cfg",
            "handoff-.sock",
            "handoff-5.sock.1.tmp",
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
        let parent = temp_dir("systemd");
        let path = parent.path().join("rt");
        // Even if we created it: systemd owns RuntimeDirectory=.
        let rd = acquire_with(path.clone(), Some(&path)).unwrap();
        assert!(rd.created && rd.systemd_owned);
        rd.cleanup();
        assert!(path.is_dir());
        assert!(names(&path).is_empty());
    }

    #[test]
    fn refuses_symlink_insecure_and_non_dir() {
        let parent = temp_dir("refuse");
        let real = parent.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = parent.path().join("link");
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

        let file = parent.path().join("file");
        fs::write(&file, "").unwrap();
        assert!(matches!(
            RuntimeDir::acquire(file),
            Err(RuntimeDirError::NotADirectory { .. })
        ));

        let missing_parent = parent.path().join("no/such/dir");
        assert!(matches!(
            RuntimeDir::acquire(missing_parent),
            Err(RuntimeDirError::Create { .. })
        ));
    }

    #[test]
    fn wrong_owner_on_disk_when_root() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let parent = temp_dir("owner");
        let path = parent.path().join("rt");
        fs::create_dir(&path).unwrap();
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        assert!(matches!(
            RuntimeDir::acquire(path),
            Err(RuntimeDirError::WrongOwner { owner: 65534, .. })
        ));
    }

    #[test]
    fn names_and_fragment() {
        let parent = temp_dir("frag");
        let path = parent.path().join("rt");
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

        let frag = rd.write_fragment(7, ListenerHandoff::XPath).unwrap();
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
        // haproxy 1.5 to 1.7 refuse `expose-fd`.
        let frag = rd.write_fragment(7, ListenerHandoff::Preload).unwrap();
        assert_eq!(
            fs::read_to_string(&frag).unwrap(),
            format!(
                "# written by hapmaster for worker generation 7; removed when the worker \
                 exits\nglobal\n    stats socket {}/worker-7.sock mode 600 level admin\n",
                path.display()
            )
        );
        let sockpair = rd.write_fragment(7, ListenerHandoff::XSockpair).unwrap();
        assert!(fs::read_to_string(&sockpair)
            .unwrap()
            .ends_with(" level admin expose-fd listeners\n"));

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
        let parent = temp_dir("copies");
        let path = parent.path().join("rt");
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
        let parent = temp_dir("hacheck");
        let rd = RuntimeDir::acquire(parent.path().join("rt")).unwrap();
        let frag = rd.write_fragment(1, ListenerHandoff::XSockpair).unwrap();
        let main = parent.path().join("main.cfg");
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
        let parent = temp_dir("repid");
        let rd = RuntimeDir::acquire(parent.path().join("rt")).unwrap();
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
