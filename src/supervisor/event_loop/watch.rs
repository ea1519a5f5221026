//! The executor's side of `--watch`: inotify events become `Event::ConfigTouched` (the state
//! debounces them), and `Action::CompareConfig` compares what haproxy would read now with what
//! the last load read; a difference is a reload request like SIGUSR2's (`request_reload`:
//! queued behind a reload that runs, coalesced, counted by `show proc` and `show metrics`).

use std::path::Path;

use super::Master;
use crate::config_fingerprint::Fingerprint;
use crate::config_watch::{ConfigWatch, WatchError};
use crate::supervisor::state::{Event, ReloadKind, StartKind};

/// `--watch`'s part of the master.
pub(super) struct Watching {
    watch: ConfigWatch,
    /// What the last load read from disk (the first worker's or the last reload's files, even
    /// if that reload failed: the same broken files are not tried again until they change).
    loaded: Option<Fingerprint>,
    /// What inotify saw since the last comparison, for its log line.
    seen: Vec<String>,
}

impl Watching {
    /// Before the loop starts: a start with `--watch` that cannot watch fails.
    pub(super) fn open() -> Result<Watching, WatchError> {
        Ok(Watching {
            watch: ConfigWatch::new()?,
            loaded: None,
            seen: Vec::new(),
        })
    }

    pub(super) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.watch.fd()
    }
}

impl Master<'_> {
    /// At start, or after an upgrade in place: watch, and know what the current worker runs.
    pub(super) fn start_watching(&mut self, resumed: bool) {
        let opts = self.opts;
        let (args, change_dir) = (&opts.config_files, opts.change_dir().map(Path::new));
        let Some(w) = self.watching.as_mut() else {
            return;
        };
        w.watch.sync(args, change_dir);
        if !resumed {
            // The first worker's spawn takes the fingerprint.
            return;
        }
        // The current worker's copy is what it was started from; without one, the files on
        // disk now. inotify saw nothing during the exec: compare once, in case.
        let current = self.state.current().map(|w| w.generation);
        let copy = current
            .map(|g| self.runtime.config_copy_dir(g))
            .and_then(|dir| crate::config_copy::list(&dir).ok());
        let loaded = match copy {
            Some(files) => Fingerprint::of_files(&files),
            None => Fingerprint::of_args(args, change_dir),
        };
        if let Some(w) = self.watching.as_mut() {
            w.loaded = Some(loaded);
            w.seen.push("after the upgrade in place".into());
        }
        self.push(Event::ConfigTouched);
    }

    /// A worker starts: a first worker or a reload reads the files on disk, and that is what
    /// later changes are compared with (a replacement runs a copy: no change on disk).
    pub(super) fn watch_spawning(&mut self, kind: StartKind) {
        let opts = self.opts;
        let (args, change_dir) = (&opts.config_files, opts.change_dir().map(Path::new));
        let Some(w) = self.watching.as_mut() else {
            return;
        };
        if matches!(kind, StartKind::Replace) {
            return;
        }
        // A directory that came back (or a link that moved) since the last comparison.
        w.watch.sync(args, change_dir);
        w.loaded = Some(Fingerprint::of_args(args, change_dir));
    }

    /// The inotify fd is readable.
    pub(super) fn on_watch_events(&mut self) {
        let Some(w) = self.watching.as_mut() else {
            return;
        };
        let seen = w.watch.drain();
        for event in seen.events {
            if w.seen.len() < 8 && !w.seen.contains(&event) {
                w.seen.push(event);
            }
        }
        if seen.touched {
            self.push(Event::ConfigTouched);
        }
    }

    /// `Action::CompareConfig`: the changes have settled.
    pub(super) fn compare_config(&mut self) {
        let opts = self.opts;
        let (args, change_dir) = (&opts.config_files, opts.change_dir().map(Path::new));
        let Some(w) = self.watching.as_mut() else {
            return;
        };
        // A swap (the kubelet's `..data`, a release symlink) moves what is to be watched.
        w.watch.sync(args, change_dir);
        let now = Fingerprint::of_args(args, change_dir);
        let seen = std::mem::take(&mut w.seen).join(", ");
        let changes = match &w.loaded {
            Some(loaded) => loaded.changes_in(&now),
            None => vec!["(nothing loaded yet)".into()],
        };
        if changes.is_empty() {
            log::debug!("--watch: what haproxy reads is unchanged ({seen})");
            return;
        }
        log::info!(
            "configuration changed: {} (seen: {seen})",
            changes.join(", ")
        );
        self.request_reload(ReloadKind::Soft, &"--watch");
    }
}
