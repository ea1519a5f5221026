//! Which configuration a crash replacement starts from: the copy of the files the last worker
//! that became ready was started with (`config_copy`), not the files on disk, which may hold an
//! edit nobody reloaded or the broken config a reload just refused. A reload always reads the
//! files on disk.
//!
//! Pure bookkeeping, like `state`: the executor takes and removes the copies and asks here which
//! to use, which to remove, and what to tell the operator. A copy `config-<G>` lives while worker
//! G lives, and after that for as long as G is the last worker that became ready.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::state::{Generation, Pid};

/// What a worker's replacement can start from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kept {
    /// A copy of the files the worker read, in haproxy's order. `origin` is the generation that
    /// read them from disk: the worker's own, or for a replacement, that of the copy it ran.
    Copy {
        origin: Generation,
        files: Vec<PathBuf>,
    },
    /// No copy, for this reason: replacements read the files on disk.
    Disk { why: String },
}

/// Where a replacement starts from.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplaceFrom<'a> {
    Copy {
        origin: Generation,
        files: &'a [PathBuf],
    },
    Disk {
        why: String,
    },
}

#[derive(Debug, Default)]
pub struct LastGood {
    /// Every worker started and not yet reaped.
    live: BTreeMap<Generation, Kept>,
    /// The last worker that became ready; it may be gone, which is when it matters.
    last: Option<(Generation, Kept)>,
    /// Why the last reload failed, until one succeeds: the files on disk are known to fail.
    disk_failure: Option<String>,
}

/// How much of haproxy's message a STATUS= line carries.
const MAX_REASON: usize = 200;

impl LastGood {
    pub fn replacement_source(&self) -> ReplaceFrom<'_> {
        match &self.last {
            Some((_, Kept::Copy { origin, files })) => ReplaceFrom::Copy {
                origin: *origin,
                files,
            },
            Some((generation, Kept::Disk { why })) => ReplaceFrom::Disk {
                why: format!(
                    "generation {generation}, the last worker that was ready, has no copy: {why}"
                ),
            },
            None => ReplaceFrom::Disk {
                why: "no worker has been ready yet".to_string(),
            },
        }
    }

    /// Worker `generation` starts with this configuration.
    pub fn started(&mut self, generation: Generation, kept: Kept) {
        self.live.insert(generation, kept);
    }

    /// Worker `generation` is ready: its copy is the last good one now. Returns the generation
    /// whose copy is no longer needed, if any.
    pub fn ready(&mut self, generation: Generation) -> Option<Generation> {
        let kept = self.live.get(&generation).cloned().unwrap_or(Kept::Disk {
            why: "its configuration is not known".to_string(),
        });
        let previous = self.last.replace((generation, kept)).map(|(g, _)| g);
        previous.filter(|g| *g != generation && !self.live.contains_key(g))
    }

    /// Worker `generation` is gone (reaped, or never started): whether its copy goes too.
    pub fn forgotten(&mut self, generation: Generation) -> bool {
        self.live.remove(&generation);
        self.last.as_ref().map(|(g, _)| *g) != Some(generation)
    }

    /// A reload ended: `None` when it serves, else why it failed.
    pub fn reload_done(&mut self, failure: Option<String>) {
        self.disk_failure = failure;
    }

    /// The generation whose configuration the worker of `current` runs from a copy, if it does.
    fn copied_origin(&self, current: Generation) -> Option<Generation> {
        match self.live.get(&current)? {
            Kept::Copy { origin, .. } if *origin != current => Some(*origin),
            _ => None,
        }
    }

    /// The STATUS= to send for `status` while worker generation `current` serves: when it runs
    /// a copy and the last reload failed, `Serving: ...` and `Reload failed: ...; still serving:
    /// ...` say so. The worker's pid and generation stay last, where scripts find them.
    pub fn status(&self, status: &str, current: Option<Generation>) -> String {
        let (Some(origin), Some(failure)) = (
            current.and_then(|g| self.copied_origin(g)),
            self.disk_failure.as_deref(),
        ) else {
            return status.to_string();
        };
        if let Some(rest) = status.strip_prefix("Serving: ") {
            return format!(
                "Serving the last good configuration of generation {origin}; the files on disk \
                 fail: {failure}; {rest}"
            );
        }
        if let Some((head, tail)) = status.rsplit_once("; still serving: ") {
            return format!(
                "{head}; still serving the last good configuration of generation {origin}: {tail}"
            );
        }
        status.to_string()
    }

    /// The line `show proc` adds (as a `# ` comment) while the current worker runs a copy.
    pub fn proc_note(&self, current: Option<(Pid, Generation)>) -> Option<String> {
        let (pid, generation) = current?;
        let origin = self.copied_origin(generation)?;
        let copy = match self.live.get(&generation)? {
            Kept::Copy { files, .. } => format!(" (copy in {})", copy_dir(files)),
            Kept::Disk { .. } => String::new(),
        };
        let disk = match &self.disk_failure {
            Some(failure) => format!("the files on disk fail: {failure}"),
            None => "a reload reads the files on disk".to_string(),
        };
        Some(format!(
            "worker {pid} serves the last good configuration of generation {origin}{copy}; {disk}"
        ))
    }

    /// Every generation whose copy may still exist.
    #[cfg(test)]
    fn generations(&self) -> Vec<Generation> {
        let mut all: Vec<Generation> = self.live.keys().copied().collect();
        all.extend(self.last.as_ref().map(|(g, _)| *g));
        all.sort_unstable();
        all.dedup();
        all
    }
}

/// What the STATUS= line and `show proc` say about a failed reload: haproxy's first `[ALERT]`
/// line from the worker's start-up output without its prefix (it names the file, line and
/// keyword), else the master's `reason`; one line, at most `MAX_REASON` characters.
pub fn short_failure(startup: &str, reason: &str) -> String {
    let alert = startup
        .lines()
        .find(|l| l.starts_with("[ALERT]"))
        .map(|l| l.split_once(") : ").map_or(l, |(_, rest)| rest));
    let text = alert.unwrap_or(reason).trim();
    match text.char_indices().nth(MAX_REASON) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    }
}

/// The directory a copy's files are in, for log lines.
pub fn copy_dir(files: &[PathBuf]) -> String {
    files
        .first()
        .and_then(|f| f.parent())
        .map_or_else(|| "-".to_string(), |d| d.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(origin: Generation, dir: &str) -> Kept {
        Kept::Copy {
            origin,
            files: vec![PathBuf::from(format!("/rt/{dir}/0000-haproxy.cfg"))],
        }
    }

    #[test]
    fn a_replacement_starts_from_the_last_ready_copy() {
        let mut lg = LastGood::default();
        assert!(matches!(lg.replacement_source(), ReplaceFrom::Disk { .. }));
        lg.started(1, copy(1, "config-1"));
        assert!(
            matches!(lg.replacement_source(), ReplaceFrom::Disk { .. }),
            "not ready yet"
        );
        assert_eq!(lg.ready(1), None);
        // A reload starts and fails: the first worker's copy stays the last good one.
        lg.started(2, copy(2, "config-2"));
        assert!(lg.forgotten(2), "a failed worker's copy goes");
        // The first worker dies: its copy stays, a replacement starts from it.
        assert!(
            !lg.forgotten(1),
            "the last good copy stays after its worker"
        );
        assert_eq!(
            lg.replacement_source(),
            ReplaceFrom::Copy {
                origin: 1,
                files: &[PathBuf::from("/rt/config-1/0000-haproxy.cfg")]
            }
        );
        lg.started(3, copy(1, "config-3"));
        // Ready: the dead worker's copy is no longer needed.
        assert_eq!(lg.ready(3), Some(1));
        assert_eq!(lg.generations(), [3]);
        // A good reload: the replacement's copy goes when the replacement does.
        lg.started(4, copy(4, "config-4"));
        assert_eq!(lg.ready(4), None, "worker 3 still drains");
        assert!(lg.forgotten(3));
        assert_eq!(lg.generations(), [4]);
    }

    #[test]
    fn no_copy_means_the_files_on_disk() {
        let mut lg = LastGood::default();
        lg.started(
            1,
            Kept::Disk {
                why: "haproxy.cfg uses default-path config".into(),
            },
        );
        lg.ready(1);
        let ReplaceFrom::Disk { why } = lg.replacement_source() else {
            panic!("expected the disk")
        };
        assert!(why.contains("default-path config"), "{why}");
    }

    #[test]
    fn status_says_what_serves_while_the_disk_fails() {
        let mut lg = LastGood::default();
        lg.started(1, copy(1, "config-1"));
        lg.ready(1);
        let serving = "Serving: worker pid 10, generation 1";
        // Its own configuration: nothing to say, whatever the disk.
        lg.reload_done(Some("parsing [a.cfg:3] : unknown keyword".into()));
        assert_eq!(lg.status(serving, Some(1)), serving);
        assert_eq!(lg.proc_note(Some((10, 1))), None);
        lg.forgotten(1);
        lg.started(3, copy(1, "config-3"));
        lg.ready(3);
        let serving = "Serving: worker pid 12, generation 3";
        assert_eq!(
            lg.status(serving, Some(3)),
            "Serving the last good configuration of generation 1; the files on disk fail: \
             parsing [a.cfg:3] : unknown keyword; worker pid 12, generation 3"
        );
        assert_eq!(
            lg.status(
                "Reload failed: exit status 1; still serving: worker pid 12, generation 3",
                Some(3)
            ),
            "Reload failed: exit status 1; still serving the last good configuration of \
             generation 1: worker pid 12, generation 3"
        );
        assert_eq!(
            lg.proc_note(Some((12, 3))).unwrap(),
            "worker 12 serves the last good configuration of generation 1 (copy in \
             /rt/config-3); the files on disk fail: parsing [a.cfg:3] : unknown keyword"
        );
        // Nothing known to fail: STATUS= is the plain one, show proc still says where it runs from.
        lg.reload_done(None);
        assert_eq!(lg.status(serving, Some(3)), serving);
        assert!(lg
            .proc_note(Some((12, 3)))
            .unwrap()
            .ends_with("; a reload reads the files on disk"));
        // Other statuses are left alone.
        lg.reload_done(Some("x".into()));
        assert_eq!(lg.status("Stopping", Some(3)), "Stopping");
    }

    #[test]
    fn short_failure_is_haproxys_first_alert() {
        let startup = "[NOTICE]   (5) : haproxy version is 2.6.12\n\
                       [ALERT]    (5) : config : parsing [/etc/h.cfg:13] : unknown keyword 'x'\n\
                       [ALERT]    (5) : config : Fatal errors found in configuration.\n";
        assert_eq!(
            short_failure(startup, "exit status 1"),
            "config : parsing [/etc/h.cfg:13] : unknown keyword 'x'"
        );
        assert_eq!(short_failure("", " timeout "), "timeout");
        let long = "é".repeat(300);
        assert_eq!(
            short_failure("", &long).chars().count(),
            MAX_REASON + 3,
            "cut on a character boundary"
        );
    }
}
