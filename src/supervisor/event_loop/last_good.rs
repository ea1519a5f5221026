//! The executor's side of `supervisor::last_good`: each worker's configuration copy taken as it
//! starts, what a crash replacement runs, copies removed once no worker needs them, and what
//! STATUS= and `show proc` say while a replacement runs a copy.

use std::ffi::OsString;
use std::path::Path;

use super::Master;
use crate::config_copy::{self, Outcome, LIMITS};
use crate::supervisor::last_good::{copy_dir, short_failure, Kept, ReplaceFrom};
use crate::supervisor::state::{Generation, Pid, StartKind};

impl Master<'_> {
    /// The `-f` arguments worker `generation` starts with, after taking its copy: a replacement
    /// gets (a copy of) the last good copy, a first worker or a reload the files on disk. The
    /// copy is taken just before the exec, so it is what the worker reads, unless the files
    /// change in the few milliseconds before haproxy opens them.
    pub(super) fn worker_config(
        &mut self,
        generation: Generation,
        kind: StartKind,
    ) -> Vec<OsString> {
        if self.opts.exit_on_failure {
            // A dying worker stops the master: no replacement will ever run a copy.
            return self.opts.config_files.clone();
        }
        let from_copy = match (kind, self.last_good.replacement_source()) {
            (StartKind::Replace, ReplaceFrom::Copy { origin, files }) => {
                Some((origin, files.to_vec()))
            }
            (StartKind::Replace, ReplaceFrom::Disk { why }) => {
                log::warn!(
                    "worker generation {generation} replaces the dead worker with the files on \
                     disk: {why}"
                );
                None
            }
            _ => None,
        };
        let dest = self.runtime.config_copy_dir(generation);
        let (origin, outcome) = match &from_copy {
            Some((origin, files)) => (*origin, config_copy::take(files, &dest, LIMITS)),
            None => {
                let change_dir = self.opts.change_dir().map(Path::new);
                let outcome = config_copy::expand(&self.opts.config_files, change_dir, LIMITS)
                    .and_then(|files| config_copy::take(&files, &dest, LIMITS));
                (generation, outcome)
            }
        };
        let on_disk = self.opts.config_files.clone();
        match outcome {
            Ok(Outcome::Copied(copies)) => {
                let args = if from_copy.is_some() {
                    log::info!(
                        "worker generation {generation} replaces the dead worker with the last \
                         good configuration, that of generation {origin} (copy in {}); the next \
                         reload reads the files on disk",
                        copy_dir(&copies)
                    );
                    copies.iter().map(|c| c.clone().into_os_string()).collect()
                } else {
                    log::debug!(
                        "kept a copy of the {} configuration file(s) of worker generation \
                         {generation} in {}",
                        copies.len(),
                        self.runtime.config_copy_dir(generation).display()
                    );
                    on_disk
                };
                let kept = Kept::Copy {
                    origin,
                    files: copies,
                };
                self.last_good.started(generation, kept);
                args
            }
            Ok(Outcome::DefaultPath { file, line, text }) => {
                log::info!(
                    "replacements read the files on disk because {} uses {text} (line {line}): \
                     relative paths in it resolve against its own directory, which a copy \
                     elsewhere would change; worker generation {generation} keeps no copy",
                    file.display()
                );
                let why = format!("{} uses {text}", file.display());
                self.last_good.started(generation, Kept::Disk { why });
                on_disk
            }
            Err(e) => {
                match from_copy {
                    Some(_) => log::warn!(
                        "cannot copy the last good configuration (that of generation {origin}) \
                         for worker generation {generation}: {e}; it reads the files on disk"
                    ),
                    None => log::warn!(
                        "cannot keep a copy of the configuration of worker generation \
                         {generation}: {e}; if it dies, its replacement reads the files on disk"
                    ),
                }
                let why = e.to_string();
                self.last_good.started(generation, Kept::Disk { why });
                on_disk
            }
        }
    }

    /// Worker `pid` is ready: its copy is the last good one.
    pub(super) fn config_ready(&mut self, pid: Pid) {
        let Some(generation) = self.state.worker(pid).map(|w| w.generation) else {
            return;
        };
        if let Some(unneeded) = self.last_good.ready(generation) {
            self.runtime.remove_config_copy(unneeded);
        }
    }

    /// Worker `generation` is gone (or never started): its copy goes unless it is the last good.
    pub(super) fn config_forgotten(&mut self, generation: Generation) {
        if self.last_good.forgotten(generation) {
            self.runtime.remove_config_copy(generation);
        }
    }

    /// A reload ended; a failed one shows that the files on disk fail, until one succeeds.
    pub(super) fn config_reload_done(&mut self, startup: &str, reason: Option<&str>) {
        // A reload cut short by a stop says nothing about the files.
        if !self.state.is_stopping() {
            let failure = reason.map(|r| short_failure(startup, r));
            self.last_good.reload_done(failure);
        }
    }

    /// The STATUS= to send for the state machine's `status`.
    pub(super) fn with_config_status(&self, status: &str) -> String {
        let current = self.state.current().map(|w| w.generation);
        self.last_good.status(status, current)
    }

    /// The `show proc` note while the current worker runs a copy.
    pub(super) fn last_good_note(&self) -> Option<String> {
        let current = self.state.current().map(|w| (w.pid, w.generation));
        self.last_good.proc_note(current)
    }

    /// At start: copies are no one's but a dead master's (the directory is locked).
    pub(super) fn sweep_config_copies(&self) {
        for generation in self.runtime.config_copy_generations() {
            self.runtime.remove_config_copy(generation);
        }
    }

    /// After an upgrade in place: the live workers' copies are taken over, the current worker's
    /// as the last good one (which generation first read it is not handed over: it is reported
    /// as the worker's own), and any other copy is removed.
    pub(super) fn adopt_config_copies(&mut self) {
        let live: Vec<Generation> = self.state.workers().map(|w| w.generation).collect();
        for generation in self.runtime.config_copy_generations() {
            if !live.contains(&generation) {
                self.runtime.remove_config_copy(generation);
                continue;
            }
            let dir = self.runtime.config_copy_dir(generation);
            match config_copy::list(&dir) {
                Ok(files) => self.last_good.started(
                    generation,
                    Kept::Copy {
                        origin: generation,
                        files,
                    },
                ),
                Err(e) => log::warn!(
                    "after the upgrade in place: cannot list the configuration copy {}: {e}; \
                     a replacement of worker generation {generation} reads the files on disk",
                    dir.display()
                ),
            }
        }
        if let Some(pid) = self.state.current().map(|w| w.pid) {
            self.config_ready(pid);
        }
    }
}
