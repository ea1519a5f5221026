//! `--watch`: inotify watches on the directories where the configuration can change, read by
//! the master's loop (the fd is non-blocking and polled with the others; no thread).
//!
//! A watch is on a directory, never on a file: an editor that saves by renaming a new file over
//! the old one, and the kubelet, which swaps the `..data` symlink of a ConfigMap volume and
//! deletes the old `..<timestamp>` directory, would leave a watch on the file itself watching
//! a file nobody reads any more. Watched, for each `-f` argument:
//! - a directory: itself (a `.cfg` file added, removed, replaced; the kubelet's `..data` swap);
//! - a file: the directory that holds its name;
//! - for the file, and each `.cfg` file of a directory: every directory that holds a symlink on
//!   the way to the file the name finally reaches (`haproxy.cfg -> ..data/haproxy.cfg`,
//!   `current -> releases/42`), and the directory holding that file (an in-place write to a
//!   symlink's target).
//!
//! Any event in a watched directory is only a hint: which files haproxy reads is decided by
//! comparing their contents (`config_fingerprint`), after the debounce. So nothing here filters
//! by name, and missing the exact event that matters cannot happen as long as some event comes.
//! The set of directories is computed again at each comparison (a swap moves the target).

use std::collections::{BTreeMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use crate::config_copy::{self, LIMITS};

/// Symlinks followed to resolve one path, as the kernel's own limit (ELOOP).
const MAX_LINKS: usize = 40;
/// Reads of the inotify fd per wake-up: a directory that never stops changing cannot keep the
/// loop from its other work (the rest waits for the next turn).
const MAX_READS: usize = 16;
/// Events kept for the log line of one comparison.
const MAX_SEEN: usize = 8;

/// What makes a directory's content change. Not IN_MODIFY: a file still being written is
/// seen when it is closed (IN_CLOSE_WRITE), and a log file in the same directory written line by
/// line would otherwise wake the master at every line.
fn mask() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_ONLYDIR
}

#[derive(Debug)]
pub struct WatchError(Errno);

impl fmt::Display for WatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "--watch: cannot create an inotify instance: {}", self.0)?;
        if self.0 == Errno::EMFILE {
            // The usual cause on a busy Kubernetes node.
            write!(
                f,
                " (this user has fs.inotify.max_user_instances instances already: raise it, \
                 e.g. sysctl -w fs.inotify.max_user_instances=512, or leave --watch out)"
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for WatchError {}

/// What one read of the inotify fd saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Something happened in a watched directory (or events were lost).
    pub touched: bool,
    /// What, in words, for the log (at most `MAX_SEEN`).
    pub events: Vec<String>,
}

pub struct ConfigWatch {
    inotify: Inotify,
    /// Each watched directory and its watch.
    dirs: BTreeMap<PathBuf, WatchDescriptor>,
    /// Directories that could not be watched, each said once until it can be.
    unwatchable: BTreeMap<PathBuf, String>,
}

impl ConfigWatch {
    pub fn new() -> Result<ConfigWatch, WatchError> {
        let inotify =
            Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(WatchError)?;
        Ok(ConfigWatch {
            inotify,
            dirs: BTreeMap::new(),
            unwatchable: BTreeMap::new(),
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    /// Watches what `dirs_to_watch` says now, and stops watching what it no longer says.
    pub fn sync(&mut self, args: &[OsString], change_dir: Option<&Path>) {
        let wanted = dirs_to_watch(args, change_dir);
        let stale: Vec<PathBuf> = self
            .dirs
            .keys()
            .filter(|d| !wanted.contains(d))
            .cloned()
            .collect();
        for dir in stale {
            if let Some(wd) = self.dirs.remove(&dir) {
                // Two paths can be one directory (one watch): keep it while another uses it.
                if !self.dirs.values().any(|w| *w == wd) {
                    // EINVAL: the directory is gone and the kernel dropped the watch already.
                    let _ = self.inotify.rm_watch(wd);
                }
                log::debug!("--watch: no longer watching {}", dir.display());
            }
        }
        for dir in wanted {
            match self.inotify.add_watch(&dir, mask()) {
                Ok(wd) => {
                    if self.dirs.insert(dir.clone(), wd).is_none() {
                        log::debug!("--watch: watching {}", dir.display());
                    }
                    self.unwatchable.remove(&dir);
                }
                Err(e) => {
                    self.dirs.remove(&dir);
                    let why = match e {
                        Errno::ENOSPC => format!(
                            "{e} (fs.inotify.max_user_watches is reached: raise it with sysctl)"
                        ),
                        e => e.to_string(),
                    };
                    if self.unwatchable.get(&dir) != Some(&why) {
                        log::warn!(
                            "--watch: cannot watch {}: {why}; a change there is seen only \
                             once another watched directory changes (or at a reload)",
                            dir.display()
                        );
                        self.unwatchable.insert(dir, why);
                    }
                }
            }
        }
    }

    /// Reads what is queued (bounded by `MAX_READS`); never waits.
    pub fn drain(&mut self) -> Seen {
        let mut seen = Seen::default();
        for _ in 0..MAX_READS {
            let events = match self.inotify.read_events() {
                Ok(events) => events,
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::warn!("--watch: cannot read inotify events: {e}");
                    break;
                }
            };
            for event in events {
                if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    seen.touched = true;
                    push_seen(&mut seen, "events lost (inotify queue overflow)".into());
                    continue;
                }
                let Some(dir) = self
                    .dirs
                    .iter()
                    .find(|(_, wd)| **wd == event.wd)
                    .map(|(d, _)| d.clone())
                else {
                    // A watch removed by `sync`, whose last events were still queued.
                    continue;
                };
                if event.mask.contains(AddWatchFlags::IN_IGNORED) {
                    // The directory is gone: `sync` watches it again if it comes back.
                    self.dirs.retain(|_, wd| *wd != event.wd);
                }
                seen.touched = true;
                push_seen(&mut seen, describe(&dir, event.name.as_deref(), event.mask));
            }
        }
        seen
    }
}

fn push_seen(seen: &mut Seen, text: String) {
    if seen.events.len() < MAX_SEEN && !seen.events.contains(&text) {
        seen.events.push(text);
    }
}

/// `<dir>/<name> moved in`, and the like.
fn describe(dir: &Path, name: Option<&OsStr>, mask: AddWatchFlags) -> String {
    const KINDS: &[(AddWatchFlags, &str)] = &[
        (AddWatchFlags::IN_MOVED_TO, "moved in"),
        (AddWatchFlags::IN_MOVED_FROM, "moved out"),
        (AddWatchFlags::IN_CREATE, "created"),
        (AddWatchFlags::IN_DELETE, "removed"),
        (AddWatchFlags::IN_CLOSE_WRITE, "written"),
        (AddWatchFlags::IN_ATTRIB, "attributes changed"),
        (AddWatchFlags::IN_DELETE_SELF, "removed"),
        (AddWatchFlags::IN_MOVE_SELF, "moved"),
        (AddWatchFlags::IN_IGNORED, "no longer watchable"),
    ];
    let what = KINDS
        .iter()
        .find(|(flag, _)| mask.contains(*flag))
        .map_or("changed", |(_, word)| word);
    let path = match name {
        Some(name) => dir.join(name),
        None => dir.to_path_buf(),
    };
    format!("{} {what}", path.display())
}

/// The directories to watch for these `-f` arguments (see the module's comment).
pub fn dirs_to_watch(args: &[OsString], change_dir: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut add = |d: PathBuf| {
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    };
    for arg in args {
        let path = match change_dir {
            Some(dir) => dir.join(arg),
            None => PathBuf::from(arg),
        };
        let Ok(path) = std::path::absolute(&path) else {
            continue;
        };
        let (links, real) = resolve(&path);
        links.into_iter().for_each(&mut add);
        let files = if real.is_dir() {
            add(real.clone());
            // Only this directory's own files (a dangling one is left out: haproxy fails on
            // it, and the comparison says so).
            config_copy::expand(&[real.into_os_string()], None, LIMITS).unwrap_or_default()
        } else {
            // The name's own directory, even if the file is missing now.
            if let Some(parent) = path.parent() {
                let (links, real_parent) = resolve(parent);
                links.into_iter().for_each(&mut add);
                add(real_parent);
            }
            vec![path]
        };
        for file in files {
            let (links, real) = resolve(&file);
            links.into_iter().for_each(&mut add);
            if let Some(parent) = real.parent() {
                add(parent.to_path_buf());
            }
        }
    }
    dirs
}

/// Resolves an absolute `path` as the kernel does, component by component: the directories that
/// hold a symlink met on the way, and where the path ends up (with whatever does not exist
/// left as written).
fn resolve(path: &Path) -> (Vec<PathBuf>, PathBuf) {
    let mut links = Vec::new();
    let mut todo: VecDeque<OsString> = VecDeque::new();
    push_components(&mut todo, path);
    let mut at = PathBuf::from("/");
    let mut followed = 0;
    while let Some(part) = todo.pop_front() {
        if part == ".." {
            at.pop();
            continue;
        }
        let next = at.join(&part);
        let is_link = std::fs::symlink_metadata(&next).is_ok_and(|m| m.file_type().is_symlink());
        if !is_link || followed == MAX_LINKS {
            at = next;
            continue;
        }
        followed += 1;
        let Ok(target) = std::fs::read_link(&next) else {
            at = next;
            continue;
        };
        if !links.contains(&at) {
            links.push(at.clone());
        }
        if target.is_absolute() {
            at = PathBuf::from("/");
        }
        let mut front = VecDeque::new();
        push_components(&mut front, &target);
        front.append(&mut todo);
        todo = front;
    }
    (links, at)
}

fn push_components(todo: &mut VecDeque<OsString>, path: &Path) {
    for c in path.components() {
        match c {
            Component::Normal(name) => todo.push_back(name.to_os_string()),
            Component::ParentDir => todo.push_back("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    /// The kubelet's layout of a ConfigMap volume.
    fn configmap(dir: &Path) {
        fs::create_dir(dir.join("..2026_11_29_1")).unwrap();
        fs::write(dir.join("..2026_11_29_1/haproxy.cfg"), "x").unwrap();
        symlink("..2026_11_29_1", dir.join("..data")).unwrap();
        symlink("..data/haproxy.cfg", dir.join("haproxy.cfg")).unwrap();
    }

    #[test]
    fn a_configmap_file_watches_the_mount_and_the_timestamped_dir() {
        let tmp = crate::test_dir::temp_dir("watch");
        let root = fs::canonicalize(tmp.path()).unwrap();
        configmap(&root);
        let file = vec![root.join("haproxy.cfg").into_os_string()];
        assert_eq!(
            dirs_to_watch(&file, None),
            vec![root.clone(), root.join("..2026_11_29_1")]
        );
        let dir = vec![root.clone().into_os_string()];
        assert_eq!(
            dirs_to_watch(&dir, None),
            vec![root.clone(), root.join("..2026_11_29_1")]
        );
    }

    #[test]
    fn links_elsewhere_and_relative_paths_under_dash_c() {
        let tmp = crate::test_dir::temp_dir("watch");
        let root = fs::canonicalize(tmp.path()).unwrap();
        for d in ["etc", "srv/releases/42"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(root.join("srv/releases/42/h.cfg"), "x").unwrap();
        symlink("releases/42", root.join("srv/current")).unwrap();
        symlink("../srv/current/h.cfg", root.join("etc/h.cfg")).unwrap();
        let args = vec![OsString::from("etc/h.cfg")];
        assert_eq!(
            dirs_to_watch(&args, Some(&root)),
            vec![
                root.join("etc"),
                root.join("srv"),
                root.join("srv/releases/42")
            ]
        );
        // A missing file: its directory, so that its creation is seen.
        let args = vec![root.join("etc/none.cfg").into_os_string()];
        assert_eq!(dirs_to_watch(&args, None), vec![root.join("etc")]);
    }

    #[test]
    fn events_in_a_watched_directory_are_read_without_waiting() {
        let tmp = crate::test_dir::temp_dir("watch");
        let root = fs::canonicalize(tmp.path()).unwrap();
        let cfg = root.join("h.cfg");
        fs::write(&cfg, "x").unwrap();
        let mut watch = ConfigWatch::new().unwrap();
        watch.sync(&[cfg.clone().into_os_string()], None);
        assert!(!watch.drain().touched, "nothing happened yet");
        fs::write(root.join(".h.cfg.swp"), "y").unwrap();
        fs::rename(root.join(".h.cfg.swp"), &cfg).unwrap();
        let seen = watch.drain();
        assert!(seen.touched);
        assert!(
            seen.events.contains(&format!("{} moved in", cfg.display())),
            "{:?}",
            seen.events
        );
    }
}
